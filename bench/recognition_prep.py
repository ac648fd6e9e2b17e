"""Choosing the embedder's preprocessing on LFW View 1, reporting on the 10 folds.

Builds on bench/recognition.py (its cache, protocols and Prep) and adds what that one
cannot express:

- ``mirror``: embed the horizontally mirrored crop *alone* (its own cache file). With the
  plain crop's cache this gives both test-time flip variants without re-embedding:
  ``flip_mean`` = unit(a + a_mirror) and ``flip_concat`` = unit([a, a_mirror]) (cosine of
  concatenations = mean of the two cosines);
- ``prewhiten``: per-crop standardisation instead of the pack's fixed one.

    PYTHONPATH=. python bench/recognition_prep.py --view1 [NAME ...]   # choose (View 1)
    PYTHONPATH=. python bench/recognition_prep.py --ten-fold NAME       # report (10 folds)

NAME is a key of SETTINGS (all of them when none is given). Progress goes to stderr; the
last stdout line is one JSON object. docs/recognition.md has the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import recognition as rb  # noqa: E402

from edge.config import load_config  # noqa: E402
from faces.facenet import PREPROCESSING  # noqa: E402
from faces.pipeline import FacePipeline, load_pipeline  # noqa: E402

#: the pack whose preprocessing this bench chooses (FaceNet alone; not the fused default)
FACENET_PACK = "mtcnn-facenet"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One preprocessing: the bench's Prep plus the standardisation and flip variant."""

    prep: rb.Prep
    standardise: str = "fixed_standardization"
    #: "" = the crop alone, "mean" / "concat" = with its mirror (needs the mirror pass)
    flip: str = ""


#: what is compared on View 1 (margins are pixels of the 160 px crop unless crop is
#: margin_src; 32 source pixels is facenet's own LFW alignment, its wiki's
#: ``align_dataset_mtcnn --image_size 160 --margin 32``)
SETTINGS: dict[str, Setting] = {
    "m44": Setting(rb.Prep(margin=44)),
    "m32": Setting(rb.Prep(margin=32)),
    "m24": Setting(rb.Prep(margin=24)),
    "m20": Setting(rb.Prep(margin=20)),
    "m16": Setting(rb.Prep(margin=16)),
    "m24_flip_mean": Setting(rb.Prep(margin=24), flip="mean"),
    "m24_flip_concat": Setting(rb.Prep(margin=24), flip="concat"),
    "m20_flip_mean": Setting(rb.Prep(margin=20), flip="mean"),
    "m20_flip_concat": Setting(rb.Prep(margin=20), flip="concat"),
    "m20_prewhiten": Setting(rb.Prep(margin=20), standardise="prewhiten"),
    "sim20": Setting(rb.Prep(crop="similarity", margin=20)),
    "m16_flip_mean": Setting(rb.Prep(margin=16), flip="mean"),
    "src32": Setting(rb.Prep(crop="margin_src", margin=32)),
    "sim24": Setting(rb.Prep(crop="similarity", margin=24)),
    "sim32": Setting(rb.Prep(crop="similarity", margin=32)),
    "m24_prewhiten": Setting(rb.Prep(margin=24), standardise="prewhiten"),
}


