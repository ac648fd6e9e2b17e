"""Search: the ``k`` best distinct citizens for one face or several frames of one.

Runs under the read side of the store's readers-writer lock (docs/store.md, "Search and
batches of one person").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from core.errors import StoreError
from edge.store.db import Mapping
from edge.store.index import HnswIndex


@dataclasses.dataclass(frozen=True)
class Match:
    """One search candidate: a citizen and its cosine similarity (higher is better)."""

    citizen_id: str
    score: float


def citizen_scores(index: HnswIndex, mapping: Mapping, queries: npt.NDArray[np.float32],
                   k: int) -> dict[str, float]:
    """Candidate citizens and their scores for unit ``queries`` (n, dim).

    One query: a citizen's score is its best-matching embedding's cosine. Several: the
    mean over the queries of that best cosine, computed exactly from stored vectors.
    """
    live = index.live
    if live == 0:
        return {}
    # k citizens x their most embeddings is enough neighbours for k distinct ones
    kk = min(live, k * mapping.max_per_citizen())
    try:
        labels, dists = index.knn(queries, kk)
    except StoreError:
        # hnswlib found fewer than kk (tiny or heavily deleted graph): exact scan
        labels, dists = exact_knn(index, mapping, queries, kk)
    if len(queries) == 1:
        best: dict[str, float] = {}
        owner = mapping.label_citizen.get
        for label, dist in zip(labels[0].tolist(), dists[0].tolist(), strict=True):
            cid = owner(label)
            if cid is not None and cid not in best:
                best[cid] = 1.0 - dist
        return best
    cands = {mapping.label_citizen[int(x)] for x in labels.ravel()
             if int(x) in mapping.label_citizen}
    scores = {}
    for cid in cands:
        vecs = index.get(list(mapping.citizen_labels[cid]))
        sims = queries @ vecs.T  # (n, m)
        scores[cid] = float(sims.max(axis=1).mean())
    return scores


def ranked(scores: dict[str, float], k: int) -> list[Match]:
    """The ``k`` best, best first (ties by citizen id)."""
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [Match(cid, score) for cid, score in best]


def exact_knn(index: HnswIndex, mapping: Mapping, queries: npt.NDArray[np.float32], kk: int
              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact nearest labels over every live vector (when hnswlib finds too few)."""
    labels = np.fromiter(mapping.label_citizen, dtype=np.int64)
    vecs = index.get(labels.tolist())
    sims = queries @ vecs.T
    order = np.argsort(-sims, axis=1)[:, :kk]
    dists = 1.0 - np.take_along_axis(sims, order, axis=1)
    # no copy: already float32 (the cast only tells the 3.10 numpy stubs so)
    return labels[order], dists.astype(np.float32, copy=False)
