"""Download a district snapshot file (HTTP(S), Range requests), resumable and bounded.

The signed ``SnapshotFile`` descriptor gives the URL, the exact size and the SHA-256.
The part file ``snapfile-<terminal>-<id>.part`` in the spool directory (0600) holds what
has arrived; after a cut or a restart the next GET asks ``Range: bytes=<have>-``. The
server never makes the terminal write more than the descriptor's size, the disk must
have room for the rest, and the whole file is hashed before it is handed over: a file
whose size or SHA-256 differs is deleted and refused. TLS: the terminal's broker CA
and client certificate (the district serves snapshots to its terminals' certificates).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from core.errors import SyncError
from proto import sync_pb2 as pb

log = logging.getLogger(__name__)

#: read and write in pieces of this size: memory stays flat for a 214 MB file
PIECE_BYTES = 1 << 20
#: attempts of one download (each resumes where the previous stopped) before it is
#: reported failed (the engine then backs off and falls back to MQTT chunks)
RETRIES = 5
#: first wait between attempts, doubling: 1+2+4+8 s rides out a district service restart
RETRY_S = 1.0
#: socket timeout: a stalled connection is cut and resumed rather than hung on for ever
TIMEOUT_S = 30.0
#: room kept free on the terminal's disk besides the snapshot: the store's SQLite WAL
#: and the install (replace_all writes the new gallery beside the old) need space too
DISK_MARGIN_BYTES = 64 << 20


class DownloadError(SyncError):
    """A snapshot file could not be fetched or was refused (the message says why);
    ``gone``: the district no longer has it (a newer one replaced it: ask again)."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True)
class TlsMaterial:
    """CA to verify the district with, and the terminal's client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class Downloader:
    """Fetches snapshot files into ``spool_dir`` (one at a time per terminal)."""

    def __init__(self, spool_dir: Path, terminal_id: str, *, tls: TlsMaterial | None = None,
                 retries: int = RETRIES, retry_s: float = RETRY_S,
                 timeout_s: float = TIMEOUT_S, disk_margin_bytes: int = DISK_MARGIN_BYTES,
                 stop: threading.Event | None = None) -> None:
        self.spool_dir = spool_dir
        self.terminal_id = terminal_id
        self.tls = tls or TlsMaterial()
        self.retries = retries
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.disk_margin_bytes = disk_margin_bytes
        self.stop_event = stop or threading.Event()
        #: bytes received over HTTP, and the Range start of each attempt (tests, figures)
        self.bytes_received = 0
        self.range_starts: list[int] = []
        #: seconds the last successful fetch took (figures)
        self.last_fetch_s = 0.0

    def part_path(self, snapshot_id: str) -> Path:
        return self.spool_dir / f"snapfile-{self.terminal_id}-{snapshot_id}.part"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=str(self.tls.ca_file) if self.tls.ca_file else None)
        if self.tls.cert_file is not None and self.tls.key_file is not None:
            ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        return ctx

    def fetch(self, desc: pb.SnapshotFile) -> Path:
        """Download (or finish downloading) ``desc``'s file; its path once size and SHA-256
        match. DownloadError after ``retries`` failed attempts or for a bad file."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self.part_path(desc.snapshot_id)
        for other in self.spool_dir.glob(f"snapfile-{self.terminal_id}-*.part"):
            if other != part:  # another snapshot's leftovers: never resumed
                other.unlink(missing_ok=True)
        delay = self.retry_s
        error = ""
        t0 = time.monotonic()
        for attempt in range(self.retries):
            if self.stop_event.is_set():
                raise DownloadError("stopped")
            try:
                self._attempt(desc, part)
                path = self._verified(desc, part)
                self.last_fetch_s = time.monotonic() - t0
                return path
            except (OSError, http.client.HTTPException, _Retry) as exc:
                error = str(exc) or type(exc).__name__
                log.warning("snapshot download %s, attempt %d: %s", desc.snapshot_id[:8],
                            attempt + 1, error)
            if attempt + 1 < self.retries and self.stop_event.wait(delay):
                raise DownloadError("stopped")
            delay *= 2
        raise DownloadError(f"snapshot download from {desc.url} failed {self.retries} times: "
                            f"{error}"[:300])

    def _attempt(self, desc: pb.SnapshotFile, part: Path) -> None:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            have = fh.seek(0, os.SEEK_END)
            if have > desc.size:  # cannot be ours: start over
                fh.truncate(0)
                have = 0
            if have == desc.size:
                return
            free = shutil.disk_usage(self.spool_dir).free
            if free < desc.size - have + self.disk_margin_bytes:
                raise DownloadError(f"not enough disk for the snapshot: {desc.size - have} "
                                    f"bytes to come, {free} free")
            url = urllib.parse.urlsplit(desc.url)
            if url.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    url.hostname or "", url.port, timeout=self.timeout_s,
                    context=self._ssl_context())
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port,
                                                  timeout=self.timeout_s)
            try:
                self.range_starts.append(have)
                headers = {"Range": f"bytes={have}-"} if have else {}
                conn.request("GET", url.path, headers=headers)
                resp = conn.getresponse()
                if resp.status == 200:
                    fh.truncate(0)  # the server sent the whole file
                    fh.seek(0)
                    have = 0
                elif resp.status == 206:
                    start = _range_start(resp.getheader("Content-Range", ""))
                    if start != have:
                        raise _Retry(f"server answered range from {start}, asked {have}")
                elif resp.status == 404:
                    raise DownloadError("the district no longer has this snapshot (404)", gone=True)
                else:
                    raise _Retry(f"HTTP {resp.status} {resp.reason}")
                while have < desc.size:
                    data = resp.read1(min(PIECE_BYTES, desc.size - have))
                    if not data:
                        break
                    fh.write(data)
                    have += len(data)
                    self.bytes_received += len(data)
                    if self.stop_event.is_set():
                        break
                if have == desc.size and resp.read(1):
                    fh.truncate(0)
                    raise DownloadError(f"the server sent more than the signed size "
                                        f"{desc.size}: refused")
                fh.flush()
                os.fsync(fh.fileno())
                if have < desc.size:
                    raise _Retry(f"connection ended at {have} of {desc.size} bytes")
            finally:
                conn.close()

    def _verified(self, desc: pb.SnapshotFile, part: Path) -> Path:
        h = hashlib.sha256()
        size = 0
        with open(part, "rb") as fh:
            while data := fh.read(PIECE_BYTES):
                h.update(data)
                size += len(data)
        if size != desc.size or h.digest() != desc.sha256:
            part.unlink(missing_ok=True)
            raise DownloadError("snapshot file does not match its signed size and SHA-256: "
                                "refused")
        return part


class _Retry(Exception):
    """An attempt failed in a way the next attempt (resuming) may fix."""


def _range_start(content_range: str) -> int:
    # "bytes 123-456/789"
    try:
        unit, rest = content_range.split(" ", 1)
        if unit != "bytes":
            return -1
        return int(rest.split("-", 1)[0])
    except ValueError:
        return -1


__all__ = ["DownloadError", "Downloader", "TlsMaterial"]
