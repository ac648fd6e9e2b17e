"""The terminal gallery store: SQLite (WAL) is the truth, hnswlib a derived index.

Layout of the store directory::

    gallery.db (+ -wal, -shm)   citizens, embeddings, dossiers, meta, checkpoint records
    checkpoints/index-g<generation>-s<seq>.hnsw   index checkpoints (sha256 in gallery.db)

Writers (``apply``, ``replace_all``, ``checkpoint``, ``close``) are serialised by one
lock; each batch is one SQLite transaction, committed before the index is touched, and
the index update of the batch runs under the write side of a readers-writer lock, so a
search sees the index either before or after a whole batch and waits at most one batch.
See docs/store.md for the decisions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import ChangeOrderError, EmbedderMismatchError, StoreError
from edge.config import StoreSettings
from edge.store.hashing import ContentHasher
from edge.store.index import HnswIndex
from edge.store.rwlock import RWLock
from sync.changes import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)

log = logging.getLogger("motcua.store")

DB_NAME = "gallery.db"
#: held (flock) while a process has the store open: two writers would corrupt it
LOCK_NAME = "lock"
CHECKPOINT_DIR = "checkpoints"
SCHEMA_VERSION = 1
#: longest citizen id / dossier code accepted (the district uses UUIDs and short codes)
MAX_ID_LEN = 128
#: longest masked name / free-text dossier field accepted
MAX_TEXT_LEN = 512
#: longest PIN hash or salt accepted (a sha256/scrypt output is 32-64 bytes)
MAX_PIN_FIELD = 256
#: changes validated, written and indexed together while installing a snapshot; large
#: enough for multi-threaded index adds to pay off, small enough to bound the memory
SNAPSHOT_CHUNK = 2000
#: rows fetched at a time when rebuilding the index from SQLite
REBUILD_CHUNK = 5000
#: SQLite waits this long for a lock held by another connection before failing; only
#: the store's own reader and writer connections use the file
BUSY_TIMEOUT_MS = 5000
#: SQLite page size for new galleries (see _connect): 16 KB stores a 512-d float32 row
#: in ~2.3 KB instead of 4 KB; larger pages would waste more on small dossier updates
PAGE_SIZE = 16384
#: batches adding at least this many vectors use settings.build_threads for the index
#: adds (the write lock is held meanwhile, so more threads = a shorter search stall)
PARALLEL_ADD_MIN = 32
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

_SCHEMA = """
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
# -- BLOB columns, added to an existing store by an idempotent ALTER TABLE (_add_dob_columns)
_DOB_COLUMNS = ("dob_hash", "dob_salt")


def _add_dob_columns(c: sqlite3.Connection) -> None:
    """Add the date-of-birth columns to ``citizens`` when missing (idempotent)."""
    have = {row[1] for row in c.execute("PRAGMA table_info(citizens)")}
    for col in _DOB_COLUMNS:
        if col not in have:
            c.execute(f"ALTER TABLE citizens ADD COLUMN {col} BLOB")


@dataclasses.dataclass(frozen=True)
class Match:
    """One search candidate: a citizen and its cosine similarity (higher is better)."""

    citizen_id: str
    score: float


@dataclasses.dataclass(frozen=True)
class CitizenRecord:
    """What the terminal knows about a citizen (never the face, never the full name)."""

    citizen_id: str
    masked_name: str
    pin_hash: bytes
    pin_salt: bytes
    embedding_count: int
    #: salted date-of-birth hash and salt (sync.pin); empty: no confirmation step
    dob_hash: bytes = b""
    dob_salt: bytes = b""