class MirrorEmbeddings(rb.Embeddings):
    """Embeddings of the mirrored crops alone (a cache file of their own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.emb_key = {**self.emb_key, "mirror": True}
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.pipe.embedder_id)
        self.emb_path = self.emb_path.with_name(
            f"embeddings-{safe}-mirror-{rb._sig(self.emb_key)}.npz")
        self.vecs, self.face, self.nfaces = {}, {}, {}
        self._load()

    def _embed_crops(self, crops: Any) -> Any:
        return self.pipe.embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]))


#: the trailing part of an embedder id that names the crop (``-m24``, ``-m20-flip``): the
#: cache key carries the crop settings itself (Prep, standardisation, mirror), so the
#: cache is keyed by the id of the network and its standardisation alone and a pack
#: whose id only names a new crop reuses the embeddings already computed
CROP_SUFFIX = re.compile(r"-m\d+(-flip)?$")


class _CacheView:
    """The pipeline as the bench's cache sees it: the embedder id without the crop."""

    def __init__(self, pipe: FacePipeline) -> None:
        self._pipe = pipe
        self.embedder_id = CROP_SUFFIX.sub("", pipe.embedder_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class Combined:
    """The embeddings a Setting gives, with the interface the bench's protocols use."""

    def __init__(self, pipe: FacePipeline, cfg: Any, setting: Setting, root: Path,
                 cache: Path) -> None:
        emb: Any = pipe.embedder
        emb.standardise = PREPROCESSING[setting.standardise]
        # the pack's own test-time flip (``[embedder] flip``) is off here: the setting says
        # whether to flip, and the cache key (embedder id + Prep) must say what was done
        emb.flip = False
        view: Any = _CacheView(pipe)
        self.plain = rb.Embeddings(view, cfg, setting.prep, root, cache)
        self.mirror = (MirrorEmbeddings(view, cfg, setting.prep, root, cache)
                       if setting.flip else None)
        self.flip = setting.flip
        self.face = self.plain.face

    def ensure(self, paths: Sequence[str], what: str) -> None:
        self.plain.ensure(paths, what)
        if self.mirror is not None:
            self.mirror.ensure(paths, what + " (mirrored)")

    def matrix(self, paths: Sequence[str]) -> Any:
        a = self.plain.matrix(paths)
        if self.mirror is None:
            return a
        b = self.mirror.matrix(paths)
        v = a + b if self.flip == "mean" else np.concatenate([a, b], axis=1)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def no_face(self, paths: Sequence[str]) -> int:
        return self.plain.no_face(paths)


def dev_train_people(lfw: Path, meta: Path) -> rb.Dataset:
    """The photos of View 1's training people (``peopleDevTrain.txt``)."""
    lines = (meta / "peopleDevTrain.txt").read_text().split("\n")[1:]
    names = {ln.split()[0] for ln in lines if ln.strip()}
    ds = rb.list_dataset(lfw)
    keep = [(p, lab) for p, lab in zip(ds.paths, ds.labels, strict=True) if lab in names]
    return rb.Dataset(lfw, tuple(p for p, _ in keep), tuple(lab for _, lab in keep))


def rethreshold(pipe: FacePipeline, cfg: Any, lfw: Path, meta: Path, cache: Path, old: str,
                names: Sequence[str], splits: int, old_threshold: float | None) -> int:
    """The threshold that keeps the open-set FPIR (View 1 DevTrain people, the bench's
    protocol and the terminal's decide() with its margin) where setting ``old`` has it at
    the pack's threshold."""
    ds = dev_train_people(lfw, meta)
    pack_t = old_threshold or cfg.session.threshold or pipe.match_threshold
    margin, k = cfg.session.margin, cfg.session.top_k
    grid = sorted({pack_t, *(round(x, 3) for x in np.arange(0.40, 0.80, 0.005))})
    out: dict[str, Any] = {"people": len(set(ds.labels)), "photos": len(ds.paths),
                           "splits": splits, "margin": margin, "top_k": k, "old": old,
                           "old_threshold": pack_t}

    def curve(name: str) -> dict[float, tuple[float, float]]:
        emb = Combined(pipe, cfg, SETTINGS[name], lfw, cache)
        emb.ensure(ds.paths, "DevTrain people's photos")
        per = [rb.rates(emb, rb.make_split(ds, 0.5, s), k, grid, margin)  # type: ignore[arg-type]
               for s in range(splits)]
        return {t: (float(np.mean([p[t][0] for p in per])), float(np.mean([p[t][1] for p in per])))
                for t in grid}

    ref = curve(old)
    fpir_old, fnir_old = ref[pack_t]
    rb.log(f"{old} at {pack_t} + {margin}: FPIR {fpir_old:.4f} FNIR {fnir_old:.4f} "
           f"({out['people']} DevTrain people, {splits} splits)")
    out.update(old_fpir=round(fpir_old, 5), old_fnir=round(fnir_old, 5), new={})
    for name in names:
        c = curve(name)
        t = next(t for t in grid if c[t][0] <= fpir_old)
        rb.log(f"{name}: threshold {t} gives FPIR {c[t][0]:.4f} FNIR {c[t][1]:.4f}; at "
               f"{pack_t}: FPIR {c[pack_t][0]:.4f} FNIR {c[pack_t][1]:.4f}")
        out["new"][name] = {"threshold": t, "fpir": round(c[t][0], 5), "fnir": round(c[t][1], 5),
                            "fpir_at_old": round(c[pack_t][0], 5),
                            "fnir_at_old": round(c[pack_t][1], 5)}
    print(json.dumps(out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"settings ({', '.join(SETTINGS)})")
    ap.add_argument("--view1", action="store_true", help="DevTrain -> DevTest")
    ap.add_argument("--ten-fold", action="store_true", help="pairs.txt 10 folds")
    ap.add_argument("--rethreshold", metavar="OLD",
                    help="open-set on View 1's DevTrain people: FPIR of setting OLD at the "
                         "pack's threshold, and each NAME's threshold giving the same FPIR")
    ap.add_argument("--old-threshold", type=float,
                    help="OLD's threshold for --rethreshold (default: the pack's)")
    ap.add_argument("--splits", type=int, default=5, help="open-set splits (--rethreshold)")
    ap.add_argument("--cache-dir")
    args = ap.parse_args()
    names = args.names or list(SETTINGS)
    # FaceNet alone, the pack these figures were measured on (the default is now the fused
    # pack, whose crop and embedder this bench's settings do not describe)
    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, pack=FACENET_PACK))
    pipe = load_pipeline(cfg)
    lfw = rb.datasets_dir() / "lfw"
    meta = lfw.parent / "lfw-meta"
    cache = rb.cache_dir(args.cache_dir)
    if args.rethreshold:
        return rethreshold(pipe, cfg, lfw, meta, cache, args.rethreshold, names, args.splits,
                           args.old_threshold)
    rows = []
    for name in names:
        st = SETTINGS[name]
        emb = Combined(pipe, cfg, st, lfw, cache)
        row: dict[str, Any] = {"name": name, "prep": st.prep.label(),
                               "standardise": st.standardise, "flip": st.flip}
        if args.view1:
            train = rb.read_pairs(meta / "pairsDevTrain.txt")[0]
            test = rb.read_pairs(meta / "pairsDevTest.txt")[0]
            emb.ensure([p for pr in train + test for p in pr[:2]], "View 1 photos")
            r = rb.view1(emb, train, test)  # type: ignore[arg-type]
            row.update({k: round(v, 4) for k, v in r.items()})
            rb.log(f"View 1 {name:16s} train {r['train_acc']:.4f} test {r['test_acc']:.4f} "
                   f"d' {r['test_dprime']:.3f} threshold {r['threshold']:.3f}")
        if args.ten_fold:
            folds = rb.read_pairs(meta / "pairs.txt")
            emb.ensure([p for f in folds for pr in f for p in pr[:2]], "LFW pair photos")
            tf = rb.ten_fold(emb, folds)  # type: ignore[arg-type]
            row.update(lfw_10fold_acc=round(tf["mean"], 4), lfw_10fold_std=round(tf["std"], 4),
                       lfw_folds=[round(a, 4) for a in tf["folds"]])
            rb.log(f"LFW 10-fold {name:16s} {tf['mean']:.4f} +- {tf['std']:.4f}")
        rows.append(row)
    print(json.dumps({"settings": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
