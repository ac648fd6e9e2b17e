"""Child of tests/test_snapshot_graph.py's power-cut test: a store holding gallery A
installs snapshot B (with the district's index graph) and is SIGKILLed meanwhile.

Run as ``python snapshot_kill_child.py DIR``: prints ``installing`` just before
``replace_all`` and ``installed`` after it returned, flushing each line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_helpers import DIM, dossier, open_store, upsert  # noqa: E402

from district.snapshots import build_graph  # noqa: E402
from edge.store import Change, GalleryStore  # noqa: E402
from sync.changes import CitizenUpsert  # noqa: E402

#: gallery A: a small epoch-1 gallery; snapshot B: epoch 2, big enough that the install
#: takes a while (the kill must be able to land inside it)
A_CITIZENS = 40
B_CITIZENS = 2500
B_LAST_SEQ = 9000


def gallery_a(store: GalleryStore) -> None:
    store.apply([upsert(i + 1, i) for i in range(A_CITIZENS)], epoch=1)


def snapshot_b() -> list[Change]:
    changes: list[Change] = [upsert(0, 1000 + i, most=2) for i in range(B_CITIZENS)]
    changes += [dossier(0, f"HS-{i}", 1000 + i) for i in range(0, B_CITIZENS, 10)]
    return changes


def graph_b(changes: list[Change]) -> bytes:
    return build_graph([c.embeddings for c in changes if isinstance(c, CitizenUpsert)], DIM)


def main(directory: Path) -> None:
    changes = snapshot_b()
    graph = graph_b(changes)
    store = open_store(directory)
    if store.last_seq == 0:
        gallery_a(store)
        store.checkpoint()
    print("installing", flush=True)
    store.replace_all(changes, epoch=2, last_seq=B_LAST_SEQ, graph=lambda: graph)
    print("installed", flush=True)
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
