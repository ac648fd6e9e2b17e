"""The audit log and the district outbox: what survives a session (never face data).

``audit.jsonl`` in the state dir gets one JSON line per finished session: time, session,
citizen id (only when matched), score, outcome. District reports ("not me", ratings) go
to ``outbox/reports.jsonl`` for the sync client to deliver; both are appended, flushed
and fsynced line by line so a power cut loses at most the line being written.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
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


class AuditLog(JsonLines):
    """``<state_dir>/audit.jsonl``: one line per ended session."""

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> AuditLog:
        return cls(state_dir / "audit.jsonl")

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
