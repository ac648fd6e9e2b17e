"""The canonical content hash of a gallery, computable on both sides of the sync.

Two galleries with the same embedder id, epoch, last change number, citizens and
dossiers give the same hash, whatever order the changes came in. The byte layout is
documented in docs/store.md ("Content hash"); the district side can call
:func:`gallery_hash` with its own records instead of re-implementing it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from edge.store.db import dossier_from_row
from sync.changes import Dossier

#: first bytes hashed; bump the version if the layout changes
HASH_MAGIC = b"motcua-gallery-hash-v1\n"


def _field(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack(">I", len(raw)) + raw


def embedding_bytes(embeddings: npt.ArrayLike) -> tuple[int, int, bytes]:
    """(rows, dim, float32 little-endian row-major bytes) of an embedding matrix."""
    arr = np.ascontiguousarray(np.asarray(embeddings, dtype="<f4"))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    return arr.shape[0], arr.shape[1], arr.tobytes()


class ContentHasher:
    """Incremental hasher: citizens in id order, then dossiers in code order."""

    def __init__(self, *, embedder_id: str, epoch: int, last_seq: int) -> None:
        self._h = hashlib.sha256()
        self._h.update(HASH_MAGIC)
        self._h.update(_field(embedder_id))
        self._h.update(struct.pack(">QQ", epoch, last_seq))
        self._last_citizen: bytes | None = None
        self._last_code: bytes | None = None
        self._in_dossiers = False

    def add_citizen(
        self,
        citizen_id: str,
        masked_name: str,
        pin_hash: bytes,
        pin_salt: bytes,
        embeddings: npt.ArrayLike | bytes,
        dim: int | None = None,
    ) -> None:
        """Add one citizen; ``embeddings`` is an array (k, dim) or its float32 LE bytes."""
        if self._in_dossiers:
            raise ValueError("citizens must all come before dossiers")
        key = citizen_id.encode("utf-8")
        if self._last_citizen is not None and key <= self._last_citizen:
            raise ValueError("citizens must come in strictly increasing id order")
        self._last_citizen = key
        if isinstance(embeddings, bytes | bytearray | memoryview):
            if dim is None:
                raise ValueError("dim is needed with raw embedding bytes")
            raw = bytes(embeddings)
            rows = len(raw) // (4 * dim)
        else:
            rows, dim, raw = embedding_bytes(embeddings)
        h = self._h
        h.update(b"C")
        h.update(_field(key))
        h.update(_field(masked_name))
        h.update(_field(pin_hash))
        h.update(_field(pin_salt))
        h.update(struct.pack(">II", rows, dim))
        h.update(raw)

    def add_dossier(self, d: Dossier) -> None:
        """Add one dossier (after all citizens), in increasing code order."""
        if not self._in_dossiers:
            self._h.update(b"E")
            self._in_dossiers = True
        key = d.code.encode("utf-8")
        if self._last_code is not None and key <= self._last_code:
            raise ValueError("dossiers must come in strictly increasing code order")
        self._last_code = key
        h = self._h
        h.update(b"D")
        for value in (d.code, d.citizen_id, d.procedure, d.status.value, d.stage,
                      d.received_on, d.appointment_on, d.counter):
            h.update(_field(value))

    def hexdigest(self) -> str:
        h = self._h.copy()
        if not self._in_dossiers:
            h.update(b"E")
        h.update(b"Z")
        return h.hexdigest()


def gallery_hash(
    *,
    embedder_id: str,
    epoch: int,
    last_seq: int,
    citizens: Iterable[tuple[str, str, bytes, bytes, npt.ArrayLike]],
    dossiers: Iterable[Dossier],
) -> str:
    """Hash of a whole gallery given in any order.

    ``citizens`` yields ``(citizen_id, masked_name, pin_hash, pin_salt, embeddings)``
    with embeddings as sent (k rows, in the order of the upsert).
    """
    hasher = ContentHasher(embedder_id=embedder_id, epoch=epoch, last_seq=last_seq)
    for c in sorted(citizens, key=lambda c: c[0].encode("utf-8")):
        hasher.add_citizen(*c)
    for d in sorted(dossiers, key=lambda d: d.code.encode("utf-8")):
        hasher.add_dossier(d)
    return hasher.hexdigest()


def hash_db(r: sqlite3.Connection, dim: int) -> str:
    """:meth:`GalleryStore.content_hash` of the store's SQLite, read in one transaction
    on connection ``r`` (nobody else may use it meanwhile)."""
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
            hasher.add_citizen(cid, name, bytes(ph), bytes(ps), b"".join(parts), dim=dim)
        for row in r.execute(
            "SELECT code, citizen_id, procedure, status, stage, received_on, "
            "appointment_on, counter FROM dossiers ORDER BY code"
        ):
            hasher.add_dossier(dossier_from_row(row))
    finally:
        r.execute("COMMIT")
    return hasher.hexdigest()
