"""The whole terminal with real parts: model pack, store, camera, session loop, gRPC API.

- the Hamilton clip with every sample person enrolled: the display stream shows a match
  for Lin-Manuel Miranda and never for anyone else (liveness off: a recorded clip cannot
  answer a random challenge; the liveness part is tested by the session tests);
- ``motcua terminal run`` as a real process: health SERVING, status, clean SIGTERM;
- ``motcua demo`` without sample media (scikit-image's astronaut) end to end through a real
  Mosquitto, the district service (ingest API, publisher), the sync subscriber and the
  kiosk page: a status change POSTed to the ingest API is on the kiosk at the next look.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.config import (
    DEFAULT_PACK,
    ApiConfig,
    CameraConfig,
    Config,
    SessionConfig,
    TerminalConfig,
)
from edge.service import TerminalService, load_vision
from edge.store.gallery import GalleryStore
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc
from sync.changes import CitizenUpsert, Dossier, DossierStatus, DossierUpsert

REPO = Path(__file__).resolve().parents[1]


def enrol_sample_people(store_dir: Path, media: Path, cfg: Config) -> dict[str, str]:
    """Enrol faces/<person>/1.* of every sample person; returns masked name -> label."""
    from faces.imagefiles import read_image
    from faces.pipeline import load_pipeline

    pipe = load_pipeline(cfg)
    store = GalleryStore.open(store_dir, embedder_id=pipe.embedder_id, dim=pipe.embedder.dim)
    changes: list = []
    names: dict[str, str] = {}
    for i, folder in enumerate(sorted(p for p in (media / "faces").iterdir() if p.is_dir())):
        photo = sorted(folder.glob("1.*"))[0]
        faces = pipe.analyse(read_image(photo))
        assert len(faces) >= 1, photo
        emb = faces.embeddings[faces.detections.largest()][None, :]
        cid = f"c{i:02d}"
        masked = f"Công dân {i:02d} T***"
        names[masked] = folder.name
        changes.append(CitizenUpsert(seq=len(changes) + 1, citizen_id=cid, masked_name=masked,
                                     pin_hash=b"", pin_salt=b"", embeddings=emb))
        changes.append(DossierUpsert(seq=len(changes) + 1, dossier=Dossier(
            code=f"000.00.12.H29-2611{i:02d}-0001", citizen_id=cid, procedure="Đăng ký khai sinh",
            status=DossierStatus.PROCESSING, stage="Phòng Tư pháp", received_on="2026-11-02")))
    store.apply(changes, epoch=1)
    store.close()
    return names


def watch(port: int, into: list[pb.SessionEvent], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stream = pb_grpc.DisplayStub(ch).WatchSession(
                pb.WatchSessionRequest(client_name="e2e"), timeout=120)
            stop_cb = threading.Thread(target=lambda: (stop.wait(), stream.cancel()),
                                       daemon=True)
            stop_cb.start()
            try:
                for msg in stream:
                    into.append(msg)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.CANCELLED, exc  # type: ignore[attr-defined]

    t = threading.Thread(target=run, name="e2e-watch", daemon=True)
    t.start()
    return t


def test_hamilton_clip_matches_lin_manuel_miranda_and_nobody_else(
        media_dir: Path, tmp_path: Path) -> None:
    cfg = Config(
        terminal=TerminalConfig(id="e2e", district="d", state_dir=tmp_path / "state"),
        camera=CameraConfig(source=str(media_dir / "video" / "hamilton_clip.mp4"),
                            loop=False, realtime=True),
        session=SessionConfig(liveness="off"),
        api=ApiConfig(listen="127.0.0.1:0"),
    )
    names = enrol_sample_people(tmp_path / "state" / "store", media_dir, cfg)
    service = TerminalService(cfg, load_vision(cfg))
    got: list[pb.SessionEvent] = []
    stop = threading.Event()
    try:
        service.start()
        watcher = watch(service.api.port, got, stop)
        with grpc.insecure_channel(f"127.0.0.1:{service.api.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            st = pb_grpc.DisplayStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5)
            assert st.gallery_size == 10 and st.model_pack == DEFAULT_PACK
            assert st.store_loaded and st.sync_lag_s == -1.0
        assert service.wait(timeout=90), "the clip did not finish"
        time.sleep(0.5)  # the last messages reach the watcher
    finally:
        stop.set()
        service.stop()
    watcher.join(10)
    matched = [m for m in got if m.state == pb.SESSION_STATE_MATCHED]
    shown = [names[m.match.masked_name] for m in matched]
    assert shown, f"no match on the display stream; states seen: {[m.state for m in got]}"
    assert set(shown) == {"lin_manuel_miranda"}, shown
    # the matched screen carries his masked dossier, never the full code
    assert matched[0].match.dossiers[0].masked_code.endswith("-0001")
    assert "H29" not in matched[0].match.dossiers[0].masked_code
    # nothing of the face stays: the audit line has no embedding, only id/score/outcome
    audit = [json.loads(line) for line in
             (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert any(a["outcome"] == "matched" and a["citizen_id"] for a in audit)
    assert all(set(a) <= {"time", "terminal", "session", "outcome", "citizen_id", "score",
                          "challenge"} for a in audit)


def test_terminal_run_command_serves_health_and_stops_cleanly(
        media_dir: Path, tmp_path: Path) -> None:
    from tests.broker import free_port

    port = free_port()
    conf = tmp_path / "terminal.toml"
    conf.write_text(f"""
