"""The satisfaction survey behind the terminals' QR codes (docs/district.md "Survey QR").

Three parts:
- offers: a terminal's ``survey_offer`` report (token SHA-256, session, citizen) arrives
  like any report (checked by :func:`check_offer` on paho's thread, under the terminal's
  report budget) and is stored by :class:`OfferWriter` (thread ``district-survey``) in
  ``survey_offers``; only then is its PUBACK sent;
- :class:`SurveyStore`: the offers and the answers (``survey_answers``, one per offered
  session) in the district log's file; :meth:`SurveyStore.answer` consumes a token in one
  ``BEGIN IMMEDIATE`` transaction, so two answers racing for one token (two threads or
  two processes) store one;
- :class:`AddressLimiter`: the per-address limit of the pages for phones, which are in
  district/survey_page.py (``GET`` / ``POST /s/{token}``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import ipaddress
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from core.errors import DistrictError
from district.log import BUSY_TIMEOUT_MS
from district.reports import (
    Report,
    ReportGate,
    check_common,
    take_batch,
)
from proto import sync_pb2 as pb
from sync.survey import TOKEN_RE, PublishedSurvey, token_sha256
from sync.topics import check_id

log = logging.getLogger(__name__)

#: longest comment kept, in characters: a few sentences; the form says so
MAX_COMMENT_CHARS = 500
#: requests per address: a burst of 30 (the page, its reloads while pending, a retried
#: answer; a few phones behind one carrier NAT) then one per 2 s sustained. A token has
#: 144 random bits, so the limit bounds load, not guessing (which is hopeless anyway)
ADDRESS_PER_S = 0.5
ADDRESS_BURST = 30
#: addresses remembered for the limit (~100 bytes each: ~10 MB); full buckets go first,
#: then the oldest
ADDRESS_MAX = 100_000
#: offers waiting for the writer thread; more are dropped (the terminal sends again)
OFFER_QUEUE_MAX = 10_000
#: offers written in one transaction at most
OFFER_WRITE_BATCH = 200
#: an expired, unanswered offer is kept this long past its expiry (its page says
#: "expired" rather than "unknown"), then deleted; the check runs this often
OFFER_KEEP_EXPIRED_S = 86400.0
PRUNE_INTERVAL_S = 600.0



# ---- offers (from terminals) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Offer:
    """One checked survey offer, ready to store."""

    token_sha256: bytes
    terminal_id: str
    session_id: str
    citizen_id: str
    #: terminal clock (Unix seconds) when the QR was shown
    offered_at: float


def check_offer(rep: pb.TerminalReport, *, terminal: str, district: str,
                now: float | None = None) -> Offer:
    """The offer as stored, or ValueError saying which field is wrong."""
    if rep.kind != pb.TerminalReport.KIND_SURVEY_OFFER:
        check_common(rep, terminal=terminal, district=district, now=now)  # names the field
        raise ValueError(f"kind {rep.kind}")
    t = check_common(rep, terminal=terminal, district=district, now=now).timestamp()
    if len(rep.survey_token_sha256) != 32:
        raise ValueError("survey token hash: 32 bytes expected")
    if rep.rating != 0 or rep.score != 0.0:
        raise ValueError("a survey offer has no rating and no score")
    try:
        if rep.citizen_id:  # blank: the terminal redacted it (the citizen was deleted)
            check_id(rep.citizen_id, "citizen id")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return Offer(bytes(rep.survey_token_sha256), terminal, rep.session_id, rep.citizen_id, t)


# ---- the store -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SurveyAnswer:
    """One answer from a citizen's phone, linked to the session that offered it."""

    terminal_id: str
    session_id: str
    citizen_id: str  # "" once the citizen was deleted
    time: str  # district clock, ISO 8601 UTC
    rating: int  # 1..5
    comment: str
    #: the session also has a "not me" report: the citizen shown was not the one in front
    #: of the terminal, so the answer is linked to no citizen (citizen_id is "")
    disputed: bool = False


