"""Wrong answers to a citizen's secret, counted per citizen, kept across restarts.

A session allows ``api.pin_tries`` wrong PINs, but a new session (walk away, come back)
used to start afresh: 120 wrong PINs over 40 sessions, then the right one, went through.
:class:`AttemptLimiter` counts wrong answers per *subject* (a citizen id) in a small SQLite
file in the terminal's state dir, so neither a new session nor a terminal restart resets
it. After ``max_failures`` wrong answers in a row the subject is locked for
``lockout_s``; each further lock (without a right answer in between) is twice as long,
up to ``lockout_max_s``. A right answer clears the subject.

It is meant for every "prove it is you" step of a citizen: the PIN now, the date-of-birth
confirmation later. Both should share one limiter (one budget per citizen), since both
guess at facts of the same citizen; :meth:`AttemptLimiter.attempt` runs the check under
the limiter's lock so parallel guesses cannot overrun the budget.

The clock is the wall clock (a lock must outlive a reboot); rows untouched for
FORGET_AFTER_S are dropped, and :meth:`AttemptLimiter.forget` drops deleted citizens.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import StoreError

log = logging.getLogger(__name__)

#: a subject with no wrong answer for this long starts again from nothing: 30 days is far
#: longer than the longest lock, so the escalation is not undone by waiting a lock out
FORGET_AFTER_S = 30 * 86400.0


@dataclasses.dataclass(frozen=True)
class AttemptPolicy:
    """How many wrong answers in a row lock a subject, and for how long."""

    max_failures: int = 5
    lockout_s: float = 900.0
    lockout_max_s: float = 86400.0

    def lock_duration(self, locks: int) -> float:
        """The length of the ``locks``-th lock in a row (1 = the first)."""
        return min(self.lockout_s * 2.0 ** min(max(locks - 1, 0), 30), self.lockout_max_s)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The state of one subject after a check or an attempt."""

    #: a try may be made now
    allowed: bool
    #: wrong answers left before the next lock
    failures_left: int
    #: wall-clock time (Unix seconds) the lock ends; 0.0 when not locked
    locked_until: float = 0.0
    #: the attempt was made and the answer was right
    ok: bool = False
    #: this attempt started a lock
    just_locked: bool = False


LockHook = Callable[[str, Verdict], None]


