"""Benchmark of the face pipeline (edge/vision) on the real sample media.

Wall-clock figures on a shared 2-core machine swing with the other processes' load; each
row therefore also gives the CPU time the process spent (all its threads), which the
load barely changes, and the load average is printed and recorded.

1. Per-stage latency (median, p95) on 640x480 frames with one face and with four, at
   minimum face 80 px and 40 px: detect, crop, embed, and the whole frame.
2. Beside each, in the same loop (interleaved run by run, so load from other processes
   hits both alike), the bare onnxruntime calls of the same models on exactly the inputs
   the pipeline gave them: P-Net at every scale, R-Net, O-Net, FaceNet. The overhead
   ratio is pipeline time / bare model time.
3. Embedding time per face at batch 1 and batch 4 (and the bare calls).
4. Frames per second of the whole pipeline (detect + crop + embed every face) over
   video/hamilton_clip.mp4 at the configured minimum face (decoding not counted;
   reported separately).
5. Peak RSS of this process.

The last line is one JSON object of the figures. ``--quick`` finishes within a minute.

    PYTHONPATH=. python bench/pipeline.py [--quick] [--config TERMINAL.toml]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import ConfigError  # noqa: E402
from edge.camera.file import VideoFileSource  # noqa: E402
from edge.config import load_config  # noqa: E402
from faces.imagefiles import read_image  # noqa: E402
from faces.pipeline import FacePipeline, load_pipeline  # noqa: E402
from faces.runtime import OnnxModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("MOTCUA_MEDIA", REPO.parent / "shared" / "media"))

#: the portrait for the one-face frame, and the four for the 2x2 four-face frame
ONE_FACE = "faces/barack_obama/1.jpg"
FOUR_FACES = (
    "faces/joe_biden/2.jpg",
    "faces/kit_harington/2.jpg",
    "faces/rose_leslie/1.jpg",
    "faces/alex_lacamoire/2.png",
)
#: face height as a fraction of the frame: 0.4 of 480 px ~ a citizen at arm's length
#: in front of a 640x480 terminal camera; in the 2x2 frame 0.45 of a 240 px cell
#: (~108 px), so all four are found at minimum face 80 px too
ONE_FACE_FRACTION = 0.4
FOUR_FACE_FRACTION = 0.45


class Recorder:
    """Wraps an OnnxModel's ``run`` to keep a copy of every input it is given."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.inputs: list[np.ndarray] = []
        self._run = model.run
        model.run = self._record  # type: ignore[method-assign]

    def _record(self, x: np.ndarray) -> list[np.ndarray]:
        self.inputs.append(x.copy())
        return self._run(x)

    def bare(self) -> Callable[[], None]:
        """A function making exactly the recorded session.run calls, nothing else."""
        sess, name, outs, inputs = (
            self.model.session,
            self.model.input_name,
            self.model.output_names,
            list(self.inputs),
        )

        def run() -> None:
            for x in inputs:
                sess.run(outs, {name: x})

        return run

    def restore(self) -> None:
        self.model.run = self._run  # type: ignore[method-assign]


