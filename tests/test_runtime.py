"""onnxruntime sessions: the per-CPU optimised copy of a model gives the same outputs,
is made once, and a failure to make it only costs memory (the model still loads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core.errors import ModelError
from edge.config import RuntimeConfig
from faces.pipeline import FacePipeline
from faces.runtime import OPTIMIZED_DIR, OnnxModel


@pytest.fixture(scope="module")
def pnet_copy(face_pipeline: FacePipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pack's P-Net copied into a fresh model dir (so no optimised copy exists yet)."""
    src = face_pipeline.detector.pnet.path  # type: ignore[attr-defined]
    dst = tmp_path_factory.mktemp("models") / "pack" / "pnet.onnx"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


def test_optimised_copy_is_made_once_and_gives_the_same_outputs(pnet_copy: Path) -> None:
    rt = RuntimeConfig(intra_op_threads=1)
    first = OnnxModel(pnet_copy, rt)
    made = list((pnet_copy.parent.parent / OPTIMIZED_DIR).glob("pack-pnet-*.onnx"))
    assert len(made) == 1 and first.loaded_from == made[0]
    stamp = made[0].stat().st_mtime_ns
    second = OnnxModel(pnet_copy, rt)
    assert second.loaded_from == made[0] and made[0].stat().st_mtime_ns == stamp

    # a rebuilt pack file (new bytes, new time) gets a new copy; the old one is removed
    stale = made[0]
    pnet_copy.write_bytes(pnet_copy.read_bytes())
    third = OnnxModel(pnet_copy, rt)
    now = list((pnet_copy.parent.parent / OPTIMIZED_DIR).glob("pack-pnet-*.onnx"))
    assert now == [third.loaded_from] and third.loaded_from != stale and not stale.exists()

    plain = ort.InferenceSession(str(pnet_copy), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).uniform(-1, 1, (1, 160, 120, 3)).astype(np.float32)
    want = plain.run(None, {first.input_name: x})
    for got, ref in zip(first.run(x), want, strict=True):
        assert np.allclose(got, ref, atol=1e-5)


def test_without_a_writable_cache_the_model_still_loads(pnet_copy: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "ro"
    (model_dir / "pack").mkdir(parents=True)
    shutil.copy(pnet_copy, model_dir / "pack" / "pnet.onnx")
    (model_dir / OPTIMIZED_DIR).write_text("a file where the cache folder would go")
    model = OnnxModel(model_dir / "pack" / "pnet.onnx", RuntimeConfig(intra_op_threads=1))
    assert model.loaded_from == model_dir / "pack" / "pnet.onnx"
    assert len(model.run(np.zeros((1, 24, 24, 3), np.float32))) == 2


def test_unloadable_model_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "pack" / "broken.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="cannot load model"):
        OnnxModel(bad, RuntimeConfig())
