"""The face pipeline on an NVIDIA GPU (a Jetson Orin, or a PC with onnxruntime-gpu): every
model really runs on CUDA, and it finds and recognises the same person as the CPU.

This is the project's one test that may skip: on a machine without an NVIDIA GPU, or with
the CPU-only onnxruntime, there is nothing to run it on, and it says which of the two.
"""

from __future__ import annotations

import dataclasses
import glob
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.camera.file import VideoFileSource
from edge.config import Config, RuntimeConfig
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline, load_pipeline

CUDA = "CUDAExecutionProvider"
#: frames of the clip where Lin-Manuel Miranda faces the camera (tests/test_video.py)
HIS_FRAMES = range(100, 200, 10)


def _gpu_or_reason() -> str | None:
    """None when this machine can run onnxruntime on an NVIDIA GPU, else why not."""
    have = ort.get_available_providers()
    if CUDA not in have:
        return (f"no NVIDIA GPU build of onnxruntime here (providers {have}); install "
                "onnxruntime-gpu (NVIDIA's wheel on a Jetson: deploy/jetson)")
    # a desktop driver makes /dev/nvidia0; a Jetson's integrated GPU is /dev/nvgpu or
    # /dev/nvhost-gpu (L4T); nvidia-smi exists on either when the driver is installed
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/nvgpu*") + \
        glob.glob("/dev/nvhost-gpu")
    if not nodes and shutil.which("nvidia-smi") is None:
        return "onnxruntime has CUDA but there is no NVIDIA GPU device (/dev/nvidia*, nvgpu)"
    return None


@pytest.fixture(scope="module")
def gpu_pipeline() -> FacePipeline:
    reason = _gpu_or_reason()
    if reason:
        pytest.skip(reason)
    cfg = dataclasses.replace(Config(), runtime=RuntimeConfig(
        providers=(CUDA, "CPUExecutionProvider")))
    return load_pipeline(cfg)


def test_pipeline_runs_on_cuda_and_agrees_with_the_cpu(
    gpu_pipeline: FacePipeline, face_pipeline: FacePipeline, media_dir: Path
) -> None:
    det = gpu_pipeline.detector
    for model in (det.pnet, det.rnet, det.onet, gpu_pipeline.embedder.model):  # type: ignore[attr-defined]
        assert model.providers[0] == CUDA, f"{model.path.name} runs on {model.providers}"

    ref_image = read_image(media_dir / "faces" / "lin_manuel_miranda" / "1.png")
    ref_faces = gpu_pipeline.detect(ref_image)
    reference = gpu_pipeline.embed(ref_image, ref_faces.take([ref_faces.largest()]))[0]

    source = VideoFileSource(media_dir / "video" / "hamilton_clip.mp4", realtime=False)
    source.open()
    matched = 0
    try:
        while (frame := source.read()) is not None and frame.index <= HIS_FRAMES[-1]:
            if frame.index not in HIS_FRAMES:
                continue
            rgb = np.ascontiguousarray(frame.image[:, :, ::-1])
            on_gpu = gpu_pipeline.analyse(rgb)
            on_cpu = face_pipeline.analyse(rgb)
            assert len(on_gpu.detections) == len(on_cpu.detections), frame.index
            for g in on_gpu.embeddings:
                # the same network in float32 on another device: equal to rounding (the
                # order of two faces with near-equal scores may differ, hence the max)
                assert float(np.max(on_cpu.embeddings @ g)) > 0.999, frame.index
            if any(gpu_pipeline.same_person(gpu_pipeline.similarity(e, reference))
                   for e in on_gpu.embeddings):
                matched += 1
    finally:
        source.close()
    assert matched >= len(HIS_FRAMES) - 1, f"recognised in {matched} of {len(HIS_FRAMES)}"
