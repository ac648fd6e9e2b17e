"""The stronger confirmation secret: date of birth + the last 4 digits of the personal
identification number (số định danh cá nhân).

Hash and answer shapes (sync.pin), the district's validation and hashing (privacy,
enrolment from a records file, the ingest API's events), that the number never reaches
the change log, the wire flag and the terminal store, the terminal's check against a
mix of candidates with per-citizen tries, and the calibration's guess bound per
candidate with the confirmation floor.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, DistrictError
from district import calibration as calib
from district.enrol import enrol, read_records
from district.ingest import IngestError, Ingestor, parse_event
from district.log import DistrictLog
from district.privacy import hash_confirmation, personal_id_last4
from edge.api.attempts import AttemptLimiter, AttemptPolicy
from edge.api.confirm import DobConfirmer
from edge.store.gallery import GalleryStore
from proto import sync_pb2 as pb
from sync.pin import (
    hash_dob,
    hash_dob_id4,
    valid_answer,
    verify_confirmation,
    verify_dob,
)
from sync.wire import change_from_pb
from tests.sync_helpers import EMBEDDER, new_district
from tests.test_sync_district import _hash_embedder

SALT = b"0123456789abcdef"
DOB, ID4 = "12031985", "2345"
NUMBER = "001085012345"  # a well-formed 12-digit personal identification number


# -- the hash and the answer -----------------------------------------------------------


def test_hash_of_date_and_four_digits_and_the_answers_it_accepts() -> None:
    h = hash_dob_id4(DOB, ID4, SALT)
    assert len(h) == 32 and h != hash_dob(DOB, SALT)  # not the date-only hash
    assert verify_confirmation(DOB + ID4, h, SALT, with_id4=True)
    for wrong in (DOB + "2346", "13031985" + ID4, DOB, DOB + "0000"):
        assert not verify_confirmation(wrong, h, SALT, with_id4=True), wrong
    # a date-only hash is checked against the date part, whatever digits follow
    d = hash_dob(DOB, SALT)
    assert verify_confirmation(DOB, d, SALT, with_id4=False)
    assert verify_confirmation(DOB + "9999", d, SALT, with_id4=False)
    assert not verify_confirmation("13031985" + ID4, d, SALT, with_id4=False)
    assert verify_dob(DOB, d, SALT)  # the old check is unchanged
    # shapes: 8 digits of a real date, or that and 4 more digits
    assert valid_answer(DOB) and valid_answer(DOB + ID4)
    for bad in ("", DOB + "123", DOB + "12345", "31021990" + ID4, DOB + "12a4",
                "١٢٠٣١٩٨٥" + ID4):
        assert not valid_answer(bad), bad
        assert not verify_confirmation(bad, h, SALT, with_id4=True)
    assert not verify_confirmation(DOB + ID4, h, b"", with_id4=True)  # no salt
    with pytest.raises(ValueError, match="4 digits"):
        hash_dob_id4(DOB, "234", SALT)
    with pytest.raises(ValueError):
        hash_dob_id4("31021990", ID4, SALT)


def test_the_district_validates_the_number_and_never_repeats_it() -> None:
    assert personal_id_last4(NUMBER) == ID4
    assert personal_id_last4("001 085 012 345") == ID4  # groups as printed on the card
    for bad in ("1085012345", "0010850123456", "00108501234x", "００１０８５０１２３４５", ""):
        with pytest.raises(ValueError, match="12 digits") as exc:
            personal_id_last4(bad)
        assert (bad.strip() or "@") not in str(exc.value)
    h, salt, id4 = hash_confirmation("1985-03-12", NUMBER, "birth_date_id4")
    assert id4 and verify_confirmation(DOB + ID4, h, salt, with_id4=True)
    # "birth_date": the number is validated but not used
    h, salt, id4 = hash_confirmation("12/03/1985", NUMBER, "birth_date")
    assert not id4 and verify_dob(DOB, h, salt)
    h, salt, id4 = hash_confirmation("12/03/1985", "", "birth_date_id4")  # no number
    assert not id4 and verify_dob(DOB, h, salt)
    with pytest.raises(ValueError, match="12 digits"):
        hash_confirmation("12/03/1985", "123", "birth_date")
    with pytest.raises(ValueError, match="confirm_secret"):
        hash_confirmation("12/03/1985", NUMBER, "pin")


# -- the district: records file, ingest events, the log ---------------------------------


CSV = """citizen_id,full_name,phone,date_of_birth,personal_id_number
barack_obama,Nguyễn Văn Ba,0912345678,1985-03-12,001085012345
joe_biden,Trần Thị Bích,0912345679,1/2/1990,
rose_leslie,Phạm Thị Hồng,0912345670,,
"""


def _log_bytes(path: Path) -> bytes:
    """Every byte of the district's SQLite files (the log, its WAL)."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_enrolment_hashes_the_number_with_the_date_and_never_stores_it(
        tmp_path: Path, media_dir: Path) -> None:
    (tmp_path / "r.csv").write_text(CSV, encoding="utf-8")
    recs = {r.citizen_id: r for r in read_records(tmp_path / "r.csv")}
    assert NUMBER not in repr(recs["barack_obama"])  # only the last 4 digits are kept
    db = tmp_path / "d.sqlite"
    dlog = new_district(db, dim=32)
    enrol(dlog, list(recs.values()), media_dir / "faces", _hash_embedder(32))
    ba, jb, rl = (dlog.citizen(c) for c in ("barack_obama", "joe_biden", "rose_leslie"))
    assert ba is not None and jb is not None and rl is not None
    assert ba.dob_id4 and verify_confirmation(DOB + ID4, ba.dob_hash, ba.dob_salt, True)
    assert not verify_confirmation(DOB + "0000", ba.dob_hash, ba.dob_salt, True)
    assert not jb.dob_id4 and verify_dob("01021990", jb.dob_hash, jb.dob_salt)
    assert not rl.dob_id4 and rl.dob_hash == b""
    _, kinds = dlog.first_embeddings_and_secrets()  # id order: barack, joe, rose
    assert kinds.tolist() == [calib.KIND_DOB_ID4, calib.KIND_DOB, calib.KIND_NONE]
    # the published log: every change as it goes on the wire, and the files themselves
    published = b"".join(dlog.changes(1, dlog.head_seq))
    dlog.close()
    for text in (NUMBER, "001085012345", "12031985"):
        assert text.encode() not in published and text.encode() not in _log_bytes(db)
    # errors name the field and the line, never the number
    for bad, why in (("00108501234", "personal_id_number.*12 digits"),
                     ("0010850123ab", "personal_id_number.*12 digits")):
        (tmp_path / "bad.csv").write_text(CSV.replace(NUMBER, bad), "utf-8")
        with pytest.raises(DistrictError, match=f"line 2.*{why}") as exc:
            read_records(tmp_path / "bad.csv")
        assert bad not in str(exc.value)
    (tmp_path / "nodob.csv").write_text(CSV.replace("1985-03-12", ""), "utf-8")
    with pytest.raises(DistrictError, match="line 2: personal_id_number needs date_of_birth"):
        read_records(tmp_path / "nodob.csv")