def framed(
    image: np.ndarray, box: np.ndarray, fraction: float, size: tuple[int, int]
) -> np.ndarray:
    """A size=(w, h) frame cut around ``box`` so the face is ``fraction`` of its height."""
    w, h = size
    face_h = float(box[3] - box[1])
    crop_h = face_h / fraction
    crop_w = crop_h * w / h
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    m = np.array(
        [[w / crop_w, 0, w / 2 - cx * w / crop_w], [0, h / crop_h, h / 2 - cy * h / crop_h]]
    )
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def make_frames(pipe: FacePipeline) -> dict[str, np.ndarray]:
    def main_box(path: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(MEDIA / path)
        found = pipe.detect(image, 40)
        return image, found.boxes[found.largest()]

    one = framed(*main_box(ONE_FACE), ONE_FACE_FRACTION, (640, 480))
    cells = [framed(*main_box(p), FOUR_FACE_FRACTION, (320, 240)) for p in FOUR_FACES]
    four = np.vstack([np.hstack(cells[:2]), np.hstack(cells[2:])])
    return {"1 face": np.ascontiguousarray(one), "4 faces": np.ascontiguousarray(four)}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def bench_frame(pipe: FacePipeline, frame: np.ndarray, min_face: int, reps: int) -> dict[str, Any]:
    """Interleave pipeline stages and the bare model calls on the same inputs."""
    det: Any = pipe.detector
    emb: Any = pipe.embedder
    recs = [Recorder(m) for m in (det.pnet, det.rnet, det.onet)]
    found = pipe.detect(frame, min_face)
    for r in recs:
        r.restore()
    bare_detect = [r.bare() for r in recs]
    crops = pipe.aligner.crops(frame, found)
    x = emb.standardise(crops) if len(crops) else None

    def bare_embed() -> None:
        if x is not None:
            emb.model.session.run(emb.model.output_names, {emb.model.input_name: x})

    names = ("detect", "crop", "embed", "frame", "bare_detect", "bare_embed", "bare_frame")
    t: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in ("detect", "embed", "bare_detect", "bare_embed")}
    wall, proc = time.perf_counter, time.process_time
    for i in range(reps + 2):  # two warm-up rounds
        t0, c0 = wall(), proc()
        d = pipe.detect(frame, min_face)
        t1, c1 = wall(), proc()
        c = pipe.aligner.crops(frame, d)
        t2, c2 = wall(), proc()
        if len(d):
            pipe.embedder.embed(c)
        t3, c3 = wall(), proc()
        for f in bare_detect:
            f()
        t4, c4 = wall(), proc()
        bare_embed()
        t5, c5 = wall(), proc()
        if i >= 2:
            t["detect"].append(t1 - t0)
            t["crop"].append(t2 - t1)
            t["embed"].append(t3 - t2)
            t["frame"].append(t3 - t0)
            t["bare_detect"].append(t4 - t3)
            t["bare_embed"].append(t5 - t4)
            t["bare_frame"].append(t5 - t3)
            cpu["detect"].append(c1 - c0)
            cpu["embed"].append(c3 - c2)
            cpu["bare_detect"].append(c4 - c3)
            cpu["bare_embed"].append(c5 - c4)
    out: dict[str, Any] = {"faces": len(found)}
    for k, v in t.items():
        out[f"{k}_p50"] = pct(v, 50)
        out[f"{k}_p95"] = pct(v, 95)
    for k, v in cpu.items():
        out[f"cpu_{k}_p50"] = pct(v, 50)
    out["detect_ratio"] = out["detect_p50"] / out["bare_detect_p50"]
    out["frame_ratio"] = out["frame_p50"] / out["bare_frame_p50"]
    return out


def _stage(r: dict[str, Any], k: str) -> str:
    ratio = r[f"{k}_p50"] / r[f"bare_{k}_p50"] if r[f"bare_{k}_p50"] else float("nan")
    return (
        f"{r[f'{k}_p50']:5.1f}/{r[f'{k}_p95']:5.1f} (bare {r[f'bare_{k}_p50']:5.1f}, x{ratio:.2f})"
    )


def bench_embed(pipe: FacePipeline, crops: np.ndarray, reps: int) -> dict[str, float]:
    emb: Any = pipe.embedder
    out = {}
    for n in (1, 4):
        batch = crops[:n]
        x = emb.standardise(batch)
        ts, tb = [], []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            pipe.embedder.embed(batch)
            t1 = time.perf_counter()
            emb.model.session.run(emb.model.output_names, {emb.model.input_name: x})
            t2 = time.perf_counter()
            if i:
                ts.append((t1 - t0) / n)
                tb.append((t2 - t1) / n)
        out[f"b{n}_p50"], out[f"b{n}_p95"] = pct(ts, 50), pct(ts, 95)
        out[f"b{n}_bare_p50"] = pct(tb, 50)
    return out


