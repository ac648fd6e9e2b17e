"""Gallery store behaviour: order, refusals, upsert/replace/delete, resize, rebuild,
checkpoints, snapshots, content hash, full disk. Synthetic 512-d embeddings."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from store_helpers import DIM, EMBEDDER, FACES, cid, dossier, fill, open_store, upsert

from core.errors import ChangeOrderError, EmbedderMismatchError, StoreError
from edge.config import ConfigError, StoreSettings, config_from_dict
from edge.store import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
    GalleryStore,
    gallery_hash,
)
from edge.store.gallery import DB_NAME, unit_rows


def test_open_refuses_other_embedder_and_dimension(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 5)
    with pytest.raises(EmbedderMismatchError, match="other-embedder"):
        GalleryStore.open(tmp_path, embedder_id="other-embedder", dim=DIM)
    with pytest.raises(EmbedderMismatchError, match="dimension"):
        GalleryStore.open(tmp_path, embedder_id=EMBEDDER, dim=128)
    with open_store(tmp_path) as s:  # still intact
        assert s.citizen_count == 5 and s.last_seq == 5


def test_settings_are_validated_and_in_config() -> None:
    assert config_from_dict({"store": {"ef": 80}}).store.ef == 80
    with pytest.raises(ConfigError, match="store.growth_factor"):
        config_from_dict({"store": {"growth_factor": 1.0}})
    with pytest.raises(ConfigError, match="store.checkpoint_quiet_s"):
        config_from_dict({"store": {"checkpoint_quiet_s": -1}})
    with pytest.raises(ConfigError, match="store.checkpoint_max_defer"):
        config_from_dict({"store": {"checkpoint_max_defer": 0.5}})
    with pytest.raises(ConfigError, match="store.M"):
        GalleryStore.open(Path("/nonexistent-never-created"), embedder_id="e", dim=4,
                          settings=StoreSettings(M=0))


def test_change_order_gap_duplicate_and_epoch(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.apply([upsert(1, 1), upsert(2, 2)], epoch=3)  # empty gallery adopts epoch 3
        assert (s.epoch, s.last_seq) == (3, 2)
        before = s.content_hash()
        with pytest.raises(ChangeOrderError, match="gap"):
            s.apply([upsert(4, 4)], epoch=3)
        with pytest.raises(ChangeOrderError, match="duplicate"):
            s.apply([upsert(2, 2)], epoch=3)
        with pytest.raises(ChangeOrderError, match="expected"):  # not consecutive inside
            s.apply([upsert(3, 3), upsert(5, 5)], epoch=3)
        with pytest.raises(ChangeOrderError, match="snapshot"):
            s.apply([upsert(3, 3)], epoch=4)
        with pytest.raises(EmbedderMismatchError):
            s.apply([upsert(3, 3)], epoch=3, embedder_id="other")
        assert s.content_hash() == before and s.last_seq == 2
        s.apply([], epoch=3)  # empty batch: nothing to do
        s.apply([upsert(3, 3)], epoch=3)
        assert s.last_seq == 3


def _bad_upserts() -> list[tuple[str, CitizenUpsert]]:
    good = FACES.enrolled(9, 2)
    nan = good.copy()
    nan[0, 3] = np.nan
    return [
        ("dimension", CitizenUpsert(3, "x", "n", b"", b"", np.ones((1, DIM - 1), np.float32))),
        ("NaN", CitizenUpsert(3, "x", "n", b"", b"", nan)),
        ("infinity", CitizenUpsert(3, "x", "n", b"", b"", np.full((1, DIM), np.inf, np.float32))),
        ("zero norm", CitizenUpsert(3, "x", "n", b"", b"", np.zeros((1, DIM), np.float32))),
        ("floats", CitizenUpsert(3, "x", "n", b"", b"", np.ones((1, DIM), np.int32))),
        ("shape", CitizenUpsert(3, "x", "n", b"", b"", good[0])),
        ("empty", CitizenUpsert(3, "", "n", b"", b"", good)),
        ("at most", CitizenUpsert(3, "x", "n", b"", b"", np.ones((17, DIM), np.float32))),
        ("bytes", CitizenUpsert(3, "x", "n", "pin", b"", good)),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(("why", "bad"), _bad_upserts(), ids=[b[0] for b in _bad_upserts()])
def test_bad_change_refuses_whole_batch(tmp_path: Path, why: str, bad: CitizenUpsert) -> None:
    """A good change followed by a bad one in one batch: the good one is not applied."""
    with open_store(tmp_path) as s:
        fill(s, 2)
        before = s.content_hash()
        with pytest.raises(StoreError, match=why):
            s.apply([CitizenDelete(3, cid(0)), upsert(4, 5), bad.__class__(
                5, bad.citizen_id, bad.masked_name, bad.pin_hash, bad.pin_salt, bad.embeddings
            )], epoch=1)
        assert s.content_hash() == before and s.last_seq == 2
        assert s.search(FACES.query(0))[0].citizen_id == cid(0)
        s.verify_index()


def test_bad_dossier_refused(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 1)
        d = dossier(2, "HS-1", 0).dossier
        import dataclasses

        for field, value, why in [("received_on", "2/11/2026", "YYYY-MM-DD"),
                                  ("status", "done", "DossierStatus"),
                                  ("code", "", "empty")]:
            bad = dataclasses.replace(d, **{field: value})  # type: ignore[arg-type]
            with pytest.raises(StoreError, match=why):
                s.apply([dossier(2, "ok", 0), type(dossier(2, "x", 0))(3, bad)], epoch=1)
        assert s.dossiers(cid(0)) == [] and s.last_seq == 1


def test_upsert_replace_delete_readd(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 50)
        seq = s.last_seq
        s.apply([dossier(seq + 1, "HS-001", 3), dossier(seq + 2, "HS-002", 3,
                                                         DossierStatus.RESULT_READY),
                 dossier(seq + 3, "HS-003", 4)], epoch=1)
        rec = s.citizen(cid(3))
        assert rec is not None and rec.masked_name.startswith("Nguyễn")
        assert rec.embedding_count == FACES.enrolled_count(3, 3)
        assert [d.code for d in s.dossiers(cid(3))] == ["HS-001", "HS-002"]
        assert s.dossiers(cid(3))[1].status.label_vi == "Đã có kết quả"

        # replace citizen 3's embeddings by those of identity 1000 (re-enrolment)
        seq = s.last_seq
        new = FACES.enrolled(1000, 1)
        s.apply([CitizenUpsert(seq + 1, cid(3), "Trần T. ***", b"h2", b"s2", new)], epoch=1)
        assert s.citizen(cid(3)).embedding_count == 1  # type: ignore[union-attr]
        assert s.citizen(cid(3)).masked_name == "Trần T. ***"  # type: ignore[union-attr]
        assert s.search(FACES.query(1000))[0].citizen_id == cid(3)
        assert cid(3) not in [m.citizen_id for m in s.search(FACES.query(3), k=5)
                              if m.score > 0.5]
        assert s.citizen_count == 50

        # delete: never returned again, dossiers gone, other dossier kept
        s.apply([CitizenDelete(seq + 2, cid(3)), DossierDelete(seq + 3, "HS-003")], epoch=1)
        assert s.citizen(cid(3)) is None and s.dossiers(cid(3)) == []
        assert s.dossiers(cid(4)) == []
        for q in (FACES.query(1000), FACES.enrolled(1000, 1)[0]):
            assert cid(3) not in [m.citizen_id for m in s.search(q, k=50)]
        assert s.citizen_count == 49
        # deleting something unknown is a no-op but still consumes its change number
        s.apply([CitizenDelete(seq + 4, "nobody"), DossierDelete(seq + 5, "nope")], epoch=1)
        assert s.last_seq == seq + 5
        # re-add after delete
        s.apply([upsert(seq + 6, 3)], epoch=1)
        assert s.search(FACES.query(3))[0].citizen_id == cid(3)
        s.verify_index()
    with open_store(tmp_path) as s:  # and all of it after a restart
        s.verify_index()
        assert s.search(FACES.query(3))[0].citizen_id == cid(3)
        assert s.citizen_count == 50


def test_same_batch_add_then_delete_and_double_upsert(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.apply([upsert(1, 1), upsert(2, 2), CitizenDelete(3, cid(1)), upsert(4, 2, 1, 50)],
                epoch=1)
        assert s.citizen(cid(1)) is None
        assert s.citizen(cid(2)).embedding_count == 1  # type: ignore[union-attr]
        assert s.index_stats()["live"] == 1
        s.verify_index()


def test_search_distinct_citizens_and_batch_queries(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        assert s.search(FACES.query(0)) == []  # empty gallery
        fill(s, 200, most=3)
        res = s.search(FACES.query(10), k=5)
        assert len(res) == 5 and len({m.citizen_id for m in res}) == 5
        assert res[0].citizen_id == cid(10)
        assert all(a.score >= b.score for a, b in zip(res, res[1:], strict=False))
        # several frames of one person: mean over frames of the best stored match
        frames = np.stack([FACES.query(10, j) for j in range(5)])
        multi = s.search(frames, k=3)
        assert multi[0].citizen_id == cid(10)
        stored = FACES.enrolled(10, 3)
        expect = float((frames @ stored.T).max(axis=1).mean())
        assert multi[0].score == pytest.approx(expect, abs=1e-5)
        one = s.search(frames[0], k=1)[0]
        assert one.score == pytest.approx(float((stored @ frames[0]).max()), abs=1e-5)
        assert len(s.search(FACES.query(1), k=1000)) == 200
        for bad, why in [(np.ones(DIM - 1), "dimension"), (np.zeros(DIM), "zero norm"),
                         (np.full(DIM, np.nan), "NaN")]:
            with pytest.raises(StoreError, match=why):
                s.search(bad)
        with pytest.raises(StoreError, match="k must"):
            s.search(FACES.query(1), k=0)


@pytest.mark.parametrize("reuse", [False, True], ids=["append", "reuse-slots"])
def test_resize_past_capacity_and_rebuild(tmp_path: Path, reuse: bool) -> None:
    with open_store(tmp_path, initial_capacity=16, rebuild_min_slots=50,
                    rebuild_deleted_share=0.3, reuse_deleted_slots=reuse) as s:
        fill(s, 120, batch=7, most=1)
        st = s.index_stats()
        assert st["live"] == 120 and st["capacity"] >= 120 and st["capacity"] < 16 * 1.5 ** 9
        s.verify_index()
        # 30 of 120 slots deleted: 0.25, under the 0.3 bound, so no rebuild yet
        seq = s.last_seq
        s.apply([CitizenDelete(seq + 1 + j, cid(j)) for j in range(30)], epoch=1)
        assert s.index_stats()["deleted"] == 30
        gen = s.index_stats()["generation"]
        s.apply([upsert(s.last_seq + 1 + j, 500 + j, 1) for j in range(10)], epoch=1)
        st = s.index_stats()
        if reuse:  # adds refill deleted slots (replace_deleted): slots do not grow
            assert (st["deleted"], st["slots"]) == (20, 120)
        else:  # adds append; deleted slots wait for the rebuild
            assert (st["deleted"], st["slots"]) == (30, 130)
        assert st["generation"] == gen
        # more deletes pass the bound: rebuilt, no deleted slots left
        seq = s.last_seq
        s.apply([CitizenDelete(seq + 1 + j, cid(30 + j)) for j in range(30)], epoch=1)
        st = s.index_stats()
        assert st["deleted"] == 0 and st["live"] == 70 and st["generation"] == gen + 1
        s.verify_index()
        for i in range(60, 120, 7):
            assert s.search(FACES.query(i))[0].citizen_id == cid(i)
        s.rebuild()  # explicit rebuild keeps content
        s.verify_index()


def _vector_bytes_in(path: Path, vec: np.ndarray) -> bool:
    blob = path.read_bytes() if path.exists() else b""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes() in blob


def test_deletion_really_removes_from_index_db_and_checkpoints(tmp_path: Path) -> None:
    """After a delete + checkpoint the vector bytes are nowhere in the store directory."""
    with open_store(tmp_path) as s:
        fill(s, 40, most=1)
        s.checkpoint()
        raw = FACES.enrolled(7, 1)[0]  # as sent (in SQLite)
        indexed = unit_rows(raw, DIM, "t")[0]  # as normalised in the index
        ckpt = max((tmp_path / "checkpoints").glob("index-*.hnsw"))
        assert _vector_bytes_in(ckpt, indexed)  # the probe can see it
        assert _vector_bytes_in(tmp_path / DB_NAME, raw) or _vector_bytes_in(
            tmp_path / (DB_NAME + "-wal"), raw)
        s.apply([CitizenDelete(s.last_seq + 1, cid(7))], epoch=1)  # no add to reuse the slot
        s.checkpoint()
        for f in tmp_path.rglob("*"):
            if f.is_file():
                for vec in (raw, indexed):
                    assert not _vector_bytes_in(f, vec), f"deleted vector still in {f.name}"


def test_deletion_is_visible_before_the_vector_scrub(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply`` of a deletion returns once the citizen is unmatchable (SQLite row gone,
    index labels marked deleted, the store at the batch's change number), without
    waiting for the slow part: overwriting the vector with zeros, which hnswlib does by
    re-linking its neighbours (~0.1 s per vector at 10,000 x 512-d; docs/scale.md
    "Delete path"). The store-scrub thread does that right after, and a checkpoint
    waits for it: no checkpoint file holds the vector."""
    from edge.store import upkeep

    seen: list[tuple[bool, bool, bool, int]] = []
    started, go = threading.Event(), threading.Event()
    real = upkeep.scrub_removed

    def spy(index: object, st: object) -> None:
        labels = [*st.scrub, *st.scrub_hidden]  # type: ignore[attr-defined]
        seen.append((any(index.is_live(x) for x in labels),  # type: ignore[attr-defined]
                     cid(4) in s._mapping.citizen_labels,  # noqa: SLF001
                     s.citizen(cid(4)) is not None, s.last_seq))
        started.set()
        assert go.wait(30), "apply did not return while the scrub waited"
        real(index, st)  # type: ignore[arg-type]

    monkeypatch.setattr(upkeep, "scrub_removed", spy)
    with open_store(tmp_path, checkpoint_every=10_000) as s:
        fill(s, 30, most=1)
        vec = unit_rows(FACES.samples(4, [0])[0], DIM, "t")[0]
        seq = s.last_seq + 1
        s.apply([CitizenDelete(seq, cid(4))], epoch=1)  # returns while the scrub waits
        go.set()
        assert started.wait(30)
        assert seen == [(False, False, False, seq)], seen
        s.checkpoint(force=True)  # after the scrub (the writer lock), then saved
        assert cid(4) not in [m.citizen_id for m in s.search(vec, 10)]
    for f in (tmp_path / "checkpoints").glob("index-*.hnsw"):
        assert not _vector_bytes_in(f, vec), f"deleted vector still in {f.name}"


