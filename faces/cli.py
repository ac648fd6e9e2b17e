"""``motcua faces``: detect, embed and compare faces in image files.

    motcua faces IMAGE... [--embed] [--min-face N]   one JSON line per face
    motcua faces --compare A B                       similarity of the main faces

Unreadable images give one line on stderr each (the others are still processed) and a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from core.errors import ImageError, MotcuaError
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline, load_pipeline
from faces.settings import PipelineSettings, load_face_settings
from faces.types import LANDMARK_NAMES, Detections

#: decimals in the JSON output: 0.1 px is below any detector's precision; embeddings
#: keep 6 decimals (float32 has ~7 significant digits)
_PX_DECIMALS = 1
_EMB_DECIMALS = 6


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "faces",
        help="detect faces in images (one JSON line per face), embed or compare them",
        description="Detect faces in images and print one JSON line per face; "
        "--compare A B prints the similarity of the main faces of two images.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, BMP or WebP file")
    p.add_argument("--embed", action="store_true", help="add each face's embedding")
    p.add_argument(
        "--compare",
        action="store_true",
        help="compare the main (largest) faces of exactly two images",
    )
    p.add_argument(
        "--min-face", type=_min_face, metavar="N", help="smallest face side in pixels (>= 12)"
    )
    p.set_defaults(func=run)


def _min_face(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 12:
        raise argparse.ArgumentTypeError("must be at least 12 (the detector's window)")
    return value


def run(args: argparse.Namespace) -> int:
    cfg = load_face_settings(Path(args.config) if args.config else None)
    if args.min_face is not None:
        cfg = dataclasses.replace(
            cfg, detector=dataclasses.replace(cfg.detector, min_face=args.min_face)
        )
    if args.compare:
        if len(args.images) != 2:
            raise MotcuaError(f"--compare takes exactly two images, got {len(args.images)}")
        return _compare(load_pipeline(cfg), args.images[0], args.images[1])
    return _detect(load_pipeline(cfg), cfg, args.images, args.embed)


def _detect(pipe: FacePipeline, cfg: PipelineSettings, paths: list[str], embed: bool) -> int:
    status = 0
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as exc:
            print(f"motcua: error: {exc}", file=sys.stderr)
            status = 1
            continue
        found = pipe.detect(image)
        embeddings = pipe.embed(image, found) if embed else None
        if len(found) == 0:
            print(f"motcua: {path}: no face found", file=sys.stderr)
        for i in range(len(found)):
            record = face_record(path, found, i)
            if embeddings is not None:
                record["embedder_id"] = pipe.embedder_id
                record["embedding"] = [round(float(v), _EMB_DECIMALS) for v in embeddings[i]]
            print(json.dumps(record), flush=True)
    return status


def face_record(path: str, found: Detections, i: int) -> dict[str, Any]:
    """The JSON-ready description of face ``i`` of an image."""
    box = [round(float(v), _PX_DECIMALS) for v in found.boxes[i]]
    marks = {
        name: [round(float(x), _PX_DECIMALS), round(float(y), _PX_DECIMALS)]
        for name, (x, y) in zip(LANDMARK_NAMES, found.landmarks[i], strict=True)
    }
    return {
        "image": path,
        "face": i,
        "box": box,
        "score": round(float(found.scores[i]), 4),
        "landmarks": marks,
    }


def _compare(pipe: FacePipeline, a: str, b: str) -> int:
    embeddings = []
    for path in (a, b):
        image = read_image(path)
        found = pipe.detect(image)
        if len(found) == 0:
            raise ImageError(f"{path}: no face found")
        embeddings.append(pipe.embed(image, found.take([found.largest()]))[0])
    sim = pipe.similarity(embeddings[0], embeddings[1])
    print(
        json.dumps(
            {
                "a": a,
                "b": b,
                "similarity": round(sim, 4),
                "threshold": pipe.match_threshold,
                "same_person": pipe.same_person(sim),
                "embedder_id": pipe.embedder_id,
            }
        )
    )
    return 0
