"""bench/recognition_multi.py scores a lookup as the terminal does: its gallery ranking
equals the real store's search (several embeddings per citizen, best per citizen, top k
distinct), and its frame averaging is the session's ``_mean_unit``. The figures of
record come from full LFW runs (docs/recognition.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from store_helpers import DIM, FACES, cid, fill, open_store

from edge.session.machine import _mean_unit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import recognition_multi as rm  # noqa: E402


def test_gallery_ranking_is_the_stores_and_frames_average_as_the_session(
        tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    try:
        fill(store, 40, most=4)  # 1-4 embeddings per citizen
        # what fill() enrolled: citizen i has FACES.samples(i, 0..n-1)
        vecs: dict[str, np.ndarray] = {}
        pool: dict[str, list[str]] = {}
        for i in range(40):
            n = FACES.enrolled_count(i, 4)
            pool[cid(i)] = [f"{cid(i)}/{j}" for j in range(n)]
            for j, v in enumerate(FACES.samples(i, range(n))):
                vecs[f"{cid(i)}/{j}"] = v
        citizens = sorted(pool)
        split = SimpleNamespace(citizens=citizens, distractors=[], enrol_pool=pool,
                                distractor_photo={})
        emb = SimpleNamespace(matrix=lambda ps: np.stack([vecs[p] for p in ps]))
        gallery = rm.Gallery(emb, split, 8)  # type: ignore[arg-type]
        assert gallery.entries == len(vecs) and gallery.entries > len(citizens)
        probes = np.stack([FACES.samples(i, [90])[0] for i in range(0, 40, 3)])
        frames = [np.stack([FACES.samples(i, [91 + f])[0] for f in range(3)])
                  for i in range(0, 40, 5)]
        averaged = np.stack([rm.mean_unit(f) for f in frames])
        for f, a in zip(frames, averaged, strict=True):
            assert np.allclose(a, _mean_unit(list(f)), atol=1e-6)
        queries = np.concatenate([probes, averaged]).astype(np.float32)
        for q, got in zip(queries, gallery.top(queries, 5), strict=True):
            want = store.search(q, 5)
            assert [m.citizen_id for m in got] == [m.citizen_id for m in want]
            assert np.allclose([m.score for m in got], [m.score for m in want], atol=1e-4)
    finally:
        store.close()
    assert queries.shape[1] == DIM
