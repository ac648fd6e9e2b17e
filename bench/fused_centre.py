"""Make the fused pack's centring vector: dlib's mean unit descriptor over a set of photos.

The mtcnn-facenet-dlib pack subtracts this 128-float population statistic from dlib's
descriptors (faces/facenet_dlib.py). The shipped one is the mean over the 3,443 photos
of LFW View 1 ``pairsDevTrain.txt`` (``--lfw-view1``: the face nearest the image centre,
the fixed centre box when none is found, as bench/recognition.py). A district should
make its own from consented local photos (``--photos DIR``: every image below DIR, the
face enrolment would take, photos without a face skipped) and ship it as a new pack
(docs/models.md, "The fused pack"). Every step is the pack's own code: its detector,
dlib chip and dlib model.

    PYTHONPATH=. python bench/fused_centre.py --lfw-view1 -o centre.txt
    PYTHONPATH=. python bench/fused_centre.py --photos /srv/consented -o centre.txt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.recognition import (  # noqa: E402
    datasets_dir,
    fallback_detection,
    pick_face,
    read_pairs,
)
from core.errors import ImageError  # noqa: E402
from edge.config import load_config  # noqa: E402
from faces.facenet_dlib import FacenetDlibEmbedder, PairAlign, format_centre  # noqa: E402
from faces.imagefiles import read_image  # noqa: E402
from faces.pipeline import load_pipeline  # noqa: E402
from models.pack import load_manifest  # noqa: E402

PACK = "mtcnn-facenet-dlib"
PHOTO_EXTS = (".jpg", ".jpeg", ".png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--lfw-view1", action="store_true",
                     help="the photos of LFW View 1 pairsDevTrain.txt (the shipped vector)")
    src.add_argument("--photos", type=Path, help="every image below this folder")
    ap.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    ap.add_argument("--pack", default=PACK)
    ap.add_argument("--config", help="terminal configuration TOML (models.dir)")
    args = ap.parse_args()

    import dataclasses

    cfg = load_config(Path(args.config) if args.config else None)
    cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, pack=args.pack))
    pipe = load_pipeline(cfg)
    emb, aligner = pipe.embedder, pipe.aligner
    if not isinstance(emb, FacenetDlibEmbedder) or not isinstance(aligner, PairAlign):
        raise SystemExit(f"fused_centre: pack {args.pack} is not a FaceNet + dlib pack")
    if args.lfw_view1:
        lfw = datasets_dir() / "lfw"
        dev = read_pairs(lfw.parent / "lfw-meta" / "pairsDevTrain.txt")[0]
        root, paths = lfw, sorted({p for pr in dev for p in pr[:2]})
        source = ("the mean over the 3,443 photos of LFW View 1 pairsDevTrain.txt "
                  "(face nearest the image centre).")
        if len(paths) != 3443:
            source = f"the mean over the {len(paths)} photos of LFW View 1 pairsDevTrain.txt."
    else:
        root = args.photos
        paths = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.suffix.lower() in PHOTO_EXTS)
        source = f"the mean over {{n}} photos of {root.name} (consented local photos)."
    rows, skipped = [], 0
    t0 = time.perf_counter()
    for n, rel in enumerate(paths, 1):
        try:
            image = read_image(root / rel)
        except ImageError as exc:
            print(f"  {rel}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        found = pipe.detect(image)
        h, w = image.shape[:2]
        if args.lfw_view1:  # as bench/recognition.py: the labelled face, or the centre box
            one = (found.take([pick_face(found, w, h, "centre")]) if len(found)
                   else fallback_detection(w, h))
        elif len(found):  # enrolment takes the best face
            one = found.take([0])
        else:
            skipped += 1
            continue
        rows.append(emb.dlib.embed(aligner.second.crops(image, one))[0])
        if n % 250 == 0:
            print(f"  {n}/{len(paths)}  {n / (time.perf_counter() - t0):.1f}/s",
                  file=sys.stderr)
    if not rows:
        raise SystemExit("fused_centre: no face in any photo")
    mean = np.stack(rows).astype(np.float32).mean(axis=0)
    text = format_centre(mean, source.replace("{n}", str(len(rows))))
    args.output.write_text(text, encoding="ascii")
    shipped_name = load_manifest(args.pack).embedder["centre"]
    shipped = emb.centre
    cos = float(mean @ shipped / np.linalg.norm(mean) / np.linalg.norm(shipped))
    print(f"fused_centre: {len(rows)} photos ({skipped} skipped) -> {args.output}, sha256 "
          f"{hashlib.sha256(text.encode()).hexdigest()}; norm {np.linalg.norm(mean):.4f}; "
          f"against the shipped {shipped_name}: cosine {cos:.6f}, max |diff| "
          f"{float(np.abs(mean - shipped).max()):.2e}; {time.perf_counter() - t0:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
