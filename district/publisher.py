"""District side: publish the change log as signed batches, serve replays and snapshots.

Threads (sharing one stop event): ``district-publish`` sends new log entries as batches
on the batch topic and keeps the retained manifest current; ``district-serve`` answers
terminals' replay and snapshot requests on their direct topics. Progress
(``published_seq``) is written to the log after the broker acknowledged a batch, so a
publisher that crashes resumes with the next unacknowledged batch: at worst one batch
is sent twice, and terminals ignore duplicates.

Terminals' reports ("not me", ratings) arrive on their report topics (QoS 1). paho's
network thread only checks them and applies the per-terminal limits (district/reports.py);
the ``district-reports`` thread stores them in the log's ``reports`` table, once per
(terminal, session, kind), and only then is the PUBACK sent (manual acknowledgement),
followed by a signed ReportReceipt on the terminal's direct topic (the terminal re-sends
a report until it has one).
The network thread never waits for SQLite, so a report flood cannot stall the PUBACKs
of the district's own batches.

Several workers (``motcua district serve`` processes) may run against one log: each has
its own client id and subscribes to requests and reports through one MQTT v5 shared
subscription (``$share/<group>/...``: each message goes to one worker); only the holder
of the publisher lease (district/lease.py, thread ``district-lease``) publishes batches
and the manifest. docs/scale.md, "Several district workers".
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import logging
import re
import sqlite3
import threading
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.errors import AuthenticationError, DistrictError, SyncError
from district import calibration as calib
from district.fleet import FleetCache
from district.lease import LEASE_RENEW_S, Lease, LeaseLost, new_holder_id
from district.log import DistrictLog
from district.reports import ReportGate, ReportWriter, check_report
from district.snapshots import SnapshotFiles
from district.survey import OfferWriter
from proto import sync_pb2 as pb
from sync.mqtt import (
    BrokerSettings,
    is_auth_failure,
    make_client,
    session_client_id,
    start_client,
    stop_client,
)
from sync.survey import PublishedSurvey, survey_to_pb
from sync.topics import DEFAULT_PREFIX, Topics, check_id
from sync.wire import PROTOCOL_VERSION, seal

log = logging.getLogger(__name__)

#: how often the publisher looks for new log entries written by other processes; 20 ms
#: keeps publish latency far under the 100 ms p50 target for a cheap indexed query
POLL_INTERVAL_S = 0.02
#: most changes in one batch: a batch is one store transaction on the terminal; 500
#: upserts of 512-d embeddings is ~1 MiB, well under the terminal's 4 MiB message limit
BATCH_MAX_CHANGES = 500
#: stop filling a batch past this many bytes of changes
BATCH_MAX_BYTES = 1 << 20
#: snapshot chunk size; 1 MiB chunks keep the message count low and memory small
CHUNK_MAX_BYTES = 1 << 20
#: re-publish the manifest at least this often while busy, so terminals learn the head
MANIFEST_INTERVAL_S = 2.0
#: re-publish the manifest at least this often while idle: a broker that lost the
#: retained copy, or never shows it to some subscribers (ejabberd 23.01 across cluster
#: nodes, docs/scale.md), gets it to every subscribed terminal live within this time;
#: one small message a minute per district costs nothing
MANIFEST_REFRESH_S = 60.0
#: a terminal gets at most one snapshot per this many seconds (a confused or hostile
#: terminal cannot make the district stream its whole gallery in a loop)
SNAPSHOT_MIN_INTERVAL_S = 5.0
#: replays cover at most the last this-many changes; a terminal further behind gets a
#: snapshot. 20,000 changes (~40 MB at 512-d) is about what a snapshot of a small district
#: costs, so a longer replay would not be cheaper
REPLAY_WINDOW = 20_000
#: what the district sends one terminal on its direct topic (replays and snapshots) is
#: paid from a per-terminal token bucket in bytes, refilled at this rate. 1 MiB/s lets a
#: terminal catch up a day of changes (a few MB) in seconds, while 150 forged requests
#: buy one terminal's credentials ~1 MiB/s instead of ~80 MB/s (bench/abuse.py)
REQUEST_BYTES_PER_S = 1 << 20
#: the bucket's size: a terminal back from a week off replays its ~20 MB gap at once
#: after 16 MiB then the rate; a snapshot may take the bucket into debt (it cannot be cut
#: short), and the terminal gets nothing more on its direct topic until it is repaid
REQUEST_BURST_BYTES = 16 << 20
#: one replay answer stops after this many bytes (the batch that crosses it is the last);
#: the terminal applies it and asks again from where it got to, behind the other
#: terminals in the round-robin. 8 MiB is ~3,500 512-d upserts
REPLAY_MAX_BYTES = 8 << 20
#: terminals with a request pending (one each: a newer request replaces the older one);
#: a district has hundreds of terminals, so 10,000 is never reached by honest ones
REQUEST_TERMINALS_MAX = 10_000
#: pause after a failed round (log busy, broker error) before trying again
RETRY_S = 1.0
#: give up waiting for one PUBACK after this long and re-check the connection
PUBACK_WAIT_S = 1.0
#: how often the calibration thread checks whether the gallery moved past
#: ``[calibration] recompute_share``: a count query; enrolment adds hundreds a day at most
CALIBRATION_CHECK_S = 60.0
#: MQTT v5 user property on everything a worker publishes: "<worker>@<random>#<generation>"
#: (the random part of its lease holder name; generation 0: not as the lease holder, e.g.
#: a replay): who sent what, for people and tests
WRITER_PROPERTY = "motcua-writer"


def share_group(key: Ed25519PrivateKey, district_id: str) -> str:
    """The shared-subscription group of a district's workers: derived from the signing
    key, so every worker finds the same name and no terminal can guess it. Mosquitto
    2.0 lets any login join any group and then drops that member's share of the
    messages at its read ACL: a known group name would let one terminal's credentials
    make the district miss part of every terminal's requests and reports."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    tag = hmac.new(raw, f"motcua share group {district_id}".encode(), hashlib.sha256)
    return f"motcua-{tag.hexdigest()[:32]}"


