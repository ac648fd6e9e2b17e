"""Index checkpoint files: naming, writing (temp, size check, fsync, sha256, rename),
their records in SQLite, checking one before it is loaded, and pruning.

When a checkpoint is due and how its steps are spread over threads is the store's
policy (edge/store/gallery.py); see docs/store.md, "Checkpoints".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from core.errors import StoreError
from edge.store.db import FILE_MODE, fsync_dir, sql_error
from edge.store.index import HnswIndex

log = logging.getLogger("motcua.store")

CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class PendingCheckpoint:
    """A checkpoint saved to a temp file, not yet fsynced, hashed, renamed, recorded."""

    name: str
    tmp: Path
    generation: int
    seq: int
    slots: int
    since: int
    started: float


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def save_temp(idx: HnswIndex, ckpt_dir: Path, generation: int, seq: int, since: int
              ) -> PendingCheckpoint:
    """Save ``idx`` to a temp file in ``ckpt_dir`` (phase 1; the caller holds the
    writer lock so that no batch changes the index meanwhile)."""
    name = f"index-g{generation:06d}-s{seq:012d}.hnsw"
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}-{threading.get_ident()}"
    pending = PendingCheckpoint(name, tmp, generation, seq, idx.slots, since,
                                time.monotonic())
    try:
        idx.save(tmp)
        os.chmod(tmp, FILE_MODE)  # hnswlib's ofstream leaves it to the umask
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write index checkpoint: {exc.strerror or exc}") from None
    except StoreError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return pending


def publish(p: PendingCheckpoint, ckpt_dir: Path) -> tuple[str, int]:
    """fsync, hash and rename a saved temp file to its final name; (sha256, size).

    StoreError (the temp file removed) if any step fails."""
    final = ckpt_dir / p.name
    try:
        with open(p.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        sha = sha256_file(p.tmp)
        size = p.tmp.stat().st_size
        os.replace(p.tmp, final)
        fsync_dir(ckpt_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            p.tmp.unlink()
        raise StoreError(f"cannot write index checkpoint: {exc.strerror or exc}") from None
    return sha, size


def record(c: sqlite3.Connection, p: PendingCheckpoint, ckpt_dir: Path, sha: str, size: int
           ) -> None:
    """Record a published checkpoint; StoreError (and the file removed) if SQLite fails."""
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
            (ckpt_dir / p.name).unlink()
        raise sql_error(exc, "cannot record index checkpoint") from None


def records(c: sqlite3.Connection) -> list[tuple[str, int, int, str, int]]:
    """(name, generation, seq, sha256, size) of every recorded checkpoint, newest first."""
    return [tuple(r) for r in c.execute(  # type: ignore[misc]
        "SELECT name, generation, seq, sha256, size FROM checkpoints "
        "ORDER BY seq DESC, created DESC"
    ).fetchall()]


def unusable(path: Path, gen: int, seq: int, sha: str, size: int, *, generation: int,
             last_seq: int) -> str | None:
    """Why the recorded checkpoint at ``path`` must not be loaded, or None if usable."""
    if gen != generation:
        return f"generation {gen}, the gallery is at {generation}"
    if seq > last_seq:
        return f"covers change {seq}, beyond the gallery's {last_seq}"
    try:
        if path.stat().st_size != size:
            return f"size {path.stat().st_size}, recorded {size}"
        if sha256_file(path) != sha:
            return "sha256 does not match the recorded one"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return None


def prune(c: sqlite3.Connection, ckpt_dir: Path, newest: str, *, generation: int,
          last_delete_seq: int, keep: int) -> None:
    """Drop the records and files of checkpoints no longer kept: other generations, and
    those older than the last citizen deletion (except ``newest``), past ``keep``."""
    rows = c.execute(
        "SELECT name, generation, seq FROM checkpoints ORDER BY seq DESC, created DESC"
    ).fetchall()
    kept: list[str] = []
    for name, gen, seq in rows:
        usable = gen == generation and (name == newest or seq >= last_delete_seq)
        if usable and len(kept) < keep:
            kept.append(name)
    drop = [r[0] for r in rows if r[0] not in kept]
    if not drop:
        return
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
            (ckpt_dir / n).unlink()


def drop_stray_files(c: sqlite3.Connection, ckpt_dir: Path) -> None:
    """Remove temp files and checkpoint files that no record points to."""
    known = {r[0] for r in c.execute("SELECT name FROM checkpoints")}
    for entry in ckpt_dir.iterdir():
        if entry.name not in known:
            with contextlib.suppress(OSError):
                entry.unlink()


# ---------------------------------------------------------------------- crash-loop guard
#: present while an index loaded from a checkpoint is being replayed or serves its first
#: search; found at open = that start died there (a graph hnswlib crashes on that the
#: structural check missed): the store distrusts its checkpoints and rebuilds from SQLite
TRIAL_NAME = "index-trial"


def mark_trial(store_dir: Path, checkpoint: str) -> None:
    """Write (durably) the marker naming the checkpoint on trial."""
    path = store_dir / TRIAL_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            os.write(fd, checkpoint.encode("utf-8", "replace")[:200])
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(store_dir)
    except OSError as exc:
        # without the marker a crash loop is not detected; loading is still checked
        log.warning("cannot write %s: %s", path, exc.strerror or exc)


def trial_left(store_dir: Path) -> str | None:
    """The checkpoint named by a marker left by a start that died, or None."""
    try:
        return (store_dir / TRIAL_NAME).read_bytes()[:200].decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"(unreadable marker: {exc.strerror or exc})"


def clear_trial(store_dir: Path) -> None:
    """The index on trial survived: remove the marker."""
    with contextlib.suppress(FileNotFoundError):
        (store_dir / TRIAL_NAME).unlink()
