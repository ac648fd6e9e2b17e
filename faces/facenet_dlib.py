"""FaceNet fused with dlib's ResNet: one 640-d embedding per face (pack kind ``facenet_dlib``).

Each face is embedded twice from the same MTCNN detection: FaceNet on its margin crop
(as the mtcnn-facenet pack) and dlib's ResNet v1 (converted to ONNX by
``models/dlib_convert.py``) on a 150 px chip, the least-squares similarity of MTCNN's
five points to where they sit in dlib's own chips (one ``warpAffine``). dlib's unit
descriptor ``d`` is centred by a shipped mean descriptor ``c`` (a population statistic,
``d_c = (d - c) / |d - c|``), and the embedding is the unit vector

    [sqrt(w) f, sqrt(1 - w) d_c]      (f: FaceNet's unit embedding, w: fusion_weight)

whose cosine is ``w cos_facenet + (1 - w) cos_dlib_centred``: the store, the HNSW index,
the district's calibration and ``decide()`` work on it unchanged. docs/recognition.md
("Second embedder") has the measurements behind every setting.

The aligner's output per face is FaceNet's crop and dlib's chip side by side in one
uint8 image (``crop_sheet``), so the pipeline's detector -> aligner -> embedder chain and
every caller of ``aligner.crops`` / ``embedder.embed`` stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from core.errors import ModelError
from faces.align import MarginCrop
from faces.facenet import FacenetEmbedder
from faces.runtime import OnnxModel
from faces.settings import PipelineSettings, RuntimeConfig
from faces.types import Detections, FloatArray, Image
from models.pack import data_file

if TYPE_CHECKING:
    from models.pack import EmbedderSpec

#: chips per onnxruntime call for dlib's graph: as FaceNet's MAX_BATCH (per-call overhead
#: amortised; dlib's 150 px activations are smaller than FaceNet's, ~6 MB a chip)
MAX_BATCH = 8
#: the header of a centring vector file (the lines after it are the floats, one a line)
CENTRE_HEADER = (
    "# dlib ResNet v1 (dlib_resnet_v1.onnx) mean unit descriptor, {n} float32 values, one a line.",
    "# Population statistic (no image, no person): {source}",
    "# Made by bench/fused_centre.py (docs/models.md, \"The fused pack\").",
)


def similarity_lsq(src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64]
                   ) -> npt.NDArray[np.float64]:
    """2x3 similarity (rotation, uniform scale, shift) mapping ``src`` points onto ``dst``
    in the least-squares sense (Umeyama 1991), every point counted (no RANSAC)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / max(a.var(0).sum(), 1e-12))
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - scale * rot @ ms
    return m


