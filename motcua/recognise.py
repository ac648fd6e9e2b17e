"""``motcua recognise``: the face pipeline alone on photos and videos, saying who is where.

The gallery is a folder with one sub-folder per person (``faces/<person>/``, as the
sample media): the first image of each person (by name) is enrolled. Then every input,
a photo, a video or a folder of them, is searched: each face is compared with every
enrolled person and named when the best similarity reaches the pack's threshold. For
videos, runs of frames with the same person are printed as one line. Without inputs it
runs on the sample media: the other photos of ``faces/``, ``scenes/`` and
``video/hamilton_clip.mp4``.

No broker, store or session is involved (``motcua demo`` runs the whole system); this is
the quickest way to see what the detector and the embedder do with a set of pictures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from core.errors import CameraError, ImageError, MotcuaError
from edge.camera.file import VideoFileSource
from edge.config import load_config
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline, load_pipeline
from faces.types import FloatArray

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
#: every how many video frames to look: 3 at 30 fps = 10 looks a second, enough to see
#: who is on screen and keeps the demo at a few seconds per clip on a small machine
DEFAULT_VIDEO_STEP = 3
#: a person missing from at most this many consecutive looks still continues a run
#: (a turned head or a blurred frame does not split a scene in two)
RUN_GAP = 2


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Enrolled people: names and one unit embedding each (row i is names[i])."""

    names: list[str]
    sources: list[Path]
    embeddings: FloatArray

    def best(self, embedding: FloatArray) -> tuple[str, float]:
        """The most similar enrolled person and the similarity."""
        sims = self.embeddings @ embedding
        i = int(np.argmax(sims))
        return self.names[i], float(sims[i])


@dataclasses.dataclass
class Report:
    """What the run found (for tests and the summary line)."""

    images: int = 0
    frames: int = 0
    faces: int = 0
    recognised: int = 0
    #: (input, frame or None, box, name or None, similarity) per face
    sightings: list[tuple[str, int | None, list[float], str | None, float]] = dataclasses.field(
        default_factory=list
    )
    errors: int = 0


def enrol(pipe: FacePipeline, gallery_dir: Path, out: TextIO) -> Gallery:
    """Enrol the main face of the first image of every person folder."""
    names, sources, embs = [], [], []
    for person in sorted(p for p in gallery_dir.iterdir() if p.is_dir()):
        images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            continue
        image = read_image(images[0])
        found = pipe.detect(image)
        if len(found) == 0:
            print(f"  {person.name}: no face in {images[0].name}, not enrolled", file=out)
            continue
        embs.append(pipe.embed(image, found.take([found.largest()]))[0])
        names.append(person.name)
        sources.append(images[0])
    if not names:
        raise ImageError(f"{gallery_dir}: no person folder with a usable face photo")
    print(f"enrolled {len(names)} people from {gallery_dir}: {', '.join(names)}", file=out)
    return Gallery(names, sources, np.stack(embs))


def recognise(
    pipe: FacePipeline,
    gallery: Gallery,
    inputs: Iterable[Path],
    out: TextIO,
    video_step: int = DEFAULT_VIDEO_STEP,
) -> Report:
    """Say who is where in every photo and video of ``inputs`` (folders are walked)."""
    report = Report()
    enrolled = set(gallery.sources)
    for path in _walk(inputs):
        if path in enrolled:
            continue
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                _video(pipe, gallery, path, out, video_step, report)
            else:
                _photo(pipe, gallery, path, out, report)
        except (ImageError, CameraError) as exc:
            print(f"motcua: error: {exc}", file=sys.stderr)
            report.errors += 1
    print(
        f"done: {report.images} photos, {report.frames} video frames looked at, "
        f"{report.faces} faces, {report.recognised} recognised "
        f"(threshold {pipe.match_threshold})",
        file=out,
    )
    return report


def _walk(inputs: Iterable[Path]) -> Iterator[Path]:
    for p in inputs:
        if p.is_dir():
            yield from sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            )
        else:
            yield p  # a missing or odd file gets its error where it is read


def _who(gallery: Gallery, pipe: FacePipeline, emb: FloatArray) -> tuple[str | None, float]:
    name, sim = gallery.best(emb)
    return (name if pipe.same_person(sim) else None), sim


