"""The terminal gallery store: SQLite (WAL) is the truth, hnswlib a derived index.

Layout of the store directory::

    gallery.db (+ -wal, -shm)   citizens, embeddings, dossiers, meta, checkpoint records
    checkpoints/index-g<generation>-s<seq>.hnsw   index checkpoints (sha256 in gallery.db)

Writers (``apply``, ``replace_all``, ``checkpoint``, ``close``) are serialised by one
lock; each batch is one SQLite transaction, committed before the index is touched, and
the index update of the batch runs under the write side of a readers-writer lock, so a
search sees the index either before or after a whole batch and waits at most one batch.
See docs/store.md for the decisions.

This module is the store's orchestration: state, locks, the order of steps and the
checkpoint policy. The parts live beside it: ``validate`` (changes and queries), ``db``
(SQLite), ``upkeep`` (index == SQLite: replay, rebuild, check), ``checkpoints`` (files
and records), ``search``, ``hashing`` (content hash), ``index`` (hnswlib).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from core.errors import ChangeOrderError, EmbedderMismatchError, MessageRejected, StoreError
from edge.config import StoreSettings
from edge.store import checkpoints, db, search, upkeep
from edge.store.checkpoints import CHECKPOINT_DIR, PendingCheckpoint
from edge.store.db import DB_NAME, Mapping
from edge.store.hashing import hash_db
from edge.store.index import HnswIndex
from edge.store.records import CitizenRecord
from edge.store.rwlock import RWLock
from edge.store.search import Match
from edge.store.validate import prepare, prepare_many, unit_rows
from sync import snapgraph
from sync.changes import Change, Dossier

__all__ = ["CHECKPOINT_DIR", "DB_NAME", "CitizenRecord", "GalleryStore", "Match", "unit_rows"]

log = logging.getLogger("motcua.store")

#: changes validated, written and indexed together while installing a snapshot; large
#: enough for multi-threaded index adds to pay off, small enough to bound the memory
SNAPSHOT_CHUNK = 2000
#: a checkpoint that a deletion needs and that failed (disk full) is retried this often:
#: often enough that the old files go soon after space is back, rare enough not to
#: spin on a full disk
SCRUB_RETRY_S = 30.0


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
        self._mapping = Mapping()
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
        #: monotonic time by which a checkpoint must start that drops the files still
        #: holding deleted vectors (None = none do); see StoreSettings.deletion_scrub_s
        self._scrub_by: float | None = None
        #: the checkpoint the index was loaded from until a search has used it
        self._untried: str | None = None
        #: applied deletions whose vectors are still to be overwritten in the index, and
        #: the thread doing it (both under _scrub_lock, a leaf lock); _scrub_busy is held
        #: while overwriting (taken after _apply_lock, before the index's write side)
        self._pending_scrub: list[db.Staged] = []
        self._scrubber: threading.Thread | None = None
        self._scrub_lock = threading.Lock()
        self._scrub_busy = threading.Lock()
        self._trial_lock = threading.Lock()

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
            db.make_private(path, (CHECKPOINT_DIR,))
        except OSError as exc:
            raise StoreError(f"cannot create store directory {path}: {exc.strerror}") from None
        lock_fd = db.lock_dir(path)
        conn = reader = None
        try:
            conn = db.connect(path / DB_NAME)
            reader = db.connect(path / DB_NAME)
            db.make_private(path, ())  # -wal and -shm now exist
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
                raise db.sql_error(exc, f"cannot open gallery {path / DB_NAME}") from None
            if isinstance(exc, OSError):
                raise StoreError(f"cannot open gallery {path}: {exc.strerror or exc}") from None
            raise
        return store

    def _init_db(self) -> None:
        meta = db.init_db(self._conn, self._embedder_id, self._dim)
        self._epoch = int(meta["epoch"])
        self._last_seq = int(meta["last_seq"])
        self._generation = int(meta["generation"])
        self._next_label = int(meta["next_label"])
        self._last_delete_seq = int(meta["last_delete_seq"])
        for cid, labels in db.labels_by_citizen(self._conn).items():
            self._mapping.set(cid, labels)

    def _load_index(self) -> None:
        """Newest verified checkpoint + replay, else a rebuild from SQLite.

        A marker (checkpoints.TRIAL_NAME) is on disk while a loaded checkpoint is
        replayed and again around its first search; finding it here means such a start
        died (e.g. hnswlib segfaulted on the graph): the checkpoints are not used."""
        died_on = checkpoints.trial_left(self._path)
        records = checkpoints.records(self._conn)
        if died_on is not None:
            log.warning("the last start died using index checkpoint %s: not trusting "
                        "checkpoints, rebuilding the index from SQLite", died_on)
            records = []
        for name, gen, seq, sha, size in records:
            path = self._ckpt_dir / name
            why = checkpoints.unusable(path, gen, seq, sha, size, generation=self._generation,
                                       last_seq=self._last_seq)
            if why is not None:
                log.warning("skipping index checkpoint %s: %s", name, why)
                continue
            checkpoints.mark_trial(self._path, name)
            try:
                index = HnswIndex.load_verified(path, self._dim, self._settings)
                upkeep.reconcile(index, self._conn, self._mapping, self._dim, self._settings)
            except StoreError as exc:
                log.warning("skipping index checkpoint %s: %s", name, exc)
                continue
            self._index = index
            self._untried = name
            self._since_checkpoint = self._last_seq - seq
            log.info("loaded index checkpoint %s (change %d), replayed to %d",
                     name, seq, self._last_seq)
            break
        if self._index is None:  # no usable checkpoint
            self._install_rebuilt(self._rebuild_from_sql())
        checkpoints.clear_trial(self._path)  # replayed (or rebuilt): up to the first search
        checkpoints.drop_stray_files(self._conn, self._ckpt_dir)
        # a crash may have left deleted rows in the WAL and deleted vectors in checkpoint
        # files written before the deletion (or of an older generation): retire them now
        self._truncate_wal()
        if any(gen != self._generation or seq < self._last_delete_seq
               for _, gen, seq, _, _ in checkpoints.records(self._conn)):
            self._scrub_by = time.monotonic()
            self._start_quiet_checkpoint()
        if self._since_checkpoint >= self._checkpoint_due():
            self._auto_checkpoint()

    def _rebuild_from_sql(self) -> HnswIndex:
        return upkeep.rebuild_from_sql(self._conn, len(self._mapping.label_citizen),
                                       self._dim, self._settings)

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
            prepared = [prepare(ch, self._dim, self._settings) for ch in changes]
            last = changes[-1].seq
            c = self._conn
            next_label = self._next_label
            try:
                c.execute("BEGIN IMMEDIATE")
                staged, next_label = db.write_changes(c, self._dim, prepared, self._mapping,
                                                      next_label)
                delete_seq = self._last_delete_seq
                if staged.deleted_citizen:
                    delete_seq = last
                db.set_meta(c, epoch=epoch, last_seq=last, next_label=next_label,
                               last_delete_seq=delete_seq)
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise db.sql_error(exc, f"batch {changes[0].seq}..{last} refused") from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            # committed: from here on the batch is acknowledged; the index follows
            try:
                with self._rw.write():
                    upkeep.apply_visible(self._require_index(), self._mapping, staged,
                                         self._settings)
                    self._epoch, self._last_seq = epoch, last
                    self._next_label, self._last_delete_seq = next_label, delete_seq
                if staged.scrub or staged.scrub_hidden:
                    # deleted citizens are unmatchable now; their vectors are overwritten
                    # right after this apply returns, by the store-scrub thread, and in
                    # any case before a checkpoint is saved (docs/scale.md "Delete path")
                    with self._scrub_lock:
                        self._pending_scrub.append(staged)
                    self._start_scrub()
            except (StoreError, MemoryError) as exc:
                log.error("index update failed after commit (%s); rebuilding from SQLite", exc)
                self._epoch, self._last_seq = epoch, last
                self._next_label, self._last_delete_seq = next_label, delete_seq
                self._recover_index(str(exc))
            self._since_checkpoint += len(changes)
            if staged.deleted_citizen:
                self._deleted_something()
            self._after_write()

    def _start_scrub(self) -> None:
        """(apply lock held) Have the pending vectors overwritten by a thread, so that
        ``apply`` returns once the deletion is visible: the overwrite re-links the
        vector's neighbours in hnswlib, ~0.1 s per vector at 10,000 x 512-d here. The
        thread takes only the index's write side, not the apply lock: the next batch's
        SQLite commit does not wait for it (its index update waits for one overwrite)."""
        with self._scrub_lock:
            if self._scrubber is not None:
                return  # the running one takes this batch's too (checked under the lock)
            self._scrubber = threading.Thread(target=self._scrub_loop, name="store-scrub",
                                              daemon=True)
        self._scrubber.start()

    def _scrub_loop(self) -> None:
        while True:
            with self._scrub_busy:
                with self._scrub_lock:
                    if not self._pending_scrub:
                        self._scrubber = None
                        return
                    pending, self._pending_scrub = self._pending_scrub, []
                try:
                    with self._rw.write():
                        index = self._index
                        if index is not None and not self._closed:
                            for staged in pending:
                                upkeep.scrub_removed(index, staged)
                except Exception as exc:  # left for the next checkpoint, which retries
                    log.error("overwriting deleted vectors failed: %s", exc)
                    with self._scrub_lock:
                        self._pending_scrub[:0] = pending
                        self._scrubber = None
                    return

    def _scrub_pending(self) -> None:
        """(apply lock held) Wait for the store-scrub thread and overwrite what is still
        pending; runs before every checkpoint save, so no checkpoint holds a deleted
        citizen's vector (no new deletion can be queued meanwhile: apply needs the lock).
        Labels no longer in the index (rebuilt or replaced since) are skipped."""
        with self._scrub_busy:
            with self._scrub_lock:
                pending, self._pending_scrub = self._pending_scrub, []
            if not pending or self._index is None:
                return
            try:
                with self._rw.write():
                    for staged in pending:
                        upkeep.scrub_removed(self._require_index(), staged)
            except (StoreError, MemoryError) as exc:
                log.error("overwriting deleted vectors failed (%s); rebuilding from SQLite",
                          exc)
                self._recover_index(str(exc))

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
            db.set_meta(c, generation=generation)
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
            self._untried = None  # built from SQLite: nothing to try
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
        if self._scrub_by is not None:
            self._start_quiet_checkpoint()

    def _start_quiet_checkpoint(self) -> None:
        """Have a due checkpoint written once the sync has been quiet for a while."""
        if self._quiet_thread is not None and self._quiet_thread.is_alive():
            return  # it sees this batch's time and waits longer
        self._quiet_thread = threading.Thread(target=self._quiet_checkpoint,
                                              name="store-checkpoint-quiet", daemon=True)
        self._quiet_thread.start()

    def _quiet_checkpoint(self) -> None:
        """Thread: write a due checkpoint once the sync is quiet, and the one a deletion
        needs at its deadline at the latest (quiet or not)."""
        quiet = self._settings.checkpoint_quiet_s
        while True:
            wake = self._last_write + quiet
            if self._scrub_by is not None:
                wake = min(wake, self._scrub_by)
            # capped: a deletion made meanwhile may set an earlier deadline
            nap = min(wake - time.monotonic(), self._settings.deletion_scrub_s / 4)
            if self._stopping.wait(max(0.0, nap)):
                return
            if not self._checkpoint_wanted(quiet):
                continue  # another batch came meanwhile
            self.wait_for_checkpoint()  # one still being finished would make this a no-op
            with self._apply_lock:
                if self._closed or self._broken is not None or self._stopping.is_set():
                    return
                if not self._checkpoint_wanted(quiet):
                    continue
                if self._scrub_by is not None or (
                        self._since_checkpoint >= self._checkpoint_due()):
                    try:
                        self._auto_checkpoint()
                    except Exception:  # a bug must not kill silently: log it, go on
                        log.exception("quiet-time checkpoint crashed")
            self.wait_for_checkpoint()
            with self._apply_lock:
                if self._scrub_by is None or self._closed or self._broken is not None:
                    return
                # it failed (disk full?): the deleted vectors are still in old files
                self._scrub_by = time.monotonic() + SCRUB_RETRY_S

    def _checkpoint_wanted(self, quiet: float) -> bool:
        now = time.monotonic()
        return (now - self._last_write >= quiet
                or (self._scrub_by is not None and now >= self._scrub_by))

    def _deleted_something(self) -> None:
        """A citizen's vectors left SQLite: clean SQLite's files now, and have the index
        checkpoint that retires older checkpoint files written within the bound."""
        self._truncate_wal()
        deadline = time.monotonic() + self._settings.deletion_scrub_s / 2
        if self._scrub_by is None or deadline < self._scrub_by:
            self._scrub_by = deadline

    def _truncate_wal(self) -> bool:
        """Copy the WAL into the database and truncate it (old page images, with deleted
        rows, go); False if a reader kept it from completing."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("cannot truncate the gallery WAL: %s", exc)
            return False
        return not busy

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
                    embedder_id: str | None = None,
                    graph: Callable[[], bytes] | None = None) -> None:
        """Install a full snapshot atomically (old content served until it is complete).

        ``changes`` are the snapshot's entries (normally upserts; a delete removes an
        earlier entry of the same stream); their ``seq`` fields are not checked. The
        gallery then stands at ``epoch``/``last_seq``. Within the same epoch a snapshot
        may not go back (ChangeOrderError). One SQLite transaction: a crash or an invalid
        entry leaves the old gallery as it was.

        ``graph``, called once ``changes`` is exhausted, gives the district's index graph
        of the snapshot (sync/snapgraph.py, b"" for none): loaded with the store's own
        vectors and labels instead of building the index, if it fits and passes the
        structural check; otherwise (logged) the index is built as without it.
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
            mapping = Mapping()
            index = HnswIndex.create(self._dim, self._settings)
            next_label = self._next_label
            generation = self._generation + 1
            t0, count = time.monotonic(), 0
            try:
                c.execute("BEGIN IMMEDIATE")
                for table in ("embeddings", "citizens", "dossiers", "removed_labels"):
                    c.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
                written: set[tuple[str, str]] = set()  # see db.write_fresh
                # with a graph the vectors wait (in label order from first_label) until
                # it is loaded; a chunk that needs the general path ends the wait
                first_label = next_label
                deferred: list[npt.NDArray[np.float32]] | None = [] if graph else None
                for chunk in _chunks(changes, SNAPSHOT_CHUNK):
                    prepared = prepare_many(chunk, self._dim, self._settings)
                    fresh = db.write_fresh(c, self._dim, prepared, next_label, written)
                    if fresh is None:  # a delete or a repeated id: the general path
                        if deferred is not None:
                            upkeep.add_in_chunks(index, deferred, first_label,
                                                 SNAPSHOT_CHUNK, self._settings)
                            deferred = None
                        fresh = db.write_changes(c, self._dim, prepared, mapping, next_label)
                        written |= db.written_keys(prepared)
                    staged, next_label = fresh
                    if deferred is not None:
                        if staged.added:
                            deferred.append(np.stack(list(staged.added.values())))
                        for cid, labels in staged.overlay.items():
                            mapping.set(cid, labels)
                    else:
                        upkeep.apply_staged(index, mapping, staged, self._settings)
                    count += len(chunk)
                    log.info("snapshot: %d entries (%.0f/s)", count,
                             count / max(time.monotonic() - t0, 1e-9))
                if deferred is not None:
                    assert graph is not None
                    unit = (np.concatenate(deferred) if deferred
                            else np.empty((0, self._dim), dtype=np.float32))
                    deferred = None  # one copy of the vectors from here on
                    loaded = self._graph_index(graph(), unit, first_label, generation)
                    if loaded is None:
                        upkeep.add_in_chunks(index, [unit], first_label, SNAPSHOT_CHUNK,
                                             self._settings)
                    else:
                        index = loaded
                    del unit
                db.set_meta(c, epoch=epoch, last_seq=last_seq, next_label=next_label,
                               generation=generation, last_delete_seq=last_seq)
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise db.sql_error(exc, "snapshot refused") from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            with self._rw.write():
                self._index, self._mapping = index, mapping
                self._untried = None
                self._epoch, self._last_seq = epoch, last_seq
                self._next_label, self._generation = next_label, generation
                self._last_delete_seq = last_seq
                self._broken = None
            self._since_checkpoint = self._checkpoint_due()  # none usable yet
            # citizens left out of the snapshot are deleted: same bound as a deletion
            self._deleted_something()
            self._auto_checkpoint()
            self._start_quiet_checkpoint()

    def _graph_index(self, payload: bytes, unit: npt.NDArray[np.float32],
                     first_label: int, generation: int) -> HnswIndex | None:
        """The index of the district's graph ``payload`` with the store's ``unit`` vectors
        (labels from ``first_label``), or None (logged) if it does not fit or fails the
        structural check: the caller builds the index itself."""
        if not payload or not len(unit):
            return None
        s = self._settings
        tmp = self._ckpt_dir / f"snapshot-graph-g{generation}.tmp"  # stray: removed on open
        try:
            n, m, efc = snapgraph.params(payload, self._dim)
            if (m, efc) != (s.M, s.ef_construction):
                log.warning("snapshot index graph of M=%d ef_construction=%d, the store's "
                            "are %d/%d: building the index instead", m, efc, s.M,
                            s.ef_construction)
                return None
            capacity = max(s.initial_capacity, math.ceil(n * s.growth_factor))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, db.FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                snapgraph.assemble(payload, unit, first_label, capacity, fh)
            index = HnswIndex.load_verified(tmp, self._dim, s)  # graphcheck first
        except (MessageRejected, StoreError, OSError) as exc:
            log.warning("snapshot index graph not used (%s): building the index instead", exc)
            return None
        finally:
            tmp.unlink(missing_ok=True)
        log.info("snapshot index graph loaded: %d vectors", index.live)
        return index

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

    def _checkpoint_save(self, *, force: bool = False) -> PendingCheckpoint | None:
        """Phase 1, under the apply lock: save the index to a temp file.

        No writer can run meanwhile; searches may (saving only reads the index).
        """
        self._scrub_pending()  # no checkpoint may hold a deleted citizen's vector
        idx = self._index
        assert idx is not None
        newest = self._conn.execute(
            "SELECT seq FROM checkpoints WHERE generation = ? ORDER BY seq DESC LIMIT 1",
            (self._generation,),
        ).fetchone()
        if (newest is not None and newest[0] == self._last_seq and not force
                and self._scrub_by is None):
            self._since_checkpoint = 0
            return None
        pending = checkpoints.save_temp(idx, self._ckpt_dir, self._generation, self._last_seq,
                                        self._since_checkpoint)
        self._since_checkpoint = 0
        return pending

    def _checkpoint_finish(self, p: PendingCheckpoint) -> None:
        """Phases 2 and 3: fsync, hash and rename (no lock), then record (apply lock)."""
        try:
            sha, size = checkpoints.publish(p, self._ckpt_dir)
        except StoreError:
            self._checkpoint_failed(p)
            raise
        with self._apply_lock:
            if self._closed:
                return  # abandoned meanwhile; the unrecorded file is removed on open
            c = self._conn
            try:
                checkpoints.record(c, p, self._ckpt_dir, sha, size)
            except StoreError:
                self._checkpoint_failed(p)
                raise
            log.info("index checkpoint %s written in %.2f s", p.name,
                     time.monotonic() - p.started)
            if p.generation == self._generation:
                self._ckpt_urgent = False
            checkpoints.prune(c, self._ckpt_dir, p.name, generation=self._generation,
                              last_delete_seq=self._last_delete_seq,
                              keep=self._settings.keep_checkpoints)
            # keep the WAL small (and free of old page images) now that we are at rest
            wal_clean = self._truncate_wal()
            if (wal_clean and p.generation == self._generation
                    and p.seq >= self._last_delete_seq):
                self._scrub_by = None  # older files pruned: no deleted vector left

    def _checkpoint_failed(self, p: PendingCheckpoint) -> None:
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
        if self._untried is not None:
            return self._first_search(queries, k)
        with self._rw.read():
            scores = search.citizen_scores(self._require_index(), self._mapping, queries, k)
        return search.ranked(scores, k)

    def _first_search(self, queries: npt.NDArray[np.float32], k: int) -> list[Match]:
        """The first search on an index loaded from a checkpoint, with the crash-loop
        marker on disk (see _load_index)."""
        with self._trial_lock:
            name = self._untried
            if name is not None:
                checkpoints.mark_trial(self._path, name)
            with self._rw.read():
                scores = search.citizen_scores(self._require_index(), self._mapping,
                                               queries, k)
            if name is not None:
                checkpoints.clear_trial(self._path)
                self._untried = None
        return search.ranked(scores, k)

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self._require_open()
        with self._reader_lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                if self._reader.in_transaction:
                    self._reader.execute("ROLLBACK")
                raise db.sql_error(exc, "gallery read failed") from None

    def citizen(self, citizen_id: str) -> CitizenRecord | None:
        """The citizen's record, or None if unknown (e.g. deleted since the search)."""
        with self._read() as r:
            row = r.execute(
                "SELECT c.masked_name, c.pin_hash, c.pin_salt, "
                "(SELECT count(*) FROM embeddings e WHERE e.citizen_id = c.citizen_id), "
                "c.dob_hash, c.dob_salt, c.dob_id4 "
                "FROM citizens c WHERE c.citizen_id = ?", (citizen_id,)
            ).fetchone()
        if row is None:
            return None
        return CitizenRecord(citizen_id, row[0], bytes(row[1]), bytes(row[2]), int(row[3]),
                             dob_hash=bytes(row[4] or b""), dob_salt=bytes(row[5] or b""),
                             dob_id4=bool(row[6]))

    def dossiers(self, citizen_id: str) -> list[Dossier]:
        """The citizen's dossiers, oldest received first."""
        with self._read() as r:
            rows = r.execute(
                "SELECT code, citizen_id, procedure, status, stage, received_on, "
                "appointment_on, counter FROM dossiers WHERE citizen_id = ? "
                "ORDER BY received_on, code", (citizen_id,)
            ).fetchall()
        return [db.dossier_from_row(row) for row in rows]

    def content_hash(self) -> str:
        """Canonical sha256 of the gallery content (layout in docs/store.md)."""
        with self._read() as r:
            return hash_db(r, self._dim)

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
            upkeep.verify(index, mapping, rows, self._dim)

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


def _chunks(items: Iterable[Change], size: int) -> Iterator[list[Change]]:
    chunk: list[Change] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
