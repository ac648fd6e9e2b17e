"""A terminal against an attacker on the broker (docs/security.md, "The broker"):
replayed old epochs, snapshot pulls that cannot succeed, oversized messages.

Real Mosquitto, real publisher, real GalleryStore; the attacker is a plain MQTT client
that republishes what it recorded (validly signed district messages)."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.store.gallery import GalleryStore
from proto import sync_pb2 as pb
from sync import wire
from sync.mqtt import MAX_PACKET_BYTES
from sync.topics import DEFAULT_PREFIX, Topics
from tests.broker import MosquittoBroker
from tests.sync_helpers import DISTRICT, EMBEDDER, add_citizens, wait_for
from tests.test_sync_broker import Rig

TOPICS = Topics(DEFAULT_PREFIX, DISTRICT)


class Spy:
    """A plain MQTT client: records what it sees under ``pattern``, publishes anything."""

    def __init__(self, broker: MosquittoBroker, name: str, pattern: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if pattern is not None:
            self.client.subscribe(pattern, qos=1)
            assert self.subscribed.wait(10), "spy subscription"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def body(payload: bytes) -> pb.Batch | pb.Manifest | pb.SnapshotChunk:
    return wire.parse_body(pb.Envelope.FromString(payload))


def test_recorded_old_epoch_replayed_after_new_epoch_and_restart_is_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Item 5: record the real publisher's signed manifest and snapshot of epoch 1, delete
    a citizen, `new-epoch`, restart the terminal, replay the recordings through the
    broker: the deleted citizen stays deleted and the store stays at epoch 2."""
    rig = Rig(tmp_path, broker)
    spy = Spy(broker, "recorder", f"{DEFAULT_PREFIX}/{DISTRICT}/gallery/#")
    try:
        ids = add_citizens(rig.dlog, 12)
        victim = ids[3]
        rig.start_publisher()
        # the live batches go out before the terminal exists: it takes a snapshot
        wait_for(lambda: rig.dlog.published_seq == rig.dlog.head_seq, what="published")
        store = rig.store("t-a")
        t = rig.terminal("t-a", store)
        wait_for(lambda: rig.converged(t), what="initial snapshot")
        # the store shows the snapshot a moment before the engine counts it
        wait_for(lambda: t.engine.snapshots_applied >= 1, what="snapshot counted")
        assert store.citizen(victim) is not None
        rig.dlog.delete_citizen(victim)
        wait_for(lambda: rig.converged(t) and store.citizen(victim) is None, what="delete")
        assert rig.dlog.new_epoch() == 2
        wait_for(lambda: store.epoch == 2 and rig.converged(t), timeout=60, what="epoch 2")
        old_manifest = next(p for p in spy.on(TOPICS.manifest) if body(p).epoch == 1)
        old_chunks = [p for p in spy.on(TOPICS.direct("t-a")) if body(p).epoch == 1]
        assert old_chunks and any(  # the recording does hold the victim
            c.citizen_upsert.citizen_id == victim
            for p in old_chunks for c in body(p).changes  # type: ignore[union-attr]
        )
        # the district goes quiet; the terminal restarts (store closed and reopened)
        t.stop()
        rig.terminals.remove(t)
        rig.publisher.stop()  # type: ignore[union-attr]
        rig.publisher = None
        path = store.path
        store.close()
        rig.stores.remove(store)
        # the attacker puts the old manifest back as the retained one, then the terminal
        # comes up and reads it at connect
        spy.publish(TOPICS.manifest, old_manifest, retain=True)
        store = GalleryStore.open(path, embedder_id=EMBEDDER, dim=rig.dlog.dim)
        rig.stores.append(store)
        t = rig.terminal("t-a", store)
        eng = t.engine
        wait_for(lambda: eng.district_epoch == 1 or eng.rejections[wire.ROLLBACK] >= 1,
                 what="the replayed manifest handled")
        for p in old_chunks:
            spy.publish(TOPICS.direct("t-a"), p)
        wait_for(lambda: eng.snapshots_applied >= 1
                 or eng.rejections[wire.ROLLBACK] >= 1 + len(old_chunks),
                 what="the replayed snapshot handled")
        assert store.citizen(victim) is None, "a deleted citizen came back"
        assert store.epoch == 2 and eng.snapshots_applied == 0
        # the manifest may come twice: queued in the terminal's persistent session while
        # it was down, and again as the retained message when it subscribes
        assert eng.rejections[wire.ROLLBACK] >= 1 + len(old_chunks)
    finally:
        spy.close()
        rig.close()


