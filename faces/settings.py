"""Settings of the face pipeline: which model pack, onnxruntime options, detector.

They are sections of both applications' configuration files (``[models]``, ``[runtime]``,
``[detector]``); the pipeline takes any object that has the three (:class:`PipelineSettings`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

from core.errors import ConfigError
from core.tomlconfig import build_section, read_toml
from models.settings import DEFAULT_MODEL_DIR, DEFAULT_PACK, ModelsConfig

__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_PACK", "DetectorConfig", "FaceSettings", "ModelsConfig",
           "PipelineSettings", "RuntimeConfig", "load_face_settings"]

#: onnxruntime's names of the execution providers this project configures
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"

@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """onnxruntime session options (per process).

    On a Jetson Orin (NVIDIA's onnxruntime-gpu build) the usual choice is
    ``providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider",
    "CPUExecutionProvider"]``: TensorRT runs what it supports, CUDA what it does not, the CPU
    the rest. ``faces.runtime.execution_providers`` maps these settings to onnxruntime's
    provider options.
    """

    #: threads inside one operator; 0 lets onnxruntime pick (all cores)
    intra_op_threads: int = 0
    #: execution providers in order of preference; ones this onnxruntime build lacks are
    #: skipped with a warning; the CPU, when listed, must come last (it runs everything,
    #: so nothing after it would get a node)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: let idle onnxruntime worker threads spin for the next call; faster by a fraction
    #: of a millisecond per call but burns CPU the camera and display need on a 2-core box
    spin_wait: bool = False
    #: threads for the face detector's networks, 0 = intra_op_threads. MTCNN's networks
    #: are small: on a 640x480 frame 1 thread was as fast as 2 for one face (7.1 vs 7.8 ms
    #: at min face 80, 12.8 vs 13.0 at 40) and slower only for four faces at 40 px (44
    #: vs 35 ms), so 1 leaves a core to the camera and display at little cost
    detector_threads: int = 0
    #: the GPU that CUDA and TensorRT run on (a Jetson has one: 0)
    device_id: int = 0
    #: where TensorRT keeps the engines it builds (created if missing). Building one takes
    #: minutes on a Jetson; without a cache every start builds them again. Unset: no cache
    trt_engine_cache_dir: Path | None = None
    #: TensorRT computes in half precision: faster, but scores move slightly, so check the
    #: match threshold on the device (bench/pipeline.py) before turning it on
    trt_fp16: bool = False

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.intra_op_threads < 0:
            raise ConfigError(f"{p}intra_op_threads: must be 0 (automatic) or more")
        if self.detector_threads < 0:
            raise ConfigError(f"{p}detector_threads: must be 0 (as intra_op_threads) or more")
        if not self.providers:
            raise ConfigError(f"{p}providers: list at least one (e.g. \"CPUExecutionProvider\")")
        if len(set(self.providers)) != len(self.providers):
            raise ConfigError(f"{p}providers: {list(self.providers)} names one twice")
        if CPU_PROVIDER in self.providers and self.providers[-1] != CPU_PROVIDER:
            raise ConfigError(f"{p}providers: {CPU_PROVIDER} must be last (it takes every "
                              f"node, so the providers after it would never run)")
        if self.device_id < 0:
            raise ConfigError(f"{p}device_id: must be 0 or more")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Face detector settings (thresholds come from the pack unless set here)."""

    #: smallest face side in pixels to look for; 40 px is the smallest a 640x480 camera
    #: gives for a person at arm's length plus a step back
    min_face: int = 40
    #: P-Net, R-Net, O-Net score thresholds; empty = the model pack's values
    thresholds: tuple[float, ...] = ()

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.min_face < 12:
            raise ConfigError(f"{p}min_face: must be at least 12 (the detector's window)")
        if self.thresholds and (
            len(self.thresholds) != 3 or not all(0.0 < t < 1.0 for t in self.thresholds)
        ):
            raise ConfigError(f"{p}thresholds: expected 3 numbers between 0 and 1")



class PipelineSettings(Protocol):
    """What the face pipeline reads from a configuration tree."""

    @property
    def models(self) -> ModelsConfig: ...

    @property
    def runtime(self) -> RuntimeConfig: ...

    @property
    def detector(self) -> DetectorConfig: ...


@dataclasses.dataclass(frozen=True)
class FaceSettings:
    """The three pipeline sections alone (tools and tests that have no config file)."""

    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detector: DetectorConfig = DetectorConfig()


def load_face_settings(path: Path | None) -> FaceSettings:
    """The ``[models]``, ``[runtime]`` and ``[detector]`` tables of a terminal's or a
    district's configuration file (its other tables are the application's business)."""
    if path is None:
        return FaceSettings()
    data = read_toml(path)
    picked = {k: v for k, v in data.items() if k in ("models", "runtime", "detector")}
    return build_section(FaceSettings, picked)
