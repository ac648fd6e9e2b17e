"""Deterministic change log for the crash test, and the child process that applies it.

The batch starting at change number ``s`` is a pure function of (seed, s), so a child
that restarts after SIGKILL continues the very same log from the store's last_seq, and
the parent can compute the expected gallery at any change number with :class:`Model`.

Run as a child: ``python store_crash_child.py DIR SEED``; prints ``ready`` once the
store is open, then ``ack N`` after each batch whose apply() returned (N = its last
change number), flushing every line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import StoreSettings  # noqa: E402
from edge.store import (  # noqa: E402
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
    GalleryStore,
    gallery_hash,
)
from edge.store.synthetic import ClusteredFaces  # noqa: E402

DIM = 512
EMBEDDER = "crash-embedder"
EPOCH = 1
#: citizen ids drawn from this many: small, so upserts often replace and deletes hit
CITIZENS = 150
FACES = ClusteredFaces(DIM, seed=11)
#: small checkpoint period and capacity so kills land in checkpoints, resizes, rebuilds
SETTINGS = StoreSettings(checkpoint_every=15, initial_capacity=32, rebuild_min_slots=40,
                         rebuild_deleted_share=0.2)
STATUSES = list(DossierStatus)


def batch_at(seed: int, start: int) -> tuple[list[Change], bool]:
    """(changes starting at ``start``, whether to install them via a snapshot)."""
    rng = np.random.default_rng([seed, start])
    n = int(rng.integers(1, 9))
    changes: list[Change] = []
    for j in range(n):
        seq = start + j
        r = rng.random()
        c = int(rng.integers(CITIZENS))
        if r < 0.55:
            k = int(rng.integers(1, 4))
            emb = FACES.samples(c, range(seq * 4, seq * 4 + k))
            changes.append(CitizenUpsert(seq, f"c{c:04d}", f"N. {seq}***",
                                         f"h{seq}".encode(), b"salt", emb))
        elif r < 0.7:
            changes.append(CitizenDelete(seq, f"c{c:04d}"))
        elif r < 0.9:
            changes.append(DossierUpsert(seq, Dossier(
                code=f"HS-{int(rng.integers(60)):03d}", citizen_id=f"c{c:04d}",
                procedure="Đăng ký khai sinh", status=STATUSES[int(rng.integers(6))],
                stage="Tư pháp", received_on="2026-10-01", appointment_on="")))
        else:
            changes.append(DossierDelete(seq, f"HS-{int(rng.integers(60)):03d}"))
    return changes, bool(rng.random() < 0.06)


class Model:
    """The expected gallery, advanced batch by batch along the same boundaries."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.last_seq = 0
        self.citizens: dict[str, CitizenUpsert] = {}
        self.dossiers: dict[str, Dossier] = {}

    def step(self) -> list[Change]:
        changes, _ = batch_at(self.seed, self.last_seq + 1)
        for ch in changes:
            if isinstance(ch, CitizenUpsert):
                self.citizens[ch.citizen_id] = ch
            elif isinstance(ch, CitizenDelete):
                self.citizens.pop(ch.citizen_id, None)
                for code in [k for k, d in self.dossiers.items()
                             if d.citizen_id == ch.citizen_id]:
                    del self.dossiers[code]
            elif isinstance(ch, DossierUpsert):
                self.dossiers[ch.dossier.code] = ch.dossier
            else:
                self.dossiers.pop(ch.code, None)
        self.last_seq = changes[-1].seq
        return changes

    def advance_to(self, seq: int) -> None:
        while self.last_seq < seq:
            self.step()
        if self.last_seq != seq:
            raise AssertionError(f"change {seq} is not a batch boundary: half a batch applied")

    def snapshot(self) -> list[Change]:
        return [*self.citizens.values(),
                *(DossierUpsert(0, d) for d in self.dossiers.values())]

    def hash(self) -> str:
        return gallery_hash(
            # a gallery that never got a batch is still at epoch 0
            embedder_id=EMBEDDER, epoch=EPOCH if self.last_seq else 0, last_seq=self.last_seq,
            citizens=[(c.citizen_id, c.masked_name, c.pin_hash, c.pin_salt, c.embeddings)
                      for c in self.citizens.values()],
            dossiers=list(self.dossiers.values()))


def main(directory: str, seed: int) -> None:
    store = GalleryStore.open(Path(directory), embedder_id=EMBEDDER, dim=DIM,
                              settings=SETTINGS)
    model = Model(seed)
    model.advance_to(store.last_seq)
    print("ready", flush=True)
    while True:
        start = store.last_seq + 1
        changes, via_snapshot = batch_at(seed, start)
        if via_snapshot:
            print("snapshot", flush=True)
            model.step()
            store.replace_all(model.snapshot(), epoch=EPOCH, last_seq=model.last_seq)
        else:
            store.apply(changes, epoch=EPOCH)
            model.step()
        print(f"ack {store.last_seq}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