def signed_snapshot(key, dlog, *, epoch: int, sid: str) -> bytes:  # type: ignore[no-untyped-def]
    """The district's current state as one signed snapshot chunk."""
    with dlog.snapshot() as (last, nc, nd, rows):
        chunk = pb.SnapshotChunk(
            district_id=DISTRICT, epoch=epoch, embedder_id=EMBEDDER, dim=dlog.dim,
            snapshot_id=sid, last_seq=last, index=0, last=True,
            citizen_count=nc, dossier_count=nd,
        )
        chunk.changes.extend(pb.Change.FromString(b) for b in rows)
    return wire.seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_CHUNK, chunk.SerializeToString())


def test_epoch_announced_by_a_manifest_survives_a_restart(tmp_path: Path) -> None:
    """The floor is persisted: a terminal that saw a signed epoch-2 manifest, then
    restarted before installing epoch 2's snapshot, still refuses epoch 1 material."""
    from edge.syncclient.engine import SyncEngine
    from tests.sync_helpers import new_district, new_key
    from tests.test_sync_engine import manifest

    dlog = new_district(tmp_path / "d.sqlite", dim=8)
    add_citizens(dlog, 5)
    key = new_key()
    old_snapshot = signed_snapshot(key, dlog, epoch=1, sid="old")
    spool = tmp_path / "spool"

    def engine(store: GalleryStore) -> SyncEngine:
        return SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                          public_key=key.public_key(), spool_dir=spool)

    path = tmp_path / "store"
    with GalleryStore.open(path, embedder_id=EMBEDDER, dim=8) as store:
        eng = engine(store)
        eng.handle("manifest", manifest(key, dlog.head_seq, epoch=1))
        eng.handle("direct", old_snapshot)
        assert (store.epoch, store.last_seq) == (1, dlog.head_seq)
        eng.handle("manifest", manifest(key, dlog.head_seq, epoch=2))  # new-epoch
    with GalleryStore.open(path, embedder_id=EMBEDDER, dim=8) as store:  # restart
        eng = engine(store)
        assert eng.floor == (2, 0)
        eng.handle("manifest", manifest(key, dlog.head_seq, epoch=1))  # replayed
        eng.handle("direct", signed_snapshot(key, dlog, epoch=1, sid="replayed"))
        assert eng.rejections[wire.ROLLBACK] == 2 and store.epoch == 1
        assert eng.tick() == []  # and it does not go asking for epoch 1 either
        eng.handle("manifest", manifest(key, dlog.head_seq, epoch=2))
        (req,) = eng.tick()
        assert req.kind == pb.SyncRequest.KIND_SNAPSHOT
        eng.handle("direct", signed_snapshot(key, dlog, epoch=2, sid="new"))
        assert (store.epoch, eng.snapshots_applied) == (2, 1)


class FullDiskStore(GalleryStore):
    """The real store whose snapshot install fails as SQLite does on a full disk (the
    fault injected at the store boundary; everything else is the real store)."""

    def replace_all(self, changes, *, epoch, last_seq, embedder_id=None, graph=None):  # type: ignore[no-untyped-def]
        from core.errors import StoreError

        for _ in changes:  # the engine's spool is read, as a real install would
            pass
        raise StoreError("database or disk is full")


#: fixed observation window, after the third failure, for counting snapshot requests:
#: unfixed, the terminal asked again ~every snapshot_min_interval (0.5 s here), i.e. ~10
#: requests in this window
WINDOW_S = 6.0


