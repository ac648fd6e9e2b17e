"""District side: change log, privacy, records/enrolment, keys, the command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, DistrictError
from district.enrol import PhotoEmbedder, enrol, read_records
from district.log import DistrictLog
from district.privacy import mask_name
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from proto import sync_pb2 as pb
from sync.changes import DossierStatus
from sync.keys import generate_keypair, load_private_key, load_public_key
from sync.mqtt import BrokerSettings
from sync.pin import verify_pin
from tests.broker import MosquittoBroker
from tests.conftest import REPO
from tests.sync_helpers import (
    DISTRICT,
    EMBEDDER,
    add_citizens,
    new_district,
    reference_store,
    unit,
    wait_for,
)


def motcua(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "motcua", *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=120,
    )


def test_mask_name() -> None:
    assert mask_name("Nguyễn Thị Thu") == "Nguyễn T. T***"
    assert mask_name("  Trần   Văn  An ") == "Trần V. A***"
    assert mask_name("Lê Ánh") == "Lê Á***"
    assert mask_name("Obama") == "O***"
    with pytest.raises(ValueError):
        mask_name("   ")


def test_log_numbers_changes_and_delete_erases_history(tmp_path: Path) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 3)
    assert dlog.head_seq == 6
    seq = dlog.update_dossier(
        "HS-0000001", status=DossierStatus.RESULT_READY, appointment_on="2026-12-01"
    )
    assert seq == 7 and dlog.dossier("HS-0000001").status is DossierStatus.RESULT_READY
    marker = dlog.changes(3, 3)[0]  # the upsert of citizen 1 (its embedding bytes)
    emb_bytes = pb.Change.FromString(marker).citizen_upsert.embeddings
    assert dlog.delete_citizen("c0000001") == 8
    # earlier entries about the citizen are now sent as deletes of that citizen
    for blob in dlog.changes(3, 7)[0:2] + dlog.changes(7, 7):
        c = pb.Change.FromString(blob)
        assert (
            c.WhichOneof("kind") == "citizen_delete" and c.citizen_delete.citizen_id == "c0000001"
        )
    assert [pb.Change.FromString(b).seq for b in dlog.changes(1, 8)] == list(range(1, 9))
    with pytest.raises(DistrictError, match="no citizen"):
        dlog.delete_citizen("c0000001")
    with pytest.raises(DistrictError, match="no dossier"):
        dlog.update_dossier("HS-0000001", stage="x")
    dlog.close()
    # the embedding no longer exists anywhere in the file (secure_delete, WAL checkpointed)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("d.sqlite"))
    assert emb_bytes not in raw and len(emb_bytes) == 64


def test_log_refuses_what_a_terminal_would_refuse(tmp_path: Path) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 1)
    head = dlog.head_seq
    with pytest.raises(DistrictError, match="YYYY-MM-DD"):
        dlog.update_dossier("HS-0000000", appointment_on="mai")
    with pytest.raises(DistrictError, match="embeddings"):
        dlog.upsert_citizen("x", masked_name="X***", embeddings=np.ones((1, 8), np.float32))
    with pytest.raises(DistrictError, match="non-finite"):
        dlog.upsert_citizen(
            "x", masked_name="X***", embeddings=np.full((1, 16), np.nan, np.float32)
        )
    assert dlog.head_seq == head  # nothing written
    with pytest.raises(DistrictError, match="exists"):
        new_district(tmp_path / "d.sqlite")
    with pytest.raises(DistrictError, match="district id"):
        new_district(tmp_path / "e.sqlite", district="q1/#")


def test_keys_are_private_and_checked(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    key = load_private_key(tmp_path / "k")
    pub = load_public_key(tmp_path / "k.pub")
    pub.verify(key.sign(b"x"), b"x")
    with pytest.raises(ConfigError, match="refusing"):
        generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(ConfigError, match="too open"):
        load_private_key(tmp_path / "k")
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_public_key(tmp_path / "bad.pub")


def test_records_csv_and_json_and_their_errors(tmp_path: Path) -> None:
    csv_file = tmp_path / "r.csv"
    csv_file.write_text(
        "citizen_id,full_name,phone,dossier_code,procedure,status,stage,received_on,"
        "appointment_on,counter\n"
        "001,Nguyễn Thị Thu,0912 345 678,HS-1,Đăng ký kết hôn,processing,Phòng Tư pháp,"
        "2026-11-01,,3\n"
        "001,Nguyễn Thị Thu,0912 345 678,HS-2,Cấp bản sao,received,Một cửa,2026-11-02,"
        "2026-11-09,1\n"
        "002,Trần Văn An,0987654321,,,,,,,\n",
        encoding="utf-8",
    )
    recs = read_records(csv_file)
    assert [r.citizen_id for r in recs] == ["001", "002"]
    assert [d.code for d in recs[0].dossiers] == ["HS-1", "HS-2"]
    assert recs[0].dossiers[0].status is DossierStatus.PROCESSING and recs[1].dossiers == []
    js = tmp_path / "r.json"
    js.write_text(
        json.dumps(
            [
                {
                    "citizen_id": "9",
                    "full_name": "Lê Ánh",
                    "phone": "",
                    "pin": "4321",
                    "dossiers": [
                        {
                            "code": "A",
                            "procedure": "p",
                            "status": "result_ready",
                            "received_on": "2026-01-01",
                        }
                    ],
                }
            ]
        )
    )
    (rec,) = read_records(js)
    assert rec.pin == "4321" and rec.dossiers[0].status is DossierStatus.RESULT_READY
    bad = {
        "status": '[{"citizen_id":"1","full_name":"A B","dossiers":[{"code":"x","procedure":"p",'
        '"status":"lost","received_on":"2026-01-01"}]}]',
        "twice": '[{"citizen_id":"1","full_name":"A B"},{"citizen_id":"1","full_name":"A B"}]',
        "required": '[{"citizen_id":"1"}]',
        "PIN": '[{"citizen_id":"1","full_name":"A B","pin":"12"}]',
        "JSON": "[{",
    }
    for word, text in bad.items():
        (tmp_path / "b.json").write_text(text)
        with pytest.raises(DistrictError, match=word):
            read_records(tmp_path / "b.json")


def _hash_embedder(dim: int) -> PhotoEmbedder:
    """Synthetic embedding: a unit vector seeded by the image pixels (one face per photo)."""

    def embed(image: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        seed = int.from_bytes(image[::7, ::7].tobytes()[:8].ljust(8, b"\0"), "little")
        return unit(np.random.default_rng(seed + image.size), 1, dim)

    return PhotoEmbedder(EMBEDDER, dim, embed)


def test_enrol_real_photo_files_with_synthetic_embedder(tmp_path: Path, media_dir: Path) -> None:
    people = ["barack_obama", "joe_biden", "rose_leslie"]
    (tmp_path / "r.json").write_text(
        json.dumps(
            [
                {
                    "citizen_id": p,
                    "full_name": f"Nguyễn Văn {p.split('_')[0].title()}",
                    "phone": "0912345678",
                    "dossiers": [
                        {
                            "code": f"HS-{p}",
                            "procedure": "Chứng thực",
                            "status": "received",
                            "stage": "Một cửa",
                            "received_on": "2026-11-20",
                        }
                    ],
                }
                for p in people
            ]
        ),
        encoding="utf-8",
    )
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dlog = new_district(tmp_path / "d.sqlite", dim=32)
    res = enrol(dlog, read_records(tmp_path / "r.json"), media_dir / "faces", _hash_embedder(32))
    assert (res.citizens, res.dossiers, res.first_seq, res.last_seq) == (3, 3, 1, 6)
    assert res.photos == 6 + 2 + 2  # every photo of each person
    assert len(res.issued_pins) == 3 and all(len(p) == 6 for _, _, p in res.issued_pins)
    store = reference_store(dlog, GalleryStore.open(tmp_path / "s", embedder_id=EMBEDDER, dim=32))
    rec = store.citizen("joe_biden")
    assert rec is not None and rec.masked_name == "Nguyễn V. J***"
    pin = next(p for c, _, p in res.issued_pins if c == "joe_biden")
    assert verify_pin(pin, rec.pin_hash, rec.pin_salt)
    store.close()
    # a citizen whose only photo is unreadable: clear error, nothing written
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "x.json").write_text('[{"citizen_id": "x", "full_name": "A B"}]')
    with pytest.raises(DistrictError, match="no usable face"):
        enrol(dlog, read_records(tmp_path / "x.json"), tmp_path / "p", _hash_embedder(32))
    with pytest.raises(DistrictError, match="embedder"):
        enrol(dlog, read_records(tmp_path / "x.json"), tmp_path / "p", _hash_embedder(16))
    assert dlog.head_seq == 6


def test_cli_commands_and_one_line_errors(tmp_path: Path) -> None:
    motcua("district", "keygen", "--out", str(tmp_path / "keys"))
    r = motcua("district", "keygen", "--out", str(tmp_path / "keys"), check=False)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "refusing" in r.stderr
    db = str(tmp_path / "d.sqlite")
    motcua(
        "district", "init", "--db", db, "--district", "q7", "--embedder-id", EMBEDDER, "--dim", "16"
    )
    dlog = DistrictLog.open(Path(db))
    add_citizens(dlog, 2)
    dlog.close()
    out = motcua("district", "update", "--db", db, "HS-0000001", "--status", "result_ready").stdout
    assert "change 5" in out
    assert "change 6" in motcua("district", "delete", "--db", db, "c0000000").stdout
    info = motcua("district", "info", "--db", db).stdout
    assert "head 6" in info and "citizens 1" in info
    r = motcua("district", "delete", "--db", db, "c0000000", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "motcua: error: no citizen c0000000"
    r = motcua("district", "fleet", "--district", "q7", "--broker", "nonsense", check=False)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_compact_and_new_epoch_from_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    dlog = new_district(db, dim=16)
    add_citizens(dlog, 10)  # changes 1..20, none published yet
    assert dlog.compact(5) == 0  # unpublished changes are never removed
    dlog.mark_published(12)
    with pytest.raises(DistrictError, match="keep"):
        dlog.compact(0)
    dlog.close()
    out = motcua("district", "compact", "--db", str(db), "--keep", "4").stdout
    assert "8 change(s) removed; replays now start at change 9" in out
    assert "compacted up to change 8" in motcua("district", "info", "--db", str(db)).stdout
    r = motcua("district", "compact", "--db", str(db), "--keep", "0", check=False)
    assert r.returncode == 2 and "--keep" in r.stderr
    dlog = DistrictLog.open(db)
    with pytest.raises(DistrictError, match="compacted away"):
        dlog.changes(8, 10)
    assert len(dlog.changes(9, 20)) == 12 and dlog.head_seq == 20
    # a snapshot still has everything: it is built from the current state, not the log
    with dlog.snapshot() as (last, n_citizens, n_dossiers, _rows):
        assert (last, n_citizens, n_dossiers) == (20, 10, 10)
    dlog.close()
    r = motcua("district", "new-epoch", "--db", str(db), check=False)
    assert r.returncode == 2 and "--yes" in r.stderr  # not without confirming
    assert "epoch 2" in motcua("district", "new-epoch", "--db", str(db), "--yes").stdout
    dlog = DistrictLog.open(db)
    assert dlog.epoch == 2 and dlog.head_seq == 20
    dlog.close()


def published(db: Path) -> int:
    """The publisher's progress as recorded in the log (another connection, like an operator)."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'published_seq'").fetchone()
    conn.close()
    return int(row[0])


