"""The district's fleet view: every terminal's retained state and status, one table."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError

from core.errors import AuthenticationError, SyncError
from district.untrusted import shown
from proto import sync_pb2 as pb
from sync.mqtt import BrokerSettings, is_auth_failure, make_client
from sync.topics import Topics

#: stop collecting once no retained message arrived for this long after the broker
#: acknowledged the subscription (the retained messages follow the SUBACK in a burst)
QUIET_S = 0.3


@dataclasses.dataclass
class FleetRow:
    terminal_id: str
    online: bool | None = None
    applied_seq: int | None = None
    lag: int | None = None
    gallery_size: int | None = None
    model: str = ""
    version: str = ""
    last_error: str = ""
    rejections: int = 0
    updated_s_ago: float | None = None
    #: the log epoch the terminal's gallery belongs to (None: no state seen)
    epoch: int | None = None
    syncing: bool = False


def collect(
    broker: BrokerSettings, topics: Topics, *, timeout_s: float = 3.0
) -> tuple[int | None, list[FleetRow]]:
    """(district head from the manifest, rows sorted by terminal id)."""
    rows: dict[str, FleetRow] = {}
    head: list[int] = []
    last_msg = [time.monotonic()]
    #: the quiet period counts from the SUBACK: connecting and subscribing can take longer
    #: than QUIET_S on a loaded machine, and stopping before it returned an empty fleet
    subscribed = threading.Event()
    done = threading.Event()
    failure: list[str] = []
    # a throw-away id: with the shipped broker config the broker uses the login instead,
    # so the fleet view needs its own login (fleet-<district>, motcua-sync.acl)
    client = make_client(f"motcua-fleet-{uuid.uuid4().hex[:8]}", broker)

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            failure.append(str(rc))
            if is_auth_failure(rc):  # type: ignore[arg-type]
                failure.append("auth")
            done.set()
            return
        c.subscribe([(topics.all_states, 1), (topics.all_statuses, 1), (topics.manifest, 1)])

    def on_subscribe(*_a: object) -> None:
        last_msg[0] = time.monotonic()
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        last_msg[0] = time.monotonic()
        if msg.topic == topics.manifest:
            env = pb.Envelope()
            m = pb.Manifest()
            try:
                env.ParseFromString(msg.payload)
                m.ParseFromString(env.body)
            except DecodeError:
                return
            head.append(m.head_seq)
            return
        tid = topics.terminal_of(msg.topic)
        if tid is None:
            return
        row = rows.setdefault(tid, FleetRow(tid))
        if msg.topic.endswith("/status"):
            row.online = msg.payload == b"online"
        else:
            st = pb.TerminalState()
            try:
                st.ParseFromString(msg.payload)
            except DecodeError:
                row.last_error = "unreadable state message"
                return
            row.applied_seq = st.applied_seq
            row.epoch = st.epoch
            row.syncing = st.syncing
            row.gallery_size = st.gallery_size
            row.model, row.version, row.last_error = st.model, st.version, st.last_error
            # duplicates are normal (at-least-once delivery): not shown as refused
            row.rejections = sum(v for k, v in st.rejections.items() if k != "duplicate")
            row.updated_s_ago = max(0.0, time.time() - st.updated_at_ms / 1000)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except OSError as exc:
        raise SyncError(f"cannot reach broker {broker.host}:{broker.port}: {exc}") from None
    start = time.monotonic()
    try:
        # the network loop runs in this thread: a process stalled mid-burst (a loaded
        # machine) finds the rest of the burst waiting in the socket when it resumes,
        # instead of a watcher thread seeing a "quiet" gap before paho's thread read it
        while not done.is_set() and time.monotonic() - start < timeout_s:
            client.loop(timeout=0.05)
            if subscribed.is_set() and time.monotonic() - last_msg[0] > QUIET_S:
                break
    finally:
        client.disconnect()
    if failure:
        err = f"broker refused the fleet view: {failure[0]}"
        raise AuthenticationError(err) if "auth" in failure else SyncError(err)
    district_head = max(head) if head else None
    for row in rows.values():
        if district_head is not None and row.applied_seq is not None:
            row.lag = max(0, district_head - row.applied_seq)
    return district_head, sorted(rows.values(), key=lambda r: r.terminal_id)


#: terminals the live fleet view remembers; a district has tens to hundreds, and an id
#: beyond this many (a broker flooded with forged state topics) is not shown
FLEET_MAX_TERMINALS = 5000
#: largest state message read; a real one is ~200 bytes (strings bounded by the terminal)
STATE_MAX_BYTES = 16 * 1024


class FleetCache:
    """The fleet as the district service's own MQTT connection sees it: retained states
    and statuses, updated from paho's thread (:meth:`update`), read by the console.

    Everything stored came from a terminal or the broker: untrusted, shown escaped."""

    def __init__(self, *, max_terminals: int = FLEET_MAX_TERMINALS) -> None:
        self._rows: dict[str, FleetRow] = {}
        self._updated_at: dict[str, float] = {}
        self._snapshots: dict[str, float] = {}
        self._lock = threading.Lock()
        self.max_terminals = max_terminals
        self.refused = 0

    def update(self, terminal: str, *, status: bytes | None = None,
               state: bytes | None = None) -> None:
        """Record a terminal's status ("online"/"offline") or state message."""
        with self._lock:
            row = self._rows.get(terminal)
            if row is None:
                if len(self._rows) >= self.max_terminals:
                    self.refused += 1
                    return
                row = self._rows[terminal] = FleetRow(terminal)
            if status is not None:
                row.online = status == b"online"
            if state is None:
                return
            st = pb.TerminalState()
            try:
                if len(state) > STATE_MAX_BYTES:
                    raise DecodeError("too large")
                st.ParseFromString(state)
            except DecodeError:
                row.last_error = "unreadable state message"
                return
            row.applied_seq, row.epoch, row.syncing = st.applied_seq, st.epoch, st.syncing
            row.gallery_size = st.gallery_size
            row.model, row.version = st.model[:200], st.version[:200]
            row.last_error = st.last_error[:1000]
            row.rejections = sum(v for k, v in st.rejections.items() if k != "duplicate")
            self._updated_at[terminal] = st.updated_at_ms / 1000

    def snapshot_sent(self, terminal: str, at: float | None = None) -> None:
        """The publisher finished sending this terminal a snapshot (wall clock)."""
        with self._lock:
            if terminal in self._snapshots or len(self._snapshots) < self.max_terminals:
                self._snapshots[terminal] = time.time() if at is None else at

    def last_snapshot(self, terminal: str) -> float | None:
        with self._lock:
            return self._snapshots.get(terminal)

    def rows(self, head: int) -> list[FleetRow]:
        """Copies of the rows, sorted by terminal id, lag computed against ``head``."""
        now = time.time()
        with self._lock:
            out = [dataclasses.replace(r) for r in self._rows.values()]
            updated = dict(self._updated_at)
        for r in out:
            if r.applied_seq is not None:
                r.lag = max(0, head - r.applied_seq)
            if r.terminal_id in updated:
                r.updated_s_ago = max(0.0, now - updated[r.terminal_id])
        return sorted(out, key=lambda r: r.terminal_id)


def format_table(head: int | None, rows: list[FleetRow]) -> str:
    """The fleet as a text table; every text a terminal sent goes through ``shown``."""
    cols = [
        "terminal",
        "status",
        "applied",
        "lag",
        "gallery",
        "model",
        "version",
        "rejected",
        "last error",
    ]
    lines = [cols]
    for r in rows:
        status = {True: "online", False: "offline", None: "?"}[r.online]
        lines.append(
            [
                shown(r.terminal_id),
                status,
                "-" if r.applied_seq is None else str(r.applied_seq),
                "-" if r.lag is None else str(r.lag),
                "-" if r.gallery_size is None else str(r.gallery_size),
                shown(r.model) or "-",
                shown(r.version) or "-",
                str(r.rejections),
                shown(r.last_error),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    out = [f"district head: {'-' if head is None else head}, terminals: {len(rows)}"]
    for line in lines:
        out.append("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out)