class SurveyStore:
    """The survey tables in the district log's file (its own connection; thread-safe)."""

    def __init__(self, path: Path, lifetime_s: float) -> None:
        self.path = path
        self.lifetime_s = lifetime_s
        self._lock = threading.Lock()
        try:
            if not path.exists():
                raise DistrictError(f"{path}: no such change log (run district init)")
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA synchronous = FULL")
            # the tables are part of the log's schema (district/log.py): check they exist
            self._db.execute("SELECT 1 FROM survey_offers LIMIT 0")
        except sqlite3.Error as exc:
            raise DistrictError(f"{path}: cannot open the survey tables: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_offers(self, offers: list[Offer], now: float | None = None) -> int:
        """Store offers in one transaction; returns how many were new. A token hash or a
        (terminal, session) already known is ignored: a resend, or a terminal replaying
        another's token, which must not take it over."""
        now = time.time() if now is None else now
        new = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for o in offers:
                    shown = min(o.offered_at, now)  # a clock running ahead buys no time
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO survey_offers (token_sha256, terminal_id, "
                        "session_id, citizen_id, offered_at, received_at, expires_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (o.token_sha256, o.terminal_id, o.session_id, o.citizen_id, shown,
                         now, shown + self.lifetime_s))
                    new += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def status(self, token: str, now: float | None = None) -> str:
        """'open', 'unknown' (never offered, or not arrived yet), 'expired' or 'used'."""
        now = time.time() if now is None else now
        if not TOKEN_RE.match(token):
            return "unknown"
        with self._lock:
            row = self._db.execute(
                "SELECT expires_at, used_at FROM survey_offers WHERE token_sha256 = ?",
                (token_sha256(token),)).fetchone()
        return _status(row, now)

    def answer(self, token: str, rating: int, comment: str, now: float | None = None) -> str:
        """Consume ``token`` and store the answer: 'ok', or why not ('unknown', 'expired',
        'used'). Atomic: of two answers racing for one token, one is stored."""
        now = time.time() if now is None else now
        if not TOKEN_RE.match(token):
            return "unknown"
        if not 1 <= rating <= 5 or len(comment) > MAX_COMMENT_CHARS:
            raise ValueError("rating 1..5 and a comment of at most "
                             f"{MAX_COMMENT_CHARS} characters")
        key = token_sha256(token)
        stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
            timespec="milliseconds")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT expires_at, used_at, terminal_id, session_id, citizen_id "
                    "FROM survey_offers WHERE token_sha256 = ?", (key,)).fetchone()
                verdict = _status(row, now)
                if verdict == "open":
                    self._db.execute("UPDATE survey_offers SET used_at = ? "
                                     "WHERE token_sha256 = ? AND used_at IS NULL", (now, key))
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO survey_answers VALUES (?, ?, ?, ?, ?, ?)",
                        (row[2], row[3], row[4], stamp, rating, comment))
                    verdict = "ok" if cur.rowcount == 1 else "used"
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return verdict

    def answers(self, limit: int = 1000) -> list[SurveyAnswer]:
        """Newest answers first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.terminal_id, a.session_id, a.citizen_id, a.time, a.rating, "
                "a.comment, r.session_id IS NOT NULL FROM survey_answers a "
                "LEFT JOIN reports r ON r.terminal_id = a.terminal_id "
                "AND r.session_id = a.session_id AND r.kind = 'not_me' "
                "ORDER BY a.time DESC, a.terminal_id, a.session_id LIMIT ?",
                (limit,)).fetchall()
        return [SurveyAnswer(t, s, "" if d else c, when, rating, comment, bool(d))
                for t, s, c, when, rating, comment, d in rows]

    def counts(self) -> tuple[int, int]:
        """(offers held, answers stored)."""
        with self._lock:
            offers = self._db.execute("SELECT count(*) FROM survey_offers").fetchone()[0]
            answers = self._db.execute("SELECT count(*) FROM survey_answers").fetchone()[0]
        return int(offers), int(answers)

    def offer_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM survey_offers").fetchone()[0])

    def prune(self, now: float | None = None) -> int:
        """Delete unanswered offers expired more than OFFER_KEEP_EXPIRED_S ago."""
        now = time.time() if now is None else now
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM survey_offers WHERE used_at IS NULL AND expires_at < ?",
                (now - OFFER_KEEP_EXPIRED_S,))
        return cur.rowcount


def _status(row: tuple[float, float | None] | None, now: float) -> str:
    if row is None:
        return "unknown"
    if row[1] is not None:
        return "used"
    return "expired" if now >= row[0] else "open"


def survey_answers(path: Path, limit: int = 1000) -> list[SurveyAnswer]:
    """The answers stored in the district log at ``path``, newest first (for the staff
    rating and reports: join on terminal_id + session_id, or citizen_id)."""
    store = SurveyStore(path, lifetime_s=0)
    try:
        return store.answers(limit)
    finally:
        store.close()


# ---- the offer writer (thread district-survey) ------------------------------------------

class OfferWriter:
    """Stores offers checked on paho's thread, then calls ``on_stored(token)`` (the
    publisher sends the PUBACK); prunes old offers now and then."""

    def __init__(self, path: Path, lifetime_s: float, stop: threading.Event, *,
                 maxsize: int = OFFER_QUEUE_MAX) -> None:
        self.path = path
        self.lifetime_s = lifetime_s
        self.stop_event = stop
        self.on_stored: Callable[[object], None] = lambda _t: None
        self.gate: ReportGate | None = None
        self._q: queue.Queue[tuple[Offer, object]] = queue.Queue(maxsize)
        self.stored = 0
        self.duplicates = 0
        self.failed = 0
        self.bad = 0
        self.limited = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="district-survey", daemon=True)

    def start(self) -> OfferWriter:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_report(self, terminal: str, rep: pb.TerminalReport, district: str,
                  token: object) -> bool:
        """Check one offer and queue it (paho's thread, no SQLite); True when queued (it
        is acknowledged once stored), False when dropped (the caller acknowledges)."""
        try:
            offer = check_offer(rep, terminal=terminal, district=district)
        except ValueError as exc:
            self.bad += 1
            log.warning("bad survey offer from %s dropped: %s", terminal, exc)
            return False
        if self.gate is not None:  # the terminal's report budget (district/reports.py)
            stamp = datetime.datetime.fromtimestamp(offer.offered_at, datetime.timezone.utc)
            verdict = self.gate.admit(Report(terminal, offer.session_id, "survey_offer",
                                             stamp.isoformat(), offer.citizen_id, 0, 0.0))
            if verdict != "ok":
                self.limited += 1
                return False
        try:
            self._q.put_nowait((offer, token))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        store: SurveyStore | None
        try:
            store = SurveyStore(self.path, self.lifetime_s)
        except DistrictError as exc:  # offers are still acknowledged (and counted failed)
            log.error("survey offers cannot be stored: %s", exc)
            store = None
        pruned_at = 0.0
        try:
            while not self.stop_event.is_set() or not self._q.empty():
                if store is not None and time.monotonic() - pruned_at > PRUNE_INTERVAL_S:
                    pruned_at = time.monotonic()
                    try:
                        store.prune()
                    except sqlite3.Error as exc:
                        log.error("cannot prune survey offers: %s", exc)
                items = take_batch(self._q, OFFER_WRITE_BATCH)
                if not items:
                    continue
                try:
                    if store is None:
                        raise sqlite3.OperationalError("the survey tables are not open")
                    new = store.add_offers([o for o, _ in items])
                except sqlite3.Error as exc:  # acked anyway, like reports (docs/sync.md)
                    log.error("cannot store %d survey offer(s): %s", len(items), exc)
                    self.failed += len(items)
                else:
                    self.stored += new
                    self.duplicates += len(items) - new
                for _o, token in items:
                    self.on_stored(token)
        finally:
            if store is not None:
                store.close()


# ---- rate limit per address ----------------------------------------------------------------

class AddressLimiter:
    """A token bucket per client address (an IPv6 client's /64: it owns all of it)."""

    def __init__(self, *, per_s: float = ADDRESS_PER_S, burst: int = ADDRESS_BURST,
                 max_addresses: int = ADDRESS_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s, self.burst, self.max_addresses = per_s, burst, max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = (
            collections.OrderedDict())
        self.refused = 0

    @staticmethod
    def key(address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def admit(self, address: str) -> bool:
        key = self.key(address)
        now = self.clock()
        with self._lock:
            tokens, t = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - t) * self.per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                self.refused += 1
                return False
            self._buckets[key] = (tokens - 1.0, now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > self.max_addresses:
                full = [k for k, (v, tt) in self._buckets.items()
                        if v + (now - tt) * self.per_s >= self.burst]
                for k in full[: len(self._buckets) - self.max_addresses]:
                    del self._buckets[k]
                while len(self._buckets) > self.max_addresses:
                    self._buckets.popitem(last=False)
            return True


def published(enabled: bool, base_url: str, lifetime_s: int) -> PublishedSurvey | None:
    """What the manifest carries for this configuration (None: off)."""
    return PublishedSurvey(base_url.rstrip("/"), lifetime_s) if enabled else None


class SurveyCollector:
    """Prometheus figures of the survey, read at scrape time: offers held, answers
    stored, offers refused on arrival (by reason) and page requests over the address
    limit."""

    def __init__(self, store: SurveyStore, writer: OfferWriter, limiter: AddressLimiter
                 ) -> None:
        self.store, self.writer, self.limiter = store, writer, limiter

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> list[GaugeMetricFamily]:
        try:
            offers, answers = self.store.counts()
        except sqlite3.Error:  # closed (shutting down): report nothing
            return []
        refused = GaugeMetricFamily("motcua_district_survey_offers_refused",
                                    "terminals' survey offers not stored, by reason",
                                    labels=["reason"])
        w = self.writer
        for reason, n in (("bad", w.bad), ("limited", w.limited), ("dropped", w.dropped),
                          ("failed", w.failed)):
            refused.add_metric([reason], n)
        return [
            GaugeMetricFamily("motcua_district_survey_offers", "survey offers held "
                              "(open, answered, or expired within the last day)", value=offers),
            GaugeMetricFamily("motcua_district_survey_answers", "survey answers stored",
                              value=answers),
            refused,
            GaugeMetricFamily("motcua_district_survey_limited_requests", "survey page "
                              "requests refused by the per-address limit (429)",
                              value=self.limiter.refused),
        ]