@pytest.mark.parametrize("crash", [False, True], ids=["running", "crash-restart"])
def test_reenrolled_then_deleted_citizen_leaves_no_vector(tmp_path: Path, crash: bool) -> None:
    """Re-enrolment only hides the old vectors (the citizen stays); deleting the citizen
    later must scrub those too, also when the store restarts from a checkpoint written
    between the two (crash before the next checkpoint)."""
    with open_store(tmp_path, checkpoint_every=10_000) as s:
        fill(s, 30, most=1)
        old = FACES.samples(4, [0])[0]
        s.apply([upsert(s.last_seq + 1, 4, 1, 20)], epoch=1)  # re-enrol: old one hidden
        s.checkpoint()  # the checkpoint holds the hidden old vector
        ckpt = max((tmp_path / "checkpoints").glob("index-*.hnsw"))
        assert _vector_bytes_in(ckpt, unit_rows(old, DIM, "t")[0])
        s.apply([CitizenDelete(s.last_seq + 1, cid(4))], epoch=1)
        if crash:
            s._abandon()  # noqa: SLF001 - like a crash: no closing checkpoint
    with open_store(tmp_path) as s:
        s.verify_index()
        assert s.citizen(cid(4)) is None
        s.checkpoint()
    new = FACES.samples(4, [20])[0]
    for f in tmp_path.rglob("*"):
        if f.is_file():
            for vec in (old, new):
                for form in (vec, unit_rows(vec, DIM, "t")[0]):
                    assert not _vector_bytes_in(f, form), f"vector still in {f.name}"


