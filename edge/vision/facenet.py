"""FaceNet embedder (Inception-ResNet-v1, 512-d) on onnxruntime, in batches.

Input: RGB crops (n, 160, 160, 3) uint8. Each crop is "prewhitened" as the model was
trained: ``(x - mean) / max(std, 1/sqrt(x.size))`` over the whole crop. Output: unit
length 512-d embeddings, so cosine similarity is a dot product.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge.config import Config, RuntimeConfig
from edge.errors import ModelError
from edge.vision.align import MarginCrop
from edge.vision.runtime import OnnxModel
from edge.vision.types import FloatArray

if TYPE_CHECKING:
    from models.pack import EmbedderSpec

#: crops per onnxruntime call: batching amortises per-call and per-layer overhead
#: (~16 ms a face at 4 against ~21 ms at 1 here); beyond 8 the gain is nil and the
#: activations of a 160 px Inception-ResNet grow by ~25 MB a crop
MAX_BATCH = 8


def prewhiten(crops: npt.NDArray[np.uint8]) -> FloatArray:
    """Per-crop standardisation to zero mean and unit variance (float32, same shape)."""
    x = crops.astype(np.float32)
    n = x[0].size if len(x) else 1
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    x -= mean
    x /= np.maximum(std, 1.0 / np.sqrt(n))
    return x


class FacenetEmbedder:
    """The FaceNet ONNX model behind the :class:`~edge.vision.types.Embedder` interface."""

    def __init__(
        self, path: Path, runtime: RuntimeConfig, embedder_id: str, dim: int = 512, size: int = 160
    ) -> None:
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
        out = np.empty((len(crops), self.dim), np.float32)
        for start in range(0, len(crops), MAX_BATCH):
            batch = prewhiten(crops[start : start + MAX_BATCH])
            (emb,) = self.model.run(batch)
            if emb.shape != (len(batch), self.dim):
                raise ModelError(
                    f"embedder output {emb.shape}, expected ({len(batch)}, {self.dim})"
                )
            out[start : start + len(batch)] = emb
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out


def build_embedder(spec: EmbedderSpec, config: Config) -> FacenetEmbedder:
    """The embedder of a model pack (``[embedder]`` of its manifest)."""
    if spec.layout != "NHWC" or spec.color != "RGB" or spec.preprocessing != "prewhiten":
        raise ModelError(
            f"model pack embedder {spec.id}: facenet takes NHWC RGB prewhitened crops, "
            f"manifest says {spec.layout} {spec.color} {spec.preprocessing}"
        )
    h, w = spec.input_size
    if h != w:
        raise ModelError(f"model pack embedder {spec.id}: input_size must be square")
    return FacenetEmbedder(spec.path, config.runtime, spec.id, dim=spec.dim, size=h)


def build_aligner(spec: EmbedderSpec, config: Config) -> MarginCrop:
    """FaceNet's crops: the detector box plus the pack's margin (see docs/pipeline.md)."""
    return MarginCrop(size=spec.input_size[0], margin=spec.margin)
