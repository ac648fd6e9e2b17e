"""Camera sources, factory and grabber on real media, and camera faults.

Faults tried: a video whose frame data is garbled half-way (fails mid-stream), a file of
random bytes, a missing V4L2 device, a missing file/folder, an image folder with a corrupt
image, an HTTP MJPEG camera that drops the connection mid-stream, and a URL nobody serves.
"""

from __future__ import annotations

import http.server
import random
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import CameraError
from edge.camera import Grabber, guess_kind, make_source
from edge.camera.file import VideoFileSource
from edge.camera.imagefolder import ImageFolderSource
from edge.camera.stream import StreamSource
from edge.camera.v4l2 import V4L2Source
from edge.config import CameraConfig

HAMILTON_FRAMES = 275


@pytest.fixture
def clip(media_dir: Path) -> Path:
    return media_dir / "video" / "hamilton_clip.mp4"


@pytest.fixture
def garbled(clip: Path, tmp_path: Path) -> Path:
    """A copy whose second half of frame data is overwritten with noise (index intact)."""
    data = bytearray(clip.read_bytes())
    mdat = data.find(b"mdat") - 4
    moov = data.find(b"moov") - 4
    assert 0 < mdat < moov  # this clip keeps its index after the frame data
    rng = random.Random(1)
    for p in range((mdat + moov) // 2, moov - 600, 1000):
        data[p : p + 400] = bytes(rng.randrange(256) for _ in range(400))
    out = tmp_path / "garbled.mp4"
    out.write_bytes(bytes(data))
    return out


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_video_file_plays_to_end_then_loops(clip: Path) -> None:
    src = VideoFileSource(clip, realtime=False)
    src.open()
    frames = []
    while (f := src.read()) is not None:
        frames.append((f.index, f.t, f.image.shape))
    src.close()
    assert len(frames) == HAMILTON_FRAMES
    assert frames[0][2] == (360, 640, 3)
    assert frames[-1][1] == pytest.approx((HAMILTON_FRAMES - 1) / 29.97, abs=1e-3)

    looping = VideoFileSource(clip, realtime=False, loop=True)
    looping.open()
    ts = [looping.read() for _ in range(HAMILTON_FRAMES + 10)]
    assert all(f is not None for f in ts)
    assert [f.index for f in ts if f] == list(range(HAMILTON_FRAMES + 10))
    assert all(b.t > a.t for a, b in zip(ts, ts[1:], strict=False) if a and b)
    looping.close()


def test_corrupt_video_fails_mid_stream_with_camera_error(garbled: Path) -> None:
    src = VideoFileSource(garbled, realtime=False)
    src.open()
    n = 0
    with pytest.raises(CameraError, match="truncated or corrupt"):
        while src.read() is not None:
            n += 1
    assert 0 < n < HAMILTON_FRAMES


def test_grabber_reports_mid_stream_failure_and_reconnects(garbled: Path) -> None:
    stop = threading.Event()
    g = Grabber(VideoFileSource(garbled, realtime=False), stop, reconnect_initial_s=0.0,
                reconnect_max_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 2)
        st = g.status()
        assert "truncated or corrupt" in st.error or st.up  # down with the reason, or back
        assert st.frames_grabbed > HAMILTON_FRAMES // 2  # it delivered before failing
        assert g.latest(timeout=5) is not None  # frames keep coming after reconnecting
    finally:
        stop.set()
        g.join(5)
    assert not g.alive


def test_random_bytes_file_never_opens(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    with pytest.raises(CameraError, match="cannot open video"):
        VideoFileSource(junk).open()
    stop = threading.Event()
    g = Grabber(VideoFileSource(junk), stop, reconnect_initial_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 3)
        st = g.status()
        assert not st.up and "cannot open video" in st.error and st.frames_grabbed == 0
        assert g.latest(timeout=0.05) is None
    finally:
        stop.set()
        g.join(5)


def test_missing_device_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no such camera device"):
        V4L2Source(97).open()
    with pytest.raises(CameraError, match="no such camera device"):
        make_source(CameraConfig(source="/dev/video97")).open()
    with pytest.raises(CameraError, match="not found"):
        VideoFileSource(tmp_path / "nope.mp4").open()
    with pytest.raises(CameraError, match="not a device, URL, folder or video file"):
        make_source(CameraConfig(source=str(tmp_path / "nope")))
    stop = threading.Event()
    g = Grabber(V4L2Source("/dev/video97"), stop, reconnect_initial_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 1)
        assert "no such camera device" in g.status().error and not g.status().up
    finally:
        stop.set()
        g.join(5)


def test_factory_guesses_kinds(clip: Path, tmp_path: Path) -> None:
    assert guess_kind("0") == "v4l2"
    assert guess_kind("/dev/video2") == "v4l2"
    assert guess_kind("rtsp://cam.local/stream") == "stream"
    assert guess_kind(str(clip)) == "file"
    assert guess_kind(str(tmp_path)) == "images"
    assert isinstance(make_source(CameraConfig(source=str(clip))), VideoFileSource)
    assert isinstance(make_source(CameraConfig(source=str(tmp_path))), ImageFolderSource)
    assert isinstance(make_source(CameraConfig(source="http://x/y")), StreamSource)
    with pytest.raises(CameraError, match="rtsp"):
        StreamSource("ftp://x")


def test_image_folder_skips_corrupt_images(media_dir: Path, tmp_path: Path) -> None:
    faces = sorted((media_dir / "faces" / "barack_obama").glob("[1-3].jpg"))
    for i, f in enumerate(faces):
        (tmp_path / f"{i:02d}.jpg").write_bytes(f.read_bytes())
    (tmp_path / "01b.jpg").write_bytes(faces[0].read_bytes()[:500])  # truncated JPEG
    (tmp_path / "notes.txt").write_text("ignored")
    src = ImageFolderSource(tmp_path, fps=5, realtime=False)
    src.open()
    got = []
    while (f := src.read()) is not None:
        got.append(f)
    assert len(got) == 3 and src.skipped == 1
    assert [f.t for f in got] == pytest.approx([0.0, 0.2, 0.4])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"\x89PNG nope")
    bad = ImageFolderSource(empty, realtime=False)
    bad.open()
    with pytest.raises(CameraError, match="none of the images"):
        bad.read()


def test_grabber_keeps_only_the_newest_frame(clip: Path) -> None:
    stop = threading.Event()
    g = Grabber(VideoFileSource(clip, realtime=False, loop=True), stop).start()
    try:
        first = g.latest(timeout=10)
        assert first is not None
        wait_for(lambda: g.status().frames_grabbed > first.index + 50)
        newer = g.latest(after=first.index, timeout=10)
        assert newer is not None and newer.index >= first.index + 50
        st = g.status()
        assert st.up and st.frames_dropped > 40 and st.fps > 0
    finally:
        stop.set()
        g.join(5)


def test_finite_source_ends(clip: Path) -> None:
    stop = threading.Event()
    g = Grabber(VideoFileSource(clip, realtime=False), stop).start()
    last = -1
    while (f := g.latest(after=last, timeout=10)) is not None:
        last = f.index
    g.join(5)
    assert g.status().ended and last <= HAMILTON_FRAMES - 1


class _MjpegCamera:
    """An HTTP MJPEG camera on loopback that sends ``per_connection`` frames, then hangs up."""

    def __init__(self, clip: Path, per_connection: int) -> None:
        cap = cv2.VideoCapture(str(clip))
        self.jpegs = []
        for _ in range(per_connection):
            ok, img = cap.read()
            assert ok
            self.jpegs.append(cv2.imencode(".jpg", img)[1].tobytes())
        cap.release()
        jpegs = self.jpegs

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for j in jpegs:
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                    self.wfile.write(head % len(j) + j + b"\r\n")
                    time.sleep(0.01)

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-mjpeg")
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cam.mjpg"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def mjpeg(clip: Path) -> Iterator[_MjpegCamera]:
    cam = _MjpegCamera(clip, per_connection=15)
    yield cam
    cam.close()


def test_http_camera_drops_mid_stream_and_grabber_reconnects(mjpeg: _MjpegCamera) -> None:
    src = StreamSource(mjpeg.url, open_timeout_s=5, read_timeout_s=5)
    src.open()
    n = 0
    with pytest.raises(CameraError, match="stopped delivering"):
        while True:
            assert src.read() is not None
            n += 1
    src.close()
    assert n == 15
    stop = threading.Event()
    g = Grabber(StreamSource(mjpeg.url), stop, reconnect_initial_s=0.0).start()
    try:
        wait_for(lambda: g.status().reconnects >= 2)
        assert g.status().frames_grabbed >= 30  # it came back after each hang-up
    finally:
        stop.set()
        g.join(10)


def test_unreachable_stream(unused_port: int) -> None:
    with pytest.raises(CameraError, match="cannot connect"):
        StreamSource(f"http://127.0.0.1:{unused_port}/x.mjpg", open_timeout_s=2).open()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
