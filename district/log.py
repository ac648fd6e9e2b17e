"""The district's ordered change log, kept in SQLite (WAL).

One file holds the log (every change with its number ``seq``), the current state it
produces (citizens and dossiers, for snapshots) and the publisher's progress. Each
command appends in one transaction, so a change number is never used twice and never
skipped, even with several district commands and the publisher running at once.

Deleting a citizen (right to be forgotten) removes them from the state AND redacts every
earlier log entry about them (the payload is erased, ``secure_delete`` zeroes the freed
pages). A redacted entry is sent as a ``CitizenDelete`` of that citizen under its own
number: the citizen is deleted later in the log anyway, so applying any range of the
log still ends in the right state, and replays never need the erased data.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.errors import DistrictError
from proto import sync_pb2 as pb
from sync.changes import (
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)
from sync.pin import HASH_LEN
from sync.topics import check_id
from sync.wire import change_from_pb, change_to_pb

#: how long a writer waits for another process's transaction (publisher vs. commands)
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    citizen_id TEXT NOT NULL,
    change BLOB,                -- serialized Change; NULL once redacted
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS log_citizen ON log (citizen_id);
CREATE TABLE IF NOT EXISTS citizens (
    citizen_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    change BLOB NOT NULL        -- the CitizenUpsert that produced the current state
);
CREATE TABLE IF NOT EXISTS dossiers (
    code TEXT PRIMARY KEY,
    citizen_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    change BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dossiers_citizen ON dossiers (citizen_id);
CREATE TABLE IF NOT EXISTS reports (   -- terminals' "not me" reports and ratings
    terminal_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,                 -- not_me | rating
    time TEXT NOT NULL,                 -- terminal clock, ISO 8601
    citizen_id TEXT NOT NULL,
    rating INTEGER NOT NULL,
    score REAL NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, session_id, kind)
);
CREATE TABLE IF NOT EXISTS survey_offers (  -- survey QRs shown (district/survey.py)
    token_sha256 BLOB PRIMARY KEY,      -- the token itself never reaches the district
    terminal_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    citizen_id TEXT NOT NULL,
    offered_at REAL NOT NULL,           -- terminal clock, never later than received_at
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,                       -- NULL until answered
    UNIQUE (terminal_id, session_id)
);
CREATE TABLE IF NOT EXISTS survey_answers (  -- one per offered session
    terminal_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    citizen_id TEXT NOT NULL,
    time TEXT NOT NULL,                 -- district clock, ISO 8601 UTC
    rating INTEGER NOT NULL,            -- 1..5
    comment TEXT NOT NULL,
    PRIMARY KEY (terminal_id, session_id)
);
CREATE TABLE IF NOT EXISTS ingest_events (  -- case-system events seen (district/ingest.py)
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    entity TEXT NOT NULL,       -- "dossier:<code>" or "citizen:<id>"
    version INTEGER NOT NULL,   -- the source's version of the entity
    outcome TEXT NOT NULL,      -- applied | stale
    seq INTEGER NOT NULL,       -- the change it became (0: none)
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_versions (  -- newest source version applied per entity
    entity TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""


#: the terminal store's limits (edge/store/gallery.py): the district must never send what
#: a terminal would refuse, or that terminal would be stuck at that change
MAX_ID_LEN = 128
MAX_TEXT_LEN = 512
#: longest date-of-birth salt accepted (hash_dob makes 16 bytes; the terminal takes 256)
MAX_SALT_LEN = 64
MAX_EMBEDDINGS = 16
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _check_text(value: str, what: str, limit: int) -> None:
    if len(value) > limit or any(ord(ch) < 32 for ch in value):
        raise DistrictError(f"{what}: at most {limit} characters, no control characters")


def _check_dossier(d: Dossier) -> None:
    if not d.code or not d.citizen_id:
        raise DistrictError("a dossier needs a code and a citizen")
    _check_text(d.code, "dossier code", MAX_ID_LEN)
    for name in ("procedure", "stage", "counter"):
        _check_text(getattr(d, name), f"dossier {d.code} {name}", MAX_TEXT_LEN)
    if not _DATE.match(d.received_on):
        raise DistrictError(f"dossier {d.code}: received_on must be YYYY-MM-DD")
    if d.appointment_on and not _DATE.match(d.appointment_on):
        raise DistrictError(f"dossier {d.code}: appointment_on must be YYYY-MM-DD or empty")
    for value in (d.received_on, d.appointment_on):
        if value:
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                raise DistrictError(f"dossier {d.code}: {value} is not a date") from None


@dataclass(frozen=True)
class LogInfo:
    district_id: str
    epoch: int
    embedder_id: str
    dim: int
    head_seq: int
    published_seq: int
    citizen_count: int
    dossier_count: int
    #: changes up to here were removed by compact(); replays start after it
    compacted_to: int = 0


class DistrictLog:
    """Open with :meth:`create` (new district) or :meth:`open` (existing file)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._db = conn
        self._lock = threading.RLock()
        self._depth = 0
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        try:
            self.district_id = meta["district_id"]
            int(meta["epoch"])  # there and a number; the `epoch` property reads it fresh
            self.embedder_id = meta["embedder_id"]
            self.dim = int(meta["dim"])
        except KeyError:
            raise DistrictError(f"{path}: not a district change log (run district init)") from None

    # ---- opening ------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise DistrictError(f"{path}: cannot open change log: {exc}") from None
        return conn

    @classmethod
    def create(cls, path: Path, *, district_id: str, embedder_id: str, dim: int) -> DistrictLog:
        """Create a new, empty log for a district (epoch 1)."""
        try:
            check_id(district_id, "district id")
        except ValueError as exc:
            raise DistrictError(str(exc)) from None
        if dim <= 0 or not embedder_id:
            raise DistrictError("an embedder id and a positive dimension are needed")
        if path.exists():
            raise DistrictError(f"{path} exists; refusing to start a second log over it")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("district_id", district_id),
                    ("epoch", "1"),
                    ("embedder_id", embedder_id),
                    ("dim", str(dim)),
                    ("published_seq", "0"),
                ],
            )
        return cls(path, conn)

    @classmethod
    def open(cls, path: Path) -> DistrictLog:
        if not path.exists():
            raise DistrictError(f"{path}: no such change log (run district init)")
        return cls(path, cls._connect(path))

    def close(self) -> None:
        self._db.close()

    # ---- writing ------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several appends into one transaction (nests; outermost commits)."""
        with self._lock:
            if self._depth == 0:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:  # busy past the timeout, disk trouble
                    raise DistrictError(
                        f"{self.path}: cannot write the change log: {exc}"
                    ) from None
            self._depth += 1
            try:
                yield
            except sqlite3.Error as exc:
                self._depth -= 1
                if self._depth == 0 and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise DistrictError(f"{self.path}: change log write failed: {exc}") from None
            except BaseException:
                self._depth -= 1
                if self._depth == 0 and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise DistrictError(f"{self.path}: commit failed: {exc}") from None

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside :meth:`transaction`: a part that an exception undoes alone (the rest of
        the transaction stays), e.g. one refused event of a batch."""
        with self._lock:
            if self._depth == 0:
                raise DistrictError("savepoint() needs an open transaction()")
            name = f"sp{self._depth}"
            self._db.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
                raise
            self._db.execute(f"RELEASE {name}")

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT max(seq) FROM log").fetchone()
        return int(row[0] or 0) + 1

    def _append(self, change: pb.Change, citizen_id: str) -> int:
        seq = self._next_seq()
        change.seq = seq
        self._db.execute(
            "INSERT INTO log (seq, citizen_id, change, created_at) VALUES (?, ?, ?, ?)",
            (seq, citizen_id, change.SerializeToString(), time.time()),
        )
        return seq

    def upsert_citizen(
        self,
        citizen_id: str,
        *,
        masked_name: str,
        embeddings: npt.NDArray[np.float32],
        pin_hash: bytes = b"",
        pin_salt: bytes = b"",
        dob_hash: bytes = b"",
        dob_salt: bytes = b"",
    ) -> int:
        """Create or replace a citizen; returns the change number. ``dob_hash``/``dob_salt``
        (district.privacy.hash_dob) enable the terminal's confirmation step."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] != self.dim:
            raise DistrictError(f"citizen {citizen_id}: embeddings must be (k, {self.dim})")
        if not np.isfinite(emb).all():
            raise DistrictError(f"citizen {citizen_id}: non-finite embedding")
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        if not citizen_id or not masked_name:
            raise DistrictError("a citizen needs an id and a masked name")
        _check_text(citizen_id, "citizen id", MAX_ID_LEN)
        _check_text(masked_name, f"citizen {citizen_id} masked name", MAX_TEXT_LEN)
        if emb.shape[0] > MAX_EMBEDDINGS:
            raise DistrictError(f"citizen {citizen_id}: at most {MAX_EMBEDDINGS} embeddings")
        if bool(dob_hash) != bool(dob_salt) or len(dob_hash) not in (0, HASH_LEN) \
                or len(dob_salt) > MAX_SALT_LEN:
            raise DistrictError(f"citizen {citizen_id}: dob_hash must be {HASH_LEN} bytes "
                                "with a salt, or both empty")
        change = change_to_pb(
            CitizenUpsert(
                seq=0,
                citizen_id=citizen_id,
                masked_name=masked_name,
                pin_hash=pin_hash,
                pin_salt=pin_salt,
                embeddings=emb,
                dob_hash=dob_hash,
                dob_salt=dob_salt,
            )
        )
        with self.transaction():
            seq = self._append(change, citizen_id)
            self._db.execute(
                "INSERT OR REPLACE INTO citizens (citizen_id, seq, change) VALUES (?, ?, ?)",
                (citizen_id, seq, change.SerializeToString()),
            )
        return seq

    def upsert_dossier(self, dossier: Dossier) -> int:
        """Create or replace a dossier of an existing citizen."""
        _check_dossier(dossier)
        change = change_to_pb(DossierUpsert(seq=0, dossier=dossier))
        with self.transaction():
            if not self.has_citizen(dossier.citizen_id):
                raise DistrictError(f"dossier {dossier.code}: no citizen {dossier.citizen_id}")
            row = self._db.execute(
                "SELECT citizen_id FROM dossiers WHERE code = ?", (dossier.code,)
            ).fetchone()
            if row is not None and row[0] != dossier.citizen_id:
                raise DistrictError(f"dossier {dossier.code} belongs to another citizen")
            seq = self._append(change, dossier.citizen_id)
            self._db.execute(
                "INSERT OR REPLACE INTO dossiers (code, citizen_id, seq, change) VALUES (?,?,?,?)",
                (dossier.code, dossier.citizen_id, seq, change.SerializeToString()),
            )
        return seq

    def dossier(self, code: str) -> Dossier:
        row = self._db.execute("SELECT change FROM dossiers WHERE code = ?", (code,)).fetchone()
        if row is None:
            raise DistrictError(f"no dossier {code}")
        c = pb.Change.FromString(row[0])
        change = change_from_pb(c, self.dim)
        assert isinstance(change, DossierUpsert)
        return change.dossier

    def update_dossier(
        self,
        code: str,
        *,
        status: DossierStatus | None = None,
        stage: str | None = None,
        appointment_on: str | None = None,
        counter: str | None = None,
    ) -> int:
        """Change a dossier's status / stage / appointment; returns the change number."""
        with self.transaction():
            old = self.dossier(code)
            new = Dossier(
                code=old.code,
                citizen_id=old.citizen_id,
                procedure=old.procedure,
                status=old.status if status is None else status,
                stage=old.stage if stage is None else stage,
                received_on=old.received_on,
                appointment_on=old.appointment_on if appointment_on is None else appointment_on,
                counter=old.counter if counter is None else counter,
            )
            return self.upsert_dossier(new)

    def delete_dossier(self, code: str) -> int:
        with self.transaction():
            row = self._db.execute(
                "SELECT citizen_id FROM dossiers WHERE code = ?", (code,)
            ).fetchone()
            if row is None:
                raise DistrictError(f"no dossier {code}")
            seq = self._append(change_to_pb(DossierDelete(seq=0, code=code)), row[0])
            self._db.execute("DELETE FROM dossiers WHERE code = ?", (code,))
        return seq

    def delete_citizen(self, citizen_id: str) -> int:
        """Forget a citizen everywhere (state, dossiers, earlier log entries)."""
        with self.transaction():
            if not self.has_citizen(citizen_id):
                raise DistrictError(f"no citizen {citizen_id}")
            delete = change_to_pb(CitizenDelete(seq=0, citizen_id=citizen_id))
            seq = self._append(delete, citizen_id)
            self._db.execute("DELETE FROM citizens WHERE citizen_id = ?", (citizen_id,))
            self._db.execute("DELETE FROM dossiers WHERE citizen_id = ?", (citizen_id,))
            self._db.execute(
                "UPDATE reports SET citizen_id = '' WHERE citizen_id = ?", (citizen_id,)
            )
            self._db.execute(
                "UPDATE survey_offers SET citizen_id = '' WHERE citizen_id = ?", (citizen_id,)
            )
            self._db.execute(  # their own words may name them: the rating stays
                "UPDATE survey_answers SET citizen_id = '', comment = '' WHERE citizen_id = ?",
                (citizen_id,))
            self._db.execute(
                "UPDATE log SET change = NULL WHERE citizen_id = ? AND seq < ?", (citizen_id, seq)
            )
        return seq

    def mark_published(self, seq: int) -> None:
        """Record that changes up to ``seq`` reached the broker (PUBACK)."""
        with self.transaction():
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'published_seq'", (str(seq),))

    def add_report(
        self, *, terminal_id: str, session_id: str, kind: str, time: str, citizen_id: str,
        rating: int, score: float,
    ) -> bool:
        """Store a terminal's report once; False if (terminal, session, kind) is known."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, strftime('%s','now'))",
                (terminal_id, session_id, kind, time, citizen_id, rating, score),
            )
        return cur.rowcount == 1

    def add_reports(self, rows: list[tuple[str, str, str, str, str, int, float]]) -> int:
        """Store many reports (terminal, session, kind, time, citizen, rating, score) in
        one transaction; returns how many were new."""
        new = 0
        with self.transaction():
            for row in rows:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO reports VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, strftime('%s','now'))", row)
                new += cur.rowcount
        return new

    def reports(self, limit: int = 1000) -> list[tuple[str, str, str, str, str, int, float]]:
        """Newest reports first: (terminal, session, kind, time, citizen, rating, score)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT terminal_id, session_id, kind, time, citizen_id, rating, score "
                "FROM reports ORDER BY time DESC, terminal_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    # ---- case-system events (district/ingest.py) ------------------------------------

    def ingested(self, event_id: str) -> tuple[str, int] | None:
        """(outcome, change number) of an event already processed, else None."""
        with self._lock:
            row = self._db.execute("SELECT outcome, seq FROM ingest_events WHERE event_id = ?",
                                   (event_id,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def entity_version(self, entity: str) -> int | None:
        """The newest source version applied to ``entity``, None if none yet."""
        with self._lock:
            row = self._db.execute("SELECT version FROM ingest_versions WHERE entity = ?",
                                   (entity,)).fetchone()
        return None if row is None else int(row[0])

    def record_ingest(self, event_id: str, kind: str, entity: str, version: int,
                      outcome: str, seq: int) -> None:
        """Remember a processed event (call inside the transaction that applied it); an
        applied one also becomes the entity's newest version."""
        with self.transaction():
            self._db.execute("INSERT INTO ingest_events VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (event_id, kind, entity, version, outcome, seq, time.time()))
            if outcome == "applied":
                self._db.execute("INSERT OR REPLACE INTO ingest_versions VALUES (?, ?)",
                                 (entity, version))

    def citizen(self, citizen_id: str) -> CitizenUpsert | None:
        """The citizen's current record (the upsert that produced it), None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT change FROM citizens WHERE citizen_id = ?",
                                   (citizen_id,)).fetchone()
        if row is None:
            return None
        change = change_from_pb(pb.Change.FromString(row[0]), self.dim)
        assert isinstance(change, CitizenUpsert)
        return change

    def oldest_unpublished_at(self) -> float | None:
        """Unix time the oldest change not yet published was written (None: all are)."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_at FROM log WHERE seq = (SELECT CAST(value AS INTEGER) + 1 "
                "FROM meta WHERE key = 'published_seq')").fetchone()
        return None if row is None else float(row[0])

    # ---- reading ------------------------------------------------------------------

    def has_citizen(self, citizen_id: str) -> bool:
        q = "SELECT 1 FROM citizens WHERE citizen_id = ?"
        return self._db.execute(q, (citizen_id,)).fetchone() is not None

    @property
    def head_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM log").fetchone()
        return int(row[0] or 0)

    @property
    def published_seq(self) -> int:
        with self._lock:
            q = "SELECT value FROM meta WHERE key = 'published_seq'"
            return int(self._db.execute(q).fetchone()[0])

    def _meta_int(self, key: str, default: int = 0) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    @property
    def epoch(self) -> int:
        """The log's epoch; read from the file each time, so a publisher running in
        another process sees ``new_epoch()`` at once."""
        return self._meta_int("epoch")

    @property
    def compacted_to(self) -> int:
        """Changes up to this number were removed by ``compact()`` (0: none)."""
        return self._meta_int("compacted_to")

    @property
    def replay_from_seq(self) -> int:
        """Oldest change a replay can start from (older ones were compacted away)."""
        return self.compacted_to + 1

    def compact(self, keep: int) -> int:
        """Remove published changes older than the newest ``keep`` ones; returns how many.

        Terminals further behind than that get a snapshot (the manifest's
        ``replay_from_seq`` tells them), which is built from the current state, not from
        the log. Unpublished changes and the newest change are never removed.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise DistrictError(f"keep must be a positive number of changes, got {keep!r}")
        with self.transaction():
            head = int(self._db.execute("SELECT max(seq) FROM log").fetchone()[0] or 0)
            cutoff = min(self.published_seq, head) - keep
            if cutoff <= self.compacted_to:
                return 0
            removed = self._db.execute("DELETE FROM log WHERE seq <= ?", (cutoff,)).rowcount
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                             "('compacted_to', ?)", (str(cutoff),))
        return int(removed)

    def new_epoch(self) -> int:
        """Start a new epoch; returns it. Every terminal then installs a snapshot (e.g.
        after this log was restored from a backup and terminals may be ahead of it)."""
        with self.transaction():
            epoch = self.epoch + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (str(epoch),))
        return epoch

    def get_meta(self, key: str) -> str:
        """A free-form ``meta`` value ("" when absent), e.g. the calibration record."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return "" if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a free-form ``meta`` value (not a change: terminals never see it as one)."""
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (key, value))

    def first_embeddings(self) -> npt.NDArray[np.float32]:
        """The first embedding of every current citizen, (N, dim) float32, id order."""
        with self._lock:
            blobs = [b for (b,) in self._db.execute(
                "SELECT change FROM citizens ORDER BY citizen_id")]
        out = np.empty((len(blobs), self.dim), np.float32)
        row = 0
        for blob in blobs:
            up = pb.Change.FromString(blob).citizen_upsert
            raw = np.frombuffer(up.embeddings, dtype="<f4")
            if up.count < 1 or raw.size < self.dim:
                continue
            out[row] = raw[: self.dim]
            row += 1
        return out[:row]

    def info(self) -> LogInfo:
        with self._lock:
            nc = self._db.execute("SELECT count(*) FROM citizens").fetchone()[0]
            nd = self._db.execute("SELECT count(*) FROM dossiers").fetchone()[0]
        return LogInfo(
            self.district_id,
            self.epoch,
            self.embedder_id,
            self.dim,
            self.head_seq,
            self.published_seq,
            int(nc),
            int(nd),
            self.compacted_to,
        )

    def changes(self, first: int, last: int) -> list[bytes]:
        """Serialized changes first..last (redacted ones as CitizenDelete), consecutive."""
        if first <= self.compacted_to:
            raise DistrictError(f"changes up to {self.compacted_to} were compacted away; "
                                "a snapshot is needed")
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, citizen_id, change FROM log WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (first, last),
            ).fetchall()
        out = []
        for i, (seq, citizen_id, blob) in enumerate(rows):
            if seq != first + i:
                raise DistrictError(f"change log has a gap at {first + i}")  # never by design
            if blob is None:
                blob = pb.Change(seq=seq, citizen_delete=pb.CitizenDelete(citizen_id=citizen_id))
                blob = blob.SerializeToString()
            out.append(blob)
        return out

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[tuple[int, int, int, Iterator[bytes]]]:
        """A consistent view: (last_seq, citizen count, dossier count, serialized upserts).

        Citizens come first, then dossiers; the iterator is valid inside the ``with``.
        A separate connection holds one read transaction, so writers are not blocked.
        """
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("BEGIN")
            last = int(conn.execute("SELECT max(seq) FROM log").fetchone()[0] or 0)
            nc = int(conn.execute("SELECT count(*) FROM citizens").fetchone()[0])
            nd = int(conn.execute("SELECT count(*) FROM dossiers").fetchone()[0])

            def rows() -> Iterator[bytes]:
                for (blob,) in conn.execute("SELECT change FROM citizens ORDER BY citizen_id"):
                    yield blob
                for (blob,) in conn.execute("SELECT change FROM dossiers ORDER BY code"):
                    yield blob

            yield last, nc, nd, rows()
            conn.execute("COMMIT")
        finally:
            conn.close()
