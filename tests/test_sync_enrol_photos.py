"""Enrol real photos with the real model pack (`motcua district enrol`), sync them to a
terminal over Mosquitto, and find each person from a photo that was not enrolled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from district.log import DistrictLog
from district.publisher import Publisher
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from faces.imagefiles import read_image
from sync.mqtt import BrokerSettings
from tests.broker import MosquittoBroker
from tests.conftest import REPO
from tests.sync_helpers import new_key, wait_for

#: person -> (enrolled photos, held-out photo)
PEOPLE = {
    "barack_obama": (["1.jpg", "2.jpg", "3.jpg"], "4.jpg"),
    "joe_biden": (["1.jpg"], "2.jpg"),
    "kit_harington": (["1.jpg", "2.jpg"], "3.jpg"),
    "rose_leslie": (["1.jpg"], "2.jpg"),
    "alex_lacamoire": (["1.jpg", "3.jpg"], "2.png"),
}
NAMES = {
    "barack_obama": "Nguyễn Văn Ba",
    "joe_biden": "Trần Thị Bích",
    "kit_harington": "Lê Hoàng Kiệt",
    "rose_leslie": "Phạm Thị Hồng",
    "alex_lacamoire": "Võ An",
}


def test_enrol_real_photos_sync_and_find(
    tmp_path: Path, media_dir: Path, broker: MosquittoBroker, face_pipeline
) -> None:  # type: ignore[no-untyped-def]
    faces = media_dir / "faces"
    records = [
        {
            "citizen_id": person,
            "full_name": NAMES[person],
            "phone": "0912 345 678",
            "photos": [f"{person}/{p}" for p in enrolled],
            "dossiers": [
                {
                    "code": f"HS-{i}",
                    "procedure": "Chứng thực bản sao",
                    "status": "processing",
                    "stage": "Phòng Tư pháp",
                    "received_on": "2026-11-20",
                    "appointment_on": "2026-11-27",
                }
            ],
        }
        for i, (person, (enrolled, _)) in enumerate(PEOPLE.items())
    ]
    (tmp_path / "records.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    db = tmp_path / "q1.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def motcua(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "motcua", "district", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    motcua("init", "--db", str(db), "--district", "q1")  # embedder of the default pack
    out = motcua(
        "enrol",
        "--db",
        str(db),
        "--records",
        str(tmp_path / "records.json"),
        "--photos",
        str(faces),
        "--pins-out",
        str(tmp_path / "pins.csv"),
    )
    assert "enrolled 5 citizens, 5 dossiers, 9 photos" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "pins.csv").stat().st_mode & 0o777 == 0o600
    assert len((tmp_path / "pins.csv").read_text().splitlines()) == 6

    dlog = DistrictLog.open(db)
    dim = face_pipeline.embedder.dim  # the default pack's (640, the fused one)
    assert dlog.embedder_id == face_pipeline.embedder_id and dlog.dim == dim
    key = new_key()
    fast = dict(reconnect_min_s=0.0, reconnect_max_s=0.5)
    pub = Publisher(dlog, key, BrokerSettings(host=broker.host, port=broker.port, **fast))
    store = GalleryStore.open(tmp_path / "term", embedder_id=face_pipeline.embedder_id, dim=dim)
    sub = TerminalSubscriber(
        store,
        BrokerSettings(host=broker.host, port=broker.port, **fast),
        district_id="q1",
        terminal_id="t1",
        public_key=key.public_key(),
        spool_dir=tmp_path,
    )
    pub.start()
    sub.start()
    try:
        wait_for(lambda: store.last_seq == dlog.head_seq, timeout=60, what="terminal synced")
        assert store.citizen_count == 5
        held_out = {}
        for person, (_, probe) in PEOPLE.items():
            emb = face_pipeline.analyse(read_image(faces / person / probe)).embeddings[0]
            held_out[person] = emb
            best = store.search(emb, 2)
            assert best[0].citizen_id == person, (person, best)
            assert face_pipeline.same_person(best[0].score), (person, best[0].score)
        rec = store.citizen("joe_biden")
        assert rec is not None and rec.masked_name == "Trần T. B***"
        assert "Bích" not in rec.masked_name
        dlog.delete_citizen("barack_obama")
        wait_for(lambda: store.citizen("barack_obama") is None, what="delete applied")
        assert all(
            m.citizen_id != "barack_obama" for m in store.search(held_out["barack_obama"], 4)
        )
    finally:
        sub.stop()
        pub.stop()
        store.close()
        dlog.close()
