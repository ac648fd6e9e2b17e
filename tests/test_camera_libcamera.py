"""The libcamera camera kind (a Raspberry Pi camera module through rpicam-vid), with a
stand-in rpicam-vid (tests/fake_rpicam_vid.py) that writes real frames of the sample clip
in rpicam-vid's raw I420 format: frames arrive intact, the terminal loop finds a face in
them, a camera that dies mid-stream is reported and reconnected, a missing rpicam-vid or
camera is a clear CameraError. A real camera module is not tried here."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import CameraError, ConfigError
from edge.camera import Grabber, make_source
from edge.camera.file import VideoFileSource
from edge.camera.libcamera import LibcameraSource
from edge.config import CameraConfig, SessionConfig, config_from_dict
from edge.session.audit import AuditLog
from edge.session.events import CameraState, EventBus, FacePresent, SessionEvent
from edge.session.loop import FrameLoop
from edge.session.machine import SessionMachine
from edge.session.tracker import Tracker
from edge.store import GalleryStore
from faces.pipeline import BgrPorts, FacePipeline

STAND_IN = (sys.executable, str(Path(__file__).with_name("fake_rpicam_vid.py")))
#: the clip's own size (640 is a multiple of 64, 360 even): frames are not rescaled
W, H = 640, 360


@pytest.fixture
def clip(media_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = media_dir / "video" / "hamilton_clip.mp4"
    monkeypatch.setenv("FAKE_RPICAM_VIDEO", str(path))
    monkeypatch.delenv("FAKE_RPICAM_FRAMES", raising=False)
    monkeypatch.delenv("FAKE_RPICAM_NO_CAMERA", raising=False)
    return path


def source(**kw: Any) -> LibcameraSource:
    return LibcameraSource("0", width=W, height=H, fps=30, command=STAND_IN, **kw)


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_frames_are_the_cameras_images(clip: Path) -> None:
    ref = VideoFileSource(clip, realtime=False)
    ref.open()
    src = source()
    src.open()
    try:
        for i in range(10):
            frame = src.read()
            want = ref.read()
            assert frame is not None and want is not None
            assert frame.index == i and frame.image.shape == (H, W, 3)
            # I420 halves the colour resolution: close to the original, not equal
            diff = np.abs(frame.image.astype(int) - want.image.astype(int)).mean()
            assert diff < 4.0, (i, diff)
    finally:
        src.close()
        ref.close()
    assert src.argv()[len(STAND_IN):] == [
        "--camera", "0", "-t", "0", "--codec", "yuv420", "--width", "640", "--height", "360",
        "--framerate", "30", "-n", "--flush", "-o", "-"]


def test_camera_dying_mid_stream_is_a_camera_error(clip: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RPICAM_FRAMES", "5")
    src = source()
    src.open()
    frames = 0
    with pytest.raises(CameraError, match=r"rpicam-vid exited with status 1: ERROR: Device "
                                          r"timeout detected"):
        while src.read() is not None:
            frames += 1
    src.close()
    assert frames == 5


def test_grabber_reports_the_outage_and_reconnects(clip: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RPICAM_FRAMES", "8")
    stop = threading.Event()
    g = Grabber(source(), stop, reconnect_initial_s=0.0, reconnect_max_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 2)
        st = g.status()
        assert st.frames_grabbed >= 16  # it came back after each exit
        assert st.downs >= 2 and "Device timeout" in st.last_error
        assert g.latest(timeout=10) is not None
    finally:
        stop.set()
        g.join(10)


def test_missing_rpicam_vid_is_a_clear_camera_error(clip: Path) -> None:
    src = LibcameraSource("0", command=("rpicam-vid-not-installed",))
    with pytest.raises(CameraError, match="'rpicam-vid-not-installed' not found: install "
                                          "rpicam-apps"):
        src.open()
    stop = threading.Event()
    g = Grabber(src, stop, reconnect_initial_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 1)
        assert not g.status().up and "not found" in g.status().error
    finally:
        stop.set()
        g.join(10)


def test_no_camera_connected(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RPICAM_NO_CAMERA", "1")
    src = source()
    src.open()
    with pytest.raises(CameraError, match=r"status 255: ERROR: \*\*\* no cameras available"):
        src.read()
    src.close()


def test_a_stalled_camera_times_out(tmp_path: Path) -> None:
    """A command that prints nothing: the read gives up after read_timeout_s."""
    src = LibcameraSource("0", command=(sys.executable, "-c", "import time; time.sleep(60)"),
                          read_timeout_s=0.5)
    src.open()
    t0 = time.monotonic()
    with pytest.raises(CameraError, match=r"no frame for 0.5 s"):
        src.read()
    assert time.monotonic() - t0 < 5
    src.close()


def test_config_and_factory() -> None:
    cfg = config_from_dict({"camera": {"kind": "libcamera", "source": "1",
                                       "libcamera_cmd": ["libcamera-vid"], "width": 1280,
                                       "height": 720}}).camera
    src = make_source(cfg)
    assert isinstance(src, LibcameraSource)
    assert src.argv()[:3] == ["libcamera-vid", "--camera", "1"]
    for bad, key in (({"width": 650}, "camera.width"), ({"libcamera_cmd": []}, "libcamera_cmd"),
                     ({"kind": "csi"}, "camera.kind")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"camera": {"kind": "libcamera", **bad}})
    with pytest.raises(CameraError, match="expected a camera number"):
        LibcameraSource("/dev/video0")


class CountingPorts:
    """The real pipeline ports, counting the faces they find."""

    def __init__(self, ports: BgrPorts) -> None:
        self.ports = ports
        self.faces = 0

    def detect(self, image: Any) -> Any:
        dets = self.ports.detect(image)
        self.faces += len(dets)
        return dets

    def embed(self, image: Any, faces: Any) -> Any:
        return self.ports.embed(image, faces)


def test_terminal_loop_finds_a_face_in_the_camera_frames(
        clip: Path, face_pipeline: FacePipeline, tmp_path: Path) -> None:
    ports = CountingPorts(BgrPorts(face_pipeline))
    store = GalleryStore.open(tmp_path / "g", embedder_id=face_pipeline.embedder_id,
                              dim=face_pipeline.embedder.dim)
    stop = threading.Event()
    bus = EventBus()
    events: list[SessionEvent] = []
    bus.add_listener(events.append)
    machine = SessionMachine(SessionConfig(liveness="off"), embedder=ports, gallery=store,
                             threshold=face_pipeline.match_threshold, bus=bus,
                             audit=AuditLog.in_state_dir(tmp_path / "state"))
    cam_cfg = CameraConfig(kind="libcamera", width=W, height=H, libcamera_cmd=STAND_IN,
                           idle_fps=15, active_fps=15)
    grabber = Grabber(make_source(cam_cfg), stop, reconnect_initial_s=0.0).start()
    loop = FrameLoop(detector=ports, machine=machine, tracker=Tracker(), bus=bus,
                     camera=grabber, camera_cfg=cam_cfg)

    def heartbeat() -> None:
        if any(isinstance(e, FacePresent) for e in events):
            stop.set()

    runner = threading.Thread(target=loop.run, args=(stop, heartbeat), name="test-loop")
    runner.start()
    runner.join(120)
    stop.set()
    grabber.join(10)
    store.close()
    assert not runner.is_alive()
    assert any(isinstance(e, FacePresent) for e in events), [type(e).__name__ for e in events]
    assert ports.faces > 0 and loop.frames_processed > 0
    assert [e.up for e in events if isinstance(e, CameraState)][:1] in ([], [True])


def test_doctor_checks_a_libcamera_camera(clip: Path) -> None:
    from edge.ops import doctor

    cam = {"kind": "libcamera", "width": W, "height": H, "libcamera_cmd": list(STAND_IN)}
    found = doctor.check_camera(doctor.Context(config_from_dict({"camera": cam})))
    assert found.status is doctor.Status.OK, found
    cam["libcamera_cmd"] = ["rpicam-vid-not-installed"]
    found = doctor.check_camera(doctor.Context(config_from_dict({"camera": cam})))
    assert found.status is doctor.Status.FAIL and "rpicam-hello --list-cameras" in found.explanation
