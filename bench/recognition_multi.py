"""Several probe frames per lookup and several enrolment photos per citizen, on LFW.

People with ``--min-photos`` (5) or more photos are split at random (seeded) into
citizens and strangers, half each. Every person with fewer photos is enrolled with one
photo as a distractor (the gallery is then about LFW's 5,749 people, the size of a
district). For each citizen and stranger four photos are set aside as the probe photos;
a citizen is enrolled with up to E of its remaining photos (E = 1, 2, 4, 8; fewer when it
has fewer). A lookup of P frames (P = 1..4) is one P-subset of the four probe photos,
averaged as the session averages its good frames (``_mean_unit`` in
edge/session/machine.py: mean of the unit embeddings, made unit again); every P-subset
is a lookup, and each person counts once (its rate is the mean over its subsets).

A lookup's query is scored against the gallery as the store does (a citizen's score is
its best-matching stored embedding; the ``top_k`` best distinct citizens) and decided by
the terminal's own ``decide()``. FNIR = share of a citizen's lookups not naming them;
FPIR = share of a stranger's lookups naming anyone; both averaged over people, then over
``--splits`` seeded splits.

Operating points: the threshold at which single-frame, single-photo FPIR is
``--target-fpir`` (1e-2) with the configured margin, found on a held-out split (seed +
1000, never reported), then the pack's threshold, and 0.54 (the pack's before this
work). All with the configured margin (0.08).

LFW photos of one person are taken on different days, in different light and poses: they
are not video frames. The frames of one session are far more alike, so the multi-frame
gain measured here is an upper-ish proxy of what the terminal gets.

    PYTHONPATH=. python bench/recognition_multi.py [--setting NAME] [--splits N]

Progress to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import recognition as rb  # noqa: E402
import recognition_prep as rp  # noqa: E402

from edge.config import load_config  # noqa: E402
from edge.session.decision import decide  # noqa: E402
from edge.session.ports import GalleryMatch  # noqa: E402
from edge.store.gallery import Match  # noqa: E402
from faces.pipeline import load_pipeline  # noqa: E402

#: the pack the figures of docs/recognition.md were measured on (FaceNet alone)
FACENET_PACK = "mtcnn-facenet"

F32 = npt.NDArray[np.float32]

PROBE_FRAMES = (1, 2, 3, 4)
ENROL_PHOTOS = (1, 2, 4, 8)
#: photos set aside per person as its probe photos (the most frames a lookup averages)
PROBE_POOL = 4
#: the single-frame FPIR the first operating point is set to (on the held-out split)
TARGET_FPIR = 1e-2
#: seed offset of the held-out split the operating threshold is chosen on
DEV_OFFSET = 1000


def mean_unit(v: F32) -> F32:
    """The session's ``_mean_unit`` over the rows of ``v`` (n, dim) -> (dim,)."""
    m = v.mean(axis=0)
    n = float(np.linalg.norm(m))
    return (m / n if n > 0 else m).astype(np.float32)