def _enrol_event(media_dir: Path, eid: str, **data: object) -> dict[str, object]:
    photo = base64.b64encode((media_dir / "faces" / "barack_obama" / "1.jpg")
                             .read_bytes()).decode()
    return {"event_id": eid, "kind": "citizen.enrolled", "version": 1,
            "data": {"citizen_id": "c1", "full_name": "Nguyễn Văn An", "pin": "2468",
                     "photos": [photo], **data}}


def test_ingest_takes_the_number_validated_and_keeps_only_the_hash(
        tmp_path: Path, media_dir: Path) -> None:
    db = tmp_path / "d.sqlite"
    dlog = new_district(db, dim=32)
    ing = Ingestor(dlog, _hash_embedder(32))
    # malformed numbers: 422 naming the field, the value not repeated, nothing applied
    for bad in ("00108501234", "0010850123456", "00108501234x", " 001085012345"):
        with pytest.raises(IngestError) as exc:
            ing.apply(parse_event(_enrol_event(media_dir, "e-bad", date_of_birth="12/03/1985",
                                               personal_id_number=bad)))
        assert exc.value.field == "data.personal_id_number" and exc.value.status == 422
        assert bad.strip() not in str(exc.value)
    with pytest.raises(IngestError) as exc:  # a number needs the date it is hashed with
        ing.apply(parse_event(_enrol_event(media_dir, "e-nodob", personal_id_number=NUMBER)))
    assert exc.value.field == "data.date_of_birth"
    assert dlog.head_seq == 0
    ing.apply(parse_event(_enrol_event(media_dir, "e-1", date_of_birth="12/03/1985",
                                       personal_id_number=NUMBER)))
    c = dlog.citizen("c1")
    assert c is not None and c.dob_id4
    assert verify_confirmation(DOB + ID4, c.dob_hash, c.dob_salt, with_id4=True)
    # an update of the name only keeps the secret; a new date without the number is
    # date-only (the district cannot re-hash a number it does not keep)
    ing.apply(parse_event({"event_id": "e-2", "kind": "citizen.updated", "version": 2,
                           "data": {"citizen_id": "c1", "full_name": "Nguyễn Văn Ân"}}))
    c2 = dlog.citizen("c1")
    assert c2 is not None and c2.dob_id4 and c2.dob_hash == c.dob_hash
    ing.apply(parse_event({"event_id": "e-3", "kind": "citizen.updated", "version": 3,
                           "data": {"citizen_id": "c1", "date_of_birth": "13/03/1985",
                                    "personal_id_number": NUMBER}}))
    c3 = dlog.citizen("c1")
    assert c3 is not None and c3.dob_id4
    assert verify_confirmation("13031985" + ID4, c3.dob_hash, c3.dob_salt, with_id4=True)
    # a district set to "birth_date" hashes the date alone
    ing_dob = Ingestor(dlog, _hash_embedder(32), confirm_secret="birth_date")
    ing_dob.apply(parse_event({"event_id": "e-4", "kind": "citizen.updated", "version": 4,
                               "data": {"citizen_id": "c1", "date_of_birth": "14/03/1985",
                                        "personal_id_number": NUMBER}}))
    c4 = dlog.citizen("c1")
    assert c4 is not None and not c4.dob_id4 and verify_dob("14031985", c4.dob_hash,
                                                             c4.dob_salt)
    published = b"".join(dlog.changes(1, dlog.head_seq))
    dlog.close()
    assert NUMBER.encode() not in published and NUMBER.encode() not in _log_bytes(db)


