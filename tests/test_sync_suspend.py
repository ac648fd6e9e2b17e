"""Face suspension end to end (issue 13): real photos and model pack, the real publisher,
a real Mosquitto, real terminals (sync engine + gallery store).

Enrol with `motcua district enrol`, the terminal finds the citizen by face; `motcua
district suspend-face`; the terminal converges: the held-out photo finds nobody, the
citizen's vectors are gone, record and dossiers stay; a terminal that installs a
snapshot after the suspension never gets the face; re-enrolment through the ingest API's
enrol event lifts it on both."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from district.enrol import pipeline_embedder
from district.ingest import Ingestor, parse_event
from district.log import DistrictLog
from district.publisher import Publisher
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from faces.imagefiles import read_image
from sync.mqtt import BrokerSettings
from tests.broker import MosquittoBroker
from tests.conftest import REPO
from tests.sync_helpers import new_key, wait_for

#: person -> (enrolled photos, held-out probe, photos of the re-enrolment)
PEOPLE = {
    "barack_obama": (["1.jpg", "2.jpg"], "4.jpg", ["3.jpg"]),
    "joe_biden": (["1.jpg"], "2.jpg", []),
    "kit_harington": (["1.jpg", "2.jpg"], "3.jpg", []),
}
SUSPENDED = "barack_obama"
FAST = dict(reconnect_min_s=0.0, reconnect_max_s=0.5)
#: deadline of each wait: generous, the shared machine runs at load averages above 100
WAIT_S = 180.0


def _converge(sub: TerminalSubscriber, cond: Callable[[], bool], what: str) -> None:
    """Wait for ``cond``; on timeout say where the terminal's sync stands."""
    try:
        wait_for(cond, timeout=WAIT_S, what=what)
    except AssertionError as exc:
        e = sub.engine
        raise AssertionError(
            f"{exc}: store at {e.store.epoch}/{e.store.last_seq}, district head "
            f"{e.district_epoch}/{e.district_head}, snapshots {e.snapshots_applied}, "
            f"requests {dict(e.requests)}, rejections {dict(e.rejections)}, "
            f"last error {e.last_error!r}") from None


def _motcua(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "motcua", "district", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300, check=False,
    )


def _terminal(tmp_path: Path, name: str, broker: MosquittoBroker, key, embedder_id: str,
              dim: int) -> tuple[GalleryStore, TerminalSubscriber]:  # type: ignore[no-untyped-def]
    store = GalleryStore.open(tmp_path / name, embedder_id=embedder_id, dim=dim)
    sub = TerminalSubscriber(
        store, BrokerSettings(host=broker.host, port=broker.port, **FAST),
        district_id="q1", terminal_id=name, public_key=key.public_key(),
        spool_dir=tmp_path / f"{name}-spool",
    )
    return store, sub