def test_failing_snapshot_install_backs_off_pauses_and_says_why(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Item 6: a terminal whose store cannot install a snapshot stops asking after
    `snapshot_max_failures` (3 here) instead of one every few seconds for ever; the
    reason is in its retained state (fleet view) and in the doctor; a new district
    change allows exactly one more try."""
    from edge.ops import doctor
    from edge.syncclient.subscriber import TerminalSubscriber
    from tests.test_ops_doctor import ctx_for
    from tests.test_sync_broker import settings

    rig = Rig(tmp_path, broker)
    requests = Spy(broker, "spy-requests", TOPICS.request("t-a"))
    states = Spy(broker, "spy-state", TOPICS.state("t-a"))
    try:
        add_citizens(rig.dlog, 20)
        rig.start_publisher()
        store = FullDiskStore.open(tmp_path / "state" / "store", embedder_id=EMBEDDER,
                                   dim=rig.dlog.dim)
        rig.stores.append(store)
        t = TerminalSubscriber(
            store, settings(broker), district_id=DISTRICT, terminal_id="t-a",
            public_key=rig.key.public_key(), spool_dir=tmp_path / "state" / "sync-spool",
            gap_timeout_s=0.3, request_retry_s=0.5, state_interval_s=0.2,
            snapshot_retry_s=0.6, snapshot_retry_max_s=1.2, snapshot_max_failures=3,
        ).start()
        rig.terminals.append(t)
        stop = threading.Event()
        # three tries with back-off take ~3 s unloaded, longer on a loaded machine: wait
        # for them, then watch a window in which an unfixed terminal would ask again
        wait_for(lambda: t.engine.rejections["snapshot_failed"] >= 3, 60, "3 failed snapshots")
        stop.wait(WINDOW_S)  # the measurement window (not a synchronisation)
        sent = len(requests.on(TOPICS.request("t-a")))
        assert sent == 3, f"{sent} snapshot requests in {WINDOW_S} s"
        assert t.engine.rejections["snapshot_failed"] == 3

        def retained_error() -> str:
            got = states.on(TOPICS.state("t-a"))
            return pb.TerminalState.FromString(got[-1]).last_error if got else ""

        wait_for(lambda: "disk is full" in retained_error(), what="reason in the state")
        assert "paused" in retained_error()
        cfg = ctx_for(tmp_path, {"terminal": {"state_dir": str(tmp_path / "state"),
                                              "id": "t-a"}})
        ((_, finding),) = doctor.run_checks(cfg, ["sync"])
        assert finding.status is doctor.Status.FAIL
        assert "3 snapshot(s)" in finding.explanation and "disk is full" in finding.explanation
        # something changes at the district: a new manifest allows one more try only
        rig.dlog.update_dossier("HS-0000003", stage="mới")
        wait_for(lambda: t.engine.rejections["snapshot_failed"] == 4, what="one more try")
        stop.wait(2.0)  # and nothing after it (second, shorter window)
        assert len(requests.on(TOPICS.request("t-a"))) == 4
    finally:
        requests.close()
        states.close()
        rig.close()


def test_oversized_messages_never_reach_the_terminal(tmp_path: Path, broker: MosquittoBroker
                                                     ) -> None:
    """Item 7: the terminal announces MaximumPacketSize at CONNECT, so even a broker
    without the shipped limit does not send it a 6 MiB message (before: paho buffered
    it whole, then the engine counted it oversized)."""

    rig = Rig(tmp_path, broker)
    attacker = Spy(broker, "attacker")
    try:
        t = rig.terminal("t-a")
        wait_for(t.connected.is_set, what="terminal connected")
        attacker.publish(TOPICS.batch, bytes(6 << 20))
        attacker.publish(TOPICS.batch, b"marker: not an envelope")
        wait_for(lambda: t.engine.rejections[wire.MALFORMED] == 1, what="marker handled")
        assert t.engine.rejections[wire.OVERSIZED] == 0
        assert t.bytes_received < 1 << 20
    finally:
        attacker.close()
        rig.close()


def test_shipped_broker_config_refuses_oversized_publishes(tmp_path: Path) -> None:
    """The shipped max_packet_size (deploy/mosquitto/motcua-sync.conf): Mosquitto
    disconnects a client publishing a packet over it; a 4 MiB message (the terminal's
    limit) still passes. Only that line is taken (the file's logins are tested in
    test_sync_security.py)."""
    shipped = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "motcua-sync.conf"
    (line,) = [ln for ln in shipped.read_text().splitlines() if ln.startswith("max_packet_size")]
    assert line == f"max_packet_size {MAX_PACKET_BYTES}"
    conf = tmp_path / "limits.conf"
    conf.write_text(line + "\n")
    with MosquittoBroker(tmp_path / "b", include=conf) as b:
        spy = Spy(b, "spy", TOPICS.batch)
        sender = Spy(b, "sender")
        try:
            sender.publish(TOPICS.batch, bytes(4 << 20))
            wait_for(lambda: len(spy.on(TOPICS.batch)) == 1, what="4 MiB delivered")
            gone = threading.Event()
            sender.client.on_disconnect = lambda *_a: gone.set()
            sender.client.publish(TOPICS.batch, bytes(6 << 20), qos=1)
            assert gone.wait(10), "the broker kept a client publishing 6 MiB"
            sender.client.loop_stop()
            assert len(spy.on(TOPICS.batch)) == 1
        finally:
            spy.close()

