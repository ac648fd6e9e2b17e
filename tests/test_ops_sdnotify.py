"""sd_notify client and the main-loop watchdog hook, against a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edge.ops.sdnotify import Notifier, WatchdogHook, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    yield path, sock
    sock.close()


def drain(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Datagrams received within ``seconds``, with their arrival time."""
    out: list[tuple[float, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        out.append((time.monotonic(), data.decode()))
    return out


def test_notifier_sends_ready_status_watchdog(notify_socket) -> None:
    path, sock = notify_socket
    n = Notifier(str(path))
    assert n.ready("index loaded")
    assert n.watchdog()
    assert n.stopping()
    got = [m for _, m in drain(sock, 0.3)]
    assert got == ["READY=1\nSTATUS=index loaded", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_without_socket_is_a_noop_and_dead_socket_does_not_raise(tmp_path) -> None:
    assert not Notifier("").ready()
    # systemd went away: the socket path does not exist; must not raise into the service
    assert not Notifier(str(tmp_path / "gone.sock")).watchdog()


def test_abstract_namespace_socket() -> None:
    name = f"motcua-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1)
    try:
        assert Notifier("@" + name).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_interval_from_env() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": pid}) == 3.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "bogus"}) is None


def test_hook_rate_limits_and_asks_health(notify_socket) -> None:
    path, sock = notify_socket
    now = [0.0]
    healthy = [True]
    hook = WatchdogHook(Notifier(str(path)), interval=2.0, healthy=lambda: healthy[0],
                        clock=lambda: now[0])
    assert hook.tick()          # first iteration feeds at once
    now[0] = 0.5
    assert not hook.tick()      # within half a period: no flood
    now[0] = 1.01
    assert hook.tick()
    now[0] = 2.5
    healthy[0] = False
    assert not hook.tick()      # loop turns but a part is wedged: starve the watchdog
    assert hook.fed == 2
    assert [m for _, m in drain(sock, 0.2)] == ["WATCHDOG=1", "WATCHDOG=1"]


def test_stalled_main_loop_stops_feeding(notify_socket) -> None:
    """A main loop (thread) feeds through the hook; when it stalls, datagrams stop."""
    path, sock = notify_socket
    hook = WatchdogHook(Notifier(str(path)), interval=0.2)  # feeds every 0.1 s
    stall = threading.Event()
    stalled = threading.Event()
    stop = threading.Event()

    def main_loop() -> None:
        while not stop.is_set():
            if stall.is_set():
                stalled.set()
                stop.wait()      # e.g. a camera read that never returns
                return
            hook.tick()
            time.sleep(0.01)

    t = threading.Thread(target=main_loop, name="main-loop")
    t.start()
    try:
        before = drain(sock, 1.0)
        stall.set()
        # the loop's last tick may come well after stall.set() on a loaded machine: wait
        # until it is blocked rather than a fixed while
        assert stalled.wait(30)
        drain(sock, 0.05)        # a datagram in flight at the moment of the stall
        after = drain(sock, 1.0)
    finally:
        stop.set()
        t.join()
    assert len(before) >= 5, before
    assert after == []


def test_subprocess_main_loop_env_contract(notify_socket, tmp_path) -> None:
    """A process started the way systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC) feeds
    the socket while its loop turns and stops when the loop blocks."""
    path, sock = notify_socket
    script = textwrap.dedent(
        """
        import sys, time
        from edge.ops.sdnotify import Notifier, WatchdogHook
        n = Notifier.from_env(); n.ready("up")
        hook = WatchdogHook(n)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            hook.tick(); time.sleep(0.01)
        print("stalled", flush=True)
        sys.stdin.read()   # the loop stalls here
        """
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000",
           "PYTHONPATH": str(REPO)}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # the child's loop runs 1 s from when it has started, which on a loaded machine
        # can be long after Popen: read until it says it stalls, not for a fixed while
        line: list[bytes] = []
        out = proc.stdout
        reader = threading.Thread(target=lambda: line.append(out.readline()))
        reader.start()
        running: list[tuple[float, str]] = []
        deadline = time.monotonic() + 60
        while reader.is_alive() and time.monotonic() < deadline:
            running += drain(sock, 0.1)
        reader.join(1)
        assert line == [b"stalled\n"], line
        running += drain(sock, 0.05)  # a datagram in flight at the moment of the stall
        stalled = drain(sock, 0.8)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    msgs = [m for _, m in running]
    assert msgs[0] == "READY=1\nSTATUS=up"
    assert msgs.count("WATCHDOG=1") >= 4
    assert stalled == []
