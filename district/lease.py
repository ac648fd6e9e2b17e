"""The publisher's lease: one district worker at a time publishes the change log.

Several ``motcua district serve`` processes (workers) may run against one change log
(same host, one SQLite file). Each takes ingest requests, terminals' requests and
reports; only the one holding this lease publishes batches and the manifest and writes
``published_seq``. The others are hot standbys: they take the lease when its holder
stops renewing it (killed, stopped, cut off from the broker).

The lease is one row of the log's ``lease`` table: holder (a name unique to one process
run), generation (the fencing number: +1 at every change of holder, never reused) and
beat (+1 at every renewal). Time is never compared across processes: a standby takes
over when it has seen the SAME (holder, generation, beat) for ``ttl_s`` on its own
monotonic clock, and the holder counts its validity from before its last renewal's
transaction started. Since the standby first sees a renewal after it committed, the
holder's validity always ends before any standby may take over (wall-clock steps, a
reboot, a clock set wrong on one side change nothing).

Fencing: ``DistrictLog.mark_published`` writes only when the row still names the
caller's (holder, generation), in the same transaction; the publisher checks
:meth:`Lease.held` right before each broker publish. docs/scale.md ("Several district
workers") says what is left: a worker stopped between that check and the publish sends
that one message late.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from core.errors import DistrictError

log = logging.getLogger(__name__)

#: a holder that has not renewed for this long has lost the lease. 5 s: a SIGKILLed
#: holder is replaced within TTL + 2 renew intervals (~7 s, under the 10 s target),
#: while a GC pause, a slow fsync or a busy log of a few seconds does not cost it
LEASE_TTL_S = 5.0
#: how often the holder renews and a standby looks at the row: 1 s gives the holder four
#: tries before its validity ends and bounds a standby's observation lag to 1 s
LEASE_RENEW_S = 1.0
#: the holder stops publishing this long before its validity ends: room for the time
#: between the check and the message leaving, and for clock rate differences
LEASE_MARGIN_S = 1.0
#: a renewal waits at most this long for SQLite's write lock (an ingest batch holds it
#: ~1 s at most); a failed renewal is tried again at the next tick, and the validity
#: left after one miss (TTL - margin - renew = 3 s) covers it
LEASE_BUSY_MS = 2000
#: the lease's row name (one lease per log: the publisher's)
PUBLISHER_LEASE = "publisher"

LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,        -- '' once released
    generation INTEGER NOT NULL, -- fencing number: +1 at every change of holder
    beat INTEGER NOT NULL,       -- +1 at every renewal
    renewed_at REAL NOT NULL     -- wall clock, for people only (never compared)
);
"""


class LeaseLost(DistrictError):
    """This worker no longer holds the publisher lease (another took it over)."""


@dataclass(frozen=True)
class LeaseRow:
    """The lease as stored."""

    holder: str
    generation: int
    beat: int
    renewed_at: float


def new_holder_id(worker: str = "") -> str:
    """A holder name unique to this process run: worker, host, pid and a random part."""
    return f"{worker or 'worker'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def read_lease(conn: sqlite3.Connection, name: str = PUBLISHER_LEASE) -> LeaseRow | None:
    row = conn.execute("SELECT holder, generation, beat, renewed_at FROM lease WHERE name = ?",
                       (name,)).fetchone()
    return None if row is None else LeaseRow(str(row[0]), int(row[1]), int(row[2]),
                                             float(row[3]))


