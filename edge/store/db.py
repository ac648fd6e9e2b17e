"""The SQLite side of the store: schema, connections, the directory lock, the SQL of a
batch, and the in-memory mirror of the embeddings table.

SQLite is the truth; everything here runs inside the caller's locks and transactions.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import EmbedderMismatchError, StoreError
from edge.store.validate import Prepared, unit_rows
from sync.changes import (
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)

DB_NAME = "gallery.db"
#: held (flock) while a process has the store open: two writers would corrupt it
LOCK_NAME = "lock"
SCHEMA_VERSION = 1
#: SQLite waits this long for a lock held by another connection before failing; only
#: the store's own reader and writer connections use the file
BUSY_TIMEOUT_MS = 5000
#: SQLite page size for new galleries (see connect): 16 KB stores a 512-d float32 row
#: in ~2.3 KB instead of 4 KB; larger pages would waste more on small dossier updates
PAGE_SIZE = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS citizens (
    citizen_id TEXT PRIMARY KEY,
    masked_name TEXT NOT NULL,
    pin_hash BLOB NOT NULL,
    pin_salt BLOB NOT NULL,
    updated_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (
    label INTEGER PRIMARY KEY,
    citizen_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_citizen ON embeddings (citizen_id, position);
CREATE TABLE IF NOT EXISTS dossiers (
    code TEXT PRIMARY KEY,
    citizen_id TEXT NOT NULL,
    procedure TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    received_on TEXT NOT NULL,
    appointment_on TEXT NOT NULL,
    counter TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dossiers_citizen ON dossiers (citizen_id);
-- labels taken out of the index since its last rebuild: hidden (re-enrolment, the
-- citizen stays) or scrubbed (the citizen was deleted: vector overwritten with zeros)
CREATE TABLE IF NOT EXISTS removed_labels (
    label INTEGER PRIMARY KEY,
    citizen_id TEXT NOT NULL,
    scrubbed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS removed_labels_citizen ON removed_labels (citizen_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    slots INTEGER NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
"""

# -- date of birth for the confirmation step (added after schema 1 shipped): two nullable
# -- BLOB columns, added to an existing store by an idempotent ALTER TABLE (add_dob_columns);
# -- then dob_id4 (the hash covers the date of birth + 4 digits of the personal number)
DOB_COLUMNS = ("dob_hash", "dob_salt")
DOB_ID4_COLUMN = "dob_id4"


def add_dob_columns(c: sqlite3.Connection) -> None:
    """Add the date-of-birth columns to ``citizens`` when missing (idempotent)."""
    have = {row[1] for row in c.execute("PRAGMA table_info(citizens)")}
    for col in DOB_COLUMNS:
        if col not in have:
            c.execute(f"ALTER TABLE citizens ADD COLUMN {col} BLOB")
    if DOB_ID4_COLUMN not in have:
        c.execute(f"ALTER TABLE citizens ADD COLUMN {DOB_ID4_COLUMN} INTEGER NOT NULL DEFAULT 0")