@dataclass
class PublisherStats:
    batches: int = 0
    changes: int = 0
    replays: int = 0
    snapshots: int = 0
    snapshot_chunks: int = 0
    bytes_sent: int = 0
    bad_requests: int = 0
    #: terminal reports malformed or forged (checked on arrival)
    bad_reports: int = 0
    #: reports refused by the per-terminal rate limit / the per-citizen "not me" window
    limited_reports: int = 0
    citizen_dup_reports: int = 0
    #: reports dropped because the writer's queue was full
    dropped_reports: int = 0
    #: ReportReceipts sent (stored, duplicate or refused for good)
    receipts: int = 0
    #: well-formed requests received, by terminal
    requests: dict[str, int] = field(default_factory=dict)
    #: requests merged into one already pending from the same terminal
    coalesced_requests: int = 0
    #: requests dropped because REQUEST_TERMINALS_MAX terminals were already waiting
    dropped_requests: int = 0
    #: replays cut short by REPLAY_MAX_BYTES or the terminal's byte budget
    replays_truncated: int = 0
    #: bytes sent on each terminal's direct topic (replays and snapshots)
    direct_bytes: dict[str, int] = field(default_factory=dict)
    last_snapshot_bytes: int = 0
    #: snapshot requests answered with a SnapshotFile descriptor (HTTP download)
    snapshot_files: int = 0
    per_terminal_snapshot: dict[str, float] = field(default_factory=dict)