class Lease:
    """One worker's view of the lease; :meth:`tick` every ``renew_s`` from one thread,
    :meth:`held` from any thread. ``clock`` is monotonic (tests pass their own)."""

    def __init__(self, path: Path, holder: str, *, name: str = PUBLISHER_LEASE,
                 ttl_s: float = LEASE_TTL_S, margin_s: float = LEASE_MARGIN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= margin_s < ttl_s:
            raise DistrictError("lease: need 0 <= margin < ttl")
        self.path, self.holder, self.name = path, holder, name
        self.ttl_s, self.margin_s, self.clock = ttl_s, margin_s, clock
        #: the generation this worker holds (0: none)
        self.generation = 0
        self._valid_until = float("-inf")
        self._seen: tuple[str, int, int] | None = None
        self._seen_at = 0.0
        self._conn: sqlite3.Connection | None = None
        #: holder changes this worker made (takeovers) and losses it noticed
        self.takeovers = 0
        self.losses = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {LEASE_BUSY_MS}")
            # a renewal a second need not be fsynced: WAL keeps commits across a process
            # crash, and a power loss kills every holder anyway (a lost takeover only
            # means the next one reuses a generation that no live process holds)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(LEASE_SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def held(self) -> bool:
        """True while this worker may publish (its validity, minus the margin, lasts)."""
        return self.generation > 0 and self.clock() < self._valid_until - self.margin_s

    def fence(self) -> tuple[str, int]:
        """(holder, generation) for fenced log writes; LeaseLost when not held."""
        if not self.held():
            raise LeaseLost(f"{self.holder} does not hold the publisher lease")
        return self.holder, self.generation

    def _lost(self, row: LeaseRow | None) -> None:
        if self.generation:
            self.losses += 1
            log.warning("lost the publisher lease (generation %d) to %s", self.generation,
                        "nobody" if row is None or not row.holder
                        else f"{row.holder} (generation {row.generation})")
        self.generation = 0
        self._valid_until = float("-inf")

    def tick(self, eligible: bool) -> bool:
        """One step: renew the lease when held, take it when free or expired (only when
        ``eligible``: connected to the broker). Returns :meth:`held` after the step.
        A holder that is not eligible stops renewing, so a connected standby takes over."""
        db = self._db()
        start = self.clock()  # before the transaction: the holder's validity counts from here
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # busy past LEASE_BUSY_MS: next tick
            log.warning("lease: log busy (%s); trying again", exc)
            return self.held()
        try:
            row = read_lease(db, self.name)
            seen_at = self.clock()  # after reading: no earlier than the holder's commit
            mine = (row is not None and self.generation > 0 and row.holder == self.holder
                    and row.generation == self.generation)
            if mine:
                if eligible:
                    db.execute("UPDATE lease SET beat = beat + 1, renewed_at = ? WHERE name = ?",
                               (time.time(), self.name))
                    db.execute("COMMIT")
                    self._valid_until = start + self.ttl_s
                else:
                    db.execute("ROLLBACK")
                return self.held()
            self._lost(row)
            observed = None if row is None else (row.holder, row.generation, row.beat)
            if observed != self._seen:
                self._seen, self._seen_at = observed, seen_at
            free = row is None or not row.holder
            expired = seen_at - self._seen_at >= self.ttl_s
            if eligible and (free or expired):
                gen = (0 if row is None else row.generation) + 1
                db.execute("INSERT OR REPLACE INTO lease (name, holder, generation, beat, "
                           "renewed_at) VALUES (?, ?, ?, 0, ?)",
                           (self.name, self.holder, gen, time.time()))
                db.execute("COMMIT")
                self.generation, self._valid_until = gen, start + self.ttl_s
                self.takeovers += 1
                log.info("took the publisher lease: generation %d (%s)", gen,
                         "free" if free else f"{row.holder if row else '?'} stopped renewing")
                return self.held()
            db.execute("ROLLBACK")
            return False
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("lease: %s; trying again", exc)
            return self.held()

    def release(self) -> None:
        """Give the lease up (graceful stop): a standby takes it at its next tick."""
        if self.generation == 0:
            return
        try:
            db = self._db()
            db.execute("UPDATE lease SET holder = '' WHERE name = ? AND holder = ? "
                       "AND generation = ?", (self.name, self.holder, self.generation))
        except sqlite3.Error as exc:  # it expires by itself then
            log.warning("lease: cannot release: %s", exc)
        self.generation = 0
        self._valid_until = float("-inf")


class LeaseCollector:
    """Prometheus: whether this worker holds the lease, and its generation."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> list[GaugeMetricFamily]:
        held = self.lease.held()
        return [
            GaugeMetricFamily("motcua_district_lease_held", "1 when this worker holds the "
                              "publisher lease (publishes batches and the manifest)",
                              value=1 if held else 0),
            GaugeMetricFamily("motcua_district_lease_generation", "the lease generation "
                              "this worker holds (0: a standby)",
                              value=self.lease.generation if held else 0),
        ]


__all__ = ["LEASE_RENEW_S", "LEASE_TTL_S", "Lease", "LeaseCollector", "LeaseLost", "LeaseRow",
           "new_holder_id", "read_lease"]
