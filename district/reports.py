"""Terminals' reports ("not me", ratings): checked, limited per terminal, stored by a
writer thread (never on paho's network thread).

A report is untrusted input from one terminal's credentials (docs/security.md). Every
field is checked (:func:`check_report`); :class:`ReportGate` bounds how many one
terminal gets stored (a token bucket) and stores a "not me" about the same citizen from
the same terminal once per window; :class:`ReportWriter` writes accepted reports to the
district log in batches from a bounded queue and calls back once they are stored (the
publisher sends the PUBACK then). A full queue drops the report and counts it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import DistrictError
from district.log import DistrictLog
from proto import sync_pb2 as pb
from sync.topics import check_id
from sync.wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)

#: a terminal's reports are stored at this sustained rate at most (one per second is
#: ~60x what a busy terminal produces: a session takes 10+ s and makes <= 2 reports)
REPORT_PER_S = 1.0
#: ... after a burst of this many: a terminal back from a few days offline sends its
#: outbox at once (hundreds of sessions); more than that in one go is a flood
REPORT_BURST = 500
#: a "not me" naming the same citizen from the same terminal is stored once per this
#: long: the same stranger retrying at one terminal says nothing new, and 1,000 forged
#: reports must not make one citizen look disputed
REPORT_CITIZEN_WINDOW_S = 600.0
#: (terminal, citizen) pairs remembered for that window; the oldest are forgotten first
#: (~100 bytes each: ~10 MB at most)
REPORT_CITIZEN_MEMORY = 100_000
#: terminals remembered for the rate limit; a full bucket is forgotten first
REPORT_TERMINALS_MAX = 10_000
#: accepted reports waiting for the writer thread; beyond this they are dropped and
#: counted (20 s of the whole district at 500/s; a flood is cut by the gate before)
REPORT_QUEUE_MAX = 10_000
#: reports written in one transaction at most: one fsync per batch instead of per report
REPORT_WRITE_BATCH = 200
#: scores are cosine similarities (-1..1); the slack covers float32 rounding only
REPORT_SCORE_LIMIT = 1.01
#: report times: the outbox keeps reports while a terminal is offline (a month covers
#: a long repair); a terminal clock may run ahead, but not by more than a day
REPORT_MAX_AGE_S = 30 * 86400.0
REPORT_MAX_AHEAD_S = 86400.0

_SESSION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KINDS = {pb.TerminalReport.KIND_NOT_ME: "not_me", pb.TerminalReport.KIND_RATING: "rating"}


@dataclass(frozen=True)
class Report:
    """One checked report, ready to store."""

    terminal_id: str
    session_id: str
    kind: str  # not_me | rating
    time: str  # ISO 8601 UTC, normalised
    citizen_id: str
    rating: int
    score: float


def check_common(rep: pb.TerminalReport, *, terminal: str, district: str,
                 now: float | None = None) -> datetime.datetime:
    """The checks every kind of terminal report shares (protocol version, ids against
    the topic, session id, the terminal's time within the accepted window); returns the
    report's time, or ValueError saying which field is wrong."""
    now = time.time() if now is None else now
    if rep.protocol_version != PROTOCOL_VERSION:
        raise ValueError(f"protocol version {rep.protocol_version}")
    if rep.terminal_id != terminal or rep.district_id != district:
        raise ValueError("terminal or district id does not match the topic")
    if not _SESSION.fullmatch(rep.session_id):  # fullmatch: '$' would let a final \n by
        raise ValueError("session id: 1-128 letters, digits, '_', '.', ':', '-'")
    try:
        when = datetime.datetime.fromisoformat(rep.time) if len(rep.time) <= 40 else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError("time: ISO 8601 with a time zone")
    if not now - REPORT_MAX_AGE_S <= when.timestamp() <= now + REPORT_MAX_AHEAD_S:
        raise ValueError("time: too old or in the future")
    return when


def check_report(rep: pb.TerminalReport, *, terminal: str, district: str,
                 now: float | None = None) -> Report:
    """The report as stored, or ValueError saying which field is wrong."""
    kind = _KINDS.get(rep.kind)
    if kind is None:
        check_common(rep, terminal=terminal, district=district, now=now)  # names the field
        raise ValueError(f"kind {rep.kind}")
    when = check_common(rep, terminal=terminal, district=district, now=now)
    stamp = when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds")
    score = float(rep.score)
    if kind == "not_me":
        try:
            check_id(rep.citizen_id, "citizen id")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if rep.rating != 0:
            raise ValueError("a not_me report has no rating")
        if not math.isfinite(score) or abs(score) > REPORT_SCORE_LIMIT:
            raise ValueError("score: not a similarity in -1..1")
    else:
        if not 1 <= rep.rating <= 5:
            raise ValueError(f"rating {rep.rating} not in 1..5")
        if score != 0.0:
            raise ValueError("a rating has no score")
        if rep.citizen_id:  # the citizen shown (an id, no name): joined to their dossier
            try:
                check_id(rep.citizen_id, "citizen id")
            except ValueError as exc:
                raise ValueError(str(exc)) from None
    return Report(terminal, rep.session_id, kind, stamp, rep.citizen_id, rep.rating, score)


class ReportGate:
    """Per-terminal rate limit and per-(terminal, citizen) "not me" dedupe, in memory.

    Called from paho's network thread only (no locking needed)."""

    def __init__(self, *, per_s: float = REPORT_PER_S, burst: int = REPORT_BURST,
                 citizen_window_s: float = REPORT_CITIZEN_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s, self.burst, self.citizen_window_s = per_s, burst, citizen_window_s
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}
        #: (terminal, citizen) -> (when, session) of the last "not me" let through
        self._citizens: collections.OrderedDict[tuple[str, str], tuple[float, str]] = (
            collections.OrderedDict())

    def admit(self, r: Report) -> str:
        """'ok', 'rate' (terminal over its budget) or 'citizen' (a "not me" about the
        same citizen from another session of this terminal within the window)."""
        now = self.clock()
        if r.kind == "not_me":
            key = (r.terminal_id, r.citizen_id)
            last = self._citizens.get(key)
            # the same session again is a resend (lost PUBACK): the log ignores it
            if (last is not None and now - last[0] < self.citizen_window_s
                    and last[1] != r.session_id):
                return "citizen"
        tokens, t = self._tokens.get(r.terminal_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - t) * self.per_s)
        if tokens < 1.0:
            self._tokens[r.terminal_id] = (tokens, now)
            return "rate"
        if r.terminal_id not in self._tokens and len(self._tokens) >= REPORT_TERMINALS_MAX:
            full = [k for k, (v, tt) in self._tokens.items()
                    if v + (now - tt) * self.per_s >= self.burst]
            for k in full:
                del self._tokens[k]
        self._tokens[r.terminal_id] = (tokens - 1.0, now)
        if r.kind == "not_me":
            self._citizens[(r.terminal_id, r.citizen_id)] = (now, r.session_id)
            self._citizens.move_to_end((r.terminal_id, r.citizen_id))
            while len(self._citizens) > REPORT_CITIZEN_MEMORY:
                self._citizens.popitem(last=False)
        return "ok"


