"""FaceNet embedder (Inception-ResNet-v1, 512-d) on onnxruntime, in batches.

Input: RGB crops (n, 160, 160, 3) uint8, standardised as the pack's ``preprocessing``
says: ``fixed_standardization`` ``(x - 127.5) / 128``, what the 2018 FaceNet models
were trained with (the upstream README: "the models use fixed image standardization"),
or ``prewhiten`` ``(x - mean) / max(std, 1/sqrt(x.size))`` per crop, the older models'
input. Output: unit-length 512-d embeddings, so cosine similarity is a dot product.
docs/pipeline.md has the measurements that chose the default pack's setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from core.errors import ModelError
from faces.align import MarginCrop
from faces.runtime import OnnxModel
from faces.settings import PipelineSettings, RuntimeConfig
from faces.types import FloatArray

if TYPE_CHECKING:
    from models.pack import EmbedderSpec

#: crops per onnxruntime call: batching amortises per-call and per-layer overhead
#: (~16 ms a face at 4 against ~21 ms at 1 here); beyond 8 the gain is nil and the
#: activations of a 160 px Inception-ResNet grow by ~25 MB a crop
MAX_BATCH = 8


def fixed_standardization(crops: npt.NDArray[np.uint8]) -> FloatArray:
    """uint8 -> float32 in [-1, 1): (x - 127.5) / 128, the same for every crop."""
    x = crops.astype(np.float32)
    x -= 127.5
    x *= 1.0 / 128.0
    return x


def prewhiten(crops: npt.NDArray[np.uint8]) -> FloatArray:
    """Per-crop standardisation to zero mean and unit variance (float32, same shape)."""
    x = crops.astype(np.float32)
    n = x[0].size if len(x) else 1
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    x -= mean
    x /= np.maximum(std, 1.0 / np.sqrt(n))
    return x


#: the preprocessing names a manifest may give, and what they do
PREPROCESSING: dict[str, Callable[[npt.NDArray[np.uint8]], FloatArray]] = {
    "fixed_standardization": fixed_standardization,
    "prewhiten": prewhiten,
}


class FacenetEmbedder:
    """The FaceNet ONNX model behind the :class:`~faces.types.Embedder` interface."""

    def __init__(
        self,
        path: Path,
        runtime: RuntimeConfig,
        embedder_id: str,
        dim: int = 512,
        size: int = 160,
        preprocessing: str = "fixed_standardization",
        flip: bool = False,
    ) -> None:
        if preprocessing not in PREPROCESSING:
            raise ModelError(
                f"facenet preprocessing {preprocessing!r} unknown "
                f"(known: {', '.join(sorted(PREPROCESSING))})"
            )
        self.standardise = PREPROCESSING[preprocessing]
        #: test-time flip: a face's embedding is the unit mean of its crop's and its
        #: mirror's (twice the model runs; docs/recognition.md has what it gains)
        self.flip = flip
        self.model = OnnxModel(path, runtime)
        self.embedder_id = embedder_id
        self.dim = dim
        self.size = size
        shape = self.model.session.get_inputs()[0].shape
        if list(shape[1:]) != [size, size, 3]:
            raise ModelError(f"{path.name}: input shape {shape}, expected [n, {size}, {size}, 3]")

    def embed(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """Unit-length embeddings float32 (n, dim) for uint8 crops (n, size, size, 3)."""
        if crops.ndim != 4 or crops.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected crops (n, {self.size}, {self.size}, 3), got {crops.shape}")
        out = self._embed_unit(crops)
        if self.flip:
            out += self._embed_unit(np.ascontiguousarray(crops[:, :, ::-1]))
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _embed_unit(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        out = np.empty((len(crops), self.dim), np.float32)
        for start in range(0, len(crops), MAX_BATCH):
            batch = self.standardise(crops[start : start + MAX_BATCH])
            (emb,) = self.model.run(batch)
            if emb.shape != (len(batch), self.dim):
                raise ModelError(
                    f"embedder output {emb.shape}, expected ({len(batch)}, {self.dim})"
                )
            out[start : start + len(batch)] = emb
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out


def build_embedder(spec: EmbedderSpec, config: PipelineSettings) -> FacenetEmbedder:
    """The embedder of a model pack (``[embedder]`` of its manifest)."""
    if spec.layout != "NHWC" or spec.color != "RGB":
        raise ModelError(
            f"model pack embedder {spec.id}: facenet takes NHWC RGB crops, "
            f"manifest says {spec.layout} {spec.color}"
        )
    h, w = spec.input_size
    if h != w:
        raise ModelError(f"model pack embedder {spec.id}: input_size must be square")
    flip = spec.params.get("flip", False)
    if not isinstance(flip, bool):
        raise ModelError(f"model pack embedder {spec.id}: flip must be true or false")
    return FacenetEmbedder(
        spec.path, config.runtime, spec.id, dim=spec.dim, size=h,
        preprocessing=spec.preprocessing, flip=flip,
    )


def build_aligner(spec: EmbedderSpec, config: PipelineSettings) -> MarginCrop:
    """FaceNet's crops: the detector box plus the pack's margin (see docs/pipeline.md)."""
    return MarginCrop(size=spec.input_size[0], margin=spec.margin)
