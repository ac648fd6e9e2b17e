"""Terminal side over MQTT: a persistent v5 session feeding the SyncEngine.

Client id ``motcua-{terminal}`` with clean start off and a session expiry, so the
broker queues batches while the terminal is away; subscriptions are made again in every
on_connect (a broker that lost its state has none). A retained "online" on the status
topic, with a retained last will "offline"; the TerminalState is retained on the state
topic. paho reconnects with a doubling backoff, except after an authentication refusal,
which stops the subscriber with ``AuthenticationError``.

Reports in ``outbox_dir`` ("not me", ratings; see edge/syncclient/outbox.py) are published at QoS 1
on the terminal's report topic and marked delivered only after the PUBACK.

Threads: paho's network thread only queues messages; ``sync-apply`` verifies and applies
them, sends requests and state. Both stop on the shared stop event.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from core.errors import AuthenticationError, MessageRejected
from edge import __version__
from edge.syncclient.download import RETRIES, RETRY_S, Downloader, DownloadError, TlsMaterial
from edge.syncclient.engine import (
    GAP_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    SNAPSHOT_MAX_FAILURES,
    SNAPSHOT_PAUSE_S,
    SNAPSHOT_RETRY_MAX_S,
    SNAPSHOT_RETRY_S,
    GalleryTarget,
    SyncEngine,
)
from edge.syncclient.outbox import COMPACT_INTERVAL_S, OutboxSender
from proto import sync_pb2 as pb
from sync import wire
from sync.mqtt import (
    BrokerSettings,
    is_auth_failure,
    make_client,
    session_client_id,
    start_client,
    stop_client,
)
from sync.topics import DEFAULT_PREFIX, Topics
from sync.wire import PublicKeys

log = logging.getLogger(__name__)

#: publish the retained state at most this often while busy (fleet view granularity)
STATE_INTERVAL_S = 1.0
#: messages waiting for the apply thread; past either bound paho's thread blocks
#: (back-pressure: the broker keeps the rest). In bytes too: 10,000 x 4 MiB would be
#: 40 GB; 64 MiB is 64 full 1 MiB batches or chunks, or tens of thousands of ordinary
#: batches, and with the engine's BUFFER_MAX_BYTES keeps the sync under ~140 MB on a
#: 2 GB board (the arithmetic is at edge.syncclient.engine.BUFFER_MAX_BATCHES)
INBOX_MAX = 10_000
INBOX_MAX_BYTES = 64 << 20
#: look for new outbox reports this often; a report is a human tap, 0.5 s is prompt enough
OUTBOX_INTERVAL_S = 0.5
ONLINE = b"online"
OFFLINE = b"offline"


class _Inbox:
    """A FIFO bounded in messages and in bytes; ``put`` blocks (with a timeout) while
    full. A message alone larger than the byte bound is still let in when the inbox is
    empty (the size check upstream keeps that <= the terminal's message limit)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: collections.deque[tuple[str, bytes]] = collections.deque()
        self.bytes = 0
        self._cond = threading.Condition()

    def put(self, item: tuple[str, bytes], timeout: float) -> bool:
        size = len(item[1])
        with self._cond:
            ok = self._cond.wait_for(
                lambda: not self._items or (len(self._items) < self.max_items
                                            and self.bytes + size <= self.max_bytes),
                timeout)
            if ok:
                self._items.append(item)
                self.bytes += size
                self._cond.notify_all()
            return ok

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            self.bytes -= len(item[1])
            self._cond.notify_all()
            return item

    def empty(self) -> bool:
        with self._cond:
            return not self._items


class TerminalSubscriber:
    """Keeps one terminal's store in sync with its district; start() / stop()."""

    def __init__(
        self,
        store: GalleryTarget,
        broker: BrokerSettings,
        *,
        district_id: str,
        terminal_id: str,
        public_key: PublicKeys,
        prefix: str = DEFAULT_PREFIX,
        model: str = "",
        spool_dir: Path | None = None,
        stop: threading.Event | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        request_retry_s: float = 2.0,
        snapshot_retry_s: float = SNAPSHOT_RETRY_S,
        snapshot_retry_max_s: float = SNAPSHOT_RETRY_MAX_S,
        snapshot_max_failures: int = SNAPSHOT_MAX_FAILURES,
        snapshot_pause_s: float = SNAPSHOT_PAUSE_S,
        state_interval_s: float = STATE_INTERVAL_S,
        outbox_dir: Path | None = None,
        snapshot_files: bool = True,
        download_retries: int = RETRIES,
        download_retry_s: float = RETRY_S,
    ) -> None:
        self.broker = broker
        self.topics = Topics(prefix, district_id)
        self.terminal_id = terminal_id
        self.model = model
        self.stop_event = stop or threading.Event()
        self.state_interval_s = state_interval_s
        self.engine = SyncEngine(
            store,
            district_id=district_id,
            terminal_id=terminal_id,
            public_key=public_key,
            spool_dir=spool_dir,
            max_message_bytes=max_message_bytes,
            gap_timeout_s=gap_timeout_s,
            request_retry_s=request_retry_s,
            snapshot_retry_s=snapshot_retry_s,
            snapshot_retry_max_s=snapshot_retry_max_s,
            snapshot_max_failures=snapshot_max_failures,
            snapshot_pause_s=snapshot_pause_s,
            # a shared snapshot file needs somewhere to put it
            accepts_file=snapshot_files and spool_dir is not None,
        )
        #: downloads the district's shared snapshot files (HTTP(S), resumable); TLS with
        #: the broker's CA and this terminal's client certificate
        self.downloader = (
            Downloader(spool_dir, terminal_id, retries=download_retries,
                       retry_s=download_retry_s, stop=self.stop_event,
                       tls=TlsMaterial(broker.ca_file, broker.cert_file, broker.key_file))
            if spool_dir is not None else None)
        #: finished downloads: (descriptor, file or None, error, gone)
        self._downloads: queue.SimpleQueue[
            tuple[pb.SnapshotFile, Path | None, str, bool]] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.connects = 0
        #: payload bytes received on the district's topics (wire figures)
        self.bytes_received = 0
        #: CONNACKs refusing our credentials (stays at 1: no retry after it)
        self.auth_failures = 0
        self.auth_error: str | None = None
        #: payloads over max_message_bytes dropped on arrival (paho's thread; the apply
        #: thread adds them to the engine's "oversized" count)
        self.oversized_dropped = 0
        self._oversized_counted = 0
        self.max_message_bytes = max_message_bytes
        self._inbox = _Inbox(INBOX_MAX, INBOX_MAX_BYTES)
        self._thread: threading.Thread | None = None
        self._state_dirty = True
        self._channels = {
            self.topics.batch: "batch",
            self.topics.manifest: "manifest",
            self.topics.direct(terminal_id): "direct",
        }
        self.outbox = (
            OutboxSender(outbox_dir, terminal_id=terminal_id, district_id=district_id)
            if outbox_dir is not None
            else None
        )
        # the login when there is one: the broker binds the client id to it
        self.client = make_client(session_client_id(broker, f"motcua-{terminal_id}"), broker)
        self.client.on_publish = self._on_publish
        self.client.will_set(self.topics.status(terminal_id), OFFLINE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_connect_fail = self._on_connect_fail

    # ---- paho callbacks ------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            self.engine.last_error = f"broker refused the connection: {rc}"
            if is_auth_failure(rc):  # type: ignore[arg-type]
                self.auth_failures += 1
                self.auth_error = f"broker refused terminal {self.terminal_id}: {rc}"
                log.error("%s; not retrying", self.auth_error)
                client.disconnect()
                self.stop_event.set()
            return
        self.connects += 1
        client.subscribe([(topic, 1) for topic in self._channels])
        client.publish(self.topics.status(self.terminal_id), ONLINE, qos=1, retain=True)
        self._state_dirty = True
        self.connected.set()

    def _on_connect_fail(self, _c: mqtt.Client, _u: object) -> None:
        self.engine.last_error = "cannot reach the broker"

    def _on_disconnect(self, *_a: object) -> None:
        self.connected.clear()
        if self.outbox is not None:
            self.outbox.forget_inflight()

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # paho's thread, holding paho's lock: only hand the mid over
        if self.outbox is not None:
            self.outbox.acked(mid)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        channel = self._channels.get(msg.topic)
        if channel is not None:
            size = len(msg.payload)
            self.bytes_received += size
            if size > self.max_message_bytes:
                # neither copied nor queued; the apply thread counts it ("oversized")
                self.oversized_dropped += 1
                return
            item = (channel, bytes(msg.payload))
            while not self.stop_event.is_set():  # back-pressure, but never block a stop
                if self._inbox.put(item, timeout=0.5):
                    return

    # ---- life cycle ---------------------------------------------------------------

    def start(self) -> TerminalSubscriber:
        start_client(self.client, self.broker)
        self._thread = threading.Thread(target=self._run, name="sync-apply", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop; graceful publishes "offline" first (an ungraceful stop leaves the will)."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if graceful and self.connected.is_set():
            self.client.publish(self.topics.status(self.terminal_id), OFFLINE, qos=1, retain=True)
            self.client.disconnect()
        # ungraceful: the socket is closed without a DISCONNECT (a power cut: the broker
        # then publishes the will)
        stop_client(self.client)

    def raise_if_failed(self) -> None:
        if self.auth_error:
            raise AuthenticationError(self.auth_error)

    # ---- apply thread ------------------------------------------------------------------

    def _run(self) -> None:
        last_state = 0.0
        last_outbox = 0.0
        last_compact = time.monotonic()
        while not self.stop_event.is_set():
            dropped = self.oversized_dropped
            if dropped != self._oversized_counted:
                self.engine.rejections["oversized"] += dropped - self._oversized_counted
                self.engine.last_error = "dropped a message over the size limit"
                self._oversized_counted = dropped
                self._state_dirty = True
            got = self._inbox.get(timeout=0.05)
            if got is not None:
                channel, payload = got
                try:
                    if channel == "direct" and wire.is_receipt(payload):
                        self._on_receipt(payload)
                    else:
                        self.engine.handle(channel, payload)
                except Exception as exc:  # a bug or a full disk must not stop the sync
                    log.exception("sync message handling failed")
                    self.engine.rejections["error"] += 1
                    self.engine.last_error = f"internal error: {exc}"[:200]
                self._state_dirty = True
            self._pump_downloads()
            if not self.connected.is_set():
                continue
            for req in self.engine.tick():
                self.client.publish(
                    self.topics.request(self.terminal_id), req.SerializeToString(), qos=1
                )
            now = time.monotonic()
            # with receipts, a report stays in the outbox until the district has it; the
            # first manifest since the start says whether the district sends them
            if self.outbox is not None and self.engine.report_receipts is not None:
                self.outbox.want_receipts = self.engine.report_receipts
                self.outbox.settle()
                if now - last_outbox >= OUTBOX_INTERVAL_S:
                    last_outbox = now
                    self.outbox.pump(self._publish_report, now)
                if now - last_compact >= COMPACT_INTERVAL_S:
                    last_compact = now
                    self.outbox.compact()
            if self._state_dirty and (
                now - last_state >= self.state_interval_s or self._inbox.empty()
            ):
                self._state_dirty = False
                last_state = now
                self.publish_state()

    def _pump_downloads(self) -> None:
        """Start the download the engine asks for; hand finished ones back to it."""
        desc = self.engine.take_download()
        if desc is not None and self.downloader is not None:
            threading.Thread(target=self._download, args=(desc,), name="sync-download",
                             daemon=True).start()
        try:
            d, path, error, gone = self._downloads.get_nowait()
        except queue.Empty:
            return
        try:
            if path is None:
                self.engine.download_failed(d, error, gone=gone)
            else:
                self.engine.install_file(d, path)
        except Exception as exc:  # a full disk must not stop the sync
            log.exception("installing the snapshot file failed")
            self.engine.last_error = f"internal error: {exc}"[:200]
        self._state_dirty = True

    def _download(self, desc: pb.SnapshotFile) -> None:
        assert self.downloader is not None
        try:
            path = self.downloader.fetch(desc)
        except DownloadError as exc:
            self._downloads.put((desc, None, str(exc), exc.gone))
            return
        except Exception as exc:  # anything else must still end the download
            log.exception("snapshot download failed")
            self._downloads.put((desc, None, f"snapshot download failed: {exc}"[:300], False))
            return
        self._downloads.put((desc, path, "", False))

    def _on_receipt(self, payload: bytes) -> None:
        """A ReportReceipt on the direct topic: checked like any district message, then
        the outbox marks the report delivered (bad ones are counted as rejections)."""
        try:
            env = wire.open_envelope(payload, district_id=self.engine.district_id,
                                     public_key=self.engine.public_key,
                                     max_bytes=self.max_message_bytes)
            receipt = wire.parse_receipt(env, self.terminal_id)
        except MessageRejected as exc:
            self.engine._reject(exc)
            return
        if self.outbox is not None:
            self.outbox.receipt(int(receipt.kind), receipt.session_id)

    def _publish_report(self, payload: bytes) -> int:
        info = self.client.publish(self.topics.report(self.terminal_id), payload, qos=1)
        return int(info.mid)

    def publish_state(self) -> None:
        st = self.engine.state()
        st.model = self.model
        st.version = __version__
        self.client.publish(
            self.topics.state(self.terminal_id), st.SerializeToString(), qos=1, retain=True
        )
