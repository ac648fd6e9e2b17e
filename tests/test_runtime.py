"""onnxruntime sessions: the per-CPU optimised copy of a model gives the same outputs,
is made once, and a failure to make it only costs memory (the model still loads)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core.errors import ModelError
from edge.config import RuntimeConfig, config_from_dict
from faces.pipeline import FacePipeline
from faces.runtime import OPTIMIZED_DIR, OnnxModel, _prepare_engine_cache, execution_providers


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


JETSON = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
#: what NVIDIA's onnxruntime-gpu build for JetPack 6 reports
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_jetson_settings_map_to_onnxruntime_provider_options(tmp_path: Path) -> None:
    rt = config_from_dict({"runtime": {
        "providers": list(JETSON), "device_id": 1, "trt_fp16": True,
        "trt_engine_cache_dir": str(tmp_path / "trt")}}).runtime
    assert execution_providers(rt, GPU_BUILD) == [
        ("TensorrtExecutionProvider", {
            "device_id": 1, "trt_fp16_enable": True,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "trt")}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        ("CPUExecutionProvider", {}),
    ]
    # defaults: device 0, full precision, no engine cache
    rt = RuntimeConfig(providers=JETSON)
    assert execution_providers(rt, GPU_BUILD)[:2] == [
        ("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": False}),
        ("CUDAExecutionProvider", {"device_id": 0}),
    ]


def test_providers_missing_from_the_build_are_skipped_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    rt = RuntimeConfig(providers=JETSON)
    with caplog.at_level(logging.WARNING, logger="faces.runtime"):
        got = execution_providers(rt, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got == [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]
    assert "TensorrtExecutionProvider is not available here; skipped" in caplog.text
    # nothing configured is there: the CPU, which every build has
    only_gpu = RuntimeConfig(providers=("CUDAExecutionProvider",))
    assert execution_providers(only_gpu, ["CPUExecutionProvider"]) == [
        ("CPUExecutionProvider", {})]


def test_the_jetson_providers_load_on_any_build(pnet_copy: Path, tmp_path: Path) -> None:
    """The Jetson configuration loads on whatever onnxruntime is installed: on this
    machine's CPU-only build the GPU providers are skipped and the model runs on the CPU
    (so one config file works on both); on a GPU build they are all used."""
    rt = RuntimeConfig(intra_op_threads=1, providers=JETSON,
                       trt_engine_cache_dir=tmp_path / "trt")
    have = ort.get_available_providers()
    model = OnnxModel(pnet_copy, rt)
    assert model.providers == [p for p in JETSON if p in have]
    # the cache folder is made only when TensorRT will use it
    assert (tmp_path / "trt").is_dir() == ("TensorrtExecutionProvider" in have)


def test_an_unwritable_engine_cache_is_a_model_error(pnet_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the cache folder's parent would go")
    rt = RuntimeConfig(providers=("TensorrtExecutionProvider",),
                       trt_engine_cache_dir=tmp_path / "file" / "trt")
    with pytest.raises(ModelError, match="trt_engine_cache_dir: cannot create"):
        _prepare_engine_cache(rt, ["TensorrtExecutionProvider"])