# -- the terminal: store, wire flag, the check with per-citizen tries -------------------


def test_terminal_store_keeps_the_flag_and_checks_a_mix_of_candidates(
        tmp_path: Path, media_dir: Path) -> None:
    (tmp_path / "r.csv").write_text(CSV, encoding="utf-8")
    dlog = new_district(tmp_path / "d.sqlite", dim=32)
    enrol(dlog, read_records(tmp_path / "r.csv"), media_dir / "faces", _hash_embedder(32))
    changes = [change_from_pb(pb.Change.FromString(b), 32)
               for b in dlog.changes(1, dlog.head_seq)]
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=32)
    try:
        store.apply(changes, epoch=dlog.epoch)
        ba = store.citizen("barack_obama")
        jb = store.citizen("joe_biden")
        assert ba is not None and ba.dob_id4 and jb is not None and not jb.dob_id4
        limiter = AttemptLimiter(tmp_path / "attempts.sqlite", AttemptPolicy(max_failures=3))
        confirmer = DobConfirmer(store, limiter)
        both = ["barack_obama", "joe_biden"]
        assert confirmer.needs_id4(both) and not confirmer.needs_id4(["joe_biden"])
        assert confirmer.usable([*both, "rose_leslie"]) == both  # rose: no date
        # the date alone no longer confirms the citizen with the number
        assert confirmer.check(both, DOB) == ([], False)
        assert confirmer.check(both, DOB + "0000") == ([], False)  # wrong digits
        # wrong date; the third wrong answer, counted once on every candidate, locks both
        assert confirmer.check(both, "13031985" + ID4) == ([], True)
        assert limiter.check("barack_obama").failures_left == 0
        assert limiter.check("joe_biden").failures_left == 0
        assert confirmer.usable(both) == []
        right, locked = confirmer.check(both, DOB + ID4)
        assert right == [] and locked  # locked: the right answer is not even tried
    finally:
        store.close()
        dlog.close()
    # fresh budgets: the right combination confirms; a date-only citizen is confirmed by
    # the date part of a 12-digit answer (the weaker secret the calibration counts)
    limiter = AttemptLimiter(tmp_path / "attempts2.sqlite")
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=32)
    try:
        confirmer = DobConfirmer(store, limiter)
        assert confirmer.check(both, DOB + ID4) == (["barack_obama"], False)
        assert confirmer.check(both, "01021990" + "7777") == (["joe_biden"], False)
        assert limiter.check("barack_obama").failures_left == 5
    finally:
        store.close()


