"""Terminal side over MQTT: a persistent v5 session feeding the SyncEngine.

Client id ``motcua-{terminal}`` with clean start off and a session expiry, so the
broker queues batches while the terminal is away; subscriptions are made again in every
on_connect (a broker that lost its state has none). A retained "online" on the status
topic, with a retained last will "offline"; the TerminalState is retained on the state
topic. paho reconnects with a doubling backoff, except after an authentication refusal,
which stops the subscriber with ``AuthenticationError``.

Reports in ``outbox_dir`` ("not me", ratings; see sync/outbox.py) are published at QoS 1
on the terminal's report topic and marked delivered only after the PUBACK.

Threads: paho's network thread only queues messages; ``sync-apply`` verifies and applies
them, sends requests and state. Both stop on the shared stop event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edge import __version__
from edge.errors import AuthenticationError
from sync.engine import GAP_TIMEOUT_S, MAX_MESSAGE_BYTES, GalleryTarget, SyncEngine
from sync.mqtt import BrokerSettings, is_auth_failure, make_client, start_client, stop_client
from sync.outbox import COMPACT_INTERVAL_S, OutboxSender
from sync.topics import DEFAULT_PREFIX, Topics
from sync.wire import PublicKeys

log = logging.getLogger(__name__)

#: publish the retained state at most this often while busy (fleet view granularity)
STATE_INTERVAL_S = 1.0
#: messages waiting for the apply thread; past this paho's thread blocks (back-pressure)
INBOX_MAX = 10_000
#: look for new outbox reports this often; a report is a human tap, 0.5 s is prompt enough
OUTBOX_INTERVAL_S = 0.5
ONLINE = b"online"
OFFLINE = b"offline"


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
        state_interval_s: float = STATE_INTERVAL_S,
        outbox_dir: Path | None = None,
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
        )
        self.connected = threading.Event()
        self.connects = 0
        #: payload bytes received on the district's topics (wire figures)
        self.bytes_received = 0
        #: CONNACKs refusing our credentials (stays at 1: no retry after it)
        self.auth_failures = 0
        self.auth_error: str | None = None
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(INBOX_MAX)
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
        self.client = make_client(f"motcua-{terminal_id}", broker)
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
            self.bytes_received += len(msg.payload)
            item = (channel, bytes(msg.payload))
            while not self.stop_event.is_set():  # back-pressure, but never block a stop
                try:
                    self._inbox.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

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
            try:
                channel, payload = self._inbox.get(timeout=0.05)
            except queue.Empty:
                pass
            else:
                try:
                    self.engine.handle(channel, payload)
                except Exception as exc:  # a bug or a full disk must not stop the sync
                    log.exception("sync message handling failed")
                    self.engine.rejections["error"] += 1
                    self.engine.last_error = f"internal error: {exc}"[:200]
                self._state_dirty = True
            if not self.connected.is_set():
                continue
            for req in self.engine.tick():
                self.client.publish(
                    self.topics.request(self.terminal_id), req.SerializeToString(), qos=1
                )
            now = time.monotonic()
            if self.outbox is not None:
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
