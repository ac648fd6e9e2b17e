"""The real terminal under a fake systemd: READY=1, WATCHDOG=1 from its main loop, the
watchdog starves when the loop stalls, and the Prometheus exporter shows its figures.

NOTIFY_SOCKET is a unix datagram socket the test binds (what systemd gives a
Type=notify service); the camera is the sample video; the model pack is the real one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from edge.config import ApiConfig, CameraConfig, Config, SessionConfig, TerminalConfig
from edge.ops.sdnotify import Notifier, WatchdogHook
from edge.service import TerminalService, load_vision
from tests.broker import free_port

REPO = Path(__file__).resolve().parents[1]


def collect(sock: socket.socket, seconds: float, until: str | None = None) -> list[str]:
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            continue
        out.append(msg)
        if until is not None and until in msg:
            break
    return out


def feeds(sock: socket.socket, n: int, timeout: float = 60.0) -> list[str]:
    """Datagrams until ``n`` watchdog feeds came (or ``timeout``): the loop feeds as it
    turns, which on a loaded machine is slower than on an idle one, so no fixed while."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while out.count("WATCHDOG=1") < n and time.monotonic() < deadline:
        out += collect(sock, 0.2)
    return out


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+|NaN)$", text, re.M)
    assert m, f"{name} not in metrics:\n{text[:2000]}"
    return float(m.group(1))


def test_terminal_process_notifies_feeds_watchdog_and_exports_metrics(
        media_dir: Path, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    api_port, metrics_port = free_port(), free_port()
    conf = tmp_path / "terminal.toml"
    conf.write_text(f"""
[terminal]
id = "wd-test"
district = "d"
state_dir = "{tmp_path / 'state'}"

[camera]
source = "{media_dir / 'video' / 'hamilton_clip.mp4'}"
loop = true

[api]
listen = "127.0.0.1:{api_port}"

[ops]
log_format = "json"
metrics_listen = "127.0.0.1:{metrics_port}"
""")
    env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(sock_path),
               WATCHDOG_USEC="1000000")  # 1 s: the loop must feed every 0.5 s
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "motcua", "--config", str(conf), "terminal",
                             "run", "--no-sync"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = collect(sock, 90, until="READY=1")
        assert any(m.startswith("READY=1") for m in first), (first, proc.poll())
        feeding = feeds(sock, 3)
        assert feeding.count("WATCHDOG=1") >= 3, feeding
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        assert metric(text, "motcua_frames_total") > 0
        assert metric(text, 'motcua_stage_latency_seconds_count{stage="detect"}') > 0
        assert metric(text, "motcua_store_size_bytes") > 0          # gallery.db exists
        assert metric(text, "motcua_gallery_citizens") == 0
        assert metric(text, 'motcua_build_info{version="0.1.0"}') == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-3000:]
        assert "STOPPING=1" in collect(sock, 1.0, until="STOPPING=1")
        # journal-ready log lines: one JSON object each
        import json

        lines = [ln for ln in err.splitlines() if ln.startswith("{")]
        assert lines and all(json.loads(ln)["level"] for ln in lines), err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()


class StallingDetector:
    """The real detector, except that it blocks forever once ``stall`` is set (as a wedged
    inference call or a driver deadlock would)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.stall = threading.Event()
        self.release = threading.Event()
        self.stalled = threading.Event()

    def detect(self, image):  # type: ignore[no-untyped-def]
        if self.stall.is_set():
            self.stalled.set()
            self.release.wait()
        return self.inner.detect(image)  # type: ignore[attr-defined]


def test_stalled_terminal_loop_stops_feeding_the_watchdog(media_dir: Path,
                                                          tmp_path: Path) -> None:
    import dataclasses

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    cfg = Config(
        terminal=TerminalConfig(id="wd", district="d", state_dir=tmp_path / "state"),
        camera=CameraConfig(source=str(media_dir / "video" / "hamilton_clip.mp4"), loop=True),
        session=SessionConfig(liveness="off"),
        api=ApiConfig(listen="127.0.0.1:0"),
    )
    vision = load_vision(cfg)
    detector = StallingDetector(vision.detector)
    vision = dataclasses.replace(vision, detector=detector)
    hook = WatchdogHook(Notifier(str(sock_path)), interval=0.4)   # feeds every 0.2 s
    service = TerminalService(cfg, vision, heartbeat=hook.tick)
    try:
        service.start()
        healthy = feeds(sock, 4)  # 0.6 s when a frame takes no time
        assert healthy.count("WATCHDOG=1") >= 4, healthy
        detector.stall.set()
        assert detector.stalled.wait(10), "the loop never reached the detector"
        collect(sock, 0.3)                  # a datagram sent just before the stall
        starved = collect(sock, 2.0)
        assert starved == [], starved       # systemd would now kill and restart us
        assert service.loop_alive           # the thread is alive, just stuck
    finally:
        detector.release.set()
        service.stop()
        sock.close()
