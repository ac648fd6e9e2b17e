"""A date of birth from the district's records to the terminal store, through the real
broker: CSV column -> salted hash in the change log -> signed batch over Mosquitto ->
GalleryStore -> the terminal's confirmation check. Also the store migration of an
existing gallery made before the columns existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.errors import DistrictError
from district.enrol import enrol, read_records
from district.privacy import dob_digits
from district.publisher import Publisher
from edge.api.attempts import AttemptLimiter
from edge.api.confirm import DobConfirmer
from edge.store.gallery import DB_NAME, GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from sync.mqtt import BrokerSettings
from sync.pin import verify_dob
from tests.broker import MosquittoBroker
from tests.sync_helpers import EMBEDDER, new_district, new_key, wait_for
from tests.test_sync_district import _hash_embedder

CSV = """citizen_id,full_name,phone,date_of_birth,dossier_code,procedure,status,stage,received_on
barack_obama,Nguyễn Văn Ba,0912345678,1985-03-12,HS-1,Chứng thực,received,Một cửa,2026-11-20
joe_biden,Trần Thị Bích,0912345679,1/2/1990,HS-2,Chứng thực,received,Một cửa,2026-11-21
rose_leslie,Phạm Thị Hồng,0912345670,,HS-3,Chứng thực,received,Một cửa,2026-11-22
"""


def test_dates_of_birth_in_records_and_their_errors(tmp_path: Path) -> None:
    assert dob_digits("1985-03-12") == "12031985" and dob_digits("1/2/1990") == "01021990"
    assert dob_digits("12031985") == "12031985"  # already as the keypad takes it
    for bad in ("1990-02-30", "12.03.1985", "31/04/1990", "85-03-12"):
        with pytest.raises(ValueError):
            dob_digits(bad)
    (tmp_path / "r.csv").write_text(CSV, encoding="utf-8")
    recs = {r.citizen_id: r for r in read_records(tmp_path / "r.csv")}
    assert recs["barack_obama"].date_of_birth == "12031985"
    assert recs["joe_biden"].date_of_birth == "01021990"
    assert recs["rose_leslie"].date_of_birth == ""
    (tmp_path / "bad.csv").write_text(CSV.replace("1985-03-12", "1985-02-30"), "utf-8")
    with pytest.raises(DistrictError, match="line 2.*not a real date"):
        read_records(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(
        '[{"citizen_id": "x", "full_name": "A B", "date_of_birth": "tomorrow"}]', "utf-8")
    with pytest.raises(DistrictError, match="entry 0.*date of birth"):
        read_records(tmp_path / "bad.json")


def test_enrolled_date_of_birth_reaches_the_terminal_over_the_broker(
        tmp_path: Path, media_dir: Path, broker: MosquittoBroker) -> None:
    (tmp_path / "r.csv").write_text(CSV, encoding="utf-8")
    dlog = new_district(tmp_path / "d.sqlite", dim=32)
    enrol(dlog, read_records(tmp_path / "r.csv"), media_dir / "faces", _hash_embedder(32))
    # the log holds a hash, never the date
    raw = sqlite3.connect(tmp_path / "d.sqlite").execute(
        "SELECT group_concat(hex(change), '') FROM log").fetchone()[0]
    assert b"12031985".hex().upper() not in raw
    key = new_key()
    fast = dict(reconnect_min_s=0.0, reconnect_max_s=0.5)
    pub = Publisher(dlog, key, BrokerSettings(host=broker.host, port=broker.port, **fast))
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=32)
    sub = TerminalSubscriber(store, BrokerSettings(host=broker.host, port=broker.port, **fast),
                             district_id="q1", terminal_id="t1",
                             public_key=key.public_key(), spool_dir=tmp_path)
    pub.start()
    sub.start()
    try:
        wait_for(lambda: store.last_seq == dlog.head_seq, timeout=60, what="terminal synced")
        obama, biden, rose = (store.citizen(c) for c in
                              ("barack_obama", "joe_biden", "rose_leslie"))
        assert obama is not None and biden is not None and rose is not None
        assert verify_dob("12031985", obama.dob_hash, obama.dob_salt)
        assert not verify_dob("12031986", obama.dob_hash, obama.dob_salt)
        assert verify_dob("01021990", biden.dob_hash, biden.dob_salt)
        assert obama.dob_salt != biden.dob_salt and len(obama.dob_salt) == 16
        assert rose.dob_hash == b"" and rose.dob_salt == b""  # no date: no confirmation
        # the terminal's check on the synced store
        confirmer = DobConfirmer(store, AttemptLimiter(tmp_path / "attempts.sqlite"))
        candidates = ["barack_obama", "joe_biden", "rose_leslie"]
        assert confirmer.usable(candidates) == ["barack_obama", "joe_biden"]
        assert confirmer.check(["barack_obama", "joe_biden"], "01021990") == (["joe_biden"],
                                                                               False)
        # the district changes the date: the new one replaces the old on the terminal
        (tmp_path / "r2.csv").write_text(CSV.replace("1985-03-12", "1985-03-13"), "utf-8")
        enrol(dlog, read_records(tmp_path / "r2.csv")[:1], media_dir / "faces",
              _hash_embedder(32))
        wait_for(lambda: store.last_seq == dlog.head_seq, timeout=60, what="update synced")
        obama = store.citizen("barack_obama")
        assert obama is not None and verify_dob("13031985", obama.dob_hash, obama.dob_salt)
    finally:
        sub.stop()
        pub.stop()
        store.close()
        dlog.close()


def test_a_store_made_before_the_dob_columns_is_migrated(tmp_path: Path) -> None:
    store = GalleryStore.open(tmp_path / "s", embedder_id=EMBEDDER, dim=32)
    path = store.path / DB_NAME
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE citizens DROP COLUMN dob_hash")
    db.execute("ALTER TABLE citizens DROP COLUMN dob_salt")
    db.commit()
    db.close()
    for _ in range(2):  # idempotent
        store = GalleryStore.open(tmp_path / "s", embedder_id=EMBEDDER, dim=32)
        store.close()
        cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(citizens)")}
        assert {"dob_hash", "dob_salt"} <= cols
