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

Suspending a citizen's face (after a "not me" report) appends a citizen upsert with zero
embeddings (same name, PIN and date-of-birth hashes): terminals drop every vector of
theirs and keep the citizen and dossiers. The district's copy forgets the face too: the
state holds the face-less upsert and every earlier upsert of the citizen in the log has
its embeddings erased (same name/PIN, zero embeddings), so no replay or snapshot can
bring the old vectors back; applying any range of the log still ends face-less, since
the suspension comes later. Re-enrolment (an upsert with new embeddings) lifts it.
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
from district.lease import LEASE_SCHEMA, PUBLISHER_LEASE, LeaseLost, LeaseRow, read_lease
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
-- the report limits of district/reports.py, shared by all workers of the district
CREATE INDEX IF NOT EXISTS reports_by_citizen ON reports (terminal_id, citizen_id);
CREATE TABLE IF NOT EXISTS report_budget (  -- a terminal's report token bucket
    terminal_id TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    at REAL NOT NULL                    -- wall clock: the workers share one host
);
CREATE TABLE IF NOT EXISTS request_budget (  -- a terminal's byte bucket, named workers
    terminal_id TEXT PRIMARY KEY,
    tokens REAL NOT NULL,               -- bytes; < 0: in debt after a snapshot
    at REAL NOT NULL                    -- wall clock: the workers share one host
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
-- delete_citizen() blanks the citizen in these three tables: without these indexes it
-- scanned every report and survey row ever stored, inside the log's write transaction
-- (400,000 reports + 2 x 100,000 survey rows: 75-210 ms per delete, 0.3-12 ms with
-- them, bench/district_delete.py; docs/scale.md "Delete path")
CREATE INDEX IF NOT EXISTS reports_citizen ON reports (citizen_id);
CREATE INDEX IF NOT EXISTS survey_offers_citizen ON survey_offers (citizen_id);
CREATE INDEX IF NOT EXISTS survey_answers_citizen ON survey_answers (citizen_id);
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
CREATE TABLE IF NOT EXISTS face_suspensions (  -- suspend_face() requests, for the record
    citizen_id TEXT NOT NULL,
    seq INTEGER NOT NULL,       -- the change that suspended the face (a repeat: the same)
    reason TEXT NOT NULL,
    report TEXT NOT NULL,       -- "terminal/session" of the "not me" report acted on, or ""
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS face_suspensions_citizen ON face_suspensions (citizen_id);
CREATE INDEX IF NOT EXISTS face_suspensions_report ON face_suspensions (report);
-- district-side only (never in a change): who handled each dossier, one row per upsert,
-- so a rating can be joined to the dossier's state at the rating's time (staff ratings)
CREATE TABLE IF NOT EXISTS dossier_handling (
    code TEXT NOT NULL,
    citizen_id TEXT NOT NULL,
    seq INTEGER NOT NULL,       -- the change this state came with
    status TEXT NOT NULL,
    counter TEXT NOT NULL,
    officer TEXT NOT NULL,      -- "" when the case system named none
    at REAL NOT NULL            -- district clock, unix seconds
);
CREATE INDEX IF NOT EXISTS dossier_handling_citizen ON dossier_handling (citizen_id, at);
CREATE INDEX IF NOT EXISTS dossier_handling_code ON dossier_handling (code, seq);
-- the operator console's review of a report (district/console)
CREATE TABLE IF NOT EXISTS report_reviews (
    terminal_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    reviewed_by TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, session_id, kind)
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


def _without_face(up: pb.CitizenUpsert) -> pb.CitizenUpsert:
    """The same citizen upsert with zero embeddings (a suspended face)."""
    out = pb.CitizenUpsert()
    out.CopyFrom(up)
    out.count = 0
    out.embeddings = b""
    return out


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
        #: the clock of the district-side handling history (tests set it)
        self.clock = time.time
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        try:
            self.district_id = meta["district_id"]
            int(meta["epoch"])  # there and a number; the `epoch` property reads it fresh
            self.embedder_id = meta["embedder_id"]
            self.dim = int(meta["dim"])
        except KeyError:
            raise DistrictError(f"{path}: not a district change log (run district init)") from None
        self._backfill_handling()

    def _backfill_handling(self) -> None:
        """A log made before ``dossier_handling`` existed: record each current dossier's
        status and counter as of its last change (officer unknown), once, so ratings of
        those citizens can be joined from now on."""
        q = ("SELECT d.code, d.citizen_id, d.seq, d.change, coalesce(l.created_at, 0) "
             "FROM dossiers d LEFT JOIN log l ON l.seq = d.seq WHERE NOT EXISTS "
             "(SELECT 1 FROM dossier_handling h WHERE h.code = d.code)")
        if self._db.execute(q + " LIMIT 1").fetchone() is None:
            return
        with self.transaction():
            for code, cid, seq, blob, at in self._db.execute(q).fetchall():
                change = change_from_pb(pb.Change.FromString(blob), self.dim)
                assert isinstance(change, DossierUpsert)
                self._db.execute("INSERT INTO dossier_handling VALUES (?, ?, ?, ?, ?, '', ?)",
                                 (code, cid, seq, change.dossier.status.value,
                                  change.dossier.counter, float(at)))

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
            conn.executescript(LEASE_SCHEMA)  # district/lease.py: one publishing worker
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
        dob_id4: bool = False,
    ) -> int:
        """Create or replace a citizen; returns the change number. ``dob_hash``/``dob_salt``
        (district.privacy.hash_dob / hash_confirmation) enable the terminal's confirmation
        step; ``dob_id4``: the hash covers the date of birth and the last 4 digits of the
        personal identification number (the number itself is never given here). New
        embeddings lift a face suspension (re-enrolment); zero embeddings are accepted
        only for a citizen whose face is suspended (it stays suspended)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        # zero rows only for a citizen whose face is suspended (checked below, in the
        # transaction): an update of their name, PIN or date of birth without new
        # photos keeps the face suspended
        keep_suspended = emb.ndim == 2 and emb.shape == (0, self.dim)
        if not keep_suspended and (
                emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] != self.dim):
            raise DistrictError(f"citizen {citizen_id}: embeddings must be (k, {self.dim})")
        if not np.isfinite(emb).all():
            raise DistrictError(f"citizen {citizen_id}: non-finite embedding")
        if not keep_suspended:
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
        if dob_id4 and not dob_hash:
            raise DistrictError(f"citizen {citizen_id}: dob_id4 without a dob_hash")
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
                dob_id4=dob_id4,
            )
        )
        with self.transaction():
            if keep_suspended and not self.face_suspended(citizen_id):
                raise DistrictError(f"citizen {citizen_id}: embeddings must be (k, {self.dim})"
                                    " (none only for a citizen whose face is suspended)")
            seq = self._append(change, citizen_id)
            self._db.execute(
                "INSERT OR REPLACE INTO citizens (citizen_id, seq, change) VALUES (?, ?, ?)",
                (citizen_id, seq, change.SerializeToString()),
            )
        return seq

    def upsert_dossier(self, dossier: Dossier, *, officer: str | None = None) -> int:
        """Create or replace a dossier of an existing citizen. ``officer`` (district-side
        only, never sent to terminals) is who handles it now; None keeps the last one."""
        _check_dossier(dossier)
        if officer is not None:
            _check_text(officer, f"dossier {dossier.code} officer", MAX_TEXT_LEN)
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
            if officer is None:
                officer = self.dossier_officer(dossier.code)
            self._db.execute(
                "INSERT INTO dossier_handling VALUES (?, ?, ?, ?, ?, ?, ?)",
                (dossier.code, dossier.citizen_id, seq, dossier.status.value, dossier.counter,
                 officer, self.clock()))
        return seq

    def dossier_officer(self, code: str) -> str:
        """The officer last named for a dossier ("" if none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT officer FROM dossier_handling WHERE code = ? ORDER BY seq DESC LIMIT 1",
                (code,)).fetchone()
        return "" if row is None else str(row[0])

    def handling(self, citizen_ids: list[str]) -> list[tuple[str, str, str, str, str, float]]:
        """Handling history of these citizens' dossiers, oldest first:
        (citizen, code, status, counter, officer, at)."""
        out: list[tuple[str, str, str, str, str, float]] = []
        ids = sorted(set(citizen_ids))
        with self._lock:
            for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                part = ids[i:i + 500]
                marks = ",".join("?" * len(part))
                out.extend(
                    (str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5]))
                    for r in self._db.execute(
                        "SELECT citizen_id, code, status, counter, officer, at FROM "
                        f"dossier_handling WHERE citizen_id IN ({marks}) ORDER BY at, seq",
                        part))
        return out

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
        officer: str | None = None,
    ) -> int:
        """Change a dossier's status / stage / appointment; returns the change number.
        ``officer`` (district-side only) names who handles it now (None: unchanged)."""
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
            return self.upsert_dossier(new, officer=officer)

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
            self._db.execute("DELETE FROM face_suspensions WHERE citizen_id = ?", (citizen_id,))
            self._db.execute("DELETE FROM dossier_handling WHERE citizen_id = ?", (citizen_id,))
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

    def suspend_face(self, citizen_id: str, *, reason: str, report: str = "") -> int:
        """Suspend a citizen's face until re-enrolment; returns the change number.

        Appends a citizen upsert with zero embeddings (name, PIN and date-of-birth hashes
        kept): every terminal drops the citizen's vectors, keeps the citizen and their
        dossiers. The district forgets the embeddings too (state and every earlier log
        entry). Idempotent: suspending a suspended face appends nothing and returns the
        number of the change in force (the request is still recorded, with its reason).
        ``report`` names the "not me" report acted on ("terminal/session"), if any.
        DistrictError for an unknown citizen or an empty/overlong reason.
        """
        reason = reason.strip()
        if not reason:
            raise DistrictError("a face suspension needs a reason")
        _check_text(reason, "suspension reason", MAX_TEXT_LEN)
        _check_text(report, "report id", 2 * MAX_ID_LEN)
        with self.transaction():
            row = self._db.execute("SELECT seq, change FROM citizens WHERE citizen_id = ?",
                                   (citizen_id,)).fetchone()
            if row is None:
                raise DistrictError(f"no citizen {citizen_id}")
            current = pb.Change.FromString(row[1]).citizen_upsert
            if current.count == 0:
                seq = self._suspended_by(citizen_id, int(row[0]))
            else:
                change = pb.Change()
                change.citizen_upsert.CopyFrom(_without_face(current))
                seq = self._append(change, citizen_id)
                self._db.execute(
                    "UPDATE citizens SET seq = ?, change = ? WHERE citizen_id = ?",
                    (seq, change.SerializeToString(), citizen_id))
                self._erase_faces(citizen_id, seq)
            self._db.execute(
                "INSERT INTO face_suspensions (citizen_id, seq, reason, report, created_at) "
                "VALUES (?, ?, ?, ?, ?)", (citizen_id, seq, reason, report, time.time()))
        self._truncate_wal()
        return seq

    def _suspended_by(self, citizen_id: str, state_seq: int) -> int:
        """The change that suspended a face-less citizen's face (newest), else its
        state's change number."""
        row = self._db.execute(
            "SELECT max(seq) FROM face_suspensions WHERE citizen_id = ?", (citizen_id,)
        ).fetchone()
        return int(row[0]) if row[0] is not None else state_seq

    def _erase_faces(self, citizen_id: str, before: int) -> None:
        """Rewrite the citizen's upserts before ``before`` without their embeddings."""
        rows = self._db.execute(
            "SELECT seq, change FROM log WHERE citizen_id = ? AND seq < ? "
            "AND change IS NOT NULL", (citizen_id, before)).fetchall()
        for seq, blob in rows:
            c = pb.Change.FromString(blob)
            if c.WhichOneof("kind") != "citizen_upsert" or c.citizen_upsert.count == 0:
                continue
            stripped = pb.Change(seq=c.seq)
            stripped.citizen_upsert.CopyFrom(_without_face(c.citizen_upsert))
            self._db.execute("UPDATE log SET change = ? WHERE seq = ?",
                             (stripped.SerializeToString(), seq))

    def _truncate_wal(self) -> None:
        """Copy the WAL into the file and truncate it, so old page images (erased
        embeddings) go now; best effort: a reader in another process may hold it."""
        with self._lock:
            if self._depth:
                return  # inside the caller's transaction: its own call does it
            # on failure the next checkpoint (SQLite's automatic one) copies it over
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def face_suspended(self, citizen_id: str) -> bool:
        """Whether the citizen exists and their face is suspended (no embeddings)."""
        with self._lock:
            row = self._db.execute("SELECT change FROM citizens WHERE citizen_id = ?",
                                   (citizen_id,)).fetchone()
        return row is not None and pb.Change.FromString(row[0]).citizen_upsert.count == 0

    def suspensions(self, limit: int = 1000) -> list[tuple[str, int, str, str, float]]:
        """Face suspension requests, newest first: (citizen, seq, reason, report, unix
        time). A citizen re-enrolled since is listed too (see :meth:`face_suspended`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT citizen_id, seq, reason, report, created_at FROM face_suspensions "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]

    def not_me_citizen(self, terminal_id: str, session_id: str) -> str | None:
        """The citizen named by a stored "not me" report (None: no such report; "": the
        citizen was deleted since)."""
        with self._lock:
            row = self._db.execute(
                "SELECT citizen_id FROM reports WHERE terminal_id = ? AND session_id = ? "
                "AND kind = 'not_me'", (terminal_id, session_id)).fetchone()
        return None if row is None else str(row[0])

    def report_suspension(self, report: str) -> int | None:
        """Whether a "not me" report ("terminal/session") was acted on: the change number
        of the face suspension made for it, or else of one of its citizen's face made
        after the report arrived (e.g. by ``district suspend-face``); None if neither."""
        terminal, _, session = report.partition("/")
        with self._lock:
            row = self._db.execute(
                "SELECT max(seq) FROM face_suspensions WHERE report = ? OR citizen_id IN ("
                "  SELECT r.citizen_id FROM reports r WHERE r.terminal_id = ? "
                "  AND r.session_id = ? AND r.kind = 'not_me' AND r.citizen_id != '' "
                "  AND face_suspensions.created_at >= r.received_at)",
                (report, terminal, session)).fetchone()
        return None if row[0] is None else int(row[0])

    def mark_published(self, seq: int, fence: tuple[str, int] | None = None) -> None:
        """Record that changes up to ``seq`` reached the broker (PUBACK). With ``fence``
        (holder, generation: district/lease.py) only while the lease still names them,
        checked in the same transaction; else LeaseLost and nothing is written."""
        with self.transaction():
            if fence is not None:
                row = self._db.execute("SELECT holder, generation FROM lease WHERE name = ?",
                                       (PUBLISHER_LEASE,)).fetchone()
                if row is None or (str(row[0]), int(row[1])) != fence:
                    raise LeaseLost(f"published_seq not written: the lease is no longer "
                                    f"{fence[0]} generation {fence[1]}")
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

    def add_reports_limited(self, rows: list[tuple[str, str, str, str, str, int, float]],
                            *, per_s: float, burst: float, citizen_window_s: float,
                            now: float | None = None) -> list[str]:
        """Store reports like :meth:`add_reports`, under limits every worker shares (the
        rows live in this file, not in one worker's memory); one verdict per row: 'new',
        'duplicate' (already stored: a resend, not charged), 'rate' (the terminal's
        bucket of ``burst`` tokens, refilled at ``per_s``, is empty) or 'citizen' (a
        "not me" about the same citizen from another session of this terminal within
        ``citizen_window_s``)."""
        now = time.time() if now is None else now
        out: list[str] = []
        with self.transaction():
            for row in rows:
                terminal, session, kind, _t, citizen = row[:5]
                if self._db.execute(
                        "SELECT 1 FROM reports WHERE terminal_id = ? AND session_id = ? "
                        "AND kind = ?", (terminal, session, kind)).fetchone() is not None:
                    out.append("duplicate")
                    continue
                if kind == "not_me" and self._db.execute(
                        "SELECT 1 FROM reports WHERE terminal_id = ? AND citizen_id = ? "
                        "AND kind = 'not_me' AND received_at > ?",
                        (terminal, citizen, now - citizen_window_s)).fetchone() is not None:
                    out.append("citizen")
                    continue
                got = self._db.execute("SELECT tokens, at FROM report_budget "
                                       "WHERE terminal_id = ?", (terminal,)).fetchone()
                tokens = float(burst) if got is None else min(
                    float(burst), got[0] + max(0.0, now - got[1]) * per_s)
                verdict = "rate" if tokens < 1.0 else "new"
                if verdict == "new":
                    tokens -= 1.0
                    self._db.execute("INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     (*row, now))
                self._db.execute("INSERT OR REPLACE INTO report_budget VALUES (?, ?, ?)",
                                 (terminal, tokens, now))
                out.append(verdict)
        return out

    def charge_request_budget(self, terminal: str, n: int, *, rate: float, burst: float,
                              now: float | None = None) -> float:
        """Charge ``n`` bytes sent on ``terminal``'s direct topic to its byte bucket
        shared by the district's workers (``rate`` bytes/s up to ``burst``; it may go
        into debt); returns the level after. ``n`` 0 only reads it (no write)."""
        now = time.time() if now is None else now
        q = "SELECT tokens, at FROM request_budget WHERE terminal_id = ?"
        if n == 0:
            with self._lock:
                got = self._db.execute(q, (terminal,)).fetchone()
            return float(burst) if got is None else min(
                float(burst), got[0] + max(0.0, now - got[1]) * rate)
        with self.transaction():
            got = self._db.execute(q, (terminal,)).fetchone()
            tokens = float(burst) if got is None else min(
                float(burst), got[0] + max(0.0, now - got[1]) * rate)
            tokens -= n
            self._db.execute("INSERT OR REPLACE INTO request_budget VALUES (?, ?, ?)",
                             (terminal, tokens, now))
        return tokens

    def reports(self, limit: int = 1000) -> list[tuple[str, str, str, str, str, int, float]]:
        """Newest reports first: (terminal, session, kind, time, citizen, rating, score)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT terminal_id, session_id, kind, time, citizen_id, rating, score "
                "FROM reports ORDER BY time DESC, terminal_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def review_report(self, terminal_id: str, session_id: str, kind: str, *,
                      by: str) -> bool:
        """Mark a stored report reviewed (operator console); False if no such report or
        already reviewed."""
        with self.transaction():
            known = self._db.execute(
                "SELECT 1 FROM reports WHERE terminal_id = ? AND session_id = ? AND kind = ?",
                (terminal_id, session_id, kind)).fetchone()
            if known is None:
                return False
            cur = self._db.execute("INSERT OR IGNORE INTO report_reviews VALUES (?,?,?,?,?)",
                                   (terminal_id, session_id, kind, by, time.time()))
        return cur.rowcount == 1

    def reports_reviewed(self, kind: str, limit: int = 200) -> list[
            tuple[str, str, str, str, float, str, float]]:
        """Newest reports of one kind with their review: (terminal, session, time,
        citizen, score, reviewed_by or "", reviewed_at or 0)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.terminal_id, r.session_id, r.time, r.citizen_id, r.score, "
                "coalesce(v.reviewed_by, ''), coalesce(v.reviewed_at, 0) FROM reports r "
                "LEFT JOIN report_reviews v ON v.terminal_id = r.terminal_id AND "
                "v.session_id = r.session_id AND v.kind = r.kind WHERE r.kind = ? "
                "ORDER BY r.time DESC, r.terminal_id LIMIT ?", (kind, limit)).fetchall()
        return [(str(a), str(b), str(c), str(d), float(e), str(f), float(g))
                for a, b, c, d, e, f, g in rows]

    def ratings_between(self, first: str, last: str, limit: int = 100_000) -> list[
            tuple[str, str, str, str, int]]:
        """Ratings whose time (ISO 8601 UTC text) is in [first, last):
        (terminal, session, time, citizen or "", stars), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT terminal_id, session_id, time, citizen_id, rating FROM reports "
                "WHERE kind = 'rating' AND time >= ? AND time < ? ORDER BY time LIMIT ?",
                (first, last, limit)).fetchall()
        return [(str(a), str(b), str(c), str(d), int(e)) for a, b, c, d, e in rows]

    def survey_answers_between(self, first: str, last: str, limit: int = 100_000, *,
                               comments: bool = False) -> list[
            tuple[str, str, str, str, int, str, bool, bool]]:
        """Survey answers (district/survey.py) whose time (ISO 8601 UTC text) is in
        [first, last): (terminal, session, time, citizen or "", stars, comment, disputed:
        the session has a "not me" report, rated: the session also has a kiosk rating).
        Oldest first with comments left out (""); with ``comments``, only the answers
        with a comment, newest first (a comment is up to 500 characters: the caller's
        ``limit`` bounds the memory)."""
        if comments:
            text, where, order = "a.comment", "AND a.comment != '' ", "DESC"
        else:
            text, where, order = "''", "", ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT a.terminal_id, a.session_id, a.time, a.citizen_id, a.rating, {text}, "
                "EXISTS (SELECT 1 FROM reports r WHERE r.terminal_id = a.terminal_id "
                "AND r.session_id = a.session_id AND r.kind = 'not_me'), "
                "EXISTS (SELECT 1 FROM reports r WHERE r.terminal_id = a.terminal_id "
                "AND r.session_id = a.session_id AND r.kind = 'rating') "
                f"FROM survey_answers a WHERE a.time >= ? AND a.time < ? {where}"
                f"ORDER BY a.time {order}, a.terminal_id, a.session_id LIMIT ?",
                (first, last, limit)).fetchall()
        return [(str(a), str(b), str(c), str(d), int(e), str(f), bool(g), bool(h))
                for a, b, c, d, e, f, g, h in rows]

    def citizen_deletions(self, limit: int = 200) -> list[tuple[int, str, float]]:
        """The newest citizen deletions still in the log: (seq, citizen, unix time)."""
        out: list[tuple[int, str, float]] = []
        with self._lock:
            # a citizen's delete is the newest entry about them that still has a payload
            rows = self._db.execute(
                "SELECT seq, citizen_id, change, created_at FROM log WHERE seq IN "
                "(SELECT max(seq) FROM log WHERE change IS NOT NULL GROUP BY citizen_id) "
                "AND citizen_id NOT IN (SELECT citizen_id FROM citizens) "
                "ORDER BY seq DESC").fetchall()
        for seq, cid, blob, at in rows:
            if pb.Change.FromString(blob).WhichOneof("kind") == "citizen_delete":
                out.append((int(seq), str(cid), float(at)))
                if len(out) >= limit:
                    break
        return out

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

    def lease(self) -> LeaseRow | None:
        """The publisher lease as stored (district/lease.py); None before any worker."""
        with self._lock:
            return read_lease(self._db)

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
        return self.first_embeddings_and_secrets()[0]

    def first_embeddings_and_secrets(self) -> tuple[npt.NDArray[np.float32],
                                                    npt.NDArray[np.int8]]:
        """:meth:`first_embeddings` and, row for row, each citizen's confirmation secret:
        0 none, 1 date of birth, 2 date of birth + the number's last 4 digits (the codes
        of district.calibration's KIND_*)."""
        with self._lock:
            blobs = [b for (b,) in self._db.execute(
                "SELECT change FROM citizens ORDER BY citizen_id")]
        out = np.empty((len(blobs), self.dim), np.float32)
        kinds = np.zeros(len(blobs), np.int8)
        row = 0
        for blob in blobs:
            up = pb.Change.FromString(blob).citizen_upsert
            raw = np.frombuffer(up.embeddings, dtype="<f4")
            if up.count < 1 or raw.size < self.dim:
                continue
            out[row] = raw[: self.dim]
            kinds[row] = (2 if up.dob_id4 else 1) if up.dob_hash else 0
            row += 1
        return out[:row], kinds[:row]

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
