"""Shared helpers for the sync tests and bench/sync.py: synthetic districts, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from district.log import DistrictLog
from district.synthetic import (  # noqa: F401  (the tests import them from here)
    DISTRICT,
    EMBEDDER,
    add_citizens,
    new_district,
    new_key,
    unit,
)


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