# ---------------------------------------------------------------------- helpers
def _sql_error(exc: sqlite3.Error, what: str) -> StoreError:
    msg = str(exc)
    if "full" in msg.lower():
        return StoreError(f"{what}: disk full ({msg}); nothing was changed")
    return StoreError(f"{what}: {msg}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_dir(path: Path) -> int:
    """Take the store's exclusive lock; StoreError if another process holds it."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {path / LOCK_NAME}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"gallery {path} is in use by another process") from None
    return fd


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def unit_rows(arr: npt.ArrayLike, dim: int, what: str) -> npt.NDArray[np.float32]:
    """Check an embedding matrix (or one vector) and return unit float32 rows.

    Refuses a wrong shape or dimension, non-float data, NaN/inf and zero norm.
    """
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        raise StoreError(f"{what}: embeddings must be floats, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[0] < 1:
        raise StoreError(f"{what}: expected shape (n, {dim}), got {np.shape(arr)}")
    if a.shape[1] != dim:
        raise StoreError(f"{what}: embedding dimension {a.shape[1]}, the gallery's is {dim}")
    # one float64 pass: a NaN or infinity anywhere (or a float64 value too large to
    # square) makes the row's norm non-finite; this runs on every search
    wide = a.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    if not np.isfinite(norms).all():
        raise StoreError(f"{what}: embedding contains NaN or infinity")
    if (norms < 1e-6).any():
        raise StoreError(f"{what}: embedding has zero norm")
    return (wide / norms[:, None]).astype(np.float32)


def _check_text(value: object, what: str, *, limit: int = MAX_TEXT_LEN,
                empty: bool = True) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what}: expected text, got {type(value).__name__}")
    if not empty and not value:
        raise StoreError(f"{what}: must not be empty")
    if len(value) > limit:
        raise StoreError(f"{what}: longer than {limit} characters")
    if "\x00" in value:
        raise StoreError(f"{what}: contains a NUL character")
    return value


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise StoreError(f"{what}: expected bytes, got {type(value).__name__}")
    if len(value) > MAX_PIN_FIELD:
        raise StoreError(f"{what}: longer than {MAX_PIN_FIELD} bytes")
    return bytes(value)


@dataclasses.dataclass
class _Prepared:
    """A validated change, with what the SQL and the index need."""

    change: Change
    raw: bytes = b""  # float32 little-endian embeddings, as sent
    unit: npt.NDArray[np.float32] | None = None


def _prepare(change: object, dim: int, settings: StoreSettings) -> _Prepared:
    if isinstance(change, CitizenUpsert):
        what = f"change {change.seq} (citizen {change.citizen_id!r})"
        _check_text(change.citizen_id, f"{what} citizen_id", limit=MAX_ID_LEN, empty=False)
        _check_text(change.masked_name, f"{what} masked_name")
        _check_bytes(change.pin_hash, f"{what} pin_hash")
        _check_bytes(change.pin_salt, f"{what} pin_salt")
        _check_bytes(change.dob_hash, f"{what} dob_hash")
        _check_bytes(change.dob_salt, f"{what} dob_salt")
        emb = np.asarray(change.embeddings)
        if emb.ndim != 2:
            raise StoreError(f"{what}: embeddings must have shape (k, {dim}), got {emb.shape}")
        if emb.shape[0] > settings.max_embeddings_per_citizen:
            raise StoreError(
                f"{what}: {emb.shape[0]} embeddings, at most "
                f"{settings.max_embeddings_per_citizen} per citizen"
            )
        unit = unit_rows(emb, dim, what)
        raw = np.ascontiguousarray(emb.astype("<f4")).tobytes()
        return _Prepared(change, raw, unit)
    if isinstance(change, CitizenDelete):
        _check_text(change.citizen_id, f"change {change.seq} citizen_id", limit=MAX_ID_LEN,
                    empty=False)
        return _Prepared(change)
    if isinstance(change, DossierUpsert):
        d = change.dossier
        what = f"change {change.seq} (dossier)"
        if not isinstance(d, Dossier):
            raise StoreError(f"{what}: expected a Dossier, got {type(d).__name__}")
        _check_text(d.code, f"{what} code", limit=MAX_ID_LEN, empty=False)
        _check_text(d.citizen_id, f"{what} citizen_id", limit=MAX_ID_LEN, empty=False)
        for name in ("procedure", "stage", "counter"):
            _check_text(getattr(d, name), f"{what} {name}")
        if not isinstance(d.status, DossierStatus):
            raise StoreError(f"{what}: status must be a DossierStatus, got {d.status!r}")
        if not isinstance(d.received_on, str) or not _DATE.match(d.received_on):
            raise StoreError(f"{what}: received_on must be YYYY-MM-DD, got {d.received_on!r}")
        if not isinstance(d.appointment_on, str) or (
            d.appointment_on and not _DATE.match(d.appointment_on)
        ):
            raise StoreError(
                f"{what}: appointment_on must be YYYY-MM-DD or empty, got {d.appointment_on!r}"
            )
        return _Prepared(change)
    if isinstance(change, DossierDelete):
        _check_text(change.code, f"change {change.seq} code", limit=MAX_ID_LEN, empty=False)
        return _Prepared(change)
    raise StoreError(f"not a change: {type(change).__name__}")


@dataclasses.dataclass
class _PendingCheckpoint:
    """A checkpoint saved to a temp file, not yet fsynced, hashed, renamed, recorded."""

    name: str
    tmp: Path
    generation: int
    seq: int
    slots: int
    since: int
    started: float


class _Mapping:
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
class _Staged:
    """The index side of a run of changes already written to SQLite."""

    #: labels live before the batch to mark deleted (re-enrolment: the citizen stays)
    hide: list[int] = dataclasses.field(default_factory=list)
    #: labels live before the batch whose vectors must go (the citizen was deleted)
    scrub: list[int] = dataclasses.field(default_factory=list)
    #: labels hidden by earlier batches whose citizen is now deleted
    scrub_hidden: list[int] = dataclasses.field(default_factory=list)
    added: dict[int, npt.NDArray[np.float32]] = dataclasses.field(default_factory=dict)
    overlay: dict[str, tuple[int, ...] | None] = dataclasses.field(default_factory=dict)
    deleted_citizen: bool = False


class GalleryStore:
    """A terminal's gallery: see the module docstring and docs/store.md."""

    def __init__(self, path: Path, settings: StoreSettings, embedder_id: str, dim: int,
                 conn: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._path = path
        self._ckpt_dir = path / CHECKPOINT_DIR
        self._settings = settings
        self._embedder_id = embedder_id
        self._dim = dim
        self._conn = conn  # writer connection, used under _apply_lock only
        self._reader = reader  # reads for citizen()/dossiers()/content_hash()
        self._reader_lock = threading.Lock()
        self._apply_lock = threading.RLock()
        self._rw = RWLock()
        self._mapping = _Mapping()
        self._index: HnswIndex | None = None
        self._epoch = 0
        self._last_seq = 0
        self._generation = 0
        self._next_label = 0
        self._last_delete_seq = 0
        #: changes applied since the newest checkpoint (large = none usable)
        self._since_checkpoint = 0
        self._closed = False
        self._broken: str | None = None
        self._lock_fd = -1
        #: held from saving a checkpoint until it is recorded (taken before _apply_lock)
        self._ckpt_lock = threading.Lock()
        self._ckpt_thread: threading.Thread | None = None
        #: no checkpoint of the current index generation exists: write one at once
        self._ckpt_urgent = False
        #: monotonic time of the last applied batch, for the quiet-time checkpoint
        self._last_write = 0.0
        self._quiet_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ================================================================== opening
    @classmethod
    def open(cls, path: Path, *, embedder_id: str, dim: int,
             settings: StoreSettings | None = None) -> GalleryStore:
        """Open (or create) the store in directory ``path`` for embedder ``embedder_id``.

        Loads the newest checkpoint whose sha256 matches and replays the changes after
        it, or rebuilds the index from SQLite. Raises EmbedderMismatchError when the
        gallery belongs to another embedder or dimension, StoreError when unusable.
        """
        settings = settings or StoreSettings()
        settings.validate("store")
        if not isinstance(embedder_id, str) or not embedder_id:
            raise StoreError("embedder_id must be a non-empty string")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise StoreError(f"dim must be a positive integer, got {dim!r}")
        path = Path(path)
        try:
            (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {path}: {exc.strerror}") from None
        lock_fd = _lock_dir(path)
        conn = reader = None
        try:
            conn = cls._connect(path / DB_NAME)
            reader = cls._connect(path / DB_NAME)
            store = cls(path, settings, embedder_id, dim, conn, reader)
            store._lock_fd = lock_fd
            store._init_db()
            store._load_index()
        except BaseException as exc:
            for c in (conn, reader):
                if c is not None:
                    c.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise _sql_error(exc, f"cannot open gallery {path / DB_NAME}") from None
            raise
        return store

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
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

    def _init_db(self) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            _add_dob_columns(c)
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {
                    "schema_version": SCHEMA_VERSION, "embedder_id": self._embedder_id,
                    "dim": self._dim, "epoch": 0, "last_seq": 0, "generation": 0,
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
        if meta["embedder_id"] != self._embedder_id:
            raise EmbedderMismatchError(
                f"gallery belongs to embedder {meta['embedder_id']!r}, "
                f"not {self._embedder_id!r}: rebuild it from a snapshot"
            )
        if meta["dim"] != self._dim:
            raise EmbedderMismatchError(
                f"gallery embeddings have dimension {meta['dim']}, not {self._dim}"
            )
        self._epoch = int(meta["epoch"])
        self._last_seq = int(meta["last_seq"])
        self._generation = int(meta["generation"])
        self._next_label = int(meta["next_label"])
        self._last_delete_seq = int(meta["last_delete_seq"])
        by_citizen: dict[str, list[int]] = collections.defaultdict(list)
        for label, cid in c.execute(
            "SELECT label, citizen_id FROM embeddings ORDER BY citizen_id, position"
        ):
            by_citizen[cid].append(int(label))
        for cid, labels in by_citizen.items():
            self._mapping.set(cid, tuple(labels))

    def _load_index(self) -> None:
        """Newest verified checkpoint + replay, else a rebuild from SQLite."""
        rows = self._conn.execute(
            "SELECT name, generation, seq, sha256, size FROM checkpoints "
            "ORDER BY seq DESC, created DESC"
        ).fetchall()
        for name, gen, seq, sha, size in rows:
            path = self._ckpt_dir / name
            why = None
            if gen != self._generation:
                why = f"generation {gen}, the gallery is at {self._generation}"
            elif seq > self._last_seq:
                why = f"covers change {seq}, beyond the gallery's {self._last_seq}"
            else:
                try:
                    if path.stat().st_size != size:
                        why = f"size {path.stat().st_size}, recorded {size}"
                    elif _sha256_file(path) != sha:
                        why = "sha256 does not match the recorded one"
                except OSError as exc:
                    why = f"unreadable: {exc.strerror or exc}"
            if why is not None:
                log.warning("skipping index checkpoint %s: %s", name, why)
                continue
            try:
                index = HnswIndex.load_verified(path, self._dim, self._settings)
                self._reconcile(index)
            except StoreError as exc:
                log.warning("skipping index checkpoint %s: %s", name, exc)
                continue
            self._index = index
            self._since_checkpoint = self._last_seq - seq
            log.info("loaded index checkpoint %s (change %d), replayed to %d",
                     name, seq, self._last_seq)
            break
        if self._index is None:  # no usable checkpoint
            self._install_rebuilt(self._rebuild_from_sql())
        self._drop_stray_files()
        if self._since_checkpoint >= self._checkpoint_due():
            self._auto_checkpoint()

    def _reconcile(self, index: HnswIndex) -> None:
        """Bring a loaded checkpoint up to SQLite: the replay of the changes after it.

        Labels are never reused, so the difference of label sets is exactly the changes
        since the checkpoint: labels SQLite no longer has are deleted (scrubbed), labels
        the checkpoint lacks are added from their stored vectors.
        """
        in_index = set(index.all_labels())
        in_sql = set(self._mapping.label_citizen)
        removed = {int(label): bool(scrubbed) for label, scrubbed in self._conn.execute(
            "SELECT label, scrubbed FROM removed_labels")}
        index.live = len(in_index)  # deleted ones are subtracted below
        scrub_hidden = []
        for label in sorted(in_index - in_sql):
            if index.is_live(label):
                # removed after the checkpoint; unknown = treat as forgotten
                if removed.get(label, True):
                    index.scrub([label])
                else:
                    index.hide([label])
            else:
                index.live -= 1  # already deleted in the checkpoint
                if removed.get(label, True):
                    # its citizen may have been deleted after the checkpoint was written
                    scrub_hidden.append(label)
        index.scrub_hidden(scrub_hidden)
        missing = sorted(in_sql - in_index)
        for start in range(0, len(missing), REBUILD_CHUNK):
            part = missing[start:start + REBUILD_CHUNK]
            labels, vecs = self._vectors_for(part)
            index.add(labels, vecs, threads=self._settings.build_threads)
        if index.live != len(in_sql):
            raise StoreError(f"index holds {index.live} live vectors after replay, "
                             f"SQLite {len(in_sql)}")

    @staticmethod
    def _label_is_live(index: HnswIndex, label: int) -> bool:
        try:
            index.get([label])
        except StoreError:
            return False
        return True

    def _vectors_for(self, labels: list[int]
                     ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        marks = ",".join("?" * len(labels))
        rows = self._conn.execute(
            f"SELECT label, vector FROM embeddings WHERE label IN ({marks})", labels
        ).fetchall()
        return self._rows_to_unit(rows)

    def _rows_to_unit(self, rows: list[tuple[int, bytes]]
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(-1, self._dim)
        return labels, unit_rows(vecs, self._dim, "stored embedding")

    def _rebuild_from_sql(self) -> HnswIndex:
        total = len(self._mapping.label_citizen)
        capacity = math.ceil(total * self._settings.growth_factor)
        index = HnswIndex.create(self._dim, self._settings, capacity)
        log.info("building the gallery index from SQLite (%d vectors)", total)
        cur = self._conn.execute("SELECT label, vector FROM embeddings ORDER BY label")
        done, t0 = 0, time.monotonic()
        while rows := cur.fetchmany(REBUILD_CHUNK):
            labels, vecs = self._rows_to_unit(rows)
            index.add(labels, vecs, threads=self._settings.build_threads)
            done += len(rows)
            log.info("index rebuild: %d/%d vectors (%.0f/s)", done, total,
                     done / max(time.monotonic() - t0, 1e-9))
        return index

    def _drop_stray_files(self) -> None:
        """Remove temp files and checkpoint files that no record points to."""
        known = {r[0] for r in self._conn.execute("SELECT name FROM checkpoints")}
        for entry in self._ckpt_dir.iterdir():
            if entry.name not in known:
                with contextlib.suppress(OSError):
                    entry.unlink()

    # ================================================================== properties
    @property
    def last_seq(self) -> int:
        """Change number of the last applied change (0 = none)."""
        return self._last_seq

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def embedder_id(self) -> str:
        return self._embedder_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def citizen_count(self) -> int:
        """Citizens that have at least one embedding."""
        return len(self._mapping.citizen_labels)

    @property
    def settings(self) -> StoreSettings:
        return self._settings

    @property
    def path(self) -> Path:
        return self._path

    def index_stats(self) -> dict[str, int]:
        """Index slot figures (live, deleted, slots, capacity) for status and tests."""
        with self._rw.read():
            idx = self._require_index()
            return {"live": idx.live, "deleted": idx.deleted, "slots": idx.slots,
                    "capacity": idx.capacity, "generation": self._generation}

    def set_ef(self, ef: int) -> None:
        """Change the search beam at run time (tuning, benchmarks); not persisted."""
        if isinstance(ef, bool) or not isinstance(ef, int) or ef < 1:
            raise StoreError(f"ef must be a positive integer, got {ef!r}")
        with self._apply_lock, self._rw.write():
            index = self._require_index()
            self._settings = dataclasses.replace(self._settings, ef=ef)
            index.set_ef(ef)

    def _require_open(self) -> None:
        if self._closed:
            raise StoreError("the gallery store is closed")
        if self._broken is not None:
            raise StoreError(f"the gallery index is unusable: {self._broken}")

    def _require_index(self) -> HnswIndex:
        self._require_open()
        assert self._index is not None
        return self._index

    # ================================================================== writes
    def apply(self, changes: Sequence[Change], *, epoch: int,
              embedder_id: str | None = None) -> None:
        """Apply one batch of consecutive changes as one transaction.

        ``changes[0].seq`` must be ``last_seq + 1`` and the rest consecutive
        (ChangeOrderError otherwise); ``epoch`` must be the gallery's (an empty gallery
        adopts the epoch of its first batch starting at 1). Any invalid change refuses
        the whole batch with StoreError and nothing changes.
        """
        changes = list(changes)
        with self._apply_lock:
            self._require_open()
            if embedder_id is not None and embedder_id != self._embedder_id:
                raise EmbedderMismatchError(
                    f"batch for embedder {embedder_id!r}, the gallery's is {self._embedder_id!r}"
                )
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise StoreError(f"epoch must be a non-negative integer, got {epoch!r}")
            fresh = self._last_seq == 0 and self._epoch == 0
            if epoch != self._epoch and not fresh:
                raise ChangeOrderError(
                    f"batch of epoch {epoch}, the gallery is at epoch {self._epoch}: "
                    "a snapshot is needed"
                )
            if not changes:
                return
            for i, ch in enumerate(changes):
                seq = getattr(ch, "seq", None)
                if isinstance(seq, bool) or not isinstance(seq, int):
                    raise StoreError(f"change #{i} has no integer seq")
                want = self._last_seq + 1 + i
                if seq != want:
                    kind = "duplicate" if seq < want else "gap"
                    raise ChangeOrderError(
                        f"change number {seq} where {want} was expected ({kind}; "
                        f"gallery at {self._last_seq})"
                    )
            prepared = [_prepare(ch, self._dim, self._settings) for ch in changes]
            last = changes[-1].seq
            c = self._conn
            next_label = self._next_label
            try:
                c.execute("BEGIN IMMEDIATE")
                staged, next_label = self._write_changes(prepared, self._mapping, next_label)
                delete_seq = self._last_delete_seq
                if staged.deleted_citizen:
                    delete_seq = last
                self._set_meta(epoch=epoch, last_seq=last, next_label=next_label,
                               last_delete_seq=delete_seq)
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise _sql_error(exc, f"batch {changes[0].seq}..{last} refused") from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            # committed: from here on the batch is acknowledged; the index follows
            try:
                with self._rw.write():
                    self._apply_staged(self._require_index(), self._mapping, staged)
                    self._epoch, self._last_seq = epoch, last
                    self._next_label, self._last_delete_seq = next_label, delete_seq
            except (StoreError, MemoryError) as exc:
                log.error("index update failed after commit (%s); rebuilding from SQLite", exc)
                self._epoch, self._last_seq = epoch, last
                self._next_label, self._last_delete_seq = next_label, delete_seq
                self._recover_index(str(exc))
            self._since_checkpoint += len(changes)
            self._after_write()

    def _write_changes(self, prepared: list[_Prepared], mapping: _Mapping, next_label: int
                       ) -> tuple[_Staged, int]:
        """Execute the SQL of ``prepared`` (inside the caller's transaction)."""
        c = self._conn
        st = _Staged()

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

        for p in prepared:
            ch = p.change
            if isinstance(ch, CitizenUpsert):
                assert p.unit is not None
                drop(ch.citizen_id, forget=False)
                k = p.unit.shape[0]
                labels = tuple(range(next_label, next_label + k))
                next_label += k
                for label, vec in zip(labels, p.unit, strict=True):
                    st.added[label] = vec
                st.overlay[ch.citizen_id] = labels
                c.execute("DELETE FROM embeddings WHERE citizen_id = ?", (ch.citizen_id,))
                c.execute(
                    "INSERT INTO citizens (citizen_id, masked_name, pin_hash, pin_salt, "
                    "updated_seq, dob_hash, dob_salt) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (citizen_id) DO UPDATE "
                    "SET masked_name = excluded.masked_name, pin_hash = excluded.pin_hash, "
                    "pin_salt = excluded.pin_salt, updated_seq = excluded.updated_seq, "
                    "dob_hash = excluded.dob_hash, dob_salt = excluded.dob_salt",
                    (ch.citizen_id, ch.masked_name, bytes(ch.pin_hash), bytes(ch.pin_salt),
                     ch.seq, bytes(ch.dob_hash) or None, bytes(ch.dob_salt) or None),
                )
                row = 4 * self._dim
                c.executemany(
                    "INSERT INTO embeddings (label, citizen_id, position, vector) "
                    "VALUES (?, ?, ?, ?)",
                    [(label, ch.citizen_id, i, p.raw[i * row:(i + 1) * row])
                     for i, label in enumerate(labels)],
                )
            elif isinstance(ch, CitizenDelete):
                # vectors hidden by earlier re-enrolments of this citizen must go too
                for (label,) in c.execute(
                    "SELECT label FROM removed_labels WHERE citizen_id = ? AND scrubbed = 0",
                    (ch.citizen_id,),
                ).fetchall():
                    if label in st.hide:  # hidden earlier in this very batch
                        st.hide.remove(label)
                        st.scrub.append(label)
                    else:
                        st.scrub_hidden.append(label)
                c.execute("UPDATE removed_labels SET scrubbed = 1 WHERE citizen_id = ?",
                          (ch.citizen_id,))
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

    def _apply_staged(self, index: HnswIndex, mapping: _Mapping, st: _Staged) -> None:
        index.hide(st.hide)
        index.scrub(st.scrub)
        index.scrub_hidden(st.scrub_hidden)
        threads = self._settings.build_threads if len(st.added) >= PARALLEL_ADD_MIN else 1
        if st.added:
            new = np.fromiter(st.added.keys(), dtype=np.int64, count=len(st.added))
            index.add(new, np.stack(list(st.added.values())), threads=threads)
        for cid, labels in st.overlay.items():
            mapping.set(cid, labels)

    def _set_meta(self, **values: Any) -> None:
        self._conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                               [(v, k) for k, v in values.items()])

    def _recover_index(self, why: str) -> None:
        try:
            index = self._rebuild_from_sql()
        except (StoreError, MemoryError, sqlite3.Error) as exc:
            self._broken = f"{why}; rebuild failed: {exc}"
            raise StoreError(
                f"batch committed but the index could not follow: {self._broken}"
            ) from None
        self._install_rebuilt(index)

    def _install_rebuilt(self, index: HnswIndex) -> None:
        """Swap in an index rebuilt from SQLite, as a new generation.

        The rebuilt index holds no removed label, so the removed-label records are
        cleared; checkpoints of the old generation become unusable and are pruned by the
        next checkpoint (with the hidden vectors they contain).
        """
        c = self._conn
        generation = self._generation + 1
        try:
            c.execute("BEGIN IMMEDIATE")
            self._set_meta(generation=generation)
            c.execute("DELETE FROM removed_labels")
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            # still a correct index for the current generation; records stay until later
            log.warning("cannot record the rebuilt index as a new generation: %s", exc)
            generation = self._generation
        with self._rw.write():
            self._index = index
            self._generation = generation
        self._since_checkpoint = self._checkpoint_due()  # none usable yet
        self._ckpt_urgent = True

    def _after_write(self) -> None:
        idx = self._index
        assert idx is not None
        self._last_write = time.monotonic()
        due = self._checkpoint_due()
        if idx.needs_rebuild():
            self.rebuild()
        elif self._since_checkpoint >= due:
            s = self._settings
            if (self._ckpt_urgent or s.checkpoint_quiet_s == 0
                    or self._since_checkpoint >= s.checkpoint_max_defer * due):
                self._auto_checkpoint()
            else:
                self._start_quiet_checkpoint()

    def _start_quiet_checkpoint(self) -> None:
        """Have a due checkpoint written once the sync has been quiet for a while."""
        if self._quiet_thread is not None and self._quiet_thread.is_alive():
            return  # it sees this batch's time and waits longer
        self._quiet_thread = threading.Thread(target=self._quiet_checkpoint,
                                              name="store-checkpoint-quiet", daemon=True)
        self._quiet_thread.start()

    def _quiet_checkpoint(self) -> None:
        quiet = self._settings.checkpoint_quiet_s
        while not self._stopping.wait(max(0.0, self._last_write + quiet - time.monotonic())):
            if time.monotonic() - self._last_write < quiet:
                continue  # another batch came meanwhile
            self.wait_for_checkpoint()  # one still being finished would make this a no-op
            with self._apply_lock:
                if self._closed or self._broken is not None or self._stopping.is_set():
                    return
                if time.monotonic() - self._last_write < quiet:
                    continue
                if self._since_checkpoint >= self._checkpoint_due():
                    try:
                        self._auto_checkpoint()
                    except Exception:  # a bug must not kill silently: log it, go on
                        log.exception("quiet-time checkpoint crashed")
                return

    def _checkpoint_due(self) -> int:
        """Changes after which the policy writes a checkpoint (see StoreSettings)."""
        s = self._settings
        return max(s.checkpoint_every, int(s.checkpoint_share * self.citizen_count))

    def _try_checkpoint_now(self) -> None:
        """Synchronous policy checkpoint (open, close); failures are logged only."""
        try:
            self._checkpoint_locked()
        except StoreError as exc:
            # everything is safe in SQLite; try again a while later
            log.warning("automatic checkpoint failed: %s", exc)
            self._since_checkpoint = max(self._since_checkpoint, self._checkpoint_due() // 2)

    def rebuild(self) -> None:
        """Rebuild the index from SQLite and swap it in (searches use the old meanwhile)."""
        with self._apply_lock:
            self._require_open()
            index = self._rebuild_from_sql()
            self._install_rebuilt(index)
            log.info("index rebuilt: %d vectors", index.live)
            self._auto_checkpoint()

    def replace_all(self, changes: Iterable[Change], *, epoch: int, last_seq: int,
                    embedder_id: str | None = None) -> None:
        """Install a full snapshot atomically (old content served until it is complete).

        ``changes`` are the snapshot's entries (normally upserts; a delete removes an
        earlier entry of the same stream); their ``seq`` fields are not checked. The
        gallery then stands at ``epoch``/``last_seq``. Within the same epoch a snapshot
        may not go back (ChangeOrderError). One SQLite transaction: a crash or an invalid
        entry leaves the old gallery as it was.
        """
        with self._apply_lock:
            self._require_open()
            if embedder_id is not None and embedder_id != self._embedder_id:
                raise EmbedderMismatchError(
                    f"snapshot for embedder {embedder_id!r}, "
                    f"the gallery's is {self._embedder_id!r}"
                )
            for name, value in (("epoch", epoch), ("last_seq", last_seq)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise StoreError(f"{name} must be a non-negative integer, got {value!r}")
            if epoch == self._epoch and last_seq < self._last_seq:
                raise ChangeOrderError(
                    f"snapshot at change {last_seq} would take the gallery back from "
                    f"{self._last_seq} in epoch {epoch}"
                )
            c = self._conn
            mapping = _Mapping()
            index = HnswIndex.create(self._dim, self._settings)
            next_label = self._next_label
            generation = self._generation + 1
            t0, count = time.monotonic(), 0
            try:
                c.execute("BEGIN IMMEDIATE")
                for table in ("embeddings", "citizens", "dossiers", "removed_labels"):
                    c.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
                for chunk in _chunks(changes, SNAPSHOT_CHUNK):
                    prepared = [_prepare(ch, self._dim, self._settings) for ch in chunk]
                    staged, next_label = self._write_changes(prepared, mapping, next_label)
                    self._apply_staged(index, mapping, staged)
                    count += len(chunk)
                    log.info("snapshot: %d entries (%.0f/s)", count,
                             count / max(time.monotonic() - t0, 1e-9))
                self._set_meta(epoch=epoch, last_seq=last_seq, next_label=next_label,
                               generation=generation, last_delete_seq=last_seq)
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise _sql_error(exc, "snapshot refused") from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            with self._rw.write():
                self._index, self._mapping = index, mapping
                self._epoch, self._last_seq = epoch, last_seq
                self._next_label, self._generation = next_label, generation
                self._last_delete_seq = last_seq
                self._broken = None
            self._since_checkpoint = self._checkpoint_due()  # none usable yet
            self._auto_checkpoint()

    # ================================================================== checkpoints
    def checkpoint(self, *, force: bool = False) -> None:
        """Write an index checkpoint now (unless one covers the current change number
        already and ``force`` is false)."""
        with self._ckpt_lock:  # waits for a checkpoint in progress
            with self._apply_lock:
                self._require_open()
                pending = self._checkpoint_save(force=force)
            if pending is not None:
                self._checkpoint_finish(pending)

    def wait_for_checkpoint(self) -> None:
        """Block until an automatic checkpoint in progress (if any) is recorded."""
        with self._ckpt_lock:
            pass

    def _checkpoint_locked(self, *, force: bool = False) -> None:
        """Write a checkpoint now, in this thread (apply lock held by the caller)."""
        pending = self._checkpoint_save(force=force)
        if pending is not None:
            self._checkpoint_finish(pending)

    def _checkpoint_save(self, *, force: bool = False) -> _PendingCheckpoint | None:
        """Phase 1, under the apply lock: save the index to a temp file.

        No writer can run meanwhile; searches may (saving only reads the index).
        """
        idx = self._index
        assert idx is not None
        newest = self._conn.execute(
            "SELECT seq FROM checkpoints WHERE generation = ? ORDER BY seq DESC LIMIT 1",
            (self._generation,),
        ).fetchone()
        if newest is not None and newest[0] == self._last_seq and not force:
            self._since_checkpoint = 0
            return None
        name = f"index-g{self._generation:06d}-s{self._last_seq:012d}.hnsw"
        tmp = self._ckpt_dir / f".tmp-{name}-{os.getpid()}-{threading.get_ident()}"
        pending = _PendingCheckpoint(name, tmp, self._generation, self._last_seq, idx.slots,
                                     self._since_checkpoint, time.monotonic())
        try:
            idx.save(tmp)
        except StoreError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._since_checkpoint = 0
        return pending

    def _checkpoint_finish(self, p: _PendingCheckpoint) -> None:
        """Phases 2 and 3: fsync, hash and rename (no lock), then record (apply lock)."""
        final = self._ckpt_dir / p.name
        try:
            with open(p.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            sha = _sha256_file(p.tmp)
            size = p.tmp.stat().st_size
            os.replace(p.tmp, final)
            _fsync_dir(self._ckpt_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                p.tmp.unlink()
            self._checkpoint_failed(p)
            raise StoreError(f"cannot write index checkpoint: {exc.strerror or exc}") from None
        with self._apply_lock:
            if self._closed:
                return  # abandoned meanwhile; the unrecorded file is removed on open
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT OR REPLACE INTO checkpoints (name, generation, seq, sha256, "
                          "size, slots, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (p.name, p.generation, p.seq, sha, size, p.slots, time.time()))
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                with contextlib.suppress(OSError):
                    final.unlink()
                self._checkpoint_failed(p)
                raise _sql_error(exc, "cannot record index checkpoint") from None
            log.info("index checkpoint %s written in %.2f s", p.name,
                     time.monotonic() - p.started)
            if p.generation == self._generation:
                self._ckpt_urgent = False
            self._prune_checkpoints(p.name)
            with contextlib.suppress(sqlite3.Error):
                # keep the WAL small (and free of old page images) now that we are at rest
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _checkpoint_failed(self, p: _PendingCheckpoint) -> None:
        # the changes it would have covered still count, so the policy tries again
        self._since_checkpoint += p.since

    def _auto_checkpoint(self) -> None:
        """Policy checkpoint from a writer (apply lock held): the index is saved here,
        the slow part (fsync, hash, rename, record) runs in a worker thread. Skipped if
        one is still in progress (the change counter keeps growing)."""
        if not self._ckpt_lock.acquire(blocking=False):
            return
        try:
            pending = self._checkpoint_save()
        except StoreError as exc:
            self._ckpt_lock.release()
            log.warning("automatic checkpoint failed: %s", exc)
            self._since_checkpoint = max(self._since_checkpoint, self._checkpoint_due() // 2)
            return
        if pending is None:
            self._ckpt_lock.release()
            return

        def finish() -> None:
            try:
                self._checkpoint_finish(pending)
            except StoreError as exc:
                log.warning("automatic checkpoint failed: %s", exc)
            except Exception:  # a bug must not kill silently: log it, the store goes on
                log.exception("automatic checkpoint crashed")
            finally:
                self._ckpt_lock.release()

        self._ckpt_thread = threading.Thread(target=finish, name="store-checkpoint",
                                             daemon=True)
        self._ckpt_thread.start()

    def _prune_checkpoints(self, newest: str) -> None:
        rows = self._conn.execute(
            "SELECT name, generation, seq FROM checkpoints ORDER BY seq DESC, created DESC"
        ).fetchall()
        keep: list[str] = []
        for name, gen, seq in rows:
            usable = gen == self._generation and (
                name == newest or seq >= self._last_delete_seq
            )
            if usable and len(keep) < self._settings.keep_checkpoints:
                keep.append(name)
        drop = [r[0] for r in rows if r[0] not in keep]
        if not drop:
            return
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("DELETE FROM checkpoints WHERE name = ?", [(n,) for n in drop])
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            log.warning("cannot prune old checkpoints: %s", exc)
            return
        for n in drop:
            with contextlib.suppress(OSError):
                (self._ckpt_dir / n).unlink()

    # ================================================================== reads
    def search(self, embedding: npt.ArrayLike, k: int = 2) -> list[Match]:
        """The ``k`` best distinct citizens for one face, best first.

        ``embedding`` is one vector (dim,) or several of the same person (n, dim), e.g.
        the good frames of a session. A citizen's score is the cosine similarity of its
        best-matching stored embedding; for n query vectors it is the mean over the
        queries of that best similarity (so one odd frame moves it by 1/n only).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise StoreError(f"k must be a positive integer, got {k!r}")
        queries = unit_rows(embedding, self._dim, "query")
        with self._rw.read():
            index = self._require_index()
            mapping = self._mapping
            live = index.live
            if live == 0:
                return []
            # k citizens x their most embeddings is enough neighbours for k distinct ones
            kk = min(live, k * mapping.max_per_citizen())
            try:
                labels, dists = index.knn(queries, kk)
            except StoreError:
                # hnswlib found fewer than kk (tiny or heavily deleted graph): exact scan
                labels, dists = self._exact_knn(index, queries, kk)
            if len(queries) == 1:
                best: dict[str, float] = {}
                owner = mapping.label_citizen.get
                for label, dist in zip(labels[0].tolist(), dists[0].tolist(), strict=True):
                    cid = owner(label)
                    if cid is not None and cid not in best:
                        best[cid] = 1.0 - dist
                scores = best
            else:
                cands = {mapping.label_citizen[int(x)] for x in labels.ravel()
                         if int(x) in mapping.label_citizen}
                scores = {}
                for cid in cands:
                    vecs = index.get(list(mapping.citizen_labels[cid]))
                    sims = queries @ vecs.T  # (n, m)
                    scores[cid] = float(sims.max(axis=1).mean())
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Match(cid, score) for cid, score in ranked]

    def _exact_knn(self, index: HnswIndex, queries: npt.NDArray[np.float32], kk: int
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        labels = np.fromiter(self._mapping.label_citizen, dtype=np.int64)
        vecs = index.get(labels.tolist())
        sims = queries @ vecs.T
        order = np.argsort(-sims, axis=1)[:, :kk]
        return labels[order], 1.0 - np.take_along_axis(sims, order, axis=1)

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self._require_open()
        with self._reader_lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                if self._reader.in_transaction:
                    self._reader.execute("ROLLBACK")
                raise _sql_error(exc, "gallery read failed") from None

    def citizen(self, citizen_id: str) -> CitizenRecord | None:
        """The citizen's record, or None if unknown (e.g. deleted since the search)."""
        with self._read() as r:
            row = r.execute(
                "SELECT c.masked_name, c.pin_hash, c.pin_salt, "
                "(SELECT count(*) FROM embeddings e WHERE e.citizen_id = c.citizen_id), "
                "c.dob_hash, c.dob_salt "
                "FROM citizens c WHERE c.citizen_id = ?", (citizen_id,)
            ).fetchone()
        if row is None:
            return None
        return CitizenRecord(citizen_id, row[0], bytes(row[1]), bytes(row[2]), int(row[3]),
                             dob_hash=bytes(row[4] or b""), dob_salt=bytes(row[5] or b""))

    def dossiers(self, citizen_id: str) -> list[Dossier]:
        """The citizen's dossiers, oldest received first."""
        with self._read() as r:
            rows = r.execute(
                "SELECT code, citizen_id, procedure, status, stage, received_on, "
                "appointment_on, counter FROM dossiers WHERE citizen_id = ? "
                "ORDER BY received_on, code", (citizen_id,)
            ).fetchall()
        return [_dossier(row) for row in rows]

    def content_hash(self) -> str:
        """Canonical sha256 of the gallery content (layout in docs/store.md)."""
        with self._read() as r:
            r.execute("BEGIN")  # one consistent snapshot of all tables
            try:
                meta = dict(r.execute("SELECT key, value FROM meta").fetchall())
                hasher = ContentHasher(embedder_id=str(meta["embedder_id"]),
                                       epoch=int(meta["epoch"]),
                                       last_seq=int(meta["last_seq"]))
                emb = r.execute("SELECT citizen_id, vector FROM embeddings "
                                "ORDER BY citizen_id, position")
                pending = emb.fetchone()
                for cid, name, ph, ps in r.execute(
                    "SELECT citizen_id, masked_name, pin_hash, pin_salt FROM citizens "
                    "ORDER BY citizen_id"
                ).fetchall():
                    parts = []
                    while pending is not None and pending[0] == cid:
                        parts.append(bytes(pending[1]))
                        pending = emb.fetchone()
                    hasher.add_citizen(cid, name, bytes(ph), bytes(ps), b"".join(parts),
                                       dim=self._dim)
                for row in r.execute(
                    "SELECT code, citizen_id, procedure, status, stage, received_on, "
                    "appointment_on, counter FROM dossiers ORDER BY code"
                ):
                    hasher.add_dossier(_dossier(row))
            finally:
                r.execute("COMMIT")
        return hasher.hexdigest()

    def verify_index(self) -> None:
        """Check that the index holds exactly SQLite's embeddings; StoreError if not."""
        with self._rw.read(), self._read() as r:
            index = self._require_index()
            mapping = self._mapping
            r.execute("BEGIN")
            try:
                rows = r.execute("SELECT label, citizen_id, vector FROM embeddings").fetchall()
            finally:
                r.execute("COMMIT")
            sql = {int(label): cid for label, cid, _ in rows}
            if sql != mapping.label_citizen:
                raise StoreError("label map differs from SQLite's embeddings")
            if index.live != len(sql):
                raise StoreError(f"index has {index.live} live vectors, SQLite {len(sql)}")
            if rows:
                labels, want = self._rows_to_unit([(r_[0], r_[2]) for r_ in rows])
                got = index.get(labels.tolist())
                if not np.allclose(got, want, atol=1e-5):
                    raise StoreError("index vectors differ from SQLite's")
            for label in set(index.all_labels()) - set(sql):
                if self._label_is_live(index, label):
                    raise StoreError(f"index still serves removed label {label}")

    # ================================================================== closing
    def close(self) -> None:
        """Checkpoint if anything changed, then close (idempotent)."""
        self._stop_quiet_checkpoint()
        with self._ckpt_lock, self._apply_lock:  # after a checkpoint in progress
            if self._closed:
                return
            if self._broken is None and self._since_checkpoint > 0:
                self._try_checkpoint_now()
            with self._rw.write():
                self._closed = True
                self._index = None
            self._release()

    def _stop_quiet_checkpoint(self) -> None:
        self._stopping.set()
        thread = self._quiet_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _release(self) -> None:
        for conn in (self._conn, self._reader):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _abandon(self) -> None:
        """Drop the store like a crash would: no closing checkpoint (for tests)."""
        self._stop_quiet_checkpoint()
        with self._ckpt_lock, self._apply_lock, self._rw.write():
            self._closed = True
            self._index = None
            self._release()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _dossier(row: tuple[Any, ...]) -> Dossier:
    code, cid, procedure, status, stage, received_on, appointment_on, counter = row
    return Dossier(code=code, citizen_id=cid, procedure=procedure,
                   status=DossierStatus(status), stage=stage, received_on=received_on,
                   appointment_on=appointment_on, counter=counter)


def _chunks(items: Iterable[Change], size: int) -> Iterator[list[Change]]:
    chunk: list[Change] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
