"""Shared builders for the gallery store tests (synthetic 512-d embeddings)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edge.config import StoreSettings
from edge.store import CitizenUpsert, Dossier, DossierStatus, DossierUpsert, GalleryStore
from edge.store.synthetic import ClusteredFaces

DIM = 512
EMBEDDER = "test-embedder-v1"
FACES = ClusteredFaces(DIM, seed=7)


def cid(i: int) -> str:
    return f"cit-{i:06d}"


def upsert(seq: int, i: int, most: int = 3, sample_base: int = 0) -> CitizenUpsert:
    n = FACES.enrolled_count(i, most)
    emb = FACES.samples(i, range(sample_base, sample_base + n))
    return CitizenUpsert(seq, cid(i), f"Nguyễn V. {i % 97}***", f"h{i}".encode(),
                         f"s{i}".encode(), emb)


def dossier(seq: int, code: str, i: int, status: DossierStatus = DossierStatus.PROCESSING
            ) -> DossierUpsert:
    return DossierUpsert(seq, Dossier(code=code, citizen_id=cid(i), procedure="Cấp đổi CCCD",
                                      status=status, stage="Phòng Tư pháp",
                                      received_on="2026-11-02", appointment_on="2026-11-20",
                                      counter="Quầy 3"))


def open_store(path: Path, **settings: object) -> GalleryStore:
    return GalleryStore.open(path, embedder_id=EMBEDDER, dim=DIM,
                             settings=StoreSettings(**settings))  # type: ignore[arg-type]


def fill(store: GalleryStore, n: int, *, batch: int = 100, epoch: int = 1, most: int = 3) -> None:
    """Apply citizens 0..n-1 in batches after the store's last change."""
    i = 0
    while i < n:
        seq = store.last_seq
        changes = [upsert(seq + 1 + j, i + j, most) for j in range(min(batch, n - i))]
        store.apply(changes, epoch=epoch)
        i += len(changes)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def files_holding(directory: Path, forms: list[bytes]) -> list[str]:
    """Names of the files under ``directory`` whose bytes contain any of ``forms`` (e.g.
    an embedding as it would sit in a file): where a deleted face may still be."""
    hits = []
    for f in directory.rglob("*"):
        if f.is_file():
            with contextlib.suppress(FileNotFoundError):  # a temp file renamed meanwhile
                blob = f.read_bytes()
                if any(form in blob for form in forms):
                    hits.append(f.name)
    return hits