def bench_clip(pipe: FacePipeline, max_frames: int) -> dict[str, float]:
    source = VideoFileSource(MEDIA / "video" / "hamilton_clip.mp4", realtime=False)
    source.open()
    decode = work = cpu = 0.0
    frames = faces = 0
    try:
        while frames < max_frames:
            t0 = time.perf_counter()
            fr = source.read()
            if fr is None:
                break
            rgb = np.ascontiguousarray(fr.image[:, :, ::-1])
            t1, c1 = time.perf_counter(), time.process_time()
            faces += len(pipe.analyse(rgb))
            t2, c2 = time.perf_counter(), time.process_time()
            decode += t1 - t0
            work += t2 - t1
            cpu += c2 - c1
            frames += 1
    finally:
        source.close()
    return {
        "frames": frames,
        "faces": faces,
        "fps": frames / work,
        "fps_with_decode": frames / (work + decode),
        # frames per second of CPU time (all threads): the rate one free core would give
        "fps_per_cpu_s": frames / cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 minute)")
    ap.add_argument("--config", help="terminal configuration TOML (threads, providers)")
    ap.add_argument("--providers", help="onnxruntime execution providers in order, comma "
                    "separated, instead of [runtime] providers (e.g. TensorrtExecutionProvider,"
                    "CUDAExecutionProvider,CPUExecutionProvider on a Jetson)")
    # The bare-call columns time one onnxruntime session per stage; the fused default pack
    # has two embedder sessions (FaceNet and dlib), so this bench measures a single-model
    # pack: FaceNet, which the fused pack runs too. bench/fused_cost.py times the fused
    # embedder against FaceNet alone.
    ap.add_argument("--pack", default="mtcnn-facenet",
                    help="single-embedder model pack to measure (default mtcnn-facenet)")
    args = ap.parse_args()
    reps = 15 if args.quick else 60
    clip_frames = 100 if args.quick else 10_000

    if not (MEDIA / "faces").is_dir():
        print(f"bench: sample media not found at {MEDIA} (set MOTCUA_MEDIA)", file=sys.stderr)
        return 1
    try:
        cfg = load_config(Path(args.config) if args.config else None)
        cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, pack=args.pack))
        if args.providers is not None:
            chosen = tuple(p.strip() for p in args.providers.split(",") if p.strip())
            runtime = dataclasses.replace(cfg.runtime, providers=chosen)
            runtime.validate("--providers (runtime)")
            cfg = dataclasses.replace(cfg, runtime=runtime)
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    pipe = load_pipeline(cfg)
    used = pipe.embedder.model.providers  # type: ignore[attr-defined]
    print(
        f"pipeline: pack {cfg.models.pack}, embedder {pipe.embedder_id}, onnxruntime threads "
        f"{cfg.runtime.intra_op_threads or 'auto'}, providers {','.join(cfg.runtime.providers)} "
        f"(embedder runs on {','.join(used)}); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other processes share them)"
    )
    frames = make_frames(pipe)
    rows = {}
    print("\nper frame, ms: pipeline stage p50/p95 | bare onnxruntime calls p50 | ratio")
    for min_face in (80, 40):
        for name, frame in frames.items():
            r = bench_frame(pipe, frame, min_face, reps)
            rows[(min_face, name)] = r
            print(
                f"  640x480 {name:7s} min face {min_face:2d}: found {r['faces']}  "
                f"detect {_stage(r, 'detect')}  crop {r['crop_p50']:4.2f}  "
                f"embed {_stage(r, 'embed')}  frame {_stage(r, 'frame')}\n"
                f"{'':34s}CPU time p50: detect {r['cpu_detect_p50']:5.1f} "
                f"(bare {r['cpu_bare_detect_p50']:5.1f})  embed {r['cpu_embed_p50']:5.1f} "
                f"(bare {r['cpu_bare_embed_p50']:5.1f})"
            )
    four = frames["4 faces"]
    d4 = pipe.detect(four, 40)
    crops = pipe.aligner.crops(four, d4)
    e = bench_embed(pipe, crops, reps)
    print(
        f"\nembed, ms per face: batch 1 {e['b1_p50']:.1f}/{e['b1_p95']:.1f} "
        f"(bare {e['b1_bare_p50']:.1f}), batch 4 {e['b4_p50']:.1f}/{e['b4_p95']:.1f} "
        f"(bare {e['b4_bare_p50']:.1f})"
    )
    c = bench_clip(pipe, clip_frames)
    print(
        f"\nhamilton clip at min face {cfg.detector.min_face}: {c['frames']} frames, "
        f"{c['faces']} faces, {c['fps']:.1f} frames/s (pipeline), "
        f"{c['fps_with_decode']:.1f} with decoding; {c['fps_per_cpu_s']:.1f} frames per "
        "CPU-second"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peak RSS {peak:.0f} MB")

    main_row = rows[(80, "1 face")]
    figures = {
        "detect_ms_p50": round(main_row["detect_p50"], 2),
        "detect_ms_p95": round(main_row["detect_p95"], 2),
        "detect_ms_p50_min40": round(rows[(40, "1 face")]["detect_p50"], 2),
        "detect_ms_p50_4faces": round(rows[(80, "4 faces")]["detect_p50"], 2),
        "detect_ms_p50_4faces_min40": round(rows[(40, "4 faces")]["detect_p50"], 2),
        "bare_detect_ms_p50": round(main_row["bare_detect_p50"], 2),
        "detect_cpu_ms_p50": round(main_row["cpu_detect_p50"], 2),
        "bare_detect_cpu_ms_p50": round(main_row["cpu_bare_detect_p50"], 2),
        "embed_cpu_ms_p50": round(main_row["cpu_embed_p50"], 2),
        "detect_overhead_ratio": round(main_row["detect_ratio"], 3),
        "embed_ms_p50": round(e["b1_p50"], 2),
        "embed_ms_p95": round(e["b1_p95"], 2),
        "embed_ms_per_face_b4_p50": round(e["b4_p50"], 2),
        "bare_embed_ms_p50": round(e["b1_bare_p50"], 2),
        "frame_ms_p50": round(main_row["frame_p50"], 2),
        "clip_fps": round(c["fps"], 2),
        "clip_fps_with_decode": round(c["fps_with_decode"], 2),
        "clip_frames_per_cpu_s": round(c["fps_per_cpu_s"], 2),
        "clip_frames": c["frames"],
        "overhead_ratio": round(main_row["frame_ratio"], 3),
        "peak_rss_mb": round(peak, 1),
        "load_avg": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        # the providers asked for, and those the embedder's session really runs on
        "providers": list(cfg.runtime.providers),
        "embedder_providers": list(used),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