# ---------------------------------------------------------------------- helpers
def sql_error(exc: sqlite3.Error, what: str) -> StoreError:
    """A sqlite3 error as a StoreError; a full disk says so and that nothing changed."""
    msg = str(exc)
    if "full" in msg.lower():
        return StoreError(f"{what}: disk full ({msg}); nothing was changed")
    return StoreError(f"{what}: {msg}")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_dir(path: Path) -> int:
    """Take the store's exclusive lock; StoreError if another process holds it."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open {path / LOCK_NAME}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"gallery {path} is in use by another process") from None
    return fd


#: modes of the store's files and directories, set explicitly (not left to the umask:
#: outside systemd's UMask=0077 it is usually 022, i.e. world-readable faces)
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private(store_dir: Path, subdirs: tuple[str, ...]) -> None:
    """Create ``store_dir`` (and ``subdirs``) 0700 and the database file 0600, and fix
    the modes of whatever is already there (SQLite gives -wal/-shm the database's)."""
    store_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(store_dir, DIR_MODE)
    for sub in subdirs:
        (store_dir / sub).mkdir(exist_ok=True, mode=DIR_MODE)
        os.chmod(store_dir / sub, DIR_MODE)
    fd = os.open(store_dir / DB_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for entry in [*store_dir.iterdir(), *(e for sub in subdirs
                                          for e in (store_dir / sub).iterdir())]:
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, FILE_MODE)


def connect(db: Path) -> sqlite3.Connection:
    """A connection with the store's settings (WAL, synchronous FULL, secure_delete)."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    # page size only takes effect on a new database: a 2 KB embedding row fills half
    # a 4 KB page (one row per page, 2x the disk); 16 KB pages hold 7 such rows
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a batch acknowledged to the sync survives a power cut (NORMAL may lose
    # the last transactions in WAL mode)
    conn.execute("PRAGMA synchronous=FULL")
    # deleted rows are overwritten with zeros, not left in free pages
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def init_db(c: sqlite3.Connection, embedder_id: str, dim: int) -> dict[str, Any]:
    """Create the schema if needed and return ``meta``; EmbedderMismatchError if the
    gallery belongs to another embedder id or dimension."""
    c.execute("BEGIN IMMEDIATE")
    try:
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                c.execute(stmt)
        add_dob_columns(c)
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            meta = {
                "schema_version": SCHEMA_VERSION, "embedder_id": embedder_id,
                "dim": dim, "epoch": 0, "last_seq": 0, "generation": 0,
                "next_label": 0, "last_delete_seq": 0,
            }
            c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"gallery schema version {meta.get('schema_version')!r} "
                         f"is not {SCHEMA_VERSION}")
    if meta["embedder_id"] != embedder_id:
        raise EmbedderMismatchError(
            f"gallery belongs to embedder {meta['embedder_id']!r}, "
            f"not {embedder_id!r}: rebuild it from a snapshot"
        )
    if meta["dim"] != dim:
        raise EmbedderMismatchError(
            f"gallery embeddings have dimension {meta['dim']}, not {dim}"
        )
    return meta


def labels_by_citizen(c: sqlite3.Connection) -> dict[str, tuple[int, ...]]:
    """Every citizen's embedding labels, in position order."""
    by_citizen: dict[str, list[int]] = collections.defaultdict(list)
    for label, cid in c.execute(
        "SELECT label, citizen_id FROM embeddings ORDER BY citizen_id, position"
    ):
        by_citizen[cid].append(int(label))
    return {cid: tuple(labels) for cid, labels in by_citizen.items()}


def set_meta(c: sqlite3.Connection, **values: Any) -> None:
    """Update ``meta`` keys (inside the caller's transaction)."""
    c.executemany("UPDATE meta SET value = ? WHERE key = ?",
                  [(v, k) for k, v in values.items()])


def dossier_from_row(row: tuple[Any, ...]) -> Dossier:
    """A Dossier from a ``dossiers`` row in column order."""
    code, cid, procedure, status, stage, received_on, appointment_on, counter = row
    return Dossier(code=code, citizen_id=cid, procedure=procedure,
                   status=DossierStatus(status), stage=stage, received_on=received_on,
                   appointment_on=appointment_on, counter=counter)


def vectors_for(c: sqlite3.Connection, labels: list[int], dim: int
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The stored vectors of ``labels``, as unit rows."""
    marks = ",".join("?" * len(labels))
    rows = c.execute(
        f"SELECT label, vector FROM embeddings WHERE label IN ({marks})", labels
    ).fetchall()
    return rows_to_unit(rows, dim)


def rows_to_unit(rows: list[tuple[int, bytes]], dim: int
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(labels, unit vectors) of ``(label, vector BLOB)`` rows."""
    labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(-1, dim)
    return labels, unit_rows(vecs, dim, "stored embedding")


class Mapping:
    """In-memory mirror of the embeddings table: label <-> citizen."""

    def __init__(self) -> None:
        self.label_citizen: dict[int, str] = {}
        self.citizen_labels: dict[str, tuple[int, ...]] = {}
        #: number of citizens having n embeddings, to know the largest n cheaply
        self.count_hist: collections.Counter[int] = collections.Counter()

    def set(self, citizen_id: str, labels: tuple[int, ...] | None) -> None:
        old = self.citizen_labels.pop(citizen_id, None)
        if old is not None:
            for label in old:
                del self.label_citizen[label]
            self.count_hist[len(old)] -= 1
            if not self.count_hist[len(old)]:
                del self.count_hist[len(old)]
        if labels:
            self.citizen_labels[citizen_id] = labels
            for label in labels:
                self.label_citizen[label] = citizen_id
            self.count_hist[len(labels)] += 1

    def max_per_citizen(self) -> int:
        return max(self.count_hist) if self.count_hist else 1


@dataclasses.dataclass
class Staged:
    """The index side of a run of changes already written to SQLite."""

    #: labels live before the batch to mark deleted (re-enrolment: the citizen stays)
    hide: list[int] = dataclasses.field(default_factory=list)
    #: labels live before the batch whose vectors must go (the citizen was deleted)
    scrub: list[int] = dataclasses.field(default_factory=list)
    #: labels hidden by earlier batches whose citizen is now deleted
    scrub_hidden: list[int] = dataclasses.field(default_factory=list)
    added: dict[int, npt.NDArray[np.float32]] = dataclasses.field(default_factory=dict)
    overlay: dict[str, tuple[int, ...] | None] = dataclasses.field(default_factory=dict)
    #: some citizen's vectors were forgotten (deleted, or the face suspended)
    deleted_citizen: bool = False


def write_changes(c: sqlite3.Connection, dim: int, prepared: list[Prepared], mapping: Mapping,
                  next_label: int) -> tuple[Staged, int]:
    """Execute the SQL of ``prepared`` (inside the caller's transaction)."""
    st = Staged()

    def current(cid: str) -> tuple[int, ...]:
        if cid in st.overlay:
            return st.overlay[cid] or ()
        return mapping.citizen_labels.get(cid, ())

    def drop(cid: str, *, forget: bool) -> None:
        for label in current(cid):
            if st.added.pop(label, None) is not None:
                continue  # added earlier in this batch: never reaches the index
            (st.scrub if forget else st.hide).append(label)
            c.execute("INSERT INTO removed_labels (label, citizen_id, scrubbed) "
                      "VALUES (?, ?, ?)", (label, cid, int(forget)))

    def scrub_hidden(cid: str) -> None:
        # vectors hidden by earlier re-enrolments of this citizen must go too
        for (label,) in c.execute(
            "SELECT label FROM removed_labels WHERE citizen_id = ? AND scrubbed = 0",
            (cid,),
        ).fetchall():
            if label in st.hide:  # hidden earlier in this very batch
                st.hide.remove(label)
                st.scrub.append(label)
            else:
                st.scrub_hidden.append(label)
        c.execute("UPDATE removed_labels SET scrubbed = 1 WHERE citizen_id = ?", (cid,))

    for p in prepared:
        ch = p.change
        if isinstance(ch, CitizenUpsert):
            assert p.unit is not None
            suspend = p.unit.shape[0] == 0
            if suspend:
                # face suspension: every vector of the citizen is forgotten as for a
                # deletion (scrubbed, old checkpoints retired), the citizen row stays
                scrub_hidden(ch.citizen_id)
                st.deleted_citizen = True
            drop(ch.citizen_id, forget=suspend)
            k = p.unit.shape[0]
            labels = tuple(range(next_label, next_label + k))
            next_label += k
            for label, vec in zip(labels, p.unit, strict=True):
                st.added[label] = vec
            st.overlay[ch.citizen_id] = labels or None
            c.execute("DELETE FROM embeddings WHERE citizen_id = ?", (ch.citizen_id,))
            c.execute(
                "INSERT INTO citizens (citizen_id, masked_name, pin_hash, pin_salt, "
                "updated_seq, dob_hash, dob_salt, dob_id4) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (citizen_id) DO UPDATE "
                "SET masked_name = excluded.masked_name, pin_hash = excluded.pin_hash, "
                "pin_salt = excluded.pin_salt, updated_seq = excluded.updated_seq, "
                "dob_hash = excluded.dob_hash, dob_salt = excluded.dob_salt, "
                "dob_id4 = excluded.dob_id4",
                (ch.citizen_id, ch.masked_name, bytes(ch.pin_hash), bytes(ch.pin_salt),
                 ch.seq, bytes(ch.dob_hash) or None, bytes(ch.dob_salt) or None,
                 int(bool(ch.dob_id4 and ch.dob_hash))),
            )
            row = 4 * dim
            c.executemany(
                "INSERT INTO embeddings (label, citizen_id, position, vector) "
                "VALUES (?, ?, ?, ?)",
                [(label, ch.citizen_id, i, p.raw[i * row:(i + 1) * row])
                 for i, label in enumerate(labels)],
            )
        elif isinstance(ch, CitizenDelete):
            scrub_hidden(ch.citizen_id)
            drop(ch.citizen_id, forget=True)
            st.overlay[ch.citizen_id] = None
            st.deleted_citizen = True
            c.execute("DELETE FROM embeddings WHERE citizen_id = ?", (ch.citizen_id,))
            c.execute("DELETE FROM citizens WHERE citizen_id = ?", (ch.citizen_id,))
            c.execute("DELETE FROM dossiers WHERE citizen_id = ?", (ch.citizen_id,))
        elif isinstance(ch, DossierUpsert):
            d = ch.dossier
            c.execute(
                "INSERT OR REPLACE INTO dossiers (code, citizen_id, procedure, status, "
                "stage, received_on, appointment_on, counter) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d.code, d.citizen_id, d.procedure, d.status.value, d.stage,
                 d.received_on, d.appointment_on, d.counter),
            )
        elif isinstance(ch, DossierDelete):
            c.execute("DELETE FROM dossiers WHERE code = ?", (ch.code,))
    return st, next_label


def write_fresh(c: sqlite3.Connection, dim: int, prepared: list[Prepared], next_label: int,
                written: set[tuple[str, str]]) -> tuple[Staged, int] | None:
    """The SQL of a snapshot chunk in bulk (``executemany``), inside the transaction of
    ``replace_all`` that emptied the tables: only when every change is an upsert of a
    citizen or a dossier that this install has not written yet (``written`` holds
    ("c", citizen_id) / ("d", code) of every change written so far; it is updated), so
    that nothing is replaced and no label removed. None (nothing done) otherwise: the
    caller uses ``write_changes``. Same rows, labels and Staged as ``write_changes``."""
    keys: set[tuple[str, str]] = set()
    for p in prepared:
        ch = p.change
        if isinstance(ch, CitizenUpsert):
            key = ("c", ch.citizen_id)
        elif isinstance(ch, DossierUpsert):
            key = ("d", ch.dossier.code)
        else:
            return None
        if key in written or key in keys:
            return None
        keys.add(key)
    st = Staged()
    citizens: list[tuple[object, ...]] = []
    vectors: list[tuple[int, str, int, bytes]] = []
    dossiers: list[tuple[str, ...]] = []
    row = 4 * dim
    for p in prepared:
        ch = p.change
        if isinstance(ch, CitizenUpsert):
            assert p.unit is not None
            k = p.unit.shape[0]
            if k == 0:
                st.deleted_citizen = True  # a suspended face, as in write_changes
            labels = tuple(range(next_label, next_label + k))
            next_label += k
            for i, (label, vec) in enumerate(zip(labels, p.unit, strict=True)):
                st.added[label] = vec
                vectors.append((label, ch.citizen_id, i, p.raw[i * row:(i + 1) * row]))
            st.overlay[ch.citizen_id] = labels or None
            citizens.append((ch.citizen_id, ch.masked_name, bytes(ch.pin_hash),
                             bytes(ch.pin_salt), ch.seq, bytes(ch.dob_hash) or None,
                             bytes(ch.dob_salt) or None))
        else:
            assert isinstance(ch, DossierUpsert)
            d = ch.dossier
            dossiers.append((d.code, d.citizen_id, d.procedure, d.status.value, d.stage,
                             d.received_on, d.appointment_on, d.counter))
    c.executemany("INSERT INTO citizens (citizen_id, masked_name, pin_hash, pin_salt, "
                  "updated_seq, dob_hash, dob_salt) VALUES (?, ?, ?, ?, ?, ?, ?)", citizens)
    c.executemany("INSERT INTO embeddings (label, citizen_id, position, vector) "
                  "VALUES (?, ?, ?, ?)", vectors)
    c.executemany("INSERT INTO dossiers (code, citizen_id, procedure, status, stage, "
                  "received_on, appointment_on, counter) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  dossiers)
    written |= keys
    return st, next_label


def written_keys(prepared: list[Prepared]) -> set[tuple[str, str]]:
    """The ("c", citizen_id) / ("d", code) keys a chunk written by ``write_changes``
    touched (see ``write_fresh``)."""
    keys: set[tuple[str, str]] = set()
    for p in prepared:
        ch = p.change
        if isinstance(ch, CitizenUpsert | CitizenDelete):
            keys.add(("c", ch.citizen_id))
        elif isinstance(ch, DossierUpsert):
            keys.add(("d", ch.dossier.code))
        elif isinstance(ch, DossierDelete):
            keys.add(("d", ch.code))
    return keys
