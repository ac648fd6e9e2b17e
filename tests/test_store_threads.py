"""Searches from several threads while the sync applies batches (with resizes, a
rebuild and a snapshot in between): no crash, and never a result mixing two states.

Citizens come in pairs (2i, 2i+1) and identity i always lives in exactly one of them;
every batch moves several identities to the other member of their pair (a delete and
an upsert in one batch). A search for identity i therefore must find exactly one member
of pair i: none would be a batch half applied (deleted, not yet added), both would be a
label map out of step with the index.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

from store_helpers import FACES, open_store

from edge.store import CitizenDelete, CitizenUpsert, GalleryStore

PAIRS = 300


def _member(i: int, side: int) -> str:
    return f"p{i:04d}-{side}"


def _upsert(seq: int, i: int, side: int) -> CitizenUpsert:
    return CitizenUpsert(seq, _member(i, side), "L. ***", b"", b"", FACES.enrolled(i, 2))


def test_searches_during_applies_never_see_mixed_states(tmp_path: Path) -> None:
    store = open_store(tmp_path, initial_capacity=64, rebuild_min_slots=100,
                       rebuild_deleted_share=0.15, checkpoint_every=400)
    side = [0] * PAIRS
    store.apply([_upsert(i + 1, i, 0) for i in range(PAIRS)], epoch=1)
    stop = threading.Event()
    errors: list[str] = []
    counts = [0] * 4

    def searcher(n: int) -> None:
        rng = random.Random(n)
        try:
            while not stop.is_set():
                i = rng.randrange(PAIRS)
                res = store.search(FACES.query(i, rng.randrange(3)), k=3)
                found = [m for m in res if m.citizen_id.startswith(f"p{i:04d}-")]
                if len(found) != 1 or res[0].citizen_id != found[0].citizen_id:
                    errors.append(f"identity {i}: {res}")
                # readers of the records run concurrently too (None if moved meanwhile)
                store.citizen(res[0].citizen_id)
                store.dossiers(res[0].citizen_id)
                counts[n] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"searcher {n}: {exc!r}")

    threads = [threading.Thread(target=searcher, args=(n,), name=f"searcher-{n}")
               for n in range(4)]
    for t in threads:
        t.start()
    rng = random.Random(1)
    try:
        for b in range(120):
            seq = store.last_seq
            moved = rng.sample(range(PAIRS), 12)
            changes: list[CitizenDelete | CitizenUpsert] = []
            for i in moved:
                changes.append(CitizenDelete(seq + 1 + len(changes), _member(i, side[i])))
                side[i] ^= 1
                changes.append(_upsert(seq + 1 + len(changes), i, side[i]))
            if b == 60:  # a snapshot swapped in under running searches
                snap = [_upsert(0, i, side[i]) for i in range(PAIRS)]
                store.replace_all(snap, epoch=1, last_seq=seq + len(changes))
            elif b == 90:  # and a rebuild
                store.apply(changes, epoch=1)
                store.rebuild()
            else:
                store.apply(changes, epoch=1)
            if b % 40 == 0:
                store.content_hash()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert min(counts) > 10, counts  # the searchers really ran alongside
    store.verify_index()
    assert store.citizen_count == PAIRS
    store.close()
    with GalleryStore.open(tmp_path, embedder_id=store.embedder_id, dim=store.dim) as again:
        again.verify_index()
