"""A throwaway local Mosquitto for the demo and benchmarks: own config, free loopback port
(below the ephemeral range: see ``free_port``).

It writes its config and persistence under a work directory, listens on 127.0.0.1 only,
and is stopped (SIGTERM, then SIGKILL) by ``stop()`` or the context manager.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from core.errors import SyncError

#: Mosquitto starts in ~10 ms; 10 s covers a loaded 2-core machine
START_TIMEOUT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range (ip_local_port_range).

    A port from bind(0) is in that range and goes back to its pool at once: until
    Mosquitto binds it, any bind(0) or outgoing connection on the machine may take it.
    Below the range only a process that names the port can take it.
    """
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    low = 20000 if first - 20000 >= 1000 else 1024
    for _ in range(500):
        port = random.randrange(low, max(first, low + 1024))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))  # no SO_REUSEADDR: fails while anything holds it
            except OSError:
                continue
            return port
    raise SyncError(f"no free port on {host} below {first}")


class LocalBroker:
    """One Mosquitto process listening on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if self.binary is None:
            raise SyncError("mosquitto is not installed (apt-get install mosquitto; "
                            "scripts/install.sh does it)")
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def start(self) -> LocalBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join([
            "per_listener_settings false",
            "user root" if os.geteuid() == 0 else "",
            "persistence true",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "allow_anonymous true",
            f"listener {self.port} 127.0.0.1",
            "",
        ]))
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)],  # type: ignore[list-item]
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise SyncError(f"mosquitto exited at start (see {self.log_path})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    if self.proc.poll() is None:  # ours answered, not another process
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SyncError(f"mosquitto did not open port {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
