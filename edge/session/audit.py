"""The audit log and the district outbox: what survives a session (never face data).

``audit.jsonl`` in the state dir gets one JSON line per finished session: time, session,
citizen id (only when matched), score, outcome. It is rotated by size (``audit.1.jsonl``
is the newest old one) and only a few old files are kept, so the log neither fills the
SD card nor keeps citizens' ids for ever. District reports ("not me", ratings) go to
``outbox/reports.jsonl`` for the sync client to deliver (and compact, sync/outbox.py);
both are appended, flushed and fsynced line by line so a power cut loses at most the
line being written.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where "not me" reports and ratings go (to the district)."""

    def report(self, kind: str, payload: dict[str, Any]) -> None: ...


class JsonLines:
    """Append-only JSON-lines file; a write failure is logged and counted, never raised
    (a full disk must not stop citizens from using the terminal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures = 0
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> bool:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, line.encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return True
            except OSError as exc:
                self.failures += 1
                log.error("cannot write %s: %s", self.path, exc.strerror or exc)
                return False

    def read(self) -> list[dict[str, Any]]:
        """All intact lines (a torn last line from a power cut is skipped)."""
        out = []
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:  # missing, or the state dir is unusable
            return []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


#: defaults of [terminal] audit_max_mb / audit_files (edge/config.py says why)
AUDIT_MAX_BYTES = 4 * 1024 * 1024
AUDIT_FILES = 3


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (several AuditLog objects, even processes, append)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class AuditLog(JsonLines):
    """``<state_dir>/audit.jsonl``: one line per ended session, rotated by size."""

    def __init__(self, path: Path, *, max_bytes: int = AUDIT_MAX_BYTES,
                 keep: int = AUDIT_FILES) -> None:
        super().__init__(path)
        self.max_bytes = max_bytes
        self.keep = keep

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, max_bytes: int = AUDIT_MAX_BYTES,
                     keep: int = AUDIT_FILES) -> AuditLog:
        return cls(state_dir / "audit.jsonl", max_bytes=max_bytes, keep=keep)

    def rotated(self, n: int) -> Path:
        """The n-th old file (1 = the newest of them)."""
        return self.path.with_name(f"{self.path.stem}.{n}{self.path.suffix}")

    def append(self, record: dict[str, Any]) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.path.with_name(self.path.name + ".lock")):
                self._rotate_if_full()
                return super().append(record)
        except OSError as exc:  # the lock file itself: same rule, never raise
            self.failures += 1
            log.error("cannot write %s: %s", self.path, exc.strerror or exc)
            return False

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        # shift audit.(n-1) -> audit.n from the oldest; the oldest kept one is replaced
        for n in range(self.keep, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.rotated(n - 1), self.rotated(n))
        if self.keep >= 1:
            os.replace(self.path, self.rotated(1))
        else:
            self.path.unlink()
        for stale in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"):
            n_text = stale.name[len(self.path.stem) + 1:-len(self.path.suffix)]
            if n_text.isdigit() and int(n_text) > self.keep:
                stale.unlink()  # left from a larger audit_files setting
        log.info("audit log rotated (%d old files kept)", self.keep)

    def session(self, *, terminal: str, session_id: str, outcome: str, citizen_id: str = "",
                score: float | None = None, challenge: str = "") -> bool:
        return self.append({
            "time": now_iso(), "terminal": terminal, "session": session_id,
            "outcome": outcome, "citizen_id": citizen_id,
            "score": None if score is None else round(float(score), 4),
            "challenge": challenge,
        })


class OutboxReporter(JsonLines):
    """``<state_dir>/outbox/reports.jsonl``: reports waiting for the sync client."""

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> OutboxReporter:
        return cls(state_dir / "outbox" / "reports.jsonl")

    def report(self, kind: str, payload: dict[str, Any]) -> None:
        self.append({"time": now_iso(), "kind": kind, **payload})