def test_checkpoint_then_replay_after_it(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    with open_store(tmp_path, checkpoint_every=10_000) as s:
        fill(s, 60)
        s.checkpoint()
        seq = s.last_seq
        s.apply([CitizenDelete(seq + 1, cid(1)), upsert(seq + 2, 70), upsert(seq + 3, 2, 1, 9)],
                epoch=1)
        want = s.content_hash()
        # simulate a crash: no close(), so no checkpoint covering the last batch
        s._abandon()  # noqa: SLF001 - like a crash: no closing checkpoint
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path) as s:
        assert "loaded index checkpoint" in caplog.text and f"s{seq:012d}" in caplog.text
        s.verify_index()
        assert s.content_hash() == want
        assert s.search(FACES.query(70))[0].citizen_id == cid(70)
        assert cid(1) not in [m.citizen_id for m in s.search(FACES.query(1), k=20)]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_is_skipped(tmp_path: Path, damage: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with open_store(tmp_path, checkpoint_every=10_000) as s:
        fill(s, 30)
        s.checkpoint()
        fill(s, 10)  # citizens 0..9 again (replaces), newer checkpoint at close
        older_seq = 30
    ckpts = sorted((tmp_path / "checkpoints").glob("index-*.hnsw"))
    assert len(ckpts) == 2
    newest = ckpts[-1]
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed in the middle (e.g. a link)
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    else:
        newest.unlink()
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path) as s:
        assert f"skipping index checkpoint {newest.name}" in caplog.text
        assert f"s{older_seq:012d}.hnsw (change {older_seq})" in caplog.text
        s.verify_index()
        assert s.search(FACES.query(5))[0].citizen_id == cid(5)


