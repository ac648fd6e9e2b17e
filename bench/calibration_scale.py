"""Time of the district's calibration (district/calibration.py) on a synthetic gallery.

The leave-one-out scores are N x N dot products in row blocks: at 100k citizens and 512
dimensions that is 5 x 10^12 multiply-adds. Synthetic clustered embeddings
(edge/store/synthetic.py) stand in for faces; only the time and memory are figures here.

    PYTHONPATH=. python bench/calibration_scale.py [--citizens 100000] [--dim 512]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from district.calibration import CalibrationSettings, derive  # noqa: E402
from edge.store.synthetic import ClusteredFaces  # noqa: E402
from models.pack import pack_confirm_floor  # noqa: E402
from models.settings import DEFAULT_PACK  # noqa: E402


def synthetic_gallery(n: int, dim: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    """n unit vectors around 64 group directions (fast: one random draw, not per id)."""
    rng = np.random.default_rng(seed)
    groups = ClusteredFaces(dim=dim, seed=seed)._groups  # the same group geometry
    own = rng.standard_normal((n, dim)) / np.sqrt(dim)  # ~unit, one per identity
    c = 0.5 * groups[rng.integers(len(groups), size=n)] + own
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    g = c + rng.standard_normal((n, dim)) * (0.8 / np.sqrt(dim))  # one enrolment photo
    return (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--citizens", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = synthetic_gallery(args.citizens, args.dim, args.seed)
    last = [0.0]
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            last[0] = now
            print(f"scored {done}/{total} citizens, {now - t0:.0f} s", file=sys.stderr,
                  flush=True)

    # the default pack's floor (a district's comes from its [models] pack)
    settings = CalibrationSettings().with_pack_floor(pack_confirm_floor(DEFAULT_PACK))
    point = derive(g, settings, pack_threshold=0.54, progress=progress)
    seconds = time.perf_counter() - t0
    print(point.describe(), file=sys.stderr)
    print(json.dumps({"citizens": args.citizens, "dim": args.dim,
                      "seconds": round(seconds, 1),
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024, 1),
                      "threshold": point.threshold,
                      "confirm_threshold": point.confirm_threshold}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