class Split:
    """Citizens, strangers and distractors of one seeded split."""

    def __init__(self, groups: dict[str, list[str]], min_photos: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        many = sorted(n for n, ps in groups.items() if len(ps) >= min_photos)
        order = rng.permutation(len(many))
        self.citizens = [many[i] for i in order[: len(many) // 2]]
        self.strangers = [many[i] for i in order[len(many) // 2 :]]
        self.distractors = sorted(n for n, ps in groups.items() if len(ps) < min_photos)
        self.probe_photos: dict[str, list[str]] = {}
        self.enrol_pool: dict[str, list[str]] = {}
        for n in self.citizens + self.strangers:
            ps = [groups[n][i] for i in rng.permutation(len(groups[n]))]
            self.probe_photos[n] = ps[:PROBE_POOL]
            self.enrol_pool[n] = ps[PROBE_POOL:]
        self.distractor_photo = {n: groups[n][int(rng.integers(len(groups[n])))]
                                 for n in self.distractors}


class Gallery:
    """Citizens' embeddings and the store's scoring: per citizen its best embedding."""

    def __init__(self, emb: Any, split: Split, enrol: int) -> None:
        ids: list[str] = []
        paths: list[str] = []
        for n in split.citizens:
            for p in split.enrol_pool[n][:enrol]:
                ids.append(n)
                paths.append(p)
        for n in split.distractors:
            ids.append(n)
            paths.append(split.distractor_photo[n])
        names = sorted(set(ids))
        pos = {n: i for i, n in enumerate(names)}
        owner = np.array([pos[n] for n in ids])
        order = np.argsort(owner, kind="stable")
        self.names = names
        self.vecs = emb.matrix([paths[i] for i in order])
        self.starts = np.searchsorted(owner[order], np.arange(len(names)))
        self.entries = len(paths)
        self.photos_per_citizen = float(np.mean(
            [min(enrol, len(split.enrol_pool[n])) for n in split.citizens]))

    def top(self, queries: F32, k: int) -> list[list[Match]]:
        """The ``k`` best distinct citizens per query (the store's ranking)."""
        out = []
        for a in range(0, len(queries), 1024):
            s = queries[a : a + 1024] @ self.vecs.T
            per = np.maximum.reduceat(s, self.starts, axis=1)
            part = np.argpartition(-per, k - 1, axis=1)[:, :k]
            for row, cand in zip(per, part, strict=True):
                best = sorted(((float(row[c]), self.names[c]) for c in cand),
                              key=lambda t: (-t[0], t[1]))
                out.append([Match(n, sc) for sc, n in best])
        return out


def lookups(emb: Any, people: Sequence[str], split: Split, frames: int
            ) -> tuple[F32, list[int]]:
    """Every ``frames``-subset of each person's probe photos, averaged: (queries, person
    index of each)."""
    qs, who = [], []
    for i, n in enumerate(people):
        vecs = emb.matrix(split.probe_photos[n])
        for sub in itertools.combinations(range(len(vecs)), frames):
            qs.append(mean_unit(vecs[list(sub)]))
            who.append(i)
    return np.stack(qs), who


def per_person(hit: Sequence[bool], who: Sequence[int], people: int) -> float:
    """Mean over people of the share of their lookups that ``hit``."""
    num = np.zeros(people)
    den = np.zeros(people)
    for h, w in zip(hit, who, strict=True):
        num[w] += h
        den[w] += 1
    return float(np.mean(num[den > 0] / den[den > 0]))


def evaluate(emb: Any, split: Split, frames: int, enrol: int, thresholds: Sequence[float],
             margin: float, k: int) -> dict[float, tuple[float, float]]:
    """{threshold: (FPIR, FNIR)} for lookups of ``frames`` frames against a gallery of up
    to ``enrol`` photos per citizen."""
    g = Gallery(emb, split, enrol)
    mq, mwho = lookups(emb, split.citizens, split, frames)
    nq, nwho = lookups(emb, split.strangers, split, frames)
    mtop = g.top(mq, k)
    ntop = g.top(nq, k)
    out = {}
    for t in thresholds:
        named_m = [decide(cast(Sequence[GalleryMatch], m), t, margin).citizen_id for m in mtop]
        named_n = [decide(cast(Sequence[GalleryMatch], m), t, margin).citizen_id for m in ntop]
        fnir = per_person([d != split.citizens[w] for d, w in zip(named_m, mwho, strict=True)],
                          mwho, len(split.citizens))
        fpir = per_person([bool(d) for d in named_n], nwho, len(split.strangers))
        out[t] = (fpir, fnir)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="m24", help=f"preprocessing ({', '.join(rp.SETTINGS)})")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-photos", type=int, default=5)
    ap.add_argument("--target-fpir", type=float, default=TARGET_FPIR)
    ap.add_argument("--cache-dir")
    args = ap.parse_args()
    t0 = time.perf_counter()
    # FaceNet alone, the pack these figures were measured on (the default is now the fused
    # pack, whose crop and embedder this bench's settings do not describe)
    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, pack=FACENET_PACK))
    pipe = load_pipeline(cfg)
    margin, k = cfg.session.margin, cfg.session.top_k
    pack_t = cfg.session.threshold or pipe.match_threshold
    lfw = rb.datasets_dir() / "lfw"
    ds = rb.list_dataset(lfw)
    groups = ds.by_person()
    emb = rp.Combined(pipe, cfg, rp.SETTINGS[args.setting], lfw, rb.cache_dir(args.cache_dir))
    emb.ensure(ds.paths, "LFW photos")
    many = sum(1 for ps in groups.values() if len(ps) >= args.min_photos)
    rb.log(f"multi: setting {args.setting} ({pipe.embedder_id}), {many} people with >= "
           f"{args.min_photos} photos, {len(groups) - many} distractors; margin {margin}, "
           f"top-k {k}, pack threshold {pack_t}")

    # operating threshold: single-frame single-photo FPIR = target, on the held-out split
    dev = Split(groups, args.min_photos, args.seed + DEV_OFFSET)
    grid = [round(x, 3) for x in np.arange(0.40, 0.90, 0.005)]
    dev_rates = evaluate(emb, dev, 1, 1, grid, margin, k)
    t_dev = next((t for t in grid if dev_rates[t][0] <= args.target_fpir), grid[-1])
    rb.log(f"held-out split (seed {args.seed + DEV_OFFSET}): FPIR {dev_rates[t_dev][0]:.4f} "
           f"at threshold {t_dev} (target {args.target_fpir:g}, 1 frame, 1 photo)")
    points = {"target_fpir": t_dev, "pack": pack_t, "old_pack_0.54": 0.54}
    # and per cell: the threshold at which *that* cell's FPIR is the target on the held-out
    # split, so the cells are compared at (about) equal FPIR
    coarse = [round(x, 3) for x in np.arange(0.40, 0.90, 0.01)]
    cell_t: dict[tuple[int, int], float] = {}
    for f in PROBE_FRAMES:
        for e in ENROL_PHOTOS:
            r = evaluate(emb, dev, f, e, coarse, margin, k)
            cell_t[(f, e)] = next((t for t in coarse if r[t][0] <= args.target_fpir),
                                  coarse[-1])
    rb.log("per-cell thresholds for the target FPIR on the held-out split: "
           + ", ".join(f"{f}x{e}: {t}" for (f, e), t in cell_t.items()))
    thresholds = sorted(set(points.values()))

    cells: dict[tuple[int, int], list[dict[float, tuple[float, float]]]] = {}
    photos: dict[int, list[float]] = {e: [] for e in ENROL_PHOTOS}
    for s in range(args.splits):
        split = Split(groups, args.min_photos, args.seed + s)
        for e in ENROL_PHOTOS:
            photos[e].append(Gallery(emb, split, e).photos_per_citizen)
            for f in PROBE_FRAMES:
                cells.setdefault((f, e), []).append(
                    evaluate(emb, split, f, e, sorted({*thresholds, cell_t[(f, e)]}),
                             margin, k))
        rb.log(f"split {s} done: {len(split.citizens)} citizens, {len(split.strangers)} "
               f"strangers, {len(split.distractors)} distractors")

    def mean(f: int, e: int, t: float) -> tuple[float, float, float, float]:
        r = np.array([c[t] for c in cells[(f, e)]])
        return (float(r[:, 0].mean()), float(r[:, 1].mean()),
                float(r[:, 0].std()), float(r[:, 1].std()))

    out: dict[str, Any] = {"setting": args.setting, "embedder_id": pipe.embedder_id,
                           "splits": args.splits, "seed": args.seed,
                           "min_photos": args.min_photos, "people_min_photos": many,
                           "citizens": len(split.citizens), "strangers": len(split.strangers),
                           "distractors": len(split.distractors), "margin": margin,
                           "top_k": k, "points": points,
                           "dev_fpir_at_target_point": round(dev_rates[t_dev][0], 5),
                           "enrol_photos_mean": {str(e): round(float(np.mean(v)), 2)
                                                 for e, v in photos.items()}}
    for name, t in points.items():
        rb.log(f"\n{name}: threshold {t} + margin {margin}; FPIR / FNIR (std over splits)")
        rb.log("  frames \\ enrol photos " + "".join(f"| {e:^25d}" for e in ENROL_PHOTOS))
        grid_out = []
        for f in PROBE_FRAMES:
            row = []
            for e in ENROL_PHOTOS:
                fp, fn, sfp, sfn = mean(f, e, t)
                row.append({"probe_frames": f, "enrol_photos": e, "fpir": round(fp, 5),
                            "fnir": round(fn, 5), "fpir_std": round(sfp, 5),
                            "fnir_std": round(sfn, 5)})
            grid_out += row
            rb.log(f"  {f:^22d} " + "".join(
                f"| {c['fpir']:.4f} / {c['fnir']:.4f}       " for c in row))
        out[name] = {
            "threshold": t,
            "probe_frames": {str(f): {"fpir": round(mean(f, 1, t)[0], 5),
                                      "fnir": round(mean(f, 1, t)[1], 5)}
                             for f in PROBE_FRAMES},
            "enrol_photos": {str(e): {"fpir": round(mean(1, e, t)[0], 5),
                                      "fnir": round(mean(1, e, t)[1], 5)}
                             for e in ENROL_PHOTOS},
            "grid": grid_out,
        }
    rb.log(f"\nper cell, threshold for FPIR {args.target_fpir:g} on the held-out split "
           "(threshold: FPIR / FNIR)")
    matched = []
    for f in PROBE_FRAMES:
        row = []
        for e in ENROL_PHOTOS:
            t = cell_t[(f, e)]
            fp, fn, _, _ = mean(f, e, t)
            row.append({"probe_frames": f, "enrol_photos": e, "threshold": t,
                        "fpir": round(fp, 5), "fnir": round(fn, 5)})
        matched += row
        rb.log(f"  {f} frames " + "".join(
            f"| {c['threshold']:.2f}: {c['fpir']:.4f} / {c['fnir']:.4f} " for c in row))
    out["matched_fpir"] = {
        "target": args.target_fpir,
        "probe_frames": {str(c["probe_frames"]): {k_: c[k_] for k_ in ("threshold", "fpir", "fnir")}
                         for c in matched if c["enrol_photos"] == 1},
        "enrol_photos": {str(c["enrol_photos"]): {k_: c[k_] for k_ in ("threshold", "fpir", "fnir")}
                         for c in matched if c["probe_frames"] == 1},
        "grid": matched}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