def _photo(pipe: FacePipeline, gallery: Gallery, path: Path, out: TextIO, report: Report) -> None:
    faces = pipe.analyse(read_image(path))
    report.images += 1
    label = path.parent.name if path.parent.parent.name == "faces" else None
    if len(faces) == 0:
        print(f"{path}: no face", file=out)
    for i, (box, emb) in enumerate(zip(faces.detections.boxes, faces.embeddings, strict=True)):
        name, sim = _who(gallery, pipe, emb)
        report.faces += 1
        report.recognised += name is not None
        report.sightings.append((str(path), None, box.round(1).tolist(), name, sim))
        x1, y1, x2, y2 = (int(v) for v in box)
        where = f"({x1},{y1})-({x2},{y2})"
        said = (
            f"{name} ({sim:.2f})" if name else f"unknown (closest {gallery.best(emb)[0]} {sim:.2f})"
        )
        check = ""
        if label is not None and i == faces.detections.largest():
            check = "  [right]" if name == label else f"  [folder says {label}]"
        print(f"{path}: face {i} at {where}: {said}{check}", file=out)


def _video(
    pipe: FacePipeline, gallery: Gallery, path: Path, out: TextIO, step: int, report: Report
) -> None:
    source = VideoFileSource(path, realtime=False)
    source.open()
    runs: dict[str, list[list[float]]] = {}  # name -> [[first, last, best sim, looks]]
    looks = 0
    try:
        while (frame := source.read()) is not None:
            if frame.index % step:
                continue
            looks += 1
            report.frames += 1
            faces = pipe.analyse(np.ascontiguousarray(frame.image[:, :, ::-1]))
            for box, emb in zip(faces.detections.boxes, faces.embeddings, strict=True):
                name, sim = _who(gallery, pipe, emb)
                report.faces += 1
                report.sightings.append((str(path), frame.index, box.round(1).tolist(), name, sim))
                if name is None:
                    continue
                report.recognised += 1
                person = runs.setdefault(name, [])
                if person and frame.index - person[-1][1] <= step * (RUN_GAP + 1):
                    run = person[-1]
                    run[1], run[2], run[3] = frame.index, max(run[2], sim), run[3] + 1
                else:
                    person.append([frame.index, frame.index, sim, 1])
    finally:
        source.close()
    fps = source.fps
    print(f"{path}: {looks} frames looked at (every {step})", file=out)
    lines = [
        (first, name, last, best, n)
        for name, person in runs.items()
        for first, last, best, n in person
    ]
    for first, name, last, best, n in sorted(lines):
        print(
            f"  frames {int(first)}-{int(last)} ({first / fps:.1f}-{last / fps:.1f} s): {name} "
            f"in {int(n)} looks, best {best:.2f}",
            file=out,
        )
    if not lines:
        print("  nobody recognised", file=out)


# -- command line -------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "recognise",
        help="the face pipeline alone: enrol a gallery folder, say who is where in photos "
        "and videos",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="photos, videos or folders (default: the sample media)",
    )
    p.add_argument(
        "--gallery",
        type=Path,
        metavar="DIR",
        help="one folder per person; the first image of each is enrolled "
        "(default: the sample media's faces/)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=DEFAULT_VIDEO_STEP,
        metavar="N",
        help=f"look at every N-th video frame (default {DEFAULT_VIDEO_STEP})",
    )
    p.set_defaults(func=run)


def sample_media() -> Path:
    """$MOTCUA_MEDIA, else ../shared/media beside the project checkout."""
    if os.environ.get("MOTCUA_MEDIA"):
        return Path(os.environ["MOTCUA_MEDIA"])
    return Path(__file__).resolve().parents[2] / "shared" / "media"


def run(args: argparse.Namespace) -> int:
    media = sample_media()
    gallery_dir = args.gallery or media / "faces"
    inputs = args.inputs or [
        media / "faces",
        media / "scenes",
        media / "video" / "hamilton_clip.mp4",
    ]
    if not gallery_dir.is_dir():
        raise MotcuaError(f"gallery folder not found: {gallery_dir} (give --gallery DIR)")
    if args.every < 1:
        raise MotcuaError("--every must be at least 1")
    pipe = load_pipeline(load_config(args.config))
    gallery = enrol(pipe, gallery_dir, sys.stdout)
    report = recognise(pipe, gallery, inputs, sys.stdout, args.every)
    return 1 if report.errors else 0
