"""A real Mosquitto broker for tests and benchmarks: own config, free loopback port.

``MosquittoBroker`` writes a config into a directory (persistence on, its own log file),
starts ``mosquitto -c``, waits until the port accepts connections, and can be stopped,
killed (SIGKILL, like a power cut) and restarted on the same port with the same
persistence file. Optional: password file, ACL file, TLS listener with client
certificates, a low ``max_queued_messages`` to make queue overflow quick to reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: how long to wait for the broker's port; Mosquitto starts in ~10 ms, 10 s covers a
#: loaded 2-core CI machine
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class TlsFiles:
    """PEM files for a TLS listener that requires client certificates."""

    cafile: Path
    certfile: Path
    keyfile: Path


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
            raise RuntimeError("mosquitto is not installed (scripts/debian-packages.txt)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
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
        if include is not None:  # e.g. the shipped deploy/mosquitto/motcua.conf
            lines += [ln for ln in include.read_text().splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
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
        lines.append(f"listener {self.port} {self.host}")
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
        """Start the broker and wait for its port (raises RuntimeError with the log tail)."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start: {err.strip()} {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not open port {self.port}: {self.log_tail()}")

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
        self.stop()