def test_no_usable_checkpoint_rebuilds(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    with open_store(tmp_path) as s:
        fill(s, 30)
    for f in (tmp_path / "checkpoints").glob("index-*.hnsw"):
        f.write_bytes(b"\x00" * 100)  # crafted junk: must never reach load_index
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path) as s:
        assert "building the gallery index from SQLite (" in caplog.text
        s.verify_index()
        assert s.citizen_count == 30


def test_replace_all_is_atomic_and_hash_matches_district(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with open_store(a_dir) as a:
        fill(a, 40)
        seq = a.last_seq
        a.apply([dossier(seq + 1, "HS-9", 5), CitizenDelete(seq + 2, cid(6)),
                 dossier(seq + 3, "HS-1", 7)], epoch=1)
        want = a.content_hash()
        last = a.last_seq
    snapshot: list[Change] = [upsert(0, i) for i in range(40) if i != 6]
    snapshot += [dossier(0, "HS-1", 7), dossier(0, "HS-9", 5)]
    with open_store(b_dir) as b:
        fill(b, 5, epoch=1)  # old content of another epoch
        old = b.content_hash()
        broken = [*snapshot[:20], upsert(0, 99, 1).__class__(
            0, "bad", "n", b"", b"", np.zeros((1, DIM), np.float32)), *snapshot[20:]]
        with pytest.raises(StoreError, match="zero norm"):
            b.replace_all(iter(broken), epoch=2, last_seq=last)
        assert b.content_hash() == old and b.last_seq == 5
        assert b.search(FACES.query(3))[0].citizen_id == cid(3)
        with pytest.raises(ChangeOrderError, match="back"):
            b.replace_all(snapshot, epoch=1, last_seq=2)
        with pytest.raises(EmbedderMismatchError):
            b.replace_all(snapshot, epoch=1, last_seq=last, embedder_id="x")
        b.replace_all(iter(snapshot), epoch=1, last_seq=last)
        assert b.content_hash() == want
        b.verify_index()
        # after the snapshot ordinary batches continue from last_seq
        b.apply([upsert(last + 1, 6)], epoch=1)
    with open_store(b_dir) as b:
        b.verify_index()
        assert b.search(FACES.query(6))[0].citizen_id == cid(6)
    # the district computes the same hash from its own records
    citizens = [(c.citizen_id, c.masked_name, c.pin_hash, c.pin_salt, c.embeddings)
                for c in snapshot if isinstance(c, CitizenUpsert)]
    dossiers = [c.dossier for c in snapshot if isinstance(c, DossierUpsert)]
    assert gallery_hash(embedder_id=EMBEDDER, epoch=1, last_seq=last, citizens=citizens,
                        dossiers=dossiers) == want
    assert gallery_hash(embedder_id=EMBEDDER, epoch=1, last_seq=last + 1, citizens=citizens,
                        dossiers=dossiers) != want


def test_full_disk_refuses_batch_and_loses_nothing(tmp_path: Path) -> None:
    """SQLite's page cap gives the same SQLITE_FULL as a full SD card."""
    with open_store(tmp_path) as s:
        fill(s, 20)
        before, seq = s.content_hash(), s.last_seq
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
        s._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # noqa: SLF001
        big = [upsert(seq + 1 + j, 100 + j) for j in range(50)]
        with pytest.raises(StoreError, match="disk full"):
            s.apply(big, epoch=1)
        assert s.content_hash() == before and s.last_seq == seq
        s.verify_index()
        s._conn.execute("PRAGMA max_page_count = 1073741823")  # noqa: SLF001 - space again
        s.apply(big, epoch=1)
        assert s.last_seq == seq + 50
        s.verify_index()


def test_sqlite_corruption_is_a_store_error(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 3)
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    with pytest.raises(StoreError):
        open_store(tmp_path)
    assert not isinstance(StoreError("x"), sqlite3.Error)


def test_closed_store_refuses(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.search(FACES.query(0))
    with pytest.raises(StoreError, match="closed"):
        s.apply([upsert(1, 1)], epoch=1)


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 4 MB tmpfs (needs root, as the test runner has: scripts/install.sh)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_real_full_disk(tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Fill a real 4 MB filesystem: the batch that does not fit is refused whole, the
    checkpoint that does not fit leaves no file behind, and the store still opens."""
    store = open_store(tiny_disk / "g", checkpoint_every=1_000_000)
    acked, before = 0, store.content_hash()
    with pytest.raises(StoreError, match="disk full"):  # noqa: PT012 - fill until it fails
        for b in range(200):
            store.apply([upsert(acked + 1 + j, b * 20 + j, 1) for j in range(20)], epoch=1)
            acked += 20
            before = store.content_hash()
    assert acked > 0 and store.last_seq == acked
    assert store.content_hash() == before
    store.verify_index()
    with pytest.raises(StoreError):
        store.checkpoint(force=True)
    assert not [p for p in (tiny_disk / "g" / "checkpoints").iterdir()
                if p.name.startswith(".tmp")]
    assert store.search(FACES.query(3))[0].citizen_id == cid(3)
    store.close()  # its closing checkpoint fails: logged, not raised
    assert "automatic checkpoint failed" in caplog.text
    with open_store(tiny_disk / "g") as again:  # opens (rebuilds) on the full disk
        assert again.last_seq == acked
        again.verify_index()
        assert again.content_hash() == before


def test_second_process_cannot_open_the_same_store(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 2)
        code = (
            "import sys; from edge.store import GalleryStore\n"
            "from core.errors import StoreError\n"
            "try:\n"
            f"    GalleryStore.open(sys.argv[1], embedder_id={EMBEDDER!r}, dim={DIM})\n"
            "except StoreError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 3 and "in use by another process" in out.stdout
        with pytest.raises(StoreError, match="in use"):  # and not twice in one process
            open_store(tmp_path)
    with open_store(tmp_path) as s:  # released on close
        assert s.last_seq == 2


def test_checkpoint_policy_every_n_or_share_of_gallery(tmp_path: Path) -> None:
    with open_store(tmp_path, checkpoint_every=10, checkpoint_share=0.5,
                    keep_checkpoints=100, checkpoint_quiet_s=0) as s:
        for n in (20, 100):  # 20 citizens; then re-enrol those and grow to 100
            for start in range(0, n, 5):
                s.apply([upsert(s.last_seq + 1 + j, start + j, 1) for j in range(5)],
                        epoch=1)
                s.wait_for_checkpoint()  # the policy's checkpoints finish in a thread
        seqs = [r[0] for r in s._conn.execute(  # noqa: SLF001
            "SELECT seq FROM checkpoints ORDER BY seq")]
    # opening writes one at 0; then every 10 until 20 citizens are there (0.5 x 20 = 10),
    # and later every 0.5 x citizens changes
    assert seqs[:3] == [0, 10, 20]
    gaps = [b - a for a, b in zip(seqs[1:], seqs[2:], strict=False)]
    assert all(g >= 10 for g in gaps) and max(gaps) >= 25, seqs


def _checkpoint_seqs(s: GalleryStore) -> list[int]:
    return [r[0] for r in s._conn.execute(  # noqa: SLF001
        "SELECT seq FROM checkpoints ORDER BY seq")]


def test_due_checkpoint_waits_for_a_quiet_sync_but_not_past_the_bound(tmp_path: Path) -> None:
    """A burst is not interrupted by checkpoints until 1.5x the due count; once no batch
    has come for checkpoint_quiet_s the due checkpoint is written."""
    with open_store(tmp_path, checkpoint_every=10, checkpoint_share=0.0, keep_checkpoints=100,
                    checkpoint_quiet_s=1.0, checkpoint_max_defer=1.5) as s:
        s.wait_for_checkpoint()  # the new gallery's own, written in a thread
        assert _checkpoint_seqs(s) == [0]
        for _ in range(3):  # a burst of 12 changes: due at 10, deferred
            s.apply([upsert(s.last_seq + 1 + j, s.last_seq + j, 1) for j in range(4)], epoch=1)
        s.wait_for_checkpoint()
        assert _checkpoint_seqs(s) == [0]
        # 16 >= 1.5 x 10: written within the burst
        s.apply([upsert(s.last_seq + 1 + j, s.last_seq + j, 1) for j in range(4)], epoch=1)
        s.wait_for_checkpoint()
        assert _checkpoint_seqs(s) == [0, 16]
        s.apply([upsert(s.last_seq + 1 + j, s.last_seq + j, 1) for j in range(10)], epoch=1)
        time.sleep(0.8)  # a batch within the quiet time starts it again
        s.apply([upsert(s.last_seq + 1 + j, s.last_seq + j, 1) for j in range(2)], epoch=1)
        time.sleep(0.3)
        assert _checkpoint_seqs(s) == [0, 16]  # only 0.3 s since the last batch
        deadline = time.monotonic() + 10
        while _checkpoint_seqs(s) != [0, 16, 28] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _checkpoint_seqs(s) == [0, 16, 28]
        # the quiet-time checkpoint is an ordinary one: the store reopens from it
        want = s.content_hash()
    with open_store(tmp_path) as s:
        assert s.content_hash() == want and s.last_seq == 28


def test_close_does_not_wait_for_the_quiet_time(tmp_path: Path) -> None:
    s = open_store(tmp_path, checkpoint_every=10, checkpoint_share=0.0,
                   checkpoint_quiet_s=600)
    s.apply([upsert(1 + j, j, 1) for j in range(12)], epoch=1)
    t0 = time.monotonic()
    s.close()  # stops the waiting thread and writes the closing checkpoint itself
    assert time.monotonic() - t0 < 60
    with open_store(tmp_path) as s:
        assert _checkpoint_seqs(s)[-1] == 12