def test_suspend_face_reaches_terminals_snapshots_and_reenrolment_lifts_it(
    tmp_path: Path, media_dir: Path, broker: MosquittoBroker, face_pipeline
) -> None:  # type: ignore[no-untyped-def]
    faces = media_dir / "faces"
    records = [
        {
            "citizen_id": person,
            "full_name": "Nguyễn Văn Ba",
            "phone": "0912 345 678",
            "pin": "135790",
            "date_of_birth": "02/09/1985",
            "photos": [f"{person}/{p}" for p in enrolled],
            "dossiers": [{
                "code": f"HS-{i}", "procedure": "Chứng thực bản sao", "status": "processing",
                "stage": "Phòng Tư pháp", "received_on": "2026-11-20",
            }],
        }
        for i, (person, (enrolled, _, _)) in enumerate(PEOPLE.items())
    ]
    (tmp_path / "records.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    db = tmp_path / "q1.sqlite"
    assert _motcua("init", "--db", str(db), "--district", "q1").returncode == 0
    out = _motcua("enrol", "--db", str(db), "--records", str(tmp_path / "records.json"),
                  "--photos", str(faces), "--pins-out", str(tmp_path / "pins.csv"))
    assert "enrolled 3 citizens, 3 dossiers, 5 photos" in out.stdout, out.stdout + out.stderr
    probe = {p: face_pipeline.analyse(read_image(faces / p / held)).embeddings[0]
             for p, (_, held, _) in PEOPLE.items()}

    def finds(store: GalleryStore, person: str) -> bool:
        best = store.search(probe[person], 2)[0]
        return best.citizen_id == person and face_pipeline.same_person(best.score)

    def never_finds(store: GalleryStore, person: str) -> bool:
        return all(m.citizen_id != person for m in store.search(probe[person], 3))

    dlog = DistrictLog.open(db)
    key = new_key()
    pub = Publisher(dlog, key, BrokerSettings(host=broker.host, port=broker.port, **FAST))
    s1, sub1 = _terminal(tmp_path, "t1", broker, key, face_pipeline.embedder_id,
                         face_pipeline.embedder.dim)
    s2: GalleryStore | None = None
    sub2: TerminalSubscriber | None = None
    pub.start()
    sub1.start()
    try:
        _converge(sub1, lambda: s1.last_seq == dlog.head_seq, "t1 synced")
        assert all(finds(s1, p) for p in PEOPLE)
        before = s1.citizen(SUSPENDED)
        assert before is not None and before.embedding_count == 2 and before.pin_hash
        assert before.dob_hash
        dossiers = s1.dossiers(SUSPENDED)
        live = s1.index_stats()["live"]

        out = _motcua("suspend-face", "--db", str(db), SUSPENDED,
                      "--reason", '"not me" at t1, 2026-11-29')
        assert out.returncode == 0, out.stderr
        seq = int(out.stdout.split()[-1])
        assert seq == dlog.head_seq and dlog.face_suspended(SUSPENDED)
        _converge(sub1, lambda: s1.last_seq >= seq, "t1 applied the suspension")
        assert never_finds(s1, SUSPENDED)
        assert finds(s1, "joe_biden") and finds(s1, "kit_harington")
        assert s1.index_stats()["live"] == live - 2
        assert s1.citizen_count == 2
        after = s1.citizen(SUSPENDED)
        assert after is not None and after.embedding_count == 0
        assert (after.masked_name, after.pin_hash, after.pin_salt, after.dob_hash) == (
            before.masked_name, before.pin_hash, before.pin_salt, before.dob_hash)
        assert s1.dossiers(SUSPENDED) == dossiers
        s1.verify_index()
        # the second time is a no-op: same change number, nothing new for the terminals
        again = _motcua("suspend-face", "--db", str(db), SUSPENDED, "--reason", "twice")
        assert again.returncode == 0 and int(again.stdout.split()[-1]) == seq
        assert "already suspended" in again.stdout and dlog.head_seq == seq
        unknown = _motcua("suspend-face", "--db", str(db), "nobody", "--reason", "x")
        assert unknown.returncode != 0 and "no citizen nobody" in unknown.stderr
        assert unknown.stderr.count("\n") == 1  # one clear line, no traceback

        # a new terminal (empty store) installs a snapshot taken after the suspension
        s2, sub2 = _terminal(tmp_path, "t2", broker, key, face_pipeline.embedder_id,
                             face_pipeline.embedder.dim)
        sub2.start()
        _converge(sub2, lambda: sub2 is not None and sub2.engine.snapshots_applied >= 1
                  and s2 is not None and s2.last_seq == dlog.head_seq,
                  "t2 installed a snapshot")
        assert never_finds(s2, SUSPENDED) and finds(s2, "joe_biden")
        rec2 = s2.citizen(SUSPENDED)
        assert rec2 is not None and rec2.embedding_count == 0 and rec2.pin_hash
        assert s2.dossiers(SUSPENDED) == dossiers
        assert s2.content_hash() == s1.content_hash()

        # a new epoch: both terminals install a snapshot taken after the suspension
        # (how t1 first synced, live batches or a snapshot, depends on timing)
        had = {sub1: sub1.engine.snapshots_applied, sub2: sub2.engine.snapshots_applied}
        epoch = dlog.new_epoch()
        for sub, store in ((sub1, s1), (sub2, s2)):
            _converge(sub, lambda st=store, su=sub: su.engine.snapshots_applied > had[su]
                      and st.epoch == epoch and st.last_seq == dlog.head_seq,
                      "snapshot of the new epoch installed")
            assert never_finds(store, SUSPENDED) and finds(store, "kit_harington")
            rec = store.citizen(SUSPENDED)
            assert rec is not None and rec.embedding_count == 0
            assert store.dossiers(SUSPENDED) == dossiers
            store.verify_index()
        assert s2.index_stats()["live"] == live - 2

        # re-enrolment with new photos through the ingest API's enrol event lifts it
        ingest = Ingestor(dlog, pipeline_embedder(face_pipeline), on_change=pub.notify)
        photos = [base64.b64encode((faces / SUSPENDED / p).read_bytes()).decode()
                  for p in PEOPLE[SUSPENDED][2]]
        res = ingest.apply(parse_event({
            "event_id": "re-enrol-1", "kind": "citizen.enrolled", "version": 1,
            "data": {"citizen_id": SUSPENDED, "full_name": "Nguyễn Văn Ba", "pin": "135790",
                     "date_of_birth": "02/09/1985", "photos": photos}}))
        assert res.outcome == "applied" and not dlog.face_suspended(SUSPENDED)
        for sub, store in ((sub1, s1), (sub2, s2)):
            _converge(sub, lambda st=store: st.last_seq >= res.seq, "re-enrolment applied")
            assert finds(store, SUSPENDED)
            rec = store.citizen(SUSPENDED)
            assert rec is not None and rec.embedding_count == 1
            assert store.dossiers(SUSPENDED) == dossiers
    finally:
        for sub in (sub1, sub2):
            if sub is not None:
                sub.stop()
        pub.stop()
        for store in (s1, s2):
            if store is not None:
                store.close()
        dlog.close()