class DlibChipAlign:
    """dlib's chip from MTCNN's five landmarks: one warpAffine to the pack's template."""

    def __init__(self, template: npt.ArrayLike, size: int = 150) -> None:
        self.template = np.asarray(template, np.float64).reshape(5, 2)
        self.size = size

    def crops(self, image: Image, faces: Detections) -> npt.NDArray[np.uint8]:
        """One RGB chip per face, uint8 (n, size, size, 3)."""
        out = np.zeros((len(faces), self.size, self.size, 3), np.uint8)
        for k, pts in enumerate(faces.landmarks):
            m = similarity_lsq(pts.astype(np.float64), self.template)
            cv2.warpAffine(image, m, (self.size, self.size), dst=out[k],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out


class PairAlign:
    """FaceNet's margin crop and dlib's chip of each face, side by side in one image:
    (n, max(a, b), a + b, 3) for a FaceNet crop of a px and a chip of b px."""

    def __init__(self, first: MarginCrop, second: DlibChipAlign) -> None:
        self.first, self.second = first, second
        #: FaceNet's crop side (the left part of each sheet)
        self.size = first.size
        self.height = max(first.size, second.size)
        self.width = first.size + second.size

    def crops(self, image: Image, faces: Detections) -> npt.NDArray[np.uint8]:
        """Crop sheets uint8 (n, height, width, 3), one per face."""
        out = np.zeros((len(faces), self.height, self.width, 3), np.uint8)
        a, b = self.first.size, self.second.size
        out[:, :a, :a] = self.first.crops(image, faces)
        out[:, :b, a:] = self.second.crops(image, faces)
        return out


def read_centre(path: Path, dim: int) -> FloatArray:
    """The centring vector of a text file (``#`` comment lines, then ``dim`` floats)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
        values = [float(ln) for ln in lines if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"centring vector {path}: unreadable ({exc})") from None
    vec = np.array(values, np.float32)
    if vec.shape != (dim,) or not np.isfinite(vec).all():
        raise ModelError(f"centring vector {path}: expected {dim} finite floats, "
                         f"got {len(values)}")
    return vec


def format_centre(mean: npt.ArrayLike, source: str) -> str:
    """The text of a centring vector file: the header (``source`` says what it was made
    from) and the float32 values, one a line (repr: exact round trip)."""
    vec = np.asarray(mean, np.float32).reshape(-1)
    head = [line.format(n=len(vec), source=source) for line in CENTRE_HEADER]
    return "\n".join(head + [repr(float(v)) for v in vec]) + "\n"


class DlibModel:
    """dlib's ResNet as ONNX: uint8 chips (n, s, s, 3) RGB -> unit descriptors (n, dim)."""

    def __init__(self, path: Path, runtime: RuntimeConfig, dim: int = 128, size: int = 150
                 ) -> None:
        self.model = OnnxModel(path, runtime)
        self.dim, self.size = dim, size
        shape = self.model.session.get_inputs()[0].shape
        if list(shape[1:]) != [size, size, 3]:
            raise ModelError(f"{path.name}: input shape {shape}, expected [n, {size}, {size}, 3]")

    def embed(self, chips: npt.NDArray[np.uint8]) -> FloatArray:
        """Unit descriptors float32 (n, dim)."""
        out = np.empty((len(chips), self.dim), np.float32)
        for start in range(0, len(chips), MAX_BATCH):
            # RGB 0-255: dlib's input scaling is inside the converted graph
            batch = chips[start : start + MAX_BATCH].astype(np.float32)
            (desc,) = self.model.run(batch)
            if desc.shape != (len(batch), self.dim):
                raise ModelError(f"{self.model.path.name}: output {desc.shape}, "
                                 f"expected ({len(batch)}, {self.dim})")
            out[start : start + len(batch)] = desc
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class FacenetDlibEmbedder:
    """FaceNet + centred dlib as one unit embedding (the :class:`~faces.types.Embedder`
    interface); takes the crop sheets of :class:`PairAlign`."""

    def __init__(self, facenet: FacenetEmbedder, dlib: DlibModel, centre: FloatArray,
                 weight: float, embedder_id: str) -> None:
        if not 0.0 < weight < 1.0:
            raise ModelError(f"fusion weight {weight} must be strictly between 0 and 1")
        if centre.shape != (dlib.dim,):
            raise ModelError(f"centring vector of {centre.shape}, expected ({dlib.dim},)")
        self.facenet, self.dlib = facenet, dlib
        self.centre = centre.astype(np.float32)
        self.weight = float(weight)
        self.embedder_id = embedder_id
        self.dim = facenet.dim + dlib.dim
        #: the two parts' factors: the fused cosine is w cos_f + (1 - w) cos_d
        self.scale_first = np.float32(math.sqrt(self.weight))
        self.scale_second = np.float32(math.sqrt(1.0 - self.weight))

    def embed(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """Unit embeddings float32 (n, dim) for crop sheets (n, height, width, 3)."""
        a, b = self.facenet.size, self.dlib.size
        if crops.ndim != 4 or crops.shape[1:] != (max(a, b), a + b, 3):
            raise ValueError(f"expected crop sheets (n, {max(a, b)}, {a + b}, 3), "
                             f"got {crops.shape}")
        first = self.facenet.embed(np.ascontiguousarray(crops[:, :a, :a]))
        second = self.dlib.embed(np.ascontiguousarray(crops[:, :b, a:]))
        return self.fuse(first, second)

    def centred(self, descriptors: FloatArray) -> FloatArray:
        """dlib's unit descriptors minus the centre, made unit again."""
        x = descriptors - self.centre
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def fuse(self, first: FloatArray, second: FloatArray) -> FloatArray:
        """``[sqrt(w) f, sqrt(1 - w) centred(d)]`` of unit FaceNet and dlib vectors."""
        out = np.concatenate([self.scale_first * first,
                              self.scale_second * self.centred(second)], axis=1)
        return out.astype(np.float32, copy=False)


def _param(spec: EmbedderSpec, key: str, tp: type | tuple[type, ...]) -> Any:
    value = spec.params.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, tp):
        raise ModelError(f"model pack embedder {spec.id}: {key} missing or not "
                         f"{tp.__name__ if isinstance(tp, type) else 'a number'}")
    return value


def _template(spec: EmbedderSpec) -> npt.NDArray[np.float64]:
    raw: Sequence[Any] = _param(spec, "chip_template", list)
    try:
        tmpl = np.array(raw, np.float64)
    except (TypeError, ValueError):
        tmpl = np.zeros(0)
    if tmpl.shape != (5, 2) or not np.isfinite(tmpl).all():
        raise ModelError(f"model pack embedder {spec.id}: chip_template must be 5 [x, y] "
                         "points (MTCNN's landmark order)")
    return tmpl


def build_embedder(spec: EmbedderSpec, config: PipelineSettings) -> FacenetDlibEmbedder:
    """The fused embedder of a model pack (``[embedder]`` of its manifest)."""
    if spec.layout != "NHWC" or spec.color != "RGB":
        raise ModelError(f"model pack embedder {spec.id}: facenet takes NHWC RGB crops, "
                         f"manifest says {spec.layout} {spec.color}")
    h, w = spec.input_size
    if h != w:
        raise ModelError(f"model pack embedder {spec.id}: input_size must be square")
    second = spec.params.get("second_file")  # a file of the pack: its checked path
    if not isinstance(second, Path):
        raise ModelError(f"model pack embedder {spec.id}: second_file must name a file "
                         "of [files]")
    second_dim = int(_param(spec, "second_dim", int))
    chip = int(_param(spec, "chip_size", int))
    weight = float(_param(spec, "fusion_weight", (int, float)))
    if spec.dim <= second_dim:
        raise ModelError(f"model pack embedder {spec.id}: dim {spec.dim} must be FaceNet's "
                         f"plus second_dim {second_dim}")
    centre_file = data_file(_param(spec, "centre", str), _param(spec, "centre_sha256", str))
    facenet = FacenetEmbedder(spec.path, config.runtime, f"{spec.id}/facenet",
                              dim=spec.dim - second_dim, size=h,
                              preprocessing=spec.preprocessing)
    dlib = DlibModel(second, config.runtime, dim=second_dim, size=chip)
    return FacenetDlibEmbedder(facenet, dlib, read_centre(centre_file, second_dim), weight,
                               spec.id)


def build_aligner(spec: EmbedderSpec, config: PipelineSettings) -> PairAlign:
    """FaceNet's margin crop and dlib's chip of each face, as one crop sheet."""
    chip = int(_param(spec, "chip_size", int))
    return PairAlign(MarginCrop(size=spec.input_size[0], margin=spec.margin),
                     DlibChipAlign(_template(spec), chip))