def test_publisher_crash_between_batches_resumes_without_gap(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    keys = tmp_path / "keys"
    generate_keypair(keys / "district.key", keys / "district.pub")
    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 5)
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=16)
    reference_store(dlog, store)  # the terminal starts in sync; all the rest comes live
    dlog.mark_published(dlog.head_seq)
    add_citizens(dlog, 3000, start=100)  # 6000 changes = 600 batches of 10
    sub = TerminalSubscriber(
        store,
        BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0, reconnect_max_s=0),
        district_id=DISTRICT,
        terminal_id="t1",
        public_key=load_public_key(keys / "district.pub"),
        spool_dir=tmp_path,
        gap_timeout_s=0.3,
        request_retry_s=0.5,
    ).start()
    cmd = [
        sys.executable,
        "-m",
        "motcua",
        "district",
        "publish",
        "--db",
        str(tmp_path / "d.sqlite"),
        "--key",
        str(keys / "district.key"),
        "--broker",
        f"{broker.host}:{broker.port}",
        "--batch-max-changes",
        "10",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start_publisher() -> subprocess.Popen[bytes]:
        with open(tmp_path / "pub.log", "ab") as err:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)

    try:
        wait_for(sub.connected.is_set, what="terminal connected")
        proc = start_publisher()
        try:
            wait_for(
                lambda: published(tmp_path / "d.sqlite") > 500,
                timeout=30,
                what="some batches published",
            )
        finally:
            proc.send_signal(signal.SIGKILL)  # crash: no clean shutdown
            proc.wait()
        crashed_at = published(tmp_path / "d.sqlite")
        assert 500 <= crashed_at < dlog.head_seq, "the crash must happen mid-stream"
        proc = start_publisher()
        try:
            wait_for(lambda: store.last_seq == dlog.head_seq, timeout=60, what="resumed to head")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0, (tmp_path / "pub.log").read_text()
        ref = reference_store(
            dlog, GalleryStore.open(tmp_path / "ref", embedder_id=EMBEDDER, dim=16)
        )
        assert store.content_hash() == ref.content_hash()
        ref.close()
        # no gap: the terminal never had to ask for a replay or snapshot; at most the one
        # batch in flight at the crash was sent twice (and ignored as a duplicate)
        assert sum(sub.engine.requests.values()) == 0
        assert sub.engine.duplicates <= 1
        assert sum(sub.engine.rejections.values()) == sub.engine.duplicates
    finally:
        sub.stop()
        store.close()


