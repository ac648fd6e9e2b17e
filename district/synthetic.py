"""Made-up districts and citizens for tests and benchmarks: random unit embeddings,
random PIN hashes, one dossier each. Nothing here is a real person."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from district.log import DistrictLog
from sync.changes import Dossier, DossierStatus

EMBEDDER = "test-embedder-v1"
DISTRICT = "q1"


def unit(rng: np.random.Generator, k: int, dim: int) -> np.ndarray:  # type: ignore[type-arg]
    v = rng.standard_normal((k, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_citizens(
    dlog: DistrictLog, n: int, *, start: int = 0, seed: int = 0, dossiers: bool = True
) -> list[str]:
    """Enrol ``n`` synthetic citizens (one dossier each) in one transaction."""
    rng = np.random.default_rng(seed + start)
    ids = []
    with dlog.transaction():
        for i in range(start, start + n):
            cid = f"c{i:07d}"
            dlog.upsert_citizen(
                cid,
                masked_name=f"Nguyễn V. A*** {i}",
                embeddings=unit(rng, 1, dlog.dim),
                pin_hash=rng.bytes(32),
                pin_salt=rng.bytes(16),
            )
            if dossiers:
                dlog.upsert_dossier(
                    Dossier(
                        code=f"HS-{i:07d}",
                        citizen_id=cid,
                        procedure="Cấp giấy chứng nhận quyền sử dụng đất",
                        status=DossierStatus.RECEIVED,
                        stage="Bộ phận một cửa",
                        received_on="2026-11-02",
                    )
                )
            ids.append(cid)
    return ids


def new_district(
    path: Path, *, dim: int = 64, district: str = DISTRICT, embedder: str = EMBEDDER
) -> DistrictLog:
    return DistrictLog.create(path, district_id=district, embedder_id=embedder, dim=dim)


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