class ReportWriter:
    """The ``district-reports`` thread: stores queued reports in batches, then calls
    ``on_stored(token, verdict)`` for each: 'failed' (SQLite; never retried here), else
    without ``limits`` 'stored' (new or duplicate), with them 'new', 'duplicate', 'rate'
    or 'citizen'.

    ``limits`` (a :class:`ReportGate`'s settings) are then applied again when storing,
    against counters in the log file (``DistrictLog.add_reports_limited``): the gate on
    paho's thread is per worker, so with N workers sharing the reports round robin a
    terminal would get N x its budget; the log's counters are the district's.

    It has its own connection to the log file: while it waits for SQLite's write lock
    (another district command, a slow disk) the publisher's reads go on."""

    def __init__(self, dlog: DistrictLog, on_stored: Callable[[object, str], None],
                 stop: threading.Event, *, maxsize: int = REPORT_QUEUE_MAX,
                 limits: ReportGate | None = None) -> None:
        self.path = dlog.path
        self.log: DistrictLog | None = None
        self.on_stored = on_stored
        self.limits = limits
        self.stop_event = stop
        self._q: queue.Queue[tuple[Report, object]] = queue.Queue(maxsize)
        self.stored = 0
        self.duplicates = 0
        self.failed = 0
        #: refused by the district-wide limits (with ``limits``)
        self.limited = 0
        self._thread = threading.Thread(target=self._run, name="district-reports", daemon=True)

    def start(self) -> ReportWriter:
        self.log = DistrictLog.open(self.path)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def offer(self, report: Report, token: object) -> bool:
        """Queue one report; False (the caller drops and counts it) when full. Never blocks."""
        try:
            self._q.put_nowait((report, token))
        except queue.Full:
            return False
        return True

    def pending(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        assert self.log is not None
        try:
            self._loop(self.log)
        finally:
            self.log.close()

    def _loop(self, dlog: DistrictLog) -> None:
        while not self.stop_event.is_set() or not self._q.empty():
            items = take_batch(self._q, REPORT_WRITE_BATCH)
            if not items:
                continue
            rows = [dataclasses.astuple(r) for r, _ in items]
            lim = self.limits
            try:
                if lim is None:
                    new = dlog.add_reports(rows)
                    verdicts = ["stored"] * len(items)  # new or duplicate: only counted
                    self.stored += new
                    self.duplicates += len(items) - new
                else:
                    verdicts = dlog.add_reports_limited(
                        rows, per_s=lim.per_s, burst=lim.burst,
                        citizen_window_s=lim.citizen_window_s)
                    self.stored += verdicts.count("new")
                    self.duplicates += verdicts.count("duplicate")
                    self.limited += len(items) - verdicts.count("new") - verdicts.count(
                        "duplicate")
            except (DistrictError, sqlite3.Error) as exc:  # acked anyway: see docs/sync.md
                log.error("cannot store %d report(s): %s", len(items), exc)
                self.failed += len(items)
                verdicts = ["failed"] * len(items)
            for (_r, token), verdict in zip(items, verdicts, strict=True):
                self.on_stored(token, verdict)


T = TypeVar("T")


def take_batch(q: queue.Queue[T], most: int, wait_s: float = 0.1) -> list[T]:
    """Up to ``most`` items of ``q`` for one write: waits ``wait_s`` for the first (none
    by then: ``[]``), takes the rest only if already queued. ``wait_s``: 0.1 s lets a
    writer loop see its stop event ten times a second while idle."""
    try:
        items = [q.get(timeout=wait_s)]
    except queue.Empty:
        return []
    while len(items) < most:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            break
    return items


def suspend_for_report(dlog: DistrictLog, report_id: str) -> int:
    """Act on a "not me" report: suspend the face of the citizen it names until
    re-enrolment (:meth:`DistrictLog.suspend_face`); returns the change number.

    ``report_id`` is ``"<terminal id>/<session id>"`` (neither may contain "/"). The
    suspension records the report, so :meth:`DistrictLog.report_suspension` tells that
    it was acted on. Idempotent like ``suspend_face``. DistrictError for an unknown
    report or one whose citizen was deleted since.
    """
    terminal, sep, session = report_id.partition("/")
    if not sep or not terminal or not session or "/" in session:
        raise DistrictError(f"report id {report_id[:80]!r}: expected TERMINAL/SESSION")
    citizen = dlog.not_me_citizen(terminal, session)
    if citizen is None:
        raise DistrictError(f"no \"not me\" report {report_id[:300]}")
    if not citizen:
        raise DistrictError(f"report {report_id[:300]}: its citizen was deleted since")
    return dlog.suspend_face(citizen, reason=f'"not me" report {report_id}',
                             report=report_id)