def test_key_rotation_terminal_accepts_every_installed_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.errors import MessageRejected
    from sync.keys import load_public_keys, public_pem
    from sync.wire import open_envelope, seal

    old, new, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    pub = tmp_path / "district.pub"
    pub.write_bytes(public_pem(old.public_key()) + public_pem(new.public_key()))
    keys = load_public_keys(pub)
    assert len(keys) == 2
    for key in (old, new):
        env = open_envelope(
            seal(key, "q1", pb.PAYLOAD_KIND_MANIFEST, b"\x08\x01"),
            district_id="q1",
            public_key=keys,
            max_bytes=1000,
        )
        assert env.body == b"\x08\x01"
    with pytest.raises(MessageRejected, match="signature"):
        open_envelope(
            seal(stranger, "q1", pb.PAYLOAD_KIND_MANIFEST, b"\x08\x01"),
            district_id="q1",
            public_key=keys,
            max_bytes=1000,
        )
    (tmp_path / "empty.pub").write_text("")
    with pytest.raises(ConfigError, match="no PEM public key"):
        load_public_keys(tmp_path / "empty.pub")


def test_sync_config_reaches_the_broker_settings(tmp_path: Path) -> None:
    from edge.config import config_from_dict
    from edge.terminal_cli import sync_link
    from sync.keys import public_pem

    (tmp_path / "d.pub").write_bytes(public_pem(new_key_pair().public_key()))
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = config_from_dict(
        {
            "sync": {
                "broker": "broker.q1:8883",
                "username": "t-a",
                "password_file": str(tmp_path / "pw"),
                "district_key_file": str(tmp_path / "d.pub"),
                "keepalive_s": 10,
                "session_expiry_s": 3600,
                "reconnect_min_s": 0.5,
                "reconnect_max_s": 30,
            }
        }
    )
    link = sync_link(cfg)
    assert link is not None
    b = link.broker
    assert (b.host, b.port, b.username, b.password) == ("broker.q1", 8883, "t-a", "s3cret")
    assert (b.keepalive_s, b.session_expiry_s, b.reconnect_min_s, b.reconnect_max_s) == (
        10,
        3600,
        0.5,
        30.0,
    )
    assert len(link.public_key) == 1
    with pytest.raises(ConfigError, match="sync.reconnect_min_s"):
        config_from_dict({"sync": {"reconnect_min_s": 5, "reconnect_max_s": 1}})
    with pytest.raises(ConfigError, match="sync.keepalive_s"):
        config_from_dict({"sync": {"keepalive_s": 1}})


def new_key_pair():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()
