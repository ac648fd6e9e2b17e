"""Structured log lines for the journal: one JSON object per line on stderr.

Under systemd (``$JOURNAL_STREAM`` set) each line starts with a ``<N>`` syslog priority
prefix, which journald strips and records as the entry's PRIORITY, so ``journalctl -p
warning -u motcua-terminal`` works; the rest is JSON (``ts``, ``level``, ``logger``,
``msg`` and any ``extra=`` fields), easy to ship and grep (``journalctl -o cat | jq``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

#: syslog priorities journald understands in a "<N>" line prefix
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
#: attributes every LogRecord has; anything else came from ``extra=`` and is emitted
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line, optionally with a journald priority prefix."""

    def __init__(self, journal_prefix: bool = False) -> None:
        super().__init__()
        self.journal_prefix = journal_prefix

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        if self.journal_prefix:
            level = max((lv for lv in _PRIORITY if lv <= record.levelno), default=logging.DEBUG)
            line = f"<{_PRIORITY[level]}>{line}"
        return line


def under_journal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (stderr) is connected to journald ($JOURNAL_STREAM matches)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup_logging(
    level: int | str = logging.INFO, fmt: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr): ``fmt`` is json, text or auto
    (JSON under the journal, readable text on a terminal)."""
    stream = sys.stderr if stream is None else stream
    journal = under_journal(stream)
    use_json = fmt == "json" or (fmt == "auto" and journal)
    handler = logging.StreamHandler(stream)
    if use_json:
        handler.setFormatter(JsonFormatter(journal_prefix=journal))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_motcua", False)]:
        root.removeHandler(old)
    handler._motcua = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