[terminal]
id = "cli-test"
district = "d"
state_dir = "{tmp_path / 'state'}"

[camera]
source = "{media_dir / 'video' / 'hamilton_clip.mp4'}"
loop = true

[api]
listen = "127.0.0.1:{port}"

[ops]
log_format = "text"
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "motcua", "--config", str(conf), "terminal",
                             "run", "--no-sync"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        status = None
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        status = pb_grpc.DisplayStub(ch).GetStatus(pb.GetStatusRequest(),
                                                                   timeout=5)
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        assert status is not None, f"never SERVING; rc={proc.poll()}"
        assert status.terminal_id == "cli-test" and status.gallery_size == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_terminal_run_refuses_a_network_address_without_tls(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('[api]\nlisten = "0.0.0.0:50051"\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "motcua", "--config", str(conf), "terminal",
                           "run"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("motcua: error: api.listen")
    assert "Traceback" not in done.stderr


def test_demo_without_sample_media_runs_on_the_astronaut(tmp_path: Path) -> None:
    from motcua.demo import run_demo, summarise

    out = io.StringIO()
    seen: dict[str, object] = {}

    def on_event(event: object) -> None:
        # while the demo runs, the kiosk page serves the same state
        if getattr(event, "kind", "") == "matched" and "url" in seen:
            time.sleep(0.3)
            with urllib.request.urlopen(str(seen["url"]) + "state", timeout=5) as r:
                seen["state"] = json.loads(r.read())

    class Tee(io.StringIO):
        def write(self, s: str) -> int:
            if "open http://" in s:
                seen["url"] = s.split("open ", 1)[1].split(" ", 1)[0]
            return out.write(s)

    result = run_demo(media=None, workdir=tmp_path / "demo", http_listen="127.0.0.1:0",
                      out=Tee(), on_event=on_event)
    text = out.getvalue()
    assert "scikit-image" in text and "no ../shared/media here" in text
    # the made-up date of birth is printed with the PIN, so a visitor can type it
    assert "born 15/08/1980" in text and "demo PIN for every citizen: 2468" in text
    assert "type the citizen's (DDMMYYYY" in text
    # one citizen: too few to calibrate; the pack's point, signed, is what the terminal uses
    assert "operating point published" in text and "too few to calibrate" in text
    assert "decision: threshold" in text and "district: model pack threshold (gallery 1" in text
    assert result.matched and set(result.matched) == {"astronaut (scikit-image)"}
    # the district service: the case system's status change reaches the kiosk
    assert "district service (as `motcua district serve`): ingest API on http://127.0.0.1:" \
        in text and "GET /readyz: ready after" in text
    assert "camera at  10.5 s: astronaut (scikit-image) again, after the status change" \
        in text, text
    sc = result.status_change
    assert sc is not None and sc.ok, text
    assert sc.shown_before is sc.old and sc.shown_after is sc.new is DossierStatus.RESULT_READY
    assert sc.applied_s is not None and sc.shown_s is not None and sc.applied_s < sc.shown_s
    lines = text.splitlines()
    posted = [ln for ln in lines if "case system: POST http://127.0.0.1:" in ln]
    assert len(posted) == 1 and "/v1/events dossier.status_changed ***" in posted[0]
    assert "-> result_ready: applied, change " in posted[0], posted
    assert any(f"terminal: change {sc.seq} applied " in ln and " ms after the POST" in ln
               for ln in lines), text
    shown = [ln for ln in lines if "kiosk: ***" in ln]
    assert len(shown) == 2 and f'"{sc.old.label_vi}" ({sc.old.value})' in shown[0], shown
    assert '"Đã có kết quả" (result_ready), ' in shown[1] and "s after the POST" in shown[1]
    summary = io.StringIO()
    assert summarise(result, summary) == 0
    assert f"status change: {sc.masked_code} of Nguyễn T. T*** {sc.old.value} -> " \
        "result_ready; POST -> terminal " in summary.getvalue()
    assert "POST -> kiosk " in summary.getvalue() and "(at the next look)" in summary.getvalue()
    st = seen.get("state")
    assert isinstance(st, dict) and st["state"] in ("matched", "ended"), st
    if st["state"] == "matched":
        assert st["match"]["masked_name"] == "Nguyễn T. T***"


def test_lookup_image_for_counter_staff_on_the_real_pipeline(
        media_dir: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "0.jpg"), np.full((480, 640, 3), 60, np.uint8))
    cfg = Config(
        terminal=TerminalConfig(id="counter", district="d", state_dir=tmp_path / "state"),
        camera=CameraConfig(source=str(blank), kind="images", loop=True),
        # five lookups in a row from one client: a burst above the default (3), which
        # tests/test_lookup_image.py checks on its own
        api=ApiConfig(listen="127.0.0.1:0", lookup_image=True, lookup_burst=5),
    )
    names = enrol_sample_people(tmp_path / "state" / "store", media_dir, cfg)
    service = TerminalService(cfg, load_vision(cfg))
    try:
        service.start()
        with grpc.insecure_channel(f"127.0.0.1:{service.api.port}") as ch:
            stub = pb_grpc.DisplayStub(ch)
            photo = (media_dir / "faces" / "lin_manuel_miranda" / "1.png").read_bytes()
            r = stub.LookupImage(pb.LookupImageRequest(image=photo), timeout=30)
            assert r.matched and names[r.match.masked_name] == "lin_manuel_miranda"
            assert r.match.dossiers[0].masked_code.startswith("***")
            # another photo of an enrolled person than the one enrolled
            other = (media_dir / "faces" / "joe_biden" / "2.jpg").read_bytes()
            r = stub.LookupImage(pb.LookupImageRequest(image=other), timeout=30)
            assert r.matched and names[r.match.masked_name] == "joe_biden"
            empty = cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))[1].tobytes()
            r = stub.LookupImage(pb.LookupImageRequest(image=empty), timeout=30)
            assert not r.matched
            for bad in (b"not an image at all", photo[: len(photo) // 3]):
                with pytest.raises(grpc.RpcError) as exc:
                    stub.LookupImage(pb.LookupImageRequest(image=bad), timeout=30)
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    finally:
        service.stop()
    outcomes = [json.loads(line)["outcome"] for line in
                (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert outcomes.count("lookup_matched") == 2 and "lookup_no_face" in outcomes


def test_demo_with_the_liveness_challenge_refuses_the_still_photo(tmp_path: Path) -> None:
    from motcua.demo import run_demo

    out = io.StringIO()
    result = run_demo(media=None, workdir=tmp_path / "demo", liveness="challenge",
                      http_listen="127.0.0.1:0", out=out)
    kinds = [k for _, k, _ in result.events]
    assert "challenge" in kinds and "liveness_failed" in kinds, out.getvalue()
    assert result.matched == [] and "matched" not in kinds
    # no planned second look with liveness on: the status change is posted when the camera
    # starts and only the terminal's store is checked
    sc = result.status_change
    assert sc is not None and sc.ok and not sc.looks, out.getvalue()
    assert sc.applied_s is not None and sc.shown_s is None
    assert "again, after the status change" not in out.getvalue()


@pytest.mark.slow
def test_readme_demo_command_on_the_sample_media(media_dir: Path, tmp_path: Path) -> None:
    """`motcua demo` as the README runs it (a process, sample media, real broker)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MOTCUA_MEDIA=str(media_dir))
    done = subprocess.run([sys.executable, "-m", "motcua", "demo", "--listen", "127.0.0.1:0",
                           "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, env=env, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "open http://127.0.0.1:" in out and "synced: 9 citizens" in out
    assert out.count(" born ") == 9  # each enrolled citizen's made-up date of birth
    assert "= lin_manuel_miranda" in out  # the Hamilton clip and his photo
    assert "WRONG MATCHES" not in out
    assert "not recognised" in out  # shea_whigham is left out of the gallery
    matched = [line.split("= ", 1)[1].split(" ", 1)[0] for line in out.splitlines()
               if "MATCHED" in line]
    assert len(matched) >= 5 and "shea_whigham" not in matched, matched
    # the district service runs; the case system's status change reaches the kiosk at the
    # clip person's second look (his photo right after the clip)
    assert "district service (as `motcua district serve`): ingest API on http://" in out
    assert "lin_manuel_miranda again, after the status change" in out
    lines = out.splitlines()
    post = [ln for ln in lines if "case system: POST http://127.0.0.1:" in ln]
    assert len(post) == 1 and "dossier.status_changed" in post[0] \
        and "-> result_ready: applied, change 28" in post[0], post
    assert any("terminal: change 28 applied " in ln for ln in lines), out
    kiosk = [ln for ln in lines if "kiosk: ***" in ln]
    assert '"Đã có kết quả" (result_ready), ' in kiosk[-1] \
        and "s after the POST" in kiosk[-1], kiosk
    assert any(ln.startswith("status change: ") and "of Đặng V. B*** " in ln
               and "-> result_ready; POST -> terminal " in ln and "POST -> kiosk " in ln
               for ln in lines), out
