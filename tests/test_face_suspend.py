"""Face suspension (issue 13) part by part: the district log's operation, the wire form,
the terminal store, the sync engine's checks on forged and malformed suspensions, the
"not me" report hand-off. The whole path over Mosquitto: tests/test_sync_suspend.py."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from store_helpers import DIM, FACES, cid, dossier, files_holding, fill, open_store, upsert

from core.errors import DistrictError, MessageRejected, StoreError
from district.ingest import Ingestor, parse_event
from district.log import DistrictLog
from district.reports import suspend_for_report
from edge.store import CitizenDelete, CitizenUpsert
from edge.store.gallery import GalleryStore
from edge.store.validate import unit_rows
from edge.syncclient.engine import SyncEngine
from proto import sync_pb2 as pb
from sync.changes import face_suspended
from sync.wire import MALFORMED, change_from_pb, change_to_pb
from tests.sync_helpers import (
    DISTRICT,
    EMBEDDER,
    add_citizens,
    craft_batch,
    log_changes,
    new_district,
    new_key,
    reference_store,
)

LOG_DIM = 64


def _bytes_of(emb: np.ndarray) -> list[bytes]:  # type: ignore[type-arg]
    """How each row sits in a file (little-endian float32)."""
    return [np.ascontiguousarray(row, dtype="<f4").tobytes() for row in emb]


# ---------------------------------------------------------------- district log


def test_suspend_face_keeps_the_citizen_and_forgets_the_face_in_state_and_log(
    tmp_path: Path,
) -> None:
    dlog = new_district(tmp_path / "d" / "log.sqlite", dim=LOG_DIM)
    a, b = add_citizens(dlog, 2)
    rng = np.random.default_rng(5)
    second = rng.standard_normal((2, LOG_DIM)).astype(np.float32)
    old = dlog.citizen(a)
    assert old is not None
    dlog.upsert_citizen(a, masked_name=old.masked_name, embeddings=second,
                        pin_hash=old.pin_hash, pin_salt=old.pin_salt)  # re-enrolled once
    faces = [*_bytes_of(old.embeddings), *_bytes_of(dlog.citizen(a).embeddings)]  # type: ignore[union-attr]
    head = dlog.head_seq

    seq = dlog.suspend_face(a, reason='"not me" at t1')
    assert seq == head + 1 == dlog.head_seq and dlog.face_suspended(a)
    now = dlog.citizen(a)
    assert now is not None and now.embeddings.shape == (0, LOG_DIM) and face_suspended(now)
    assert (now.masked_name, now.pin_hash, now.pin_salt) == (
        old.masked_name, old.pin_hash, old.pin_salt)
    assert dlog.dossier("HS-0000000").citizen_id == a  # dossiers stay
    assert not dlog.face_suspended(b) and dlog.citizen(b).embeddings.shape == (1, LOG_DIM)  # type: ignore[union-attr]
    # every upsert of the citizen in the log is face-less now; the other citizen's not
    ups = [c.citizen_upsert for c in log_changes(dlog, 1, dlog.head_seq)
           if c.WhichOneof("kind") == "citizen_upsert"]
    assert [u.count for u in ups if u.citizen_id == a] == [0, 0, 0]
    assert [u.count for u in ups if u.citizen_id == b] == [1]
    # the snapshot carries the face-less upsert; calibration sees one face
    with dlog.snapshot() as (_last, nc, _nd, rows):
        snap = [pb.Change.FromString(r) for r in rows]
    assert nc == 2
    assert [c.citizen_upsert.count for c in snap if c.citizen_upsert.citizen_id == a] == [0]
    assert dlog.first_embeddings().shape == (1, LOG_DIM)
    # no byte of either face is left in the log's files (secure_delete, WAL truncated),
    # while the log is still open (closing it would checkpoint the WAL anyway)
    assert files_holding(tmp_path / "d", faces) == []
    dlog.close()


def test_suspend_face_twice_is_a_no_op_and_both_requests_are_recorded(tmp_path: Path
                                                                       ) -> None:
    dlog = new_district(tmp_path / "log.sqlite", dim=LOG_DIM)
    (a,) = add_citizens(dlog, 1)
    seq = dlog.suspend_face(a, reason="first")
    assert dlog.suspend_face(a, reason="second") == seq and dlog.head_seq == seq
    assert [(c, s, r) for c, s, r, _rep, _t in dlog.suspensions()] == [
        (a, seq, "second"), (a, seq, "first")]
    # a dossier change later does not change which change suspended the face
    dlog.update_dossier("HS-0000000", stage="Trả kết quả")
    assert dlog.suspend_face(a, reason="third") == seq


def test_suspend_face_refuses_unknown_citizen_and_bad_reason(tmp_path: Path) -> None:
    dlog = new_district(tmp_path / "log.sqlite", dim=LOG_DIM)
    (a,) = add_citizens(dlog, 1)
    head = dlog.head_seq
    with pytest.raises(DistrictError, match="no citizen nobody"):
        dlog.suspend_face("nobody", reason="x")
    for bad in ("", "   ", "line\nbreak", "x" * 600):
        with pytest.raises(DistrictError):
            dlog.suspend_face(a, reason=bad)
    assert dlog.head_seq == head and not dlog.face_suspended(a) and dlog.suspensions() == []


def test_reenrolment_lifts_and_an_update_without_photos_keeps_the_suspension(
    tmp_path: Path,
) -> None:
    dlog = new_district(tmp_path / "log.sqlite", dim=LOG_DIM)
    a, b = add_citizens(dlog, 2)
    dlog.suspend_face(a, reason="x")
    none = np.empty((0, LOG_DIM), np.float32)
    # new name, no photos (the ingest API's citizen.updated): still suspended
    dlog.upsert_citizen(a, masked_name="Trần T. B***", embeddings=none)
    assert dlog.face_suspended(a) and dlog.citizen(a).masked_name == "Trần T. B***"  # type: ignore[union-attr]
    # zero embeddings are refused for a citizen with a face and for a new one
    for who in (b, "new-citizen"):
        with pytest.raises(DistrictError, match="embeddings must be"):
            dlog.upsert_citizen(who, masked_name="X", embeddings=none)
    new = np.random.default_rng(1).standard_normal((2, LOG_DIM)).astype(np.float32)
    seq = dlog.upsert_citizen(a, masked_name="Trần T. B***", embeddings=new)
    assert not dlog.face_suspended(a) and dlog.citizen(a).embeddings.shape == (2, LOG_DIM)  # type: ignore[union-attr]
    assert dlog.suspend_face(a, reason="again") == seq + 1  # a new suspension
    dlog.delete_citizen(a)  # right to be forgotten: the suspension records go too
    assert dlog.suspensions() == []


def test_suspension_survives_reopening_the_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    dlog = new_district(path, dim=LOG_DIM)
    (a,) = add_citizens(dlog, 1)
    seq = dlog.suspend_face(a, reason="x")
    dlog.close()
    again = DistrictLog.open(path)
    assert again.face_suspended(a) and again.suspend_face(a, reason="y") == seq
    again.close()


# ---------------------------------------------------------------- "not me" reports


def test_suspend_for_report_acts_on_a_not_me_report(tmp_path: Path) -> None:
    dlog = new_district(tmp_path / "log.sqlite", dim=LOG_DIM)
    a, b = add_citizens(dlog, 2)
    when = "2026-11-29T08:00:00.000+00:00"
    dlog.add_report(terminal_id="t1", session_id="s:1", kind="not_me", time=when,
                    citizen_id=a, rating=0, score=0.61)
    dlog.add_report(terminal_id="t1", session_id="s:2", kind="rating", time=when,
                    citizen_id="", rating=5, score=0.0)
    assert dlog.report_suspension("t1/s:1") is None
    seq = suspend_for_report(dlog, "t1/s:1")
    assert dlog.face_suspended(a) and not dlog.face_suspended(b)
    assert dlog.report_suspension("t1/s:1") == seq
    (row,) = dlog.suspensions()
    assert row[:4] == (a, seq, '"not me" report t1/s:1', "t1/s:1")
    assert suspend_for_report(dlog, "t1/s:1") == seq  # idempotent
    for bad, msg in (("t1", "TERMINAL/SESSION"), ("/s:1", "TERMINAL/SESSION"),
                     ("t1/a/b", "TERMINAL/SESSION"), ("t1/s:2", "no \"not me\" report"),
                     ("t9/s:1", "no \"not me\" report")):
        with pytest.raises(DistrictError, match=msg):
            suspend_for_report(dlog, bad)
    dlog.add_report(terminal_id="t2", session_id="s:3", kind="not_me", time=when,
                    citizen_id=b, rating=0, score=0.6)
    # a suspension made without naming the report (the CLI) also acts on it
    assert dlog.report_suspension("t2/s:3") is None
    seq_b = dlog.suspend_face(b, reason="from the command line")
    assert dlog.report_suspension("t2/s:3") == seq_b
    assert dlog.report_suspension("t1/s:2") is None  # a rating: never acted on
    dlog.delete_citizen(b)
    with pytest.raises(DistrictError, match="deleted since"):
        suspend_for_report(dlog, "t2/s:3")


# ---------------------------------------------------------------- wire


def _suspension_pb(seq: int, citizen: str, dim: int = DIM, *, count: int = 0,
                   embeddings: bytes = b"") -> pb.Change:
    c = pb.Change(seq=seq)
    c.citizen_upsert.citizen_id = citizen
    c.citizen_upsert.masked_name = "Nguyễn V. A***"
    c.citizen_upsert.pin_hash = b"h" * 32
    c.citizen_upsert.pin_salt = b"s" * 16
    c.citizen_upsert.count = count
    c.citizen_upsert.embeddings = embeddings
    return c


def test_wire_accepts_zero_embeddings_and_refuses_inconsistent_ones() -> None:
    ch = change_from_pb(_suspension_pb(3, "c1"), DIM)
    assert isinstance(ch, CitizenUpsert) and face_suspended(ch)
    assert ch.embeddings.shape == (0, DIM) and ch.pin_hash == b"h" * 32
    assert change_to_pb(ch).citizen_upsert.count == 0
    one = np.ones(DIM, "<f4").tobytes()
    for bad in (_suspension_pb(3, "c1", count=0, embeddings=one),   # bytes, count 0
                _suspension_pb(3, "c1", count=1, embeddings=b""),   # count, no bytes
                _suspension_pb(3, "", count=0),                      # no citizen
                _suspension_pb(3, "c1", count=0, embeddings=b"\0")):  # a stray byte
        with pytest.raises(MessageRejected) as err:
            change_from_pb(bad, DIM)
        assert err.value.reason == MALFORMED


# ---------------------------------------------------------------- terminal store


def _suspend(seq: int, i: int) -> CitizenUpsert:
    u = upsert(seq, i)
    return CitizenUpsert(seq, u.citizen_id, u.masked_name, u.pin_hash, u.pin_salt,
                         np.empty((0, DIM), np.float32))


def _embedding_rows(store_dir: Path, citizen: str) -> int:
    db = sqlite3.connect(f"file:{store_dir / 'gallery.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM embeddings WHERE citizen_id = ?",
                              (citizen,)).fetchone()[0])
    finally:
        db.close()


def test_store_suspension_removes_every_vector_and_keeps_record_and_dossiers(
    tmp_path: Path,
) -> None:
    scrub_s = 2.0  # the deletion bound this test runs with (StoreSettings.deletion_scrub_s)
    with open_store(tmp_path, checkpoint_every=10_000, deletion_scrub_s=scrub_s) as s:
        fill(s, 20, most=3)
        victim = 7
        s.apply([dossier(s.last_seq + 1, "HS-7", victim)], epoch=1)
        # an earlier re-enrolment left hidden vectors (kept until the next rebuild)
        s.apply([upsert(s.last_seq + 1, victim, sample_base=10)], epoch=1)
        s.checkpoint()  # the checkpoint file holds the live and the hidden vectors
        first = FACES.samples(victim, range(0, FACES.enrolled_count(victim, 3)))
        current = FACES.samples(victim, range(10, 10 + FACES.enrolled_count(victim, 3)))
        forms = [*_bytes_of(first), *_bytes_of(current),
                 *_bytes_of(unit_rows(first, DIM, "t")), *_bytes_of(unit_rows(current, DIM, "t"))]
        assert files_holding(tmp_path, forms), "the probe must see the vectors first"
        before = s.citizen(cid(victim))
        assert before is not None and before.embedding_count == len(current)
        live, count = s.index_stats()["live"], s.citizen_count
        assert s.search(FACES.query(victim), 1)[0].citizen_id == cid(victim)

        s.apply([_suspend(s.last_seq + 1, victim)], epoch=1)
        t0 = time.monotonic()
        assert all(m.citizen_id != cid(victim) for m in s.search(FACES.query(victim), 5))
        assert s.index_stats()["live"] == live - len(current) and s.citizen_count == count - 1
        assert _embedding_rows(tmp_path, cid(victim)) == 0
        rec = s.citizen(cid(victim))
        assert rec is not None and rec.embedding_count == 0
        assert (rec.masked_name, rec.pin_hash, rec.pin_salt) == (
            before.masked_name, before.pin_hash, before.pin_salt)
        assert [d.code for d in s.dossiers(cid(victim))] == ["HS-7"]
        s.verify_index()
        # gone from every file (SQLite, WAL, index checkpoints) within the deletion bound
        while files_holding(tmp_path, forms):
            assert time.monotonic() - t0 <= scrub_s + 5.0, files_holding(tmp_path, forms)
            time.sleep(0.05)  # polling a condition with a deadline
        seq = s.last_seq
    # a restart (checkpoint + replay) does not bring the face back
    with open_store(tmp_path, checkpoint_every=10_000) as s:
        assert s.last_seq == seq and s.citizen(cid(victim)) is not None
        assert all(m.citizen_id != cid(victim) for m in s.search(FACES.query(victim), 5))
        s.verify_index()
        # re-enrolment lifts it
        s.apply([upsert(s.last_seq + 1, victim, sample_base=20)], epoch=1)
        assert s.search(FACES.query(victim), 1)[0].citizen_id == cid(victim)
        assert s.citizen(cid(victim)).embedding_count > 0  # type: ignore[union-attr]


def test_store_suspension_in_a_batch_and_in_a_snapshot(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as s:
        fill(s, 5, most=2)
        n = s.last_seq
        # one batch: suspend, re-enrol, suspend again, then delete another citizen
        s.apply([_suspend(n + 1, 1), upsert(n + 2, 1, sample_base=5), _suspend(n + 3, 1),
                 CitizenDelete(n + 4, cid(2))], epoch=1)
        assert s.citizen(cid(1)) is not None and s.citizen(cid(1)).embedding_count == 0  # type: ignore[union-attr]
        assert all(m.citizen_id != cid(1) for m in s.search(FACES.query(1), 5))
        s.verify_index()
        # a suspension of a citizen the terminal has no face of yet is fine too
        s.apply([_suspend(n + 5, 9)], epoch=1)
        assert s.citizen(cid(9)) is not None and s.citizen_count == 3
    with open_store(tmp_path / "b") as s:
        s.replace_all([upsert(1, 0), _suspend(2, 1), upsert(3, 3), dossier(4, "HS-1", 1)],
                      epoch=1, last_seq=4)
        assert s.citizen_count == 2 and s.citizen(cid(1)).embedding_count == 0  # type: ignore[union-attr]
        assert [d.code for d in s.dossiers(cid(1))] == ["HS-1"]
        assert all(m.citizen_id != cid(1) for m in s.search(FACES.query(1), 5))
        s.verify_index()


def test_store_refuses_a_suspension_of_the_wrong_shape(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        fill(s, 2)
        u = upsert(s.last_seq + 1, 0)
        for emb in (np.empty((0, DIM + 1), np.float32), np.empty((0, DIM), np.int32),
                    np.empty((0,), np.float32)):
            bad = CitizenUpsert(u.seq, u.citizen_id, u.masked_name, u.pin_hash, u.pin_salt,
                                emb)
            with pytest.raises(StoreError):
                s.apply([bad], epoch=1)
        assert s.last_seq == u.seq - 1 and s.citizen(cid(0)).embedding_count > 0  # type: ignore[union-attr]


# ---------------------------------------------------------------- sync engine


def _engine(tmp_path: Path) -> tuple[DistrictLog, object, GalleryStore, SyncEngine]:
    dlog = new_district(tmp_path / "d.sqlite", dim=LOG_DIM)
    add_citizens(dlog, 3)
    key = new_key()
    store = reference_store(dlog, GalleryStore.open(tmp_path / "t", embedder_id=EMBEDDER,
                                                    dim=LOG_DIM))
    eng = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                     public_key=key.public_key(), spool_dir=tmp_path / "spool")
    return dlog, key, store, eng


def test_engine_applies_a_signed_suspension_and_rejects_forged_or_malformed_ones(
    tmp_path: Path,
) -> None:
    dlog, key, store, eng = _engine(tmp_path)
    victim = "c0000001"
    face = dlog.citizen(victim).embeddings[0]  # type: ignore[union-attr]
    seq = store.last_seq + 1
    live = store.index_stats()["live"]

    def still_matches() -> bool:
        return store.search(face, 1)[0].citizen_id == victim

    forged = craft_batch(new_key(), [_suspension_pb(seq, victim, LOG_DIM)], dim=LOG_DIM)
    eng.handle("batch", forged)
    one = np.ones(LOG_DIM, "<f4").tobytes()
    for bad in (_suspension_pb(seq, victim, LOG_DIM, count=0, embeddings=one),
                _suspension_pb(seq, victim, LOG_DIM, count=2, embeddings=b""),
                _suspension_pb(seq, "", LOG_DIM)):
        eng.handle("batch", craft_batch(key, [bad], dim=LOG_DIM))  # signed but malformed
    assert eng.rejections == {"signature": 1, "malformed": 3}
    assert store.last_seq == seq - 1 and still_matches()
    assert store.index_stats()["live"] == live

    real = dlog.suspend_face(victim, reason="x")
    assert real == seq
    eng.handle("batch", craft_batch(key, log_changes(dlog, seq, seq), dim=LOG_DIM))
    assert store.last_seq == seq and not still_matches()
    assert store.index_stats()["live"] == live - 1 and store.citizen(victim) is not None
    assert eng.rejections == {"signature": 1, "malformed": 3}
    store.close()
    dlog.close()


def test_ingest_update_without_photos_keeps_the_face_suspended(tmp_path: Path) -> None:
    dlog = new_district(tmp_path / "log.sqlite", dim=LOG_DIM)
    (a,) = add_citizens(dlog, 1)
    dlog.suspend_face(a, reason="x")
    ingest = Ingestor(dlog, None)  # no face pipeline: no photos can be embedded
    res = ingest.apply(parse_event({
        "event_id": "upd-1", "kind": "citizen.updated", "version": 1,
        "data": {"citizen_id": a, "full_name": "Trần Thị Bích", "pin": "2468"}}))
    assert res.outcome == "applied" and res.seq == dlog.head_seq
    assert dlog.face_suspended(a)
    assert dlog.citizen(a).masked_name == "Trần T. B***"  # type: ignore[union-attr]


def test_a_terminal_replaying_the_log_after_a_suspension_never_gets_the_face(
    tmp_path: Path,
) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=LOG_DIM)
    a, _b = add_citizens(dlog, 2)
    face = dlog.citizen(a).embeddings[0]  # type: ignore[union-attr]
    dlog.update_dossier("HS-0000000", stage="Phòng Tư pháp")
    dlog.suspend_face(a, reason="x")
    head = dlog.head_seq
    ref = reference_store(dlog, GalleryStore.open(tmp_path / "ref", embedder_id=EMBEDDER,
                                                  dim=LOG_DIM))
    with GalleryStore.open(tmp_path / "t", embedder_id=EMBEDDER, dim=LOG_DIM) as s:
        for seq in range(1, head + 1):  # one change at a time, as replays may cut it
            (change,) = [change_from_pb(c, LOG_DIM) for c in log_changes(dlog, seq, seq)]
            s.apply([change], epoch=1)
            assert all(m.citizen_id != a for m in s.search(face, 2)), seq
        assert s.content_hash() == ref.content_hash()
        assert [d.stage for d in s.dossiers(a)] == ["Phòng Tư pháp"]
    ref.close()
    dlog.close()
