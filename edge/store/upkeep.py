"""Keeping the derived index equal to SQLite: applying a batch's index side, the replay
of a loaded checkpoint, the rebuild from SQLite, and the check that they agree.

All of it runs under the store's writer lock (or on an index not yet swapped in).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time

import numpy as np
import numpy.typing as npt

from core.errors import StoreError
from edge.config import StoreSettings
from edge.store.db import Mapping, Staged, rows_to_unit, vectors_for
from edge.store.index import HnswIndex

log = logging.getLogger("motcua.store")

#: rows fetched at a time when rebuilding the index from SQLite
REBUILD_CHUNK = 5000
#: batches adding at least this many vectors use settings.build_threads for the index
#: adds (the write lock is held meanwhile, so more threads = a shorter search stall)
PARALLEL_ADD_MIN = 32


def apply_staged(index: HnswIndex, mapping: Mapping, st: Staged, settings: StoreSettings
                 ) -> None:
    """Bring ``index`` and ``mapping`` past a run of changes already in SQLite."""
    apply_visible(index, mapping, st, settings)
    scrub_removed(index, st)


def apply_visible(index: HnswIndex, mapping: Mapping, st: Staged, settings: StoreSettings
                  ) -> None:
    """What searches see of a run of changes: removed labels marked deleted (cheap: a
    flag), new vectors added, the label mapping updated. The vectors of deleted citizens
    are still in memory afterwards: :func:`scrub_removed` overwrites them."""
    index.hide(st.hide)
    index.hide(st.scrub)  # unmatchable from here on; the vectors go in scrub_removed
    threads = settings.build_threads if len(st.added) >= PARALLEL_ADD_MIN else 1
    if st.added:
        new = np.fromiter(st.added.keys(), dtype=np.int64, count=len(st.added))
        index.add(new, np.stack(list(st.added.values())), threads=threads)
    for cid, labels in st.overlay.items():
        mapping.set(cid, labels)


def scrub_removed(index: HnswIndex, st: Staged) -> None:
    """Overwrite with zeros the vectors of the deleted citizens of a run already applied
    by :func:`apply_visible` (their labels are marked deleted). This is the slow part of
    a deletion: hnswlib's in-place update re-links the neighbours of each such vector
    (~0.1 s per vector at 10,000 x 512-d, M=32, on this 2-core machine, more under load),
    so the store runs it after the deletion is visible, under its writer lock: no
    checkpoint can be saved before it is done."""
    index.scrub_hidden([*st.scrub, *st.scrub_hidden])


def add_in_chunks(index: HnswIndex, vectors: list[npt.NDArray[np.float32]], first_label: int,
                  chunk: int, settings: StoreSettings) -> None:
    """Add ``vectors`` (consecutive row blocks) under labels ``first_label``, +1, ...,
    ``chunk`` rows per ``add`` call with ``settings.build_threads``."""
    if not vectors:
        return
    unit = np.concatenate(vectors)
    for start in range(0, len(unit), chunk):
        part = unit[start:start + chunk]
        labels = np.arange(first_label + start, first_label + start + len(part),
                           dtype=np.int64)
        index.add(labels, part, threads=settings.build_threads)


def reconcile(index: HnswIndex, conn: sqlite3.Connection, mapping: Mapping, dim: int,
              settings: StoreSettings) -> None:
    """Bring a loaded checkpoint up to SQLite: the replay of the changes after it.

    Labels are never reused, so the difference of label sets is exactly the changes
    since the checkpoint: labels SQLite no longer has are deleted (scrubbed), labels
    the checkpoint lacks are added from their stored vectors.
    """
    in_index = set(index.all_labels())
    in_sql = set(mapping.label_citizen)
    removed = {int(label): bool(scrubbed) for label, scrubbed in conn.execute(
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
        labels, vecs = vectors_for(conn, part, dim)
        index.add(labels, vecs, threads=settings.build_threads)
    if index.live != len(in_sql):
        raise StoreError(f"index holds {index.live} live vectors after replay, "
                         f"SQLite {len(in_sql)}")


def rebuild_from_sql(conn: sqlite3.Connection, total: int, dim: int, settings: StoreSettings
                     ) -> HnswIndex:
    """A new index of SQLite's ``total`` embeddings (logged with progress)."""
    capacity = math.ceil(total * settings.growth_factor)
    index = HnswIndex.create(dim, settings, capacity)
    log.info("building the gallery index from SQLite (%d vectors)", total)
    cur = conn.execute("SELECT label, vector FROM embeddings ORDER BY label")
    done, t0 = 0, time.monotonic()
    while rows := cur.fetchmany(REBUILD_CHUNK):
        labels, vecs = rows_to_unit(rows, dim)
        index.add(labels, vecs, threads=settings.build_threads)
        done += len(rows)
        log.info("index rebuild: %d/%d vectors (%.0f/s)", done, total,
                 done / max(time.monotonic() - t0, 1e-9))
    return index


def label_is_live(index: HnswIndex, label: int) -> bool:
    """Whether the index still serves ``label``."""
    try:
        index.get([label])
    except StoreError:
        return False
    return True


def verify(index: HnswIndex, mapping: Mapping, rows: list[tuple[int, str, bytes]], dim: int
           ) -> None:
    """Check that ``index`` and ``mapping`` hold exactly SQLite's embedding ``rows``
    ``(label, citizen_id, vector)``; StoreError if not."""
    sql = {int(label): cid for label, cid, _ in rows}
    if sql != mapping.label_citizen:
        raise StoreError("label map differs from SQLite's embeddings")
    if index.live != len(sql):
        raise StoreError(f"index has {index.live} live vectors, SQLite {len(sql)}")
    if rows:
        labels, want = rows_to_unit([(r_[0], r_[2]) for r_ in rows], dim)
        got = index.get(labels.tolist())
        if not np.allclose(got, want, atol=1e-5):
            raise StoreError("index vectors differ from SQLite's")
    for label in set(index.all_labels()) - set(sql):
        if label_is_live(index, label):
            raise StoreError(f"index still serves removed label {label}")
