"""An in-memory stand-in for edge.store.GalleryStore, for sync unit tests only.

It keeps the store's contract (ordered apply, atomic replace_all, epoch adoption by an
empty gallery, brute-force search) so the protocol logic can be unit-tested without
SQLite/hnswlib; the broker tests use the real GalleryStore.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ChangeOrderError, EmbedderMismatchError, StoreError
from sync.changes import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierUpsert,
)


@dataclass(frozen=True)
class Match:
    citizen_id: str
    score: float


class MemoryStore:
    def __init__(self, *, embedder_id: str, dim: int) -> None:
        self.embedder_id = embedder_id
        self.dim = dim
        self.last_seq = 0
        self.epoch = 0
        self.citizens: dict[str, CitizenUpsert] = {}
        self.dossier_map: dict[str, Dossier] = {}
        self.apply_calls = 0

    @property
    def citizen_count(self) -> int:
        return len(self.citizens)

    def _run(self, changes: Iterable[Change], citizens: dict, dossiers: dict) -> None:  # type: ignore[type-arg]
        for ch in changes:
            if isinstance(ch, CitizenUpsert):
                if ch.embeddings.shape[1:] != (self.dim,):
                    raise StoreError("bad embedding shape")
                citizens[ch.citizen_id] = ch
            elif isinstance(ch, CitizenDelete):
                citizens.pop(ch.citizen_id, None)
                for code in [c for c, d in dossiers.items() if d.citizen_id == ch.citizen_id]:
                    del dossiers[code]
            elif isinstance(ch, DossierUpsert):
                dossiers[ch.dossier.code] = ch.dossier
            elif isinstance(ch, DossierDelete):
                dossiers.pop(ch.code, None)

    def apply(
        self, changes: Sequence[Change], *, epoch: int, embedder_id: str | None = None
    ) -> None:
        if embedder_id is not None and embedder_id != self.embedder_id:
            raise EmbedderMismatchError("embedder")
        fresh = self.last_seq == 0 and self.epoch == 0
        if epoch != self.epoch and not fresh:
            raise ChangeOrderError("epoch")
        for i, ch in enumerate(changes):
            if ch.seq != self.last_seq + 1 + i:
                raise ChangeOrderError(f"seq {ch.seq}")
        citizens, dossiers = dict(self.citizens), dict(self.dossier_map)
        self._run(changes, citizens, dossiers)
        self.citizens, self.dossier_map = citizens, dossiers
        self.epoch, self.last_seq = epoch, changes[-1].seq
        self.apply_calls += 1

    def replace_all(
        self,
        changes: Iterable[Change],
        *,
        epoch: int,
        last_seq: int,
        embedder_id: str | None = None,
        graph: object = None,  # the district's index graph: no index here
    ) -> None:
        citizens: dict[str, CitizenUpsert] = {}
        dossiers: dict[str, Dossier] = {}
        self._run(changes, citizens, dossiers)
        self.citizens, self.dossier_map = citizens, dossiers
        self.epoch, self.last_seq = epoch, last_seq

    def search(self, embedding: np.ndarray, k: int = 2) -> list[Match]:  # type: ignore[type-arg]
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        scores = [Match(cid, float((c.embeddings @ q).max())) for cid, c in self.citizens.items()]
        return sorted(scores, key=lambda m: -m.score)[:k]

    def content_hash(self) -> str:
        h = hashlib.sha256(f"{self.embedder_id}|{self.epoch}|{self.last_seq}".encode())
        for cid in sorted(self.citizens):
            c = self.citizens[cid]
            h.update(cid.encode() + c.masked_name.encode() + c.pin_hash + c.pin_salt)
            h.update(np.ascontiguousarray(c.embeddings, dtype="<f4").tobytes())
        for code in sorted(self.dossier_map):
            h.update(repr(self.dossier_map[code]).encode())
        return h.hexdigest()
