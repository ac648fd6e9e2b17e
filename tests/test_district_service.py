"""``motcua district serve``: the ingest API (real uvicorn on a free port, real HTTP), the
publisher to a real Mosquitto, a real terminal store + sync client + display state, the
bulk import (killed with SIGKILL and resumed), the service process (JSON logs, SIGTERM)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from district.config import IngestSection, load_district_config
from district.enrol import pipeline_embedder
from district.log import DistrictLog
from district.service import DistrictService, openapi_json, schema_app
from edge.api.state import DisplayState
from edge.session import events as ev
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from proto import display_pb2 as dpb
from sync.changes import DossierStatus
from sync.keys import load_public_key
from sync.localbroker import free_port
from sync.mqtt import BrokerSettings
from tests.broker import MosquittoBroker
from tests.district_helpers import TOKEN, serve_process, write_district_config
from tests.sync_helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
DISTRICT = "q7"


def write_config(tmp: Path, broker: MosquittoBroker, port: int, db: Path) -> Path:
    """This file's district config (tests/district_helpers.py), with ingest bounds below
    the defaults (4 MiB bodies, 50-event batches) for the tests to reach."""
    return write_district_config(tmp, broker, district=DISTRICT, db=db, port=port,
                                 ingest="max_body_bytes = 4194304\nmax_batch_events = 50")


@pytest.fixture
def district(tmp_path: Path, broker: MosquittoBroker, face_pipeline):  # type: ignore[no-untyped-def]
    db = tmp_path / "district.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id=face_pipeline.embedder_id,
                       dim=int(face_pipeline.embedder.dim)).close()
    cfg = load_district_config(write_config(tmp_path, broker, free_port(), db))
    svc = DistrictService(cfg, embedder=pipeline_embedder(face_pipeline)).start()
    try:
        yield svc
    finally:
        svc.stop()


def call(svc: DistrictService, method: str, path: str, body: object = None,
         token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(svc.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def photo(media_dir: Path, person: str = "barack_obama", name: str = "1.jpg") -> str:
    return base64.b64encode((media_dir / "faces" / person / name).read_bytes()).decode()


def enrol_event(media_dir: Path, cid: str = "c1", eid: str = "e-enrol-1") -> dict[str, Any]:
    return {"event_id": eid, "kind": "citizen.enrolled", "version": 1,
            "data": {"citizen_id": cid, "full_name": "Nguyễn Văn An", "pin": "2468",
                     "date_of_birth": "02/09/1985", "photos": [photo(media_dir)]}}


def dossier_event(code: str = "HS-1", cid: str = "c1", eid: str = "e-d-1",
                  version: int = 1) -> dict[str, Any]:
    return {"event_id": eid, "kind": "dossier.created", "version": version,
            "data": {"code": code, "citizen_id": cid, "procedure": "Cấp phép xây dựng",
                     "status": "received", "received_on": "2026-11-02"}}


def status_event(status: str, version: int, eid: str, code: str = "HS-1") -> dict[str, Any]:
    return {"event_id": eid, "kind": "dossier.status_changed", "version": version,
            "data": {"code": code, "status": status}}


def head(svc: DistrictService) -> int:
    return svc.log.head_seq


def seed(svc: DistrictService, media_dir: Path) -> None:
    assert call(svc, "POST", "/v1/events", enrol_event(media_dir))[0] == 200
    assert call(svc, "POST", "/v1/events", dossier_event())[0] == 200


# ---- auth, health ----------------------------------------------------------------------


def test_auth_health_readiness_metrics(district: DistrictService, media_dir: Path) -> None:
    ev_ = status_event("processing", 2, "e-auth")
    assert call(district, "POST", "/v1/events", ev_, token=None)[0] == 401
    status, body = call(district, "POST", "/v1/events", ev_, token="t" * 39 + "u")
    assert status == 401 and body["errors"][0]["message"] == "missing or wrong bearer token"
    assert call(district, "POST", "/v1/events/batch", {"events": [ev_]}, token="")[0] == 401
    assert head(district) == 0  # nothing got through
    assert call(district, "GET", "/healthz", token=None) == (200, "ok\n")
    wait_for(lambda: call(district, "GET", "/readyz", token=None)[0] == 200, 20, "ready")
    seed(district, media_dir)
    metrics = call(district, "GET", "/metrics", token=None)[1]
    assert ('motcua_district_ingest_events_total{kind="dossier.created",outcome="applied"} 1.0'
            in metrics)
    assert "motcua_district_publish_lag_changes" in metrics
    assert 'motcua_district_request_seconds_count{code="401",method="POST",path="/v1/events"}' \
        in metrics


def test_readiness_follows_the_broker(tmp_path: Path, face_pipeline) -> None:  # type: ignore[no-untyped-def]
    b = MosquittoBroker(tmp_path / "broker").start()
    db = tmp_path / "d.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id="x", dim=4).close()
    svc = DistrictService(load_district_config(write_config(tmp_path, b, free_port(), db)))
    svc.start()
    try:
        wait_for(lambda: call(svc, "GET", "/readyz", token=None)[0] == 200, 20, "ready")
        b.close()
        wait_for(lambda: call(svc, "GET", "/readyz", token=None)[0] == 503, 20, "not ready")
        assert call(svc, "GET", "/healthz", token=None)[0] == 200
    finally:
        svc.stop()


def test_token_file_is_checked(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 32"):
        IngestSection(token_file=tmp_path / "short").read_token()
    with pytest.raises(ConfigError, match="token_file: required"):
        IngestSection().read_token()
    with pytest.raises(ConfigError, match="listen"):
        IngestSection(listen="nowhere").validate("ingest")


# ---- each event kind -------------------------------------------------------------------


def test_each_event_kind_applies(district: DistrictService, media_dir: Path) -> None:
    dlog = district.log
    status, r = call(district, "POST", "/v1/events", enrol_event(media_dir))
    assert status == 200 and r["outcome"] == "applied" and r["seq"] == 1, r
    c = dlog.citizen("c1")
    assert c is not None and c.masked_name != "Nguyễn Văn An" and c.embeddings.shape[0] == 1
    assert c.dob_hash and c.pin_hash
    assert call(district, "POST", "/v1/events", dossier_event())[1]["outcome"] == "applied"
    assert dlog.dossier("HS-1").status is DossierStatus.RECEIVED
    call(district, "POST", "/v1/events", status_event("result_ready", 2, "e-s-2"))
    assert dlog.dossier("HS-1").status is DossierStatus.RESULT_READY
    call(district, "POST", "/v1/events", {
        "event_id": "e-stage", "kind": "dossier.stage_changed", "version": 3,
        "data": {"code": "HS-1", "stage": "Phòng Tài nguyên", "counter": "4"}})
    d = dlog.dossier("HS-1")
    assert (d.stage, d.counter) == ("Phòng Tài nguyên", "4")
    call(district, "POST", "/v1/events", {
        "event_id": "e-appt", "kind": "dossier.appointment_moved", "version": 4,
        "data": {"code": "HS-1", "appointment_on": "2026-12-24"}})
    assert dlog.dossier("HS-1").appointment_on == "2026-12-24"
    # citizen.updated: a new name and a second photo set; the PIN is kept
    status, r = call(district, "POST", "/v1/events", {
        "event_id": "e-upd", "kind": "citizen.updated", "version": 2,
        "data": {"citizen_id": "c1", "full_name": "Trần Thị Bình",
                 "photos": [photo(media_dir, "barack_obama", "2.jpg"),
                            photo(media_dir, "barack_obama", "1.jpg")]}})
    assert status == 200, r
    c2 = dlog.citizen("c1")
    assert c2 is not None and c2.masked_name != c.masked_name
    assert c2.embeddings.shape[0] == 2 and c2.pin_hash == c.pin_hash
    status, r = call(district, "POST", "/v1/events", {
        "event_id": "e-del", "kind": "citizen.deleted", "version": 3,
        "data": {"citizen_id": "c1"}})
    assert status == 200 and r["outcome"] == "applied"
    assert dlog.citizen("c1") is None and dlog.info().dossier_count == 0
    assert head(district) == 7


def test_enrol_without_pin_issues_one_once(district: DistrictService, media_dir: Path) -> None:
    e = enrol_event(media_dir)
    del e["data"]["pin"]
    r = call(district, "POST", "/v1/events", e)[1]
    assert r["outcome"] == "applied" and r["issued_pin"].isdigit()
    again = call(district, "POST", "/v1/events", e)[1]
    assert again["outcome"] == "duplicate" and again["issued_pin"] == ""


# ---- repeated, out-of-order, malformed ---------------------------------------------------


def test_repeated_event_is_a_no_op(district: DistrictService, media_dir: Path) -> None:
    seed(district, media_dir)
    e = status_event("processing", 2, "e-rep")
    first = call(district, "POST", "/v1/events", e)[1]
    n = head(district)
    for _ in range(3):
        r = call(district, "POST", "/v1/events", e)[1]
        assert r == {**first, "outcome": "duplicate"}
    # even a repeat whose body differs (a retry after the source changed it) is the same event
    assert call(district, "POST", "/v1/events", {**e, "data": {"code": "HS-1",
                "status": "rejected"}})[1]["outcome"] == "duplicate"
    assert head(district) == n and district.log.dossier("HS-1").status is DossierStatus.PROCESSING


def test_older_event_never_overwrites_a_newer_one(district: DistrictService,
                                                  media_dir: Path) -> None:
    seed(district, media_dir)
    assert call(district, "POST", "/v1/events",
                status_event("result_ready", 10, "e-new"))[1]["outcome"] == "applied"
    n = head(district)
    r = call(district, "POST", "/v1/events", status_event("processing", 9, "e-old"))[1]
    assert r["outcome"] == "stale"
    # other kinds about the same dossier are ordered by the same per-entity version
    r = call(district, "POST", "/v1/events", {
        "event_id": "e-old-appt", "kind": "dossier.appointment_moved", "version": 5,
        "data": {"code": "HS-1", "appointment_on": "2027-01-01"}})[1]
    assert r["outcome"] == "stale"
    d = district.log.dossier("HS-1")
    assert d.status is DossierStatus.RESULT_READY and d.appointment_on == ""
    assert head(district) == n
    # a citizen deleted at version 7: a late update of version 6 does not bring them back
    call(district, "POST", "/v1/events", {"event_id": "e-cdel", "kind": "citizen.deleted",
                                          "version": 7, "data": {"citizen_id": "c1"}})
    r = call(district, "POST", "/v1/events", {
        "event_id": "e-late", "kind": "citizen.updated", "version": 6,
        "data": {"citizen_id": "c1", "full_name": "Lê Văn Cường"}})[1]
    assert r["outcome"] == "stale" and district.log.citizen("c1") is None
    late_enrol = enrol_event(media_dir, eid="e-late-enrol")  # version 1 < 7
    assert call(district, "POST", "/v1/events", late_enrol)[1]["outcome"] == "stale"
    assert district.log.citizen("c1") is None


@pytest.mark.parametrize(("body", "field"), [
    ({"event_id": "x", "kind": "dossier.status_changed", "version": 2,
      "data": {"code": "HS-1", "status": "done"}}, "data.status"),
    ({"event_id": "x", "kind": "dossier.status_changed", "version": -1,
      "data": {"code": "HS-1", "status": "processing"}}, "version"),
    ({"event_id": "", "kind": "dossier.status_changed", "version": 2,
      "data": {"code": "HS-1", "status": "processing"}}, "event_id"),
    ({"kind": "dossier.status_changed", "version": 2,
      "data": {"code": "HS-1", "status": "processing"}}, "event_id"),
    ({"event_id": "x", "kind": "dossier.exploded", "version": 2, "data": {}}, "kind"),
    ({"event_id": "x", "kind": "dossier.appointment_moved", "version": 2,
      "data": {"code": "HS-1", "appointment_on": "2026-02-30"}}, "data.appointment_on"),
    ({"event_id": "x", "kind": "dossier.stage_changed", "version": 2,
      "data": {"code": "HS-1", "stage": "a\x00b"}}, "data.stage"),
    ({"event_id": "x", "kind": "dossier.status_changed", "version": 2,
      "data": {"code": "HS-1", "status": "processing", "extra": 1}}, "data.extra"),
    ({"event_id": "x", "kind": "dossier.status_changed", "version": "2",
      "data": {"code": "HS-1" * 100, "status": "processing"}}, "data.code"),
    ({"event_id": "x", "kind": "citizen.enrolled", "version": 2,
      "data": {"citizen_id": "c9", "full_name": "A B", "photos": []}}, "data.photos"),
])
def test_malformed_event_is_refused_naming_the_field(
        district: DistrictService, media_dir: Path, body: dict[str, Any], field: str) -> None:
    seed(district, media_dir)
    n = head(district)
    status, r = call(district, "POST", "/v1/events", body)
    assert status == 422, r
    assert r["errors"][0]["field"] == field, r
    assert head(district) == n and district.log.dossier("HS-1").status is DossierStatus.RECEIVED


def test_bad_photos_and_state_conflicts_change_nothing(district: DistrictService,
                                                      media_dir: Path) -> None:
    seed(district, media_dir)
    n = head(district)
    cases = [
        ("not base64 at all!", 422, "data.photos[0]", "base64"),
        (base64.b64encode(b"GIF89a" + b"\0" * 100).decode(), 422, "data.photos[0]", "JPEG"),
        (photo(media_dir, "barack_obama", "1.jpg")[:2000], 422, "data.photos[0]", ""),
    ]
    for i, (data, code, field, words) in enumerate(cases):
        e = enrol_event(media_dir, cid="c2", eid=f"bad-{i}")
        e["data"]["photos"] = [data]
        status, r = call(district, "POST", "/v1/events", e)
        assert status == code and r["errors"][0]["field"] == field, r
        assert words in r["errors"][0]["message"]
    # a picture without a face
    e = enrol_event(media_dir, cid="c2", eid="noface")
    e["data"]["photos"] = [base64.b64encode(_blank_png()).decode()]
    status, r = call(district, "POST", "/v1/events", e)
    assert (status, r["errors"][0]["message"]) == (422, "no face found"), r
    status, r = call(district, "POST", "/v1/events", status_event("processing", 2, "u1", "HS-9"))
    assert status == 409 and r["errors"][0]["field"] == "data.code"
    status, r = call(district, "POST", "/v1/events", dossier_event("HS-2", "nobody", "u2"))
    assert status == 409 and r["errors"][0]["field"] == "data.citizen_id"
    status, r = call(district, "POST", "/v1/events", raw=b"{not json")
    assert status == 422
    for length in (str((4 << 20) + 1), None):  # over [ingest] max_body_bytes; none given
        conn = http.client.HTTPConnection(district.host, district.port, timeout=10)
        conn.putrequest("POST", "/v1/events")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        if length is not None:
            conn.putheader("Content-Length", length)
        conn.endheaders()  # the body is never sent: the answer comes first
        resp = conn.getresponse()
        assert resp.status == (413 if length else 411)
        assert json.loads(resp.read())["errors"][0]["field"] == "body"
        conn.close()
    assert head(district) == n
    # none of the refused events was recorded: sent again once it fits, it applies
    assert call(district, "POST", "/v1/events", dossier_event("HS-9", "c1", "u0"))[0] == 200
    assert call(district, "POST", "/v1/events",
                status_event("processing", 2, "u1", "HS-9"))[1]["outcome"] == "applied"


def _blank_png() -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", np.full((240, 320, 3), 200, np.uint8))
    assert ok
    return bytes(buf)


def test_batch_reports_each_item_and_refuses_a_malformed_one_whole(
        district: DistrictService, media_dir: Path) -> None:
    seed(district, media_dir)
    n = head(district)
    events = [status_event("processing", 2, "b1"), status_event("processing", 2, "b1"),
              status_event("received", 1, "b2"), status_event("processing", 3, "b3", "HS-X"),
              status_event("result_ready", 4, "b4")]
    status, r = call(district, "POST", "/v1/events/batch", {"events": events})
    assert status == 200, r
    assert [x["outcome"] for x in r["results"]] == [
        "applied", "duplicate", "stale", "rejected", "applied"]
    assert r["results"][3]["field"] == "events[3].data.code"
    assert (r["applied"], r["duplicate"], r["stale"], r["rejected"]) == (2, 1, 1, 1)
    assert head(district) == n + 2
    bad = [status_event("returned", 9, "b5"), status_event("nope", 10, "b6")]
    status, r = call(district, "POST", "/v1/events/batch", {"events": bad})
    assert status == 422 and r["errors"][0]["field"] == "events[1].data.status", r
    assert head(district) == n + 2  # b5 was not applied either
    too_many = [status_event("processing", 20 + i, f"m{i}") for i in range(51)]
    assert call(district, "POST", "/v1/events/batch", {"events": too_many})[0] == 413
    assert head(district) == n + 2


# ---- end to end: a status change reaches a terminal's display stream ---------------------


def test_status_change_reaches_a_terminal_display(
        district: DistrictService, media_dir: Path, tmp_path: Path, broker: MosquittoBroker,
        face_pipeline) -> None:  # type: ignore[no-untyped-def]
    seed(district, media_dir)
    store = GalleryStore.open(tmp_path / "term", embedder_id=face_pipeline.embedder_id,
                              dim=int(face_pipeline.embedder.dim))
    sub = TerminalSubscriber(
        store, BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                              reconnect_max_s=1.0),
        district_id=DISTRICT, terminal_id="t1",
        public_key=load_public_key(tmp_path / "keys" / "district.pub"), spool_dir=tmp_path,
    ).start()
    display = DisplayState(store)
    watcher = display.watch("test")
    try:
        wait_for(lambda: store.last_seq == head(district), 30, "the terminal in sync")
        status, r = call(district, "POST", "/v1/events", status_event("result_ready", 2, "e2e"))
        assert status == 200
        wait_for(lambda: store.last_seq == r["seq"], 30, "the change on the terminal")
        display.on_event(ev.Matched("s1", citizen_id="c1", score=0.9, margin=0.3))
        msg = watcher.get(timeout=5)
        while msg is not None and msg.state != dpb.SESSION_STATE_MATCHED:
            msg = watcher.get(timeout=5)
        assert msg is not None
        assert [d.status_label_vi for d in msg.match.dossiers] == ["Đã có kết quả"]
    finally:
        watcher.close()
        sub.stop()
        store.close()


# ---- the import, killed and resumed --------------------------------------------------------


def test_import_killed_mid_run_resumes_without_loss_or_repeat(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    dlog = DistrictLog.create(db, district_id=DISTRICT, embedder_id="x", dim=4)
    from district.synthetic import add_citizens
    add_citizens(dlog, 20)  # dossiers HS-0000000 .. HS-0000019, changes 1..40
    base = dlog.head_seq
    dlog.close()
    n = 3000
    statuses = [s.value for s in DossierStatus]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(status_event(
        statuses[i % len(statuses)], i + 2, f"imp-{i}", f"HS-{i % 20:07d}")) + "\n"
        for i in range(n)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "motcua", "district", "import", str(events), "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def done() -> int:
        with sqlite3.connect(db) as conn:
            count = int(conn.execute("SELECT count(*) FROM ingest_events").fetchone()[0])
        conn.close()
        return count

    wait_for(lambda: done() >= 300 or proc.poll() is not None, 120, "the import under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = done()
    assert 0 < killed_at < n, "killed too late to test a resume"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{n - killed_at} applied, {killed_at} already done" in out.stdout
    assert f"{n}/{n}" in out.stderr  # the progress bar's last state
    dlog = DistrictLog.open(db)
    try:
        assert dlog.head_seq == base + n  # every event exactly once
        for j in range(20):  # each dossier holds the status of its last event
            last = max(i for i in range(n) if i % 20 == j)
            assert dlog.dossier(f"HS-{j:07d}").status.value == statuses[last % len(statuses)]
    finally:
        dlog.close()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"0 applied, {n} already done" in again.stdout


def test_import_refuses_a_malformed_file_before_applying(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    dlog = DistrictLog.create(db, district_id=DISTRICT, embedder_id="x", dim=4)
    from district.synthetic import add_citizens
    add_citizens(dlog, 1)
    base = dlog.head_seq
    dlog.close()
    f = tmp_path / "e.csv"
    f.write_text("event_id,kind,version,code,status\n"
                 "a,dossier.status_changed,2,HS-0000000,processing\n"
                 "b,dossier.status_changed,3,HS-0000000,finished\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "motcua", "district", "import", str(f),
                          "--db", str(db)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "e.csv line 3: data.status:" in out.stderr
    dlog = DistrictLog.open(db)
    assert dlog.head_seq == base
    dlog.close()


# ---- the service process, the schema -------------------------------------------------------


def test_serve_process_logs_json_and_stops_on_sigterm(tmp_path: Path,
                                                     broker: MosquittoBroker) -> None:
    db = tmp_path / "d.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id="x", dim=4).close()
    port = free_port()
    cfg = write_config(tmp_path, broker, port, db)
    proc = serve_process(cfg, stderr=subprocess.PIPE, text=True)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return proc.poll() is not None
    try:
        wait_for(ready, 60, "the service ready")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    with proc.stderr:
        lines = [json.loads(line) for line in proc.stderr.read().splitlines()]
    messages = [x["message"] for x in lines]
    assert any("serving on http://127.0.0.1" in m for m in messages), messages
    assert messages[-1] == "district service stopped"
    assert {"time", "level", "logger", "thread", "message"} <= set(lines[0])


def test_committed_openapi_schema_is_current() -> None:
    committed = (REPO / "docs" / "district-openapi.json").read_text()
    assert committed == openapi_json(schema_app()), (
        "regenerate: python -m motcua district openapi > docs/district-openapi.json")
