"""SyncEngine protocol logic without a broker (unit tests at the store boundary).

The store is the in-memory stand-in (tests/memstore.py); a fake clock drives the gap
timers. The broker tests cover the same paths end to end with the real store.
"""

from __future__ import annotations

from pathlib import Path

from edge.syncclient.engine import SyncEngine
from proto import sync_pb2 as pb
from sync.wire import seal
from tests.memstore import MemoryStore
from tests.sync_helpers import (
    DISTRICT,
    EMBEDDER,
    add_citizens,
    craft_batch,
    log_changes,
    new_district,
    new_key,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    dlog = new_district(tmp_path / "d.sqlite", dim=8)
    add_citizens(dlog, 5)
    key = new_key()
    store = MemoryStore(embedder_id=EMBEDDER, dim=8)
    clock = Clock()
    eng = SyncEngine(
        store,
        district_id=DISTRICT,
        terminal_id="t1",
        public_key=key.public_key(),
        spool_dir=tmp_path / "spool",  # created on first use
        gap_timeout_s=1.0,
        request_retry_s=2.0,
        clock=clock,
    )
    return dlog, key, store, clock, eng


def manifest(key, head: int, epoch: int = 1, replay_from: int = 1) -> bytes:  # type: ignore[no-untyped-def]
    m = pb.Manifest(
        district_id=DISTRICT,
        epoch=epoch,
        head_seq=head,
        embedder_id=EMBEDDER,
        dim=8,
        replay_from_seq=replay_from,
    )
    return seal(key, DISTRICT, pb.PAYLOAD_KIND_MANIFEST, m.SerializeToString())


def test_gap_replay_then_snapshot_after_unanswered_replays(tmp_path: Path) -> None:
    dlog, key, store, clock, eng = setup(tmp_path)
    eng.handle("batch", craft_batch(key, log_changes(dlog, 1, 4), dim=8))
    assert store.last_seq == 4
    eng.handle("batch", craft_batch(key, log_changes(dlog, 6, 6), dim=8))  # 5 is missing
    assert eng.tick() == [] and store.last_seq == 4
    clock.t = 1.5
    (req,) = eng.tick()
    assert req.kind == pb.SyncRequest.KIND_REPLAY and req.from_seq == 5
    kinds = []
    for _ in range(6):
        clock.t += 100
        kinds += [r.kind for r in eng.tick()]
    assert kinds[:2] == [pb.SyncRequest.KIND_REPLAY] * 2
    assert kinds[2] == pb.SyncRequest.KIND_SNAPSHOT
    # the replay finally arrives: 5 applied, then the buffered 6
    eng.handle("direct", craft_batch(key, log_changes(dlog, 5, 5), dim=8))
    assert store.last_seq == 6 and eng.tick() == []


def test_new_epoch_asks_for_snapshot_and_bad_snapshot_changes_nothing(tmp_path: Path) -> None:
    dlog, key, store, clock, eng = setup(tmp_path)
    eng.handle("batch", craft_batch(key, log_changes(dlog, 1, 10), dim=8))
    before = store.content_hash()
    eng.handle("batch", craft_batch(key, log_changes(dlog, 1, 2), epoch=2, dim=8))
    assert eng.rejections["epoch"] == 1
    (req,) = eng.tick()
    assert req.kind == pb.SyncRequest.KIND_SNAPSHOT
    # a snapshot whose counts do not match its chunks: refused whole
    chunk = pb.SnapshotChunk(
        district_id=DISTRICT,
        epoch=2,
        embedder_id=EMBEDDER,
        dim=8,
        snapshot_id="s1",
        last_seq=3,
        index=0,
        last=True,
        citizen_count=7,
        dossier_count=0,
    )
    for c in log_changes(dlog, 1, 3):
        if c.HasField("citizen_upsert"):
            chunk.changes.append(c)
    eng.handle(
        "direct", seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_CHUNK, chunk.SerializeToString())
    )
    assert eng.rejections["malformed"] == 1 and store.content_hash() == before
    assert list((tmp_path / "spool").glob("snapshot-*")) == []  # the spool is removed
    # the right counts: installed at epoch 2
    chunk.snapshot_id, chunk.citizen_count = "s2", 2
    eng.handle(
        "direct", seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_CHUNK, chunk.SerializeToString())
    )
    assert (store.epoch, store.last_seq, store.citizen_count) == (2, 3, 2)
    assert eng.snapshots_applied == 1 and eng.tick() == []


def test_fresh_terminal_asks_for_snapshot_from_manifest(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    stale = tmp_path / "spool" / "snapshot-t1-crashed.spool"
    other = tmp_path / "spool" / "snapshot-t2-busy.spool"  # another terminal's: kept
    other.write_bytes(b"x")
    stale.write_bytes(b"half a snapshot from before a power cut")
    dlog, key, store, clock, eng = setup(tmp_path)
    assert not stale.exists() and other.exists()
    eng.handle("manifest", manifest(key, dlog.head_seq))
    (req,) = eng.tick()
    assert req.kind == pb.SyncRequest.KIND_SNAPSHOT and req.terminal_id == "t1"
    # an older manifest replayed later does not move the known head back
    eng.handle("manifest", manifest(key, 2))
    assert eng.district_head == dlog.head_seq


def test_removed_citizens_hook_runs_after_deletes_and_snapshots(tmp_path: Path) -> None:
    """The terminal redacts deleted citizens' ids from its audit log through this hook."""
    dlog, key, store, clock, eng = setup(tmp_path)
    calls: list[int] = []
    eng.on_citizens_removed = lambda: calls.append(store.last_seq)
    eng.handle("batch", craft_batch(key, log_changes(dlog, 1, 10), dim=8))
    assert calls == []  # upserts only
    dlog.delete_citizen("c0000001")
    eng.handle("batch", craft_batch(key, log_changes(dlog, 11, 11), dim=8))
    assert calls == [11]

    def boom() -> None:
        raise OSError("disk full")

    eng.on_citizens_removed = boom  # a failing redaction does not stop the sync
    dlog.delete_citizen("c0000002")
    eng.handle("batch", craft_batch(key, log_changes(dlog, 12, 12), dim=8))
    assert store.last_seq == 12 and eng.last_error == ""
