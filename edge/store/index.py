"""The derived HNSW index (hnswlib, inner product over unit vectors = cosine).

A thin wrapper that keeps the slot bookkeeping (live, deleted, capacity), grows by a
factor, makes deletion really remove the vector, and converts hnswlib's RuntimeErrors
into StoreError. It is not thread-safe: the gallery store serialises writers and guards
searches with its readers-writer lock.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from core.errors import StoreError
from edge.config import StoreSettings
from edge.store.graphcheck import check_index_file

#: hnswlib space: the store normalises every vector itself, so inner product == cosine
SPACE = "ip"


class HnswIndex:
    """hnswlib index with ``allow_replace_deleted``; labels are the store's int64 labels."""

    def __init__(self, raw: hnswlib.Index, dim: int, settings: StoreSettings, live: int) -> None:
        self._raw = raw
        self.dim = dim
        self.settings = settings
        #: labels present and not deleted
        self.live = live

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, dim: int, settings: StoreSettings, capacity: int = 0) -> HnswIndex:
        raw = hnswlib.Index(space=SPACE, dim=dim)
        try:
            raw.init_index(
                max_elements=max(capacity, settings.initial_capacity),
                M=settings.M,
                ef_construction=settings.ef_construction,
                random_seed=100,
                allow_replace_deleted=True,
            )
        except (RuntimeError, MemoryError) as exc:
            raise StoreError(f"cannot create the gallery index: {exc}") from None
        raw.set_ef(settings.ef)
        return cls(raw, dim, settings, live=0)

    @classmethod
    def load_verified(cls, path: Path, dim: int, settings: StoreSettings) -> HnswIndex:
        """Load a checkpoint file whose sha256 the caller has already checked.

        The graph is checked structurally first (edge/store/graphcheck.py): hnswlib's
        ``load_index`` trusts its file, and a bad link segfaults the first search."""
        check_index_file(path, dim, capacity_floor=settings.initial_capacity,
                         growth=settings.growth_factor)
        raw = hnswlib.Index(space=SPACE, dim=dim)
        try:
            raw.load_index(str(path), allow_replace_deleted=True)
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise StoreError(f"cannot load index checkpoint {path.name}: {exc}") from None
        raw.set_ef(settings.ef)  # load_index resets ef to 10
        idx = cls(raw, dim, settings, live=0)
        idx.live = raw.element_count  # caller reconciles and fixes this
        return idx

    # ------------------------------------------------------------------ figures
    @property
    def slots(self) -> int:
        """Used slots, live plus deleted-not-yet-reused."""
        return int(self._raw.element_count)

    @property
    def capacity(self) -> int:
        return int(self._raw.max_elements)

    @property
    def deleted(self) -> int:
        return self.slots - self.live

    def is_live(self, label: int) -> bool:
        try:
            self._raw.get_items([label])
        except RuntimeError:
            return False  # unknown, or marked deleted
        return True

    def needs_rebuild(self) -> bool:
        s = self.settings
        return self.slots >= s.rebuild_min_slots and self.deleted > s.rebuild_deleted_share * (
            self.slots
        )

    def file_size(self) -> int:
        return int(self._raw.index_file_size())

    # ------------------------------------------------------------------ writes
    def _reserve(self, new_items: int) -> None:
        reusable = self.deleted if self.settings.reuse_deleted_slots else 0
        needed = self.slots + max(0, new_items - reusable)
        if needed <= self.capacity:
            return
        target = max(needed, math.ceil(self.capacity * self.settings.growth_factor))
        try:
            self._raw.resize_index(target)
        except (RuntimeError, MemoryError) as exc:
            raise StoreError(f"cannot grow the gallery index to {target}: {exc}") from None

    def add(self, labels: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32],
            threads: int = 1) -> None:
        """Add unit vectors under new labels (into deleted slots if the settings say so)."""
        if len(labels) == 0:
            return
        self._reserve(len(labels))
        try:
            self._raw.add_items(vectors, labels, num_threads=threads,
                                replace_deleted=self.settings.reuse_deleted_slots)
        except (RuntimeError, MemoryError) as exc:
            raise StoreError(f"cannot add to the gallery index: {exc}") from None
        self.live += len(labels)

    def hide(self, labels: list[int]) -> None:
        """Mark live labels deleted; their vectors stay in the slot until a rebuild."""
        try:
            for label in labels:
                self._raw.mark_deleted(label)
                self.live -= 1
        except RuntimeError as exc:
            raise StoreError(f"cannot delete label {label} from the gallery index: {exc}") from None

    def scrub(self, labels: list[int]) -> None:
        """Delete live labels so that their vectors are gone, not just hidden.

        ``mark_deleted`` alone keeps the vector in memory and in every later checkpoint,
        so each vector is first overwritten with zeros (an update in place), then marked.
        """
        zero = np.zeros((1, self.dim), dtype=np.float32)
        try:
            for label in labels:
                self._raw.add_items(zero, [label], num_threads=1)
                self._raw.mark_deleted(label)
                self.live -= 1
        except RuntimeError as exc:
            raise StoreError(f"cannot delete label {label} from the gallery index: {exc}") from None

    def scrub_hidden(self, labels: list[int]) -> None:
        """Overwrite with zeros the vectors of labels already marked deleted.

        A label whose slot was reused or rebuilt away is no longer there: nothing to do.
        """
        zero = np.zeros((1, self.dim), dtype=np.float32)
        for label in labels:
            try:
                self._raw.unmark_deleted(label)
            except RuntimeError:
                continue  # unknown: slot reused, or never in this index
            try:
                if np.any(self._raw.get_items([label], return_type="numpy")):
                    self._raw.add_items(zero, [label], num_threads=1)
            finally:
                self._raw.mark_deleted(label)

    def set_ef(self, ef: int) -> None:
        self.settings = dataclasses.replace(self.settings, ef=ef)
        self._raw.set_ef(ef)

    # ------------------------------------------------------------------ reads
    def knn(self, queries: npt.NDArray[np.float32], k: int
            ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        try:
            labels, dists = self._raw.knn_query(queries, k=k, num_threads=1)
        except RuntimeError as exc:
            raise StoreError(f"index search failed: {exc}") from None
        return labels.astype(np.int64), dists

    def get(self, labels: list[int]) -> npt.NDArray[np.float32]:
        try:
            return np.asarray(self._raw.get_items(labels, return_type="numpy"),
                              dtype=np.float32)
        except RuntimeError as exc:
            raise StoreError(f"index read failed: {exc}") from None

    def all_labels(self) -> list[int]:
        """Every label the index knows, deleted ones included."""
        return [int(x) for x in self._raw.get_ids_list()]

    def save(self, path: Path) -> None:
        """Write the index to ``path`` (no fsync) and check the written size."""
        try:
            self._raw.save_index(str(path))
        except (RuntimeError, MemoryError) as exc:
            raise StoreError(f"cannot save index checkpoint: {exc}") from None
        # hnswlib writes with an unchecked std::ofstream: a full disk gives a short file
        size = os.path.getsize(path)
        if size != self.file_size():
            raise StoreError(
                f"index checkpoint short write ({size} of {self.file_size()} bytes): disk full?"
            )
