"""Terminal side: deliver the session's outbox (``outbox/reports.jsonl``) to the district.

The session appends reports ("not me", ratings, survey offers) to ``reports.jsonl``
(edge/session/audit.py, edge/api/survey.py). This module turns each intact line into a
``TerminalReport`` and publishes it at QoS 1; only after the broker's PUBACK is the
report's key appended (fsynced) to ``reports.delivered`` beside it. A crash between
PUBACK and that write sends the report again after the restart: delivery is at least
once, and the district keeps one row per (terminal, session, kind).

Receipts: when the district's manifest says ``report_receipts`` (``want_receipts``), the
broker's PUBACK is not enough: a broker hands a report to one district worker, and if
that worker dies before storing it the broker drops it with the worker's session
(docs/scale.md "Several district workers"). The key is then written to
``reports.delivered`` only on the district's signed ReportReceipt, and a report without
one is published again every RECEIPT_WAIT_S (the district stores it once).

Compaction (``compact()``, every COMPACT_INTERVAL_S): no file is ever rewritten while the
session may append to it. A ``reports.jsonl`` whose lines are all delivered is renamed to
``reports-<n>.jsonl`` (the session's next line starts a new file); a renamed file is
deleted once all its lines are delivered and it has not changed for ROTATED_GRACE_S (a
line racing the rename is written within milliseconds); then ``reports.delivered`` is
rewritten atomically with only the keys of lines still on disk. An undelivered report is
never dropped; a line that is not a valid report does not hold back the renaming, but
the renamed file that holds it is kept for a technician.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.files import file_lock, write_atomic
from edge.session.audit import JsonLines, redact_file
from proto import sync_pb2 as pb
from sync.wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)

KINDS = {
    "not_me": pb.TerminalReport.KIND_NOT_ME,
    "rating": pb.TerminalReport.KIND_RATING,
    "survey_offer": pb.TerminalReport.KIND_SURVEY_OFFER,
}
#: a report published but not acknowledged for this long is published again (the link
#: may have dropped; paho's own resend after a reconnect makes at worst a duplicate)
RESEND_AFTER_S = 30.0
#: how often compact() runs; reports are a few per hour, a minute is plenty
COMPACT_INTERVAL_S = 60.0
#: a renamed outbox file is deleted only when unchanged this long (see the module text)
ROTATED_GRACE_S = 60.0
ROTATED_PREFIX = "reports-"
#: a report the broker acknowledged but the district has not receipted is published
#: again after this long. The district stores and receipts within ~a second; a worker
#: that died with the report is noticed by its peers' shared subscription at once on a
#: closed socket, or after its 1.5 x keepalive (30 s: up to 45 s) when its machine
#: vanished. 30 s bounds the delay of a stranded report at ~2 x that; a report refused
#: by the district's rate limit (no receipt) comes back at this pace too, 2/min
RECEIPT_WAIT_S = 30.0
#: report kinds by their wire number (receipts name them so)
KIND_NAMES: dict[int, str] = {int(v): k for k, v in KINDS.items()}


def report_key(kind: str, session_id: str) -> str:
    return f"{kind}\t{session_id}"


def to_pb(entry: dict[str, object], *, terminal_id: str, district_id: str) -> pb.TerminalReport:
    """One outbox line as a TerminalReport; ValueError for a line that is not a report."""
    kind = KINDS.get(str(entry.get("kind", "")))
    session = str(entry.get("session") or "")
    if kind is None or not session:
        raise ValueError(f"not a report: kind={entry.get('kind')!r} session={session!r}")
    rating = int(entry.get("stars") or 0)  # type: ignore[call-overload]
    if kind == pb.TerminalReport.KIND_RATING and not 1 <= rating <= 5:
        raise ValueError(f"rating of session {session}: stars {rating} not in 1..5")
    score = entry.get("score")
    token_hash = b""
    if kind == pb.TerminalReport.KIND_SURVEY_OFFER:
        # the token's SHA-256 (edge/api/survey.py); never the token itself
        # (the citizen id may be blank: redacted after the citizen was deleted)
        token_hash = bytes.fromhex(str(entry.get("token_sha256") or ""))
        if len(token_hash) != 32:
            raise ValueError(f"survey offer of session {session}: no token hash")
    return pb.TerminalReport(
        protocol_version=PROTOCOL_VERSION,
        terminal_id=terminal_id,
        district_id=district_id,
        kind=kind,
        session_id=session,
        time=str(entry.get("time") or ""),
        citizen_id=str(entry.get("citizen_id") or ""),
        rating=rating,
        score=float(score) if isinstance(score, (int, float)) else 0.0,
        survey_token_sha256=token_hash,
    )


class OutboxSender:
    """Finds undelivered outbox lines and tracks their PUBACKs (used by the subscriber).

    ``pump(publish)`` is called from the subscriber's apply thread while connected;
    ``acked(mid)`` from paho's thread on a PUBACK; ``settle()`` (apply thread) writes
    the acknowledged keys to ``reports.delivered``.
    """

    def __init__(self, outbox_dir: Path, *, terminal_id: str, district_id: str) -> None:
        self.outbox_dir = outbox_dir
        self.source = JsonLines(outbox_dir / "reports.jsonl")
        self.delivered_path = outbox_dir / "reports.delivered"
        self.terminal_id = terminal_id
        self.district_id = district_id
        self.delivered: set[str] = set(self._read_delivered())
        self.sent = 0
        self.bad_lines = 0
        self._bad_seen: set[str] = set()
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[str, float]] = {}  # mid -> (key, monotonic sent)
        self._acked: list[int] = []
        #: keep reports until the district's receipt (its manifest says it sends them)
        self.want_receipts = False
        self.receipt_wait_s = RECEIPT_WAIT_S
        #: key -> monotonic time of the PUBACK, for reports waiting for their receipt
        self._awaiting: dict[str, float] = {}
        self.receipts = 0

    def _read_delivered(self) -> list[str]:
        try:
            return self.delivered_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read %s: %s", self.delivered_path, exc.strerror or exc)
            return []

    def _rotated(self) -> list[Path]:
        """Renamed outbox files, oldest first."""
        found = []
        for path in self.outbox_dir.glob(f"{ROTATED_PREFIX}*.jsonl"):
            number = path.name[len(ROTATED_PREFIX):-len(".jsonl")]
            if number.isdigit():
                found.append((int(number), path))
        return [path for _, path in sorted(found)]

    def _entries(self) -> list[dict[str, object]]:
        """Every intact outbox line: the renamed files, oldest first, then the current."""
        out: list[dict[str, object]] = []
        for path in [*self._rotated(), self.source.path]:
            out.extend(JsonLines(path).read())
        return out

    @staticmethod
    def _key(entry: dict[str, object]) -> str:
        return report_key(str(entry.get("kind", "")), str(entry.get("session") or ""))

    def pending(self) -> list[tuple[str, pb.TerminalReport]]:
        """Outbox lines not yet acknowledged by the broker, oldest first."""
        out = []
        for entry in self._entries():
            key = self._key(entry)
            if key in self.delivered:
                continue
            try:
                msg = to_pb(entry, terminal_id=self.terminal_id, district_id=self.district_id)
            except (ValueError, TypeError) as exc:
                if key not in self._bad_seen:  # log once, keep the line (never lose it)
                    self._bad_seen.add(key)
                    self.bad_lines += 1
                    log.error("outbox line skipped: %s", exc)
                continue
            out.append((key, msg))
        return out

    def pump(self, publish: Callable[[bytes], int], now: float) -> int:
        """Publish every pending report not in flight; returns how many were published."""
        with self._lock:
            busy = {k for k, t in self._inflight.values() if now - t < RESEND_AFTER_S}
        busy |= {k for k, t in self._awaiting.items() if now - t < self.receipt_wait_s}
        n = 0
        for key, msg in self.pending():
            if key in busy:
                continue
            msg.wants_receipt = self.want_receipts
            mid = publish(msg.SerializeToString())
            with self._lock:
                self._inflight[mid] = (key, now)
            busy.add(key)
            n += 1
        return n

    def acked(self, mid: int) -> None:
        with self._lock:
            self._acked.append(mid)

    def settle(self, now: float | None = None) -> int:
        """Record acknowledged reports as delivered (fsynced); returns how many. With
        ``want_receipts`` a PUBACK only starts the wait for the receipt."""
        with self._lock:
            mids, self._acked = self._acked, []
            keys = [self._inflight.pop(m)[0] for m in mids if m in self._inflight]
        keys = [k for k in dict.fromkeys(keys) if k not in self.delivered]
        if keys and self.want_receipts:
            at = time.monotonic() if now is None else now
            for k in keys:
                self._awaiting[k] = at
            return 0
        return self._mark_delivered(keys)

    def receipt(self, kind: int, session_id: str) -> bool:
        """The district's (verified) ReportReceipt: the report is delivered (fsynced);
        False for one that names nothing waiting here (already delivered, or unknown)."""
        key = report_key(KIND_NAMES.get(kind, ""), session_id)
        if key in self.delivered or not session_id:
            return False
        known = key in self._awaiting or any(k == key for k, _m in self.pending())
        if not known:
            return False
        if self._mark_delivered([key]) != 1:
            return False  # not written: the report is sent again, stored once
        self._awaiting.pop(key, None)
        self.receipts += 1
        return True

    def unacknowledged(self) -> int:
        """Reports the broker has not acknowledged yet (reports waiting only for their
        receipt are not counted)."""
        return sum(1 for k, _m in self.pending() if k not in self._awaiting)

    def awaiting(self) -> int:
        """Reports the broker acknowledged that wait for the district's receipt."""
        return len(self._awaiting)

    def _mark_delivered(self, keys: list[str]) -> int:
        if not keys:
            return 0
        data = "".join(k + "\n" for k in keys).encode("utf-8")
        try:
            fd = os.open(self.delivered_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # not marked: sent again later, the district de-duplicates
            log.error("cannot write %s: %s", self.delivered_path, exc.strerror or exc)
            return 0
        self.delivered.update(keys)
        self.sent += len(keys)
        return len(keys)

    def forget_inflight(self) -> None:
        """After a disconnect: publish again what was not acknowledged."""
        with self._lock:
            self._inflight.clear()

    def _is_report(self, entry: dict[str, object]) -> bool:
        try:
            to_pb(entry, terminal_id=self.terminal_id, district_id=self.district_id)
        except (ValueError, TypeError):
            return False
        return True

    def compact(self, now: float | None = None) -> int:
        """Rename a delivered ``reports.jsonl`` aside, delete delivered renamed files and
        drop their keys from ``reports.delivered``; returns how many files were deleted.

        ``now`` is wall-clock time (file modification times are compared with it).
        Errors are logged; nothing undelivered is ever removed.
        """
        now = time.time() if now is None else now
        if not self.outbox_dir.is_dir():
            return 0  # no report written yet
        try:
            with file_lock(self.source.lock_path):  # the session's appends wait meanwhile
                current = self.source.read()
                if current and all(self._key(e) in self.delivered or not self._is_report(e)
                                   for e in current):
                    rotated = self._rotated()
                    last = (int(rotated[-1].name[len(ROTATED_PREFIX):-len(".jsonl")])
                            if rotated else 0)
                    target = self.outbox_dir / f"{ROTATED_PREFIX}{last + 1:06d}.jsonl"
                    os.replace(self.source.path, target)
            deleted = 0
            for path in self._rotated():
                if now - path.stat().st_mtime < ROTATED_GRACE_S:
                    continue
                entries = JsonLines(path).read()
                if all(self._key(e) in self.delivered for e in entries):
                    path.unlink()
                    deleted += 1
            if deleted:
                self._rewrite_delivered()
        except OSError as exc:
            log.error("cannot compact the outbox in %s: %s", self.outbox_dir,
                      exc.strerror or exc)
            return 0
        return deleted

    def _rewrite_delivered(self) -> None:
        """Keep only the delivered keys of lines still on disk (temp file, fsync, rename)."""
        on_disk = {self._key(e) for e in self._entries()}
        keep = sorted(k for k in self.delivered if k in on_disk)
        write_atomic(self.delivered_path, "".join(k + "\n" for k in keep).encode("utf-8"))
        self.delivered = set(keep)

    def redact_citizens(self, keep: Callable[[str], bool]) -> int:
        """Blank the ids of citizens ``keep`` rejects in every outbox file; returns how
        many lines changed. The current file is rewritten under the append flock; the
        renamed ones belong to this sender (compact() runs in the same thread)."""
        changed = self.source.redact_citizens(keep)
        for path in self._rotated():
            try:
                changed += redact_file(path, keep)
            except OSError as exc:
                log.error("cannot redact %s: %s", path, exc.strerror or exc)
        return changed