# -- the calibration: guess bound per candidate, the floor -------------------------------


def _gallery(n: int, dim: int = 64, seed: int = 3) -> np.ndarray:
    g = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_guess_bound_per_secret_and_settings() -> None:
    s = calib.CalibrationSettings()
    assert s.confirm_secret == "birth_date_id4" and s.confirm_candidates == 3
    assert s.guess_for(calib.KIND_DOB) == pytest.approx(3 / 4018)
    assert s.guess_for(calib.KIND_DOB_ID4) == pytest.approx(3 / (4018 * 10_000))
    assert s.guess_for(calib.KIND_NONE) == 0.0
    assert s.guess_per_candidate == s.guess_for(calib.KIND_DOB)  # the weakest
    assert calib.CalibrationSettings(confirm_secret="birth_date").default_kind == calib.KIND_DOB
    for bad in ({"confirm_secret": "dob"}, {"confirm_floor": 1.0}, {"confirm_floor": -0.1},
                {"id4_combinations": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            calib.CalibrationSettings(**bad).validate("calibration")  # type: ignore[arg-type]


def test_loo_rows_name_the_neighbours_and_confirm_rate_follows_their_secrets() -> None:
    g = _gallery(300)
    loo = calib.loo_scores(g, keep=3, duplicate_score=0.99)
    assert loo.idx is not None
    for i in (0, 17, 299):
        assert i not in loo.idx[i].tolist()
        np.testing.assert_allclose(loo.top[i], g[loo.idx[i]] @ g[i], atol=1e-5)
    s = calib.CalibrationSettings(confirm_candidates=3)
    t, tc = 0.99, float(np.quantile(loo.top[:, 2], 0.5))  # about half have 3 near
    near = loo.top[:, :3] >= tc

    def rate(kinds: np.ndarray) -> float:
        return calib.Predictor.from_scores(loo, s, kinds.astype(np.int8)).confirm_rate(t, tc)

    all_dob = np.full(300, calib.KIND_DOB)
    all_id4 = np.full(300, calib.KIND_DOB_ID4)
    # by hand: each near candidate costs tries / space of its own secret
    assert rate(all_dob) == pytest.approx(near.sum() * 3 / 4018 / 300, rel=1e-6)
    assert rate(all_id4) == pytest.approx(near.sum() * 3 / 40_180_000 / 300, rel=1e-6)
    assert rate(np.full(300, calib.KIND_NONE)) == 0.0
    # one citizen without the number counts at the weak bound wherever it is a candidate
    weak = int(loo.idx[0, 0])
    mixed = all_id4.copy()
    mixed[weak] = calib.KIND_DOB
    times = int(np.sum(near & (loo.idx[:, :3] == weak)))
    assert times >= 1
    expect = (near.sum() - times) * 3 / 40_180_000 + times * 3 / 4018
    assert rate(mixed) == pytest.approx(expect / 300, rel=1e-6)
    # without kinds: the settings' default secret for everyone
    assert calib.Predictor.from_scores(loo, s).confirm_rate(t, tc) == pytest.approx(
        rate(all_id4))


def test_derive_puts_the_confirm_threshold_on_the_floor_when_the_secret_is_strong() -> None:
    g = _gallery(1500, dim=24)
    s = calib.CalibrationSettings(min_gallery=100, confirm_floor=0.46)
    dob_only = np.full(len(g), calib.KIND_DOB, np.int8)
    weak = calib.derive(g, s, pack_threshold=0.5, kinds=dob_only)
    strong = calib.derive(g, s, pack_threshold=0.5)  # everyone has the 4 digits
    assert strong.threshold == weak.threshold  # the SURE path does not change
    assert strong.confirm_threshold == pytest.approx(s.confirm_floor)
    assert weak.confirm_threshold > strong.confirm_threshold
    assert strong.predicted_confirm < 1e-5 and strong.predicted_fpir <= s.target_fpir
    assert strong.secret_id4_share == 1.0 and weak.secret_id4_share == 0.0
    lower = calib.derive(g, calib.CalibrationSettings(min_gallery=100, confirm_floor=0.3),
                         pack_threshold=0.5)
    assert lower.confirm_threshold == pytest.approx(0.3)
    # a point derived under a lower floor is re-derived when the floor is raised
    assert not calib.is_stale(strong, len(g), s)
    assert calib.is_stale(strong, len(g), dataclasses.replace(s, confirm_floor=0.6))
    back = calib.CalibratedPoint.from_json(strong.to_json())
    assert back.secret_id4_share == 1.0 and json.loads(strong.to_json())["confirm_threshold"]


def test_the_confirm_floor_is_the_model_packs_unless_the_district_sets_it(
        tmp_path: Path) -> None:
    """The floor is a cosine on the embedder's scale: [models] pack gives it (0.50 for the
    fused default, 0.46 for FaceNet alone); [calibration] confirm_floor overrides it."""
    from district.config import load_district_config
    from models.pack import load_manifest
    from models.settings import DEFAULT_PACK

    assert load_manifest("mtcnn-facenet").embedder["confirm_floor"] == 0.46
    assert load_manifest("mtcnn-facenet-dlib").embedder["confirm_floor"] == 0.50
    default = load_manifest(DEFAULT_PACK).embedder["confirm_floor"]
    assert load_district_config(None).calibration.floor == default
    cfg = tmp_path / "d.toml"
    for text, want in (("", default),
                       ('[models]\npack = "mtcnn-facenet"\n', 0.46),
                       ('[models]\npack = "mtcnn-facenet-dlib"\n', 0.50),
                       ('[models]\npack = "mtcnn-facenet"\n[calibration]\nconfirm_floor = 0.52\n',
                        0.52),
                       ("[calibration]\nconfirm_floor = 0\n", 0.0)):
        cfg.write_text(text)
        assert load_district_config(cfg).calibration.floor == want, text
    for text, match in (("[calibration]\nconfirm_floor = 1.0\n", "calibration.confirm_floor"),
                        ('[calibration]\nconfirm_floor = "high"\n', "calibration.confirm_floor"),
                        ('[models]\npack = "nope"\n', "models.pack: unknown model pack")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_district_config(cfg)
    # settings made without a pack never fall back to another embedder's scale
    with pytest.raises(ConfigError, match="confirm_floor: not set"):
        calib.derive(_gallery(1500, dim=24), calib.CalibrationSettings(min_gallery=100),
                     pack_threshold=0.5)
    assert calib.CalibrationSettings().with_pack_floor(0.5).floor == 0.5
    assert calib.CalibrationSettings(confirm_floor=0.4).with_pack_floor(0.5).floor == 0.4


def test_a_log_of_another_embedder_than_the_pack_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A district enrolled with FaceNet whose config names no pack (now the fused default)
    is told that the pack's threshold and floor are on another scale."""
    from district.cli import pack_threshold
    from models.pack import load_manifest

    facenet = load_manifest("mtcnn-facenet").embedder
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id="q1",
                              embedder_id=facenet["id"], dim=facenet["dim"])
    with caplog.at_level("WARNING"):
        assert pack_threshold("mtcnn-facenet", dlog) == facenet["match_threshold"]
        assert not caplog.records
        pack_threshold("mtcnn-facenet-dlib", dlog)
    assert "on another scale" in caplog.text and facenet["id"] in caplog.text
    dlog.close()


def test_a_store_made_before_the_flag_column_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from edge.store.gallery import DB_NAME

    store = GalleryStore.open(tmp_path / "s", embedder_id=EMBEDDER, dim=32)
    path = store.path / DB_NAME
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE citizens DROP COLUMN dob_id4")
    db.commit()
    db.close()
    for _ in range(2):  # idempotent
        GalleryStore.open(tmp_path / "s", embedder_id=EMBEDDER, dim=32).close()
        cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(citizens)")}
        assert "dob_id4" in cols
