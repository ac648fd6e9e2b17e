"""A local Mosquitto broker for the demo, the tests and the benchmarks (the one way the
project starts one): own config, reserved loopback port.

``MosquittoBroker`` writes a config into a directory (persistence on, its own log file),
starts ``mosquitto -c``, waits until the port accepts connections, and can be stopped,
killed (SIGKILL, like a power cut) and restarted on the same port with the same
persistence file: the port is below the kernel's ephemeral range and reserved by the
broker object (``PortReservation``), so nothing else takes it while the broker is down.
Optional: password file, ACL file, TLS listener with client certificates, a low
``max_queued_messages`` to make queue overflow quick to reach, and
extra config lines from a file (``include``: the shipped broker settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path

from core.errors import SyncError

#: how long to wait for the broker's port; Mosquitto starts in ~10 ms, 10 s covers a
#: loaded 2-core CI machine
START_TIMEOUT_S = 10.0


#: test servers take ports from [PORT_FLOOR, the kernel's ephemeral range): see free_port()
PORT_FLOOR = 20000


def _unreserved_port_range() -> tuple[int, int]:
    """[low, high) below Linux's ephemeral range (ip_local_port_range, 32768 by default)."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    if first_ephemeral - PORT_FLOOR >= 1000:
        return PORT_FLOOR, first_ephemeral
    return 1024, max(first_ephemeral, 2048)  # an unusual range: take what is below it


def _bind_exclusive(host: str) -> socket.socket:
    """A socket bound to a random free port below the ephemeral range, no SO_REUSEADDR.

    Why below the ephemeral range: the kernel hands ports of that range to every bind(0)
    and connect() on the machine (gRPC servers, other test runs, clients). A port taken
    from it with bind(0) and released goes back to that pool, so while our broker is down
    (a restart in the middle of a test) or not yet up, any process could get it, and
    Mosquitto then fails with "Address already in use". Below the range only a process
    that names the port explicitly can take it. The plain bind (no SO_REUSEADDR) fails
    while any socket holds the port, even one in TIME_WAIT, so a port in use is skipped.
    """
    low, high = _unreserved_port_range()
    for _ in range(500):
        port = random.randrange(low, high)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            continue
        return s
    raise SyncError(f"no free loopback port in [{low}, {high})")


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server that binds it soon after."""
    with _bind_exclusive(host) as s:
        return int(s.getsockname()[1])


class PortReservation:
    """A loopback port kept from other processes for as long as this object is open.

    It holds a bound, never listening socket on the port, with SO_REUSEADDR set only
    after the bind: Mosquitto (which sets SO_REUSEADDR) can listen on the port beside
    it, but no other socket can bind the port (the kernel never picks it for bind(0) or
    connect(), and a plain bind() of it fails), also while the broker is down.
    ``close()`` (or the garbage collector) releases it.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        sock = _bind_exclusive(host)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = int(sock.getsockname()[1])
        self._close = weakref.finalize(self, sock.close)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class TlsFiles:
    """PEM files for a TLS listener that requires client certificates."""

    cafile: Path
    certfile: Path
    keyfile: Path


def _split_include(path: Path | None) -> tuple[list[str], list[str]]:
    if path is None:
        return [], []
    general: list[str] = []
    per_listener: list[str] = []
    target = general
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("# ---- listener"):
            target = per_listener
        elif line and not line.startswith("#") and line != "per_listener_settings false":
            target.append(line)
    return general, per_listener


class MosquittoBroker:
    """One Mosquitto process with its own config and persistence under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        max_queued_messages: int | None = None,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: TlsFiles | None = None,
        autosave_interval: int = 1,
        include: Path | None = None,
    ) -> None:
        if shutil.which("mosquitto") is None:
            raise SyncError("mosquitto is not installed (scripts/debian-packages.txt)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        #: the port stays ours across stop()/kill() and start(), until close()
        self._port = PortReservation(self.host)
        self.port = self._port.port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        lines = [
            "per_listener_settings false",
            # stay the user that started us (as root Mosquitto would switch to 'mosquitto')
            "user root" if os.geteuid() == 0 else "",
            "persistence true",
            f"persistence_location {workdir}/",
            # save often so that a SIGKILL loses at most a second of sessions/retained
            f"autosave_interval {autosave_interval}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if max_queued_messages is not None:
            lines.append(f"max_queued_messages {max_queued_messages}")
        if users is not None:
            pwfile = workdir / "passwd"
            pwfile.write_text("")
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            pwfile.chmod(0o600)
            lines += [f"password_file {pwfile}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            aclfile = workdir / "acl"
            aclfile.write_text(acl)
            aclfile.chmod(0o600)
            lines.append(f"acl_file {aclfile}")
        # e.g. the shipped deploy/mosquitto/motcua-sync.conf: its general part here, its
        # per-listener part (after the "# ---- listener" line) after our listener line
        general, per_listener = _split_include(include)
        lines += general
        lines.append(f"listener {self.port} {self.host}")
        lines += per_listener
        if tls is not None:
            lines += [
                f"cafile {tls.cafile}",
                f"certfile {tls.certfile}",
                f"keyfile {tls.keyfile}",
                "require_certificate true",
                "tls_version tlsv1.2",
            ]
        self.conf_path = workdir / "mosquitto.conf"
        self.conf_path.write_text("\n".join(x for x in lines if x) + "\n")

    def start(self) -> MosquittoBroker:
        """Start the broker and wait for its port (raises SyncError with the log tail)."""
        assert self.proc is None, "already running"
        proc = self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                self._close()
                raise SyncError(f"mosquitto exited at start: {err.strip()} {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                # the port is reserved for us: what answers is our Mosquitto, unless it
                # has just failed (then the next round reports why)
                if proc.poll() is None:
                    return self
            time.sleep(0.02)
        self.stop()
        raise SyncError(f"mosquitto did not open port {self.port}: {self.log_tail()}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: Mosquitto writes its persistence file)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL, like a crash: only what autosave wrote survives."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self._close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and give the port back (the broker cannot be started again)."""
        self.stop()
        self._port.close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