class AttemptLimiter:
    """Per-subject counter of wrong answers in SQLite (``path`` None: in memory only)."""

    def __init__(self, path: Path | None, policy: AttemptPolicy | None = None, *,
                 clock: Callable[[], float] = time.time,
                 on_lock: LockHook | None = None) -> None:
        self.path = path
        self.policy = policy or AttemptPolicy()
        self.clock = clock
        self.on_lock = on_lock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(":memory:" if path is None else str(path),
                                       check_same_thread=False, isolation_level=None)
            # every wrong answer must survive a power cut: FULL syncs each commit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS attempts (subject TEXT PRIMARY KEY, "
                "failures INTEGER NOT NULL, locks INTEGER NOT NULL, "
                "locked_until REAL NOT NULL, updated REAL NOT NULL)")
            self._db.execute("DELETE FROM attempts WHERE updated < ?",
                             (self.clock() - FORGET_AFTER_S,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the attempt counter {path}: {exc}") from None

    def _row(self, subject: str) -> tuple[int, int, float]:
        row = self._db.execute(
            "SELECT failures, locks, locked_until FROM attempts WHERE subject = ?",
            (subject,)).fetchone()
        return (0, 0, 0.0) if row is None else (int(row[0]), int(row[1]), float(row[2]))

    def _verdict(self, failures: int, until: float, now: float) -> Verdict:
        if until > now:
            return Verdict(allowed=False, failures_left=0, locked_until=until)
        return Verdict(allowed=True, failures_left=max(self.policy.max_failures - failures, 0))

    def check(self, subject: str) -> Verdict:
        """Whether ``subject`` may try now, and how many wrong answers are left."""
        with self._lock:
            failures, _, until = self._row(subject)
            return self._verdict(failures, until, self.clock())

    def attempt(self, subject: str, verify: Callable[[], bool]) -> Verdict:
        """Run ``verify`` (the real check of the answer) unless ``subject`` is locked, and
        count the outcome durably before returning it. One attempt at a time."""
        with self._lock:
            now = self.clock()
            failures, locks, until = self._row(subject)
            if until > now:
                return Verdict(allowed=False, failures_left=0, locked_until=until)
            if failures >= self.policy.max_failures:  # policy lowered since: lock now
                failures = self.policy.max_failures - 1
            if verify():
                self._write("DELETE FROM attempts WHERE subject = ?", (subject,))
                return Verdict(allowed=True, ok=True, failures_left=self.policy.max_failures)
            failures += 1
            if failures < self.policy.max_failures:
                self._write("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                            (subject, failures, locks, 0.0, now))
                return Verdict(allowed=True, failures_left=self.policy.max_failures - failures)
            locks += 1
            until = now + self.policy.lock_duration(locks)
            self._write("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                        (subject, 0, locks, until, now))
            verdict = Verdict(allowed=False, failures_left=0, locked_until=until,
                              just_locked=True)
        log.warning("subject %s locked for %.0f s after %d wrong answers", subject,
                    until - now, self.policy.max_failures)
        if self.on_lock is not None:
            self.on_lock(subject, verdict)
        return verdict

    def attempt_any(self, subjects: Sequence[str], verify: Callable[[str], bool]
                    ) -> tuple[list[str], dict[str, Verdict]]:
        """Check one answer against several subjects at once (the confirmation step's
        candidates). ``verify(subject)`` runs for every subject not locked, all of them
        even after a hit, so the time does not tell which one matched.

        Returns (the subjects whose answer was right, each subject's verdict). A right
        subject is cleared; when none was right the wrong answer counts against *every*
        subject it was checked against (a stranger matching three candidates gets no
        more tries than with one). Locked subjects are not checked and stay locked.
        """
        right: list[str] = []
        verdicts: dict[str, Verdict] = {}
        locked_now: list[tuple[str, Verdict]] = []
        with self._lock:
            now = self.clock()
            rows = {s: self._row(s) for s in dict.fromkeys(subjects)}
            checked = []
            for subject, (_, _, until) in rows.items():
                if until > now:
                    verdicts[subject] = Verdict(allowed=False, failures_left=0,
                                                locked_until=until)
                else:
                    checked.append(subject)
            results = {subject: bool(verify(subject)) for subject in checked}
            right = [subject for subject in checked if results[subject]]
            # one transaction: every candidate's count survives a power cut, or none does
            self._write("BEGIN IMMEDIATE", ())
            try:
                self._count_all(checked, rows, right, verdicts, locked_now, now)
                self._write("COMMIT", ())
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        for subject, verdict in locked_now:
            log.warning("subject %s locked until %.0f after %d wrong answers", subject,
                        verdict.locked_until, self.policy.max_failures)
            if self.on_lock is not None:
                self.on_lock(subject, verdict)
        return right, verdicts

    def _count_all(self, checked: list[str], rows: dict[str, tuple[int, int, float]],
                   right: list[str], verdicts: dict[str, Verdict],
                   locked_now: list[tuple[str, Verdict]], now: float) -> None:
        for subject in checked:
            failures, locks, _ = rows[subject]
            failures = min(failures, self.policy.max_failures - 1)
            if subject in right:
                self._write("DELETE FROM attempts WHERE subject = ?", (subject,))
                verdicts[subject] = Verdict(allowed=True, ok=True,
                                            failures_left=self.policy.max_failures)
            elif right:  # the answer was right for another candidate: not a guess here
                verdicts[subject] = self._verdict(failures, 0.0, now)
            elif failures + 1 < self.policy.max_failures:
                self._write("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                            (subject, failures + 1, locks, 0.0, now))
                verdicts[subject] = Verdict(
                    allowed=True, failures_left=self.policy.max_failures - failures - 1)
            else:
                until = now + self.policy.lock_duration(locks + 1)
                self._write("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                            (subject, 0, locks + 1, until, now))
                verdicts[subject] = Verdict(allowed=False, failures_left=0,
                                            locked_until=until, just_locked=True)
                locked_now.append((subject, verdicts[subject]))

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:  # a full disk: refuse rather than forget a failure
            raise StoreError(f"cannot record an attempt in {self.path}: {exc}") from None

    def forget(self, keep: Callable[[str], bool]) -> int:
        """Drop the subjects ``keep`` rejects (citizens deleted from the gallery)."""
        with self._lock:
            gone = [s for (s,) in self._db.execute("SELECT subject FROM attempts")
                    if not keep(s)]
            for s in gone:
                self._write("DELETE FROM attempts WHERE subject = ?", (s,))
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()
