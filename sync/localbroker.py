"""A throwaway local Mosquitto for the demo and benchmarks: own config, free loopback port.

It writes its config and persistence under a work directory, listens on 127.0.0.1 only,
and is stopped (SIGTERM, then SIGKILL) by ``stop()`` or the context manager.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from core.errors import SyncError

#: Mosquitto starts in ~10 ms; 10 s covers a loaded 2-core machine
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
                raise SyncError(f"mosquitto exited at start (see {self.log_path})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
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
