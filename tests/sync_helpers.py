"""Shared helpers for the sync tests and bench/sync.py: synthetic districts, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def reference_store(dlog: DistrictLog, store):  # type: ignore[no-untyped-def]
    """Fill ``store`` with the district's current state, as a snapshot would."""
    from proto import sync_pb2 as pb
    from sync.wire import change_from_pb

    with dlog.snapshot() as (last, _nc, _nd, rows):
        changes = [change_from_pb(pb.Change.FromString(b), dlog.dim) for b in rows]
    store.replace_all(changes, epoch=dlog.epoch, last_seq=last)
    return store


def craft_batch(
    key: Ed25519PrivateKey,
    changes: list,  # type: ignore[type-arg]
    *,
    district: str = DISTRICT,
    envelope_district: str | None = None,
    epoch: int = 1,
    embedder: str = EMBEDDER,
    dim: int = 64,
) -> bytes:
    """A signed batch message as a district would send (or a forger: any key/fields)."""
    from proto import sync_pb2 as pb
    from sync.wire import seal

    b = pb.Batch(
        district_id=district,
        epoch=epoch,
        first_seq=changes[0].seq,
        last_seq=changes[-1].seq,
        embedder_id=embedder,
        dim=dim,
        origin=pb.BATCH_ORIGIN_LIVE,
    )
    for c in changes:
        b.changes.append(c)
    return seal(key, envelope_district or district, pb.PAYLOAD_KIND_BATCH, b.SerializeToString())


def log_changes(dlog: DistrictLog, first: int, last: int) -> list:  # type: ignore[type-arg]
    from proto import sync_pb2 as pb

    return [pb.Change.FromString(b) for b in dlog.changes(first, last)]
