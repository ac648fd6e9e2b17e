"""Cost of the fused embedder: per-face embedding time and memory, FaceNet alone against
FaceNet + dlib (packs mtcnn-facenet and mtcnn-facenet-dlib), through the product's code.

Timing runs both pipelines in one process, interleaved face by face (so a load change on
a shared machine hits both alike): ``pipeline.embed(image, one face)`` = the crop(s) plus
the model run(s), for the main face of every sample photo, ``--rounds`` times after one
warm-up round; median and p95 per face. Memory: the peak resident set (``ru_maxrss``)
of a child process that loads one pack and embeds every face once, for each pack, and
of this process with both.

    PYTHONPATH=. python bench/fused_cost.py [--media ../shared/media] [--rounds 10]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import Config  # noqa: E402
from faces.imagefiles import read_image  # noqa: E402
from faces.pipeline import FacePipeline, load_pipeline  # noqa: E402
from faces.types import Detections, Image  # noqa: E402

PACKS = ("mtcnn-facenet", "mtcnn-facenet-dlib")


def config(pack: str, threads: int) -> Config:
    cfg = Config()
    runtime = dataclasses.replace(cfg.runtime, intra_op_threads=threads)
    return dataclasses.replace(cfg, runtime=runtime,
                               models=dataclasses.replace(cfg.models, pack=pack))


def faces_of(pipe: FacePipeline, media: Path) -> list[tuple[Image, Detections]]:
    """The main face of every sample photo (detected once, shared by both packs)."""
    out = []
    for p in sorted(q for d in sorted((media / "faces").iterdir()) for q in d.iterdir()):
        image = read_image(p)
        found = pipe.detect(image)
        if len(found):
            out.append((image, found.take([found.largest()])))
    return out


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(pack: str, media: Path, threads: int) -> None:
    """Load one pack, embed every face once, print the peak RSS as JSON."""
    before = peak_mib()
    pipe = load_pipeline(config(pack, threads))
    loaded = peak_mib()
    for image, one in faces_of(pipe, media):
        pipe.embed(image, one)
    print(json.dumps({"pack": pack, "peak_mib_start": round(before, 1),
                      "peak_mib_loaded": round(loaded, 1), "peak_mib": round(peak_mib(), 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", default=os.environ.get("MOTCUA_MEDIA", str(
        Path(__file__).resolve().parents[2] / "shared" / "media")))
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds over the faces")
    # 1 thread: the figure per core, and fair to the other work of a shared machine; a
    # terminal's default (0) lets onnxruntime use every core
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--child", choices=PACKS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    media = Path(args.media)
    if args.child:
        child(args.child, media, args.threads)
        return 0

    mem = {}
    for pack in PACKS:
        proc = subprocess.run([sys.executable, __file__, "--child", pack, "--media",
                               str(media), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        mem[pack] = json.loads(proc.stdout.strip().splitlines()[-1])

    pipes = {pack: load_pipeline(config(pack, args.threads)) for pack in PACKS}
    faces = faces_of(pipes[PACKS[0]], media)
    times: dict[str, list[float]] = {pack: [] for pack in PACKS}
    for rnd in range(args.rounds + 1):
        for image, one in faces:
            for pack in PACKS if rnd % 2 else PACKS[::-1]:
                t0 = time.perf_counter()
                pipes[pack].embed(image, one)
                if rnd:  # round 0 warms up
                    times[pack].append((time.perf_counter() - t0) * 1000)
    print(f"fused_cost: {len(faces)} faces x {args.rounds} rounds, onnxruntime threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}, cpu count {os.cpu_count()}")
    result: dict[str, object] = {"faces": len(faces), "rounds": args.rounds,
                                 "threads": args.threads}
    for pack in PACKS:
        t = np.array(times[pack])
        row = {"median_ms": round(float(np.median(t)), 2),
               "p95_ms": round(float(np.percentile(t, 95)), 2),
               "min_ms": round(float(t.min()), 2),
               "peak_rss_mib": mem[pack]["peak_mib"],
               "rss_after_load_mib": mem[pack]["peak_mib_loaded"],
               "dim": pipes[pack].embedder.dim}
        result[pack] = row
        print(f"  {pack:20s} per face: median {row['median_ms']:7.2f} ms  p95 "
              f"{row['p95_ms']:7.2f} ms  min {row['min_ms']:7.2f} ms; peak RSS "
              f"{row['peak_rss_mib']:.0f} MiB (after load {row['rss_after_load_mib']:.0f}); "
              f"dim {row['dim']}")
    a, b = (np.median(times[p]) for p in PACKS)
    print(f"  fused / FaceNet alone, median: {b / a:.2f}x; this process with both loaded: "
          f"peak RSS {peak_mib():.0f} MiB")
    result["ratio_median"] = round(float(b / a), 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
