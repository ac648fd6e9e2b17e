"""The audit log and the district outbox: what survives a session (never face data).

``audit.jsonl`` in the state dir gets one JSON line per finished session: time, session,
citizen id (only when matched), score, outcome. It is rotated by size (``audit.1.jsonl``
is the newest old one) and only a few old files are kept, so the log neither fills the
SD card nor keeps citizens' ids for ever. District reports ("not me", ratings) go to
``outbox/reports.jsonl`` for the sync client to deliver (and compact and redact,
edge/syncclient/outbox.py);
both are appended, flushed and fsynced line by line so a power cut loses at most the
line being written.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core.files import append_synced, file_lock, read_json_lines, write_atomic

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where "not me" reports and ratings go (to the district)."""

    def report(self, kind: str, payload: dict[str, Any]) -> None: ...


class JsonLines:
    """Append-only JSON-lines file; a write failure is logged and counted, never raised
    (a full disk must not stop citizens from using the terminal).

    Appends take an exclusive flock on ``<file>.lock`` (several objects, even processes,
    write the same file), which also guards rotation and redaction.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures = 0
        self._lock = threading.Lock()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def files(self) -> list[Path]:
        """Every file of this log, oldest first (here: just the one)."""
        return [self.path]

    def _before_append(self) -> None:
        """Hook run under the lock before each append (rotation)."""

    def append(self, record: dict[str, Any]) -> bool:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with file_lock(self.lock_path):
                    self._before_append()
                    append_synced(self.path, line.encode("utf-8"))
                return True
            except OSError as exc:
                self.failures += 1
                log.error("cannot write %s: %s", self.path, exc.strerror or exc)
                return False

    def redact_citizens(self, keep: Callable[[str], bool]) -> int:
        """Blank ``citizen_id`` in every line whose citizen ``keep`` rejects (deleted from
        the gallery); returns how many lines changed. Each changed file is rewritten
        whole (temp file, fsync, rename) under the lock, so no append is lost."""
        changed = 0
        with self._lock:
            if not self.path.parent.is_dir():
                return 0  # nothing written yet (an outbox before its first report)
            try:
                with file_lock(self.lock_path):
                    for path in self.files():
                        changed += redact_file(path, keep)
            except OSError as exc:
                log.error("cannot redact %s: %s", self.path, exc.strerror or exc)
        return changed

    def read(self) -> list[dict[str, Any]]:
        """All intact lines (a torn last line from a power cut is skipped)."""
        return [r for r in read_json_lines(self.path) if isinstance(r, dict)]


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def redact_file(path: Path, keep: Callable[[str], bool]) -> int:
    """Blank ``citizen_id`` (and mark ``"redacted"``) in the lines of ``path`` whose
    citizen ``keep`` rejects; rewrites the file atomically if any; returns how many.
    The caller holds whatever lock keeps appenders out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    lines = text.splitlines(keepends=True)
    changed = 0
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a power cut: left as it is
        cid = record.get("citizen_id") if isinstance(record, dict) else None
        if isinstance(cid, str) and cid and not keep(cid):
            record["citizen_id"] = ""
            record["redacted"] = True
            lines[i] = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
            changed += 1
    if changed:
        write_atomic(path, "".join(lines).encode("utf-8"))
    return changed


#: defaults of [terminal] audit_max_mb / audit_files (edge/config.py says why)
AUDIT_MAX_BYTES = 4 * 1024 * 1024
AUDIT_FILES = 3


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

    def files(self) -> list[Path]:
        """The old files that exist (whatever ``keep`` was when they were made), oldest
        first, then the current one."""
        old = []
        for p in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"):
            n = p.name[len(self.path.stem) + 1:-len(self.path.suffix)]
            if n.isdigit():
                old.append((int(n), p))
        return [p for _, p in sorted(old, reverse=True)] + [self.path]

    def _before_append(self) -> None:
        self._rotate_if_full()

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


    def lockout(self, *, terminal: str, kind: str, citizen_id: str, locked_until: str,
                session_id: str = "") -> bool:
        """A citizen's secret (``kind``: "pin") locked after too many wrong answers."""
        return self.append({
            "time": now_iso(), "terminal": terminal, "session": session_id,
            "outcome": f"{kind}_locked", "citizen_id": citizen_id,
            "locked_until": locked_until,
        })


class OutboxReporter(JsonLines):
    """``<state_dir>/outbox/reports.jsonl``: reports waiting for the sync client."""

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> OutboxReporter:
        return cls(state_dir / "outbox" / "reports.jsonl")

    def report(self, kind: str, payload: dict[str, Any]) -> None:
        self.append({"time": now_iso(), "kind": kind, **payload})