class ByteBucket:
    """A token bucket in bytes: ``rate`` per second up to ``burst``; charges may take it
    into debt (a snapshot cannot be cut short), and nothing is sent while it is <= 0."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self._t = now

    def level(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate)
        self._t = now
        return self.tokens

    def wait_s(self, now: float) -> float:
        """Seconds until the bucket holds something again (0 when it does)."""
        level = self.level(now)
        return 0.0 if level > 0 else (-level + 1) / self.rate

    def charge(self, n: int) -> None:
        self.tokens -= n


class RequestQueue:
    """Pending replay/snapshot requests: at most one per terminal (a newer one replaces
    the pending one in its place), served round-robin in order of arrival, skipping
    terminals whose byte budget is spent. One terminal cannot push others out: it holds
    one slot whatever it sends. A request equal to the one being answered is dropped
    (the answer is on its way). ``put`` never blocks (paho's network thread)."""

    def __init__(self, max_terminals: int) -> None:
        self.max_terminals = max_terminals
        #: terminal -> (its newest pending request, monotonic time that request arrived)
        self._pending: collections.OrderedDict[str, tuple[pb.SyncRequest, float]] = (
            collections.OrderedDict())
        self._cv = threading.Condition()
        self.busy = False
        self._serving: tuple[str, int, int, int] | None = None

    @staticmethod
    def _key(terminal: str, req: pb.SyncRequest) -> tuple[str, int, int, int]:
        return terminal, req.kind, req.epoch, req.from_seq

    def put(self, terminal: str, req: pb.SyncRequest) -> str:
        """'queued', 'coalesced' (merged with a pending or the running one) or 'dropped'."""
        with self._cv:
            if self._serving == self._key(terminal, req):
                return "coalesced"
            if terminal in self._pending:
                self._pending[terminal] = (req, time.monotonic())
                return "coalesced"
            if len(self._pending) >= self.max_terminals:
                return "dropped"
            self._pending[terminal] = (req, time.monotonic())
            self._cv.notify()
            return "queued"

    def take(
        self, wait_s: Callable[[str], float], timeout: float
    ) -> tuple[str, pb.SyncRequest, float] | None:
        """The first pending request whose terminal may be served now (``wait_s`` of it is
        0), or None after ``timeout`` (or sooner, when a budget refills)."""
        with self._cv:
            soonest = timeout
            for terminal in self._pending:
                w = wait_s(terminal)
                if w <= 0:
                    self.busy = True
                    req, received = self._pending.pop(terminal)
                    self._serving = self._key(terminal, req)
                    return terminal, req, received
                soonest = min(soonest, w)
            self.busy = False
            self._cv.wait(soonest)
            return None

    def done(self) -> None:
        with self._cv:
            self.busy = False
            self._serving = None

    def idle(self) -> bool:
        """Nothing pending and nothing being served (tests, benchmarks)."""
        with self._cv:
            return not self._pending and not self.busy

    def __len__(self) -> int:
        with self._cv:
            return len(self._pending)


class Publisher:
    """Publishes one district's log; ``start()`` / ``stop()`` or ``run()`` until stopped."""

    def __init__(
        self,
        dlog: DistrictLog,
        key: Ed25519PrivateKey,
        broker: BrokerSettings,
        *,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        stop: threading.Event | None = None,
        batch_max_changes: int = BATCH_MAX_CHANGES,
        chunk_max_bytes: int = CHUNK_MAX_BYTES,
        snapshot_min_interval_s: float = SNAPSHOT_MIN_INTERVAL_S,
        replay_window: int = REPLAY_WINDOW,
        request_bytes_per_s: float = REQUEST_BYTES_PER_S,
        request_burst_bytes: float = REQUEST_BURST_BYTES,
        replay_max_bytes: int = REPLAY_MAX_BYTES,
        calibration: calib.CalibrationSettings | None = None,
        pack_threshold: float = 0.0,
        calibration_check_s: float = CALIBRATION_CHECK_S,
        worker: str = "",
        lease: Lease | None = None,
        manifest_refresh_s: float = MANIFEST_REFRESH_S,
        snapshot_files: SnapshotFiles | None = None,
    ) -> None:
        self.log = dlog
        self.key = key
        #: a named worker's session ends when its connection does (session expiry 0):
        #: a persistent session would keep it in the shared subscriptions' round robin
        #: while it is dead and strand its share there (docs/scale.md); what a dead
        #: worker had received is sent again by the terminals (requests: their retry;
        #: reports: until the district's ReportReceipt)
        self.broker = dataclasses.replace(broker, session_expiry_s=0) if worker else broker
        self.topics = Topics(prefix, dlog.district_id)
        self.stop_event = stop or threading.Event()
        self.batch_max_changes = batch_max_changes
        self.chunk_max_bytes = chunk_max_bytes
        self.snapshot_min_interval_s = snapshot_min_interval_s
        self.replay_window = replay_window
        self.request_bytes_per_s = request_bytes_per_s
        self.request_burst_bytes = request_burst_bytes
        self.replay_max_bytes = replay_max_bytes
        #: None: publish whatever point the log holds, never derive one here
        self.calibration = calibration
        self.pack_threshold = pack_threshold
        self.calibration_check_s = calibration_check_s
        self.manifest_refresh_s = manifest_refresh_s
        #: None: snapshots only as chunks on the direct topic (no HTTP file server)
        self.snapshot_files = snapshot_files
        self._buckets: dict[str, ByteBucket] = {}
        self.stats = PublisherStats()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._manifest_due = threading.Event()
        self.requests = RequestQueue(REQUEST_TERMINALS_MAX)
        #: terminal -> monotonic time its last snapshot was wholly sent
        self._snapshot_sent_at: dict[str, float] = {}
        self._auth_error: str | None = None
        #: why the publisher stopped by itself (other than credentials): raised by run()
        self.fatal_error: SyncError | None = None
        self._threads: list[threading.Thread] = []
        #: only the holder of this lease publishes batches and the manifest
        self.lease = lease or Lease(dlog.path, new_holder_id(worker))
        self._lease_wake = threading.Event()
        # the holder name without host and pid: terminals see it on every message
        holder = self.lease.holder
        self._writer_tag = f"{holder.split('@', 1)[0]}@{holder.rsplit(':', 1)[-1]}"
        self.share_group = share_group(key, dlog.district_id)
        #: requests and reports through a shared subscription only when this is one of
        #: several named workers (``[district] worker``): a lone publisher subscribes
        #: plainly, so that brokers without ``$share`` (ejabberd 23.01 drops the client,
        #: docs/scale.md) still carry a one-worker district
        self.shared_subscriptions = bool(worker)
        default_cid = f"motcua-district-{dlog.district_id}" + (f"-{worker}" if worker else "")
        cid = client_id or session_client_id(broker, default_cid)
        self.client = make_client(cid, self.broker)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._acked: set[int] = set()
        self._acked_cv = threading.Condition()
        #: mids of receipts published without waiting (their PUBACKs are not _send's)
        self._receipt_mids: set[int] = set()
        # reports: PUBACK after the writer stored them; a connection's number tells a
        # stale mid (the link dropped meanwhile: the broker sends it again) from a live one
        self.client.manual_ack_set(True)
        self._link = 0
        self.report_gate = ReportGate()
        self.report_writer = ReportWriter(dlog, self._report_stored, self.stop_event)
        #: the terminals' retained states and statuses as this connection sees them
        #: (the operator console's fleet page; district/fleet.py)
        self.fleet = FleetCache()
        #: the survey the manifest carries (district/survey.py; None: off) and the writer
        #: of the terminals' survey offers (None: offers are bad reports); set before start
        self.survey: PublishedSurvey | None = None
        self.survey_offers: OfferWriter | None = None

    # ---- MQTT callbacks (paho's thread) ------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            if is_auth_failure(rc):  # type: ignore[arg-type]
                self._auth_error = f"broker refused the district's credentials: {rc}"
                client.disconnect()
                self.stop_event.set()
            return
        if self.shared_subscriptions and getattr(_p, "SharedSubscriptionAvailable", 1) == 0:
            # ejabberd 23.01 says so and then drops the client at the $share subscribe:
            # a reconnect loop (~8/s measured) in which the lease is held and nothing is
            # ever published (docs/scale.md); stop instead, saying why
            self.fatal_error = SyncError(
                "the broker does not support shared subscriptions (CONNACK "
                "SharedSubscriptionAvailable = 0): several district workers need them; "
                "on this broker run one worker, without [district] worker")
            log.error("%s", self.fatal_error)
            client.disconnect()
            self.stop_event.set()
            return
        self._link += 1
        if self.shared_subscriptions:
            # a session from before shared subscriptions still holds the plain ones
            client.unsubscribe([self.topics.all_requests, self.topics.all_reports])
            client.subscribe([(self.shared(self.topics.all_requests), 1),
                              (self.shared(self.topics.all_reports), 1)])
        else:
            client.subscribe([(self.topics.all_requests, 1), (self.topics.all_reports, 1)])
        # the fleet view (console): every worker keeps its own copy of the retained states
        client.subscribe([(self.topics.all_states, 0), (self.topics.all_statuses, 0)])
        self._connected.set()
        self._lease_wake.set()
        self._manifest_due.set()
        self._wake.set()

    def _on_disconnect(self, *_a: object) -> None:
        self._connected.clear()

    def shared(self, topic_filter: str) -> str:
        """The filter as this district's workers' shared subscription."""
        return f"$share/{self.share_group}/{topic_filter}"

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        terminal = self.topics.terminal_of(msg.topic)
        if terminal is not None and not _is_id(terminal):
            terminal = None  # not a terminal id we could have issued: never shown or stored
        if terminal is not None and msg.topic == self.topics.report(terminal):
            if not self._on_report(terminal, bytes(msg.payload), (self._link, msg.mid, msg.qos)):
                client.ack(msg.mid, msg.qos)
            return
        client.ack(msg.mid, msg.qos)  # requests: handled below, nothing to make durable
        if msg.topic.endswith(("/state", "/status")):  # the fleet view; not requests
            if terminal is not None and msg.topic == self.topics.state(terminal):
                self.fleet.update(terminal, state=bytes(msg.payload))
            elif terminal is not None and msg.topic == self.topics.status(terminal):
                self.fleet.update(terminal, status=bytes(msg.payload))
            return
        req = pb.SyncRequest()
        try:
            req.ParseFromString(msg.payload)
        except DecodeError:
            req = None  # type: ignore[assignment]
        if (
            terminal is None
            or req is None
            or req.terminal_id != terminal
            or req.district_id != self.log.district_id
            or req.kind == pb.SyncRequest.KIND_UNSPECIFIED
        ):
            self.stats.bad_requests += 1
            return
        self.stats.requests[terminal] = self.stats.requests.get(terminal, 0) + 1
        outcome = self.requests.put(terminal, req)
        if outcome == "coalesced":
            self.stats.coalesced_requests += 1
        elif outcome == "dropped":
            self.stats.dropped_requests += 1

    def _on_report(self, terminal: str, payload: bytes, token: tuple[int, int, int]) -> bool:
        """Check one TerminalReport and queue it for the writer (paho's thread, no
        SQLite); True when queued (the writer acknowledges it once stored)."""
        rep = pb.TerminalReport()
        try:
            rep.ParseFromString(payload)
            if (rep.kind == pb.TerminalReport.KIND_SURVEY_OFFER
                    and self.survey_offers is not None):
                bad = self.survey_offers.bad
                if self.survey_offers.on_report(terminal, rep, self.log.district_id,
                                                (*token, terminal, rep)):
                    return True
                if self.survey_offers.bad > bad:  # refused for good: stop sending it
                    self._send_receipt(terminal, rep)
                return False
            report = check_report(rep, terminal=terminal, district=self.log.district_id)
        except (DecodeError, ValueError) as exc:
            self.stats.bad_reports += 1
            log.warning("bad report from %s dropped: %s", terminal, exc)
            self._send_receipt(terminal, rep)  # refused for good: stop sending it
            return False
        verdict = self.report_gate.admit(report)
        if verdict == "rate":  # no receipt: the terminal sends it again later
            self.stats.limited_reports += 1
            return False
        if verdict == "citizen":
            self.stats.citizen_dup_reports += 1
            self._send_receipt(terminal, rep)
            return False
        token = (*token, terminal, rep)  # type: ignore[assignment]
        if not self.report_writer.offer(report, token):
            self.stats.dropped_reports += 1
            return False
        return True

    def _report_stored(self, token: object, verdict: str = "new") -> None:
        """The writer stored a report (district-reports thread): acknowledge it now.
        ``verdict`` 'rate' (the district-wide limit) or 'failed' (SQLite): no receipt,
        the terminal sends it again later; 'citizen': refused for good."""
        link, mid, qos, *rest = typing.cast(tuple[int, ...], token)
        if link == self._link and self._connected.is_set():
            self.client.ack(mid, qos)
        if verdict == "rate":
            self.stats.limited_reports += 1
        if verdict in ("rate", "failed"):  # not stored: let the terminal send it again
            return
        if verdict == "citizen":
            self.stats.citizen_dup_reports += 1
        if len(rest) == 2:
            self._send_receipt(typing.cast(str, rest[0]),
                               typing.cast(pb.TerminalReport, rest[1]))

    def _send_receipt(self, terminal: str, rep: pb.TerminalReport) -> None:
        """Tell the terminal its report was dealt with (stored, already stored, or refused
        for good): a signed ReportReceipt on its direct topic, QoS 1, not waited for (a
        lost one costs a re-sent report, which is stored once). Any thread."""
        if not rep.wants_receipt:
            return  # an older terminal: the broker's PUBACK is its delivery
        if not _is_id(terminal) or not _SESSION_ID.fullmatch(rep.session_id):
            return  # nothing the terminal could match (and nothing to echo back)
        body = pb.ReportReceipt(district_id=self.log.district_id, terminal_id=terminal,
                                kind=rep.kind, session_id=rep.session_id).SerializeToString()
        payload = seal(self.key, self.log.district_id, pb.PAYLOAD_KIND_REPORT_RECEIPT, body)
        info = self.client.publish(self.topics.direct(terminal), payload, qos=1)
        with self._acked_cv:  # its PUBACK may have come already (paho's thread)
            if info.mid in self._acked:
                self._acked.discard(info.mid)
            else:
                self._receipt_mids.add(info.mid)
        self.stats.receipts += 1

    # ---- life cycle ----------------------------------------------------------------

    def start(self) -> Publisher:
        # the district-wide limits: the gate's settings (a test may have replaced it)
        self.report_writer.limits = self.report_gate
        self.report_writer.start()
        if self.survey_offers is not None:
            self.survey_offers.on_stored = self._report_stored
            self.survey_offers.gate = self.report_gate
            self.survey_offers.start()
        start_client(self.client, self.broker)
        loops: list[tuple[str, Callable[[], None]]] = [
            ("district-lease", self._lease_loop),
            ("district-publish", self._publish_loop),
            ("district-serve", self._serve_loop),
        ]
        if self.calibration is not None:
            loops.append(("district-calibrate", self._calibrate_loop))
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
        self._lease_wake.set()
        for t in self._threads:
            t.join(timeout=30)
        self.lease.release()  # a standby takes over at its next tick, not after the TTL
        self.lease.close()
        self.report_writer.join(timeout=30)
        if self.survey_offers is not None:
            self.survey_offers.join(timeout=30)
        self.client.disconnect()
        stop_client(self.client)

    def run(self) -> None:
        """Run until the stop event is set (the CLI's long-running mode)."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.stop()
        if self._auth_error:
            raise AuthenticationError(self._auth_error)
        if self.fatal_error is not None:
            raise self.fatal_error

    def notify(self) -> None:
        """Wake the publisher now (in-process writers; others are found by polling)."""
        self._wake.set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ---- publishing ----------------------------------------------------------------

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # runs in paho's thread holding paho's lock: only touch our own condition here
        with self._acked_cv:
            if mid in self._receipt_mids:
                self._receipt_mids.discard(mid)
                return
            self._acked.add(mid)
            self._acked_cv.notify_all()

    def _send(self, topic: str, payload: bytes, *, retain: bool = False,
              fenced: bool = False) -> bool:
        """Publish QoS 1 and wait for the PUBACK; False if stopped first. ``fenced``
        (batches, manifest): only while this worker holds the lease, else LeaseLost.

        A message published while the link is down stays queued in paho and is sent
        again after the reconnect, so it is published exactly once here.
        """
        while not self._connected.wait(0.1):
            if self.stop_event.is_set():
                return False
        generation = self.lease.fence()[1] if fenced else 0  # the last check before sending
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = (WRITER_PROPERTY, f"{self._writer_tag}#{generation}")
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise SyncError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        with self._acked_cv:
            while info.mid not in self._acked:
                if self.stop_event.is_set():
                    return False
                self._acked_cv.wait(PUBACK_WAIT_S)
            self._acked.discard(info.mid)
        self.stats.bytes_sent += len(payload)
        return True

    def replay_from_seq(self, head: int) -> int:
        """Oldest change a replay may start from: the last ``replay_window`` changes."""
        return max(self.log.replay_from_seq, head - self.replay_window + 1, 1)

    def _calibrate_loop(self) -> None:
        """Re-derive the operating point when the gallery moved past the share (minutes
        at 100k citizens: never on the publishing thread)."""
        assert self.calibration is not None
        while not self.stop_event.is_set():
            try:
                before = calib.stored(self.log)
                after = calib.ensure_current(self.log, self.calibration,
                                             pack_threshold=self.pack_threshold)
                if after != before:
                    self._manifest_due.set()
                    self._wake.set()
            except (DistrictError, sqlite3.Error) as exc:
                log.error("calibration: %s", exc)
            self.stop_event.wait(self.calibration_check_s)

    def _point(self) -> calib.CalibratedPoint | None:
        try:
            return calib.stored(self.log)
        except DistrictError as exc:
            log.error("%s; the manifest goes out without an operating point", exc)
            return None

    def _manifest(self, head: int) -> bytes:
        point = self._point()
        body = pb.Manifest(
            district_id=self.log.district_id,
            epoch=self.log.epoch,
            head_seq=head,
            embedder_id=self.log.embedder_id,
            dim=self.log.dim,
            replay_from_seq=self.replay_from_seq(head),
            published_at_ms=int(time.time() * 1000),
            point=None if point is None else pb.OperatingPoint(
                threshold=point.threshold, margin=point.margin,
                confirm_threshold=point.confirm_threshold, target_fpir=point.target_fpir,
                predicted_fpir=point.predicted_fpir, gallery_size=point.gallery_size,
                derived_at_ms=point.derived_at_ms, method=point.method),
            survey=None if self.survey is None else survey_to_pb(self.survey),
            report_receipts=True,
        ).SerializeToString()
        return seal(self.key, self.log.district_id, pb.PAYLOAD_KIND_MANIFEST, body)

    def _batch(self, changes: list[bytes], origin: int, request_id: str = "") -> bytes:
        first = pb.Change.FromString(changes[0]).seq
        batch = pb.Batch(
            district_id=self.log.district_id,
            epoch=self.log.epoch,
            first_seq=first,
            last_seq=first + len(changes) - 1,
            embedder_id=self.log.embedder_id,
            dim=self.log.dim,
            origin=origin,  # type: ignore[arg-type]
            published_at_ms=int(time.time() * 1000),
            request_id=request_id,
        )
        for blob in changes:
            batch.changes.add().MergeFromString(blob)
        body = batch.SerializeToString()
        return seal(self.key, self.log.district_id, pb.PAYLOAD_KIND_BATCH, body)

    def _split(self, changes: list[bytes]) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        cur: list[bytes] = []
        size = 0
        for blob in changes:
            if cur and (len(cur) >= self.batch_max_changes or size + len(blob) > BATCH_MAX_BYTES):
                out.append(cur)
                cur, size = [], 0
            cur.append(blob)
            size += len(blob)
        if cur:
            out.append(cur)
        return out

    def _lease_loop(self) -> None:
        """Renew the lease (holder) or watch it (standby), every LEASE_RENEW_S; only a
        worker connected to the broker takes or keeps it."""
        was = False
        while not self.stop_event.is_set():
            held = self.lease.tick(eligible=self._connected.is_set())
            if held and not was:
                self._manifest_due.set()  # a new holder states the head at once
                self._wake.set()
            was = held
            self._lease_wake.wait(LEASE_RENEW_S)
            self._lease_wake.clear()

    def _publish_loop(self) -> None:
        state = {"last_manifest_t": 0.0, "manifest_head": -1, "manifest_epoch": -1,
                 "manifest_replay_from": -1, "manifest_point_at": -1}
        while not self.stop_event.is_set():
            try:
                if not self._publish_step(state):
                    return
            except LeaseLost as exc:  # a standby from now on; the lease thread says more
                log.info("publish: %s", exc)
            except (DistrictError, SyncError, sqlite3.Error) as exc:  # busy log, broker: retry
                log.error("publish: %s", exc)
                self.stop_event.wait(RETRY_S)

    def _publish_step(self, st: dict[str, float]) -> bool:
        """One round: send what is new, keep the manifest current; False when stopped."""
        last_manifest_t, manifest_head = st["last_manifest_t"], st["manifest_head"]
        self._wake.wait(POLL_INTERVAL_S)
        self._wake.clear()
        if not self._connected.is_set():
            return True
        if not self.lease.held():  # a standby: requests and reports only
            self._manifest_due.set()  # whenever it becomes the holder: the manifest first
            return True
        published = self.log.published_seq
        head = self.log.head_seq
        if published < head:
            last = min(head, published + self.batch_max_changes)
            for part in self._split(self.log.changes(published + 1, last)):
                if not self._send(self.topics.batch, self._batch(part, pb.BATCH_ORIGIN_LIVE),
                                  fenced=True):
                    return False
                published += len(part)
                self.log.mark_published(published, self.lease.fence())
                self.stats.batches += 1
                self.stats.changes += len(part)
            self._wake.set()  # look again at once: more may be waiting
        busy = published < head
        now = time.monotonic()
        # a new epoch or a compaction (district new-epoch / compact, maybe from another
        # process) changes what terminals must do: tell them at once
        epoch, replay_from = self.log.epoch, self.log.replay_from_seq
        point = self._point()  # a recalibration (maybe by `district calibration --recompute`)
        point_at = point.derived_at_ms if point is not None else 0
        changed = (epoch != st["manifest_epoch"] or replay_from != st["manifest_replay_from"]
                   or point_at != st["manifest_point_at"])
        if self._manifest_due.is_set() or changed or (
            manifest_head != published and (not busy or now - last_manifest_t > MANIFEST_INTERVAL_S)
        ) or now - last_manifest_t > self.manifest_refresh_s:
            self._manifest_due.clear()
            if not self._send(self.topics.manifest, self._manifest(published), retain=True,
                              fenced=True):
                return False
            st["manifest_head"], st["last_manifest_t"] = published, now
            st["manifest_epoch"], st["manifest_replay_from"] = epoch, replay_from
            st["manifest_point_at"] = point_at
        return True

    # ---- replays and snapshots --------------------------------------------------------

    def _bucket(self, terminal: str) -> ByteBucket:
        b = self._buckets.get(terminal)
        if b is None:
            now = time.monotonic()
            if len(self._buckets) >= REQUEST_TERMINALS_MAX:
                # a full bucket is the same as a fresh one: forget those
                for t in [t for t, v in self._buckets.items() if v.level(now) >= v.burst]:
                    del self._buckets[t]
            b = self._buckets[terminal] = ByteBucket(
                self.request_bytes_per_s, self.request_burst_bytes, now)
        return b

    def _wait_s(self, terminal: str) -> float:
        b = self._buckets.get(terminal)
        return 0.0 if b is None else b.wait_s(time.monotonic())

    def _serve_loop(self) -> None:
        while not self.stop_event.is_set():
            item = self.requests.take(self._wait_s, 0.1)
            if item is None:
                continue
            terminal, req, received = item
            if self._shared_budget(terminal, 0) <= 0:
                # another worker spent this terminal's budget: back in the queue, which
                # now waits for the refill (the local bucket holds the shared level)
                self.requests.done()
                self.requests.put(terminal, req)
                continue
            try:
                self._serve(terminal, req, received)
            except Exception as exc:  # keep serving other terminals; log the failure
                log.exception("serving %s for %s failed: %s", req.kind, terminal, exc)
            finally:
                self.requests.done()

    def _shared_budget(self, terminal: str, n: int) -> float:
        """Charge ``n`` bytes (0: read) to the terminal's byte budget and return its
        level. Named workers: the budget is in the log file, shared by the district's
        workers (N workers must not give a terminal N budgets; one SQLite write per
        message sent on its direct topic, each ~1 MiB at most), and the local bucket is
        set to it, so a replay stops as soon as the district-wide budget is spent. A lone
        publisher, or a log it cannot write, keeps to its own bucket."""
        b = self._bucket(terminal)
        if not self.shared_subscriptions:
            b.charge(n)
            return b.level(time.monotonic())
        try:
            level = self.log.charge_request_budget(
                terminal, n, rate=self.request_bytes_per_s, burst=self.request_burst_bytes)
        except DistrictError as exc:
            log.error("shared request budget of %s: %s", terminal, exc)
            b.charge(n)
            return b.level(time.monotonic())
        b.level(time.monotonic())
        b.tokens = level
        return level

    def _send_direct(self, terminal: str, payload: bytes) -> bool:
        """Send on one terminal's direct topic and charge its byte budget."""
        if not self._send(self.topics.direct(terminal), payload):
            return False
        self._shared_budget(terminal, len(payload))
        self.stats.direct_bytes[terminal] = self.stats.direct_bytes.get(terminal, 0) + len(payload)
        return True

    def _serve(self, terminal: str, req: pb.SyncRequest, received: float) -> None:
        published = self.log.published_seq
        if (
            req.kind == pb.SyncRequest.KIND_REPLAY
            and req.epoch == self.log.epoch
            and self.replay_from_seq(published) <= req.from_seq
        ):
            self.send_replay(terminal, req.from_seq, req.request_id)
            return
        # a snapshot: asked for, or the replay is not available (other epoch, too old)
        if req.accepts_file and self.snapshot_files is not None:
            self.send_snapshot_file(terminal, published)
            return
        if received <= self._snapshot_sent_at.get(terminal, -1.0):
            # asked again while we were busy (with other terminals or this very snapshot:
            # it re-asks when no chunk came for a while); the snapshot that ended since
            # answers it. Sending another would double the load when it is highest.
            return
        now = time.monotonic()
        prev = self.stats.per_terminal_snapshot.get(terminal)
        if prev is not None and now - prev < self.snapshot_min_interval_s:
            return
        self.stats.per_terminal_snapshot[terminal] = now
        self.send_snapshot(terminal, req.request_id)

    def send_snapshot_file(self, terminal: str, published: int) -> None:
        """Answer a snapshot request with the signed descriptor of the shared snapshot
        file (built now if the newest is of another epoch or older than the replay
        window); the terminal downloads it over HTTP(S) (district/snapshots.py)."""
        assert self.snapshot_files is not None
        min_last_seq = self.replay_from_seq(published) - 1
        payload = self.snapshot_files.descriptor_for(self.log, min_last_seq)
        if self._send_direct(terminal, payload):
            self.stats.snapshot_files += 1

    def send_replay(self, terminal: str, from_seq: int, request_id: str = "") -> None:
        """Send published changes from ``from_seq`` on to one terminal's direct topic,
        at most ``replay_max_bytes`` and while its byte budget lasts (it asks again)."""
        published = self.log.published_seq
        if from_seq > published:
            return  # nothing published yet beyond what it has; live batches follow
        self.stats.replays += 1
        first = max(1, from_seq)
        sent = 0
        while first <= published and not self.stop_event.is_set():
            last = min(published, first + self.batch_max_changes - 1)
            try:
                changes = self.log.changes(first, last)
            except DistrictError as exc:  # compacted meanwhile (district compact)
                log.info("replay for %s from %d not possible (%s): sending a snapshot",
                         terminal, first, exc)
                self.send_snapshot(terminal, request_id)
                return
            for part in self._split(changes):
                payload = self._batch(part, pb.BATCH_ORIGIN_REPLAY, request_id)
                if not self._send_direct(terminal, payload):
                    return
                sent += len(payload)
                if sent >= self.replay_max_bytes or self._wait_s(terminal) > 0:
                    if first + len(part) <= published:
                        self.stats.replays_truncated += 1
                        log.info("replay for %s cut at %d bytes (budget)", terminal, sent)
                    return
                first += len(part)

    def send_snapshot(self, terminal: str, request_id: str = "") -> None:
        """Stream the current state to one terminal's direct topic in signed chunks."""
        snap_id = uuid.uuid4().hex
        sent_bytes = 0
        with self.log.snapshot() as (last_seq, n_citizens, n_dossiers, rows):

            def chunk(index: int) -> pb.SnapshotChunk:
                return pb.SnapshotChunk(
                    district_id=self.log.district_id,
                    epoch=self.log.epoch,
                    embedder_id=self.log.embedder_id,
                    dim=self.log.dim,
                    snapshot_id=snap_id,
                    last_seq=last_seq,
                    index=index,
                    request_id=request_id,
                    citizen_count=n_citizens,
                    dossier_count=n_dossiers,
                )

            index = 0
            pending: list[bytes] = []
            size = 0

            def flush(last: bool) -> bool:
                nonlocal index, sent_bytes
                c = chunk(index)
                c.last = last
                for blob in pending:
                    c.changes.add().MergeFromString(blob)
                payload = seal(
                    self.key,
                    self.log.district_id,
                    pb.PAYLOAD_KIND_SNAPSHOT_CHUNK,
                    c.SerializeToString(),
                )
                if not self._send_direct(terminal, payload):
                    return False
                sent_bytes += len(payload)
                self.stats.snapshot_chunks += 1
                index += 1
                pending.clear()
                return True

            for blob in rows:
                if pending and size + len(blob) > self.chunk_max_bytes:
                    if not flush(False):
                        return
                    size = 0
                pending.append(blob)
                size += len(blob)
            if not flush(True):
                return
        self.stats.snapshots += 1
        self._snapshot_sent_at[terminal] = time.monotonic()
        self.fleet.snapshot_sent(terminal)
        self.stats.last_snapshot_bytes = sent_bytes
        log.info("snapshot %s to %s: %d chunks, %d bytes", snap_id, terminal, index, sent_bytes)


#: what a receipt echoes back as a session id (district/reports.py checks the same)
_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _is_id(value: str) -> bool:
    try:
        check_id(value, "terminal id")
    except ValueError:
        return False
    return True


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


__all__ = ["Publisher", "PublisherStats", "PROTOCOL_VERSION", "new_request_id"]
