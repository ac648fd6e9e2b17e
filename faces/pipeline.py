"""The face pipeline: detector -> aligner -> embedder, built from a model pack.

:func:`build_pipeline` picks each stage's module by the ``kind`` the pack's manifest
names: detector kind ``k`` is ``faces.<k>.build_detector(spec, config)``, embedder
kind ``k`` is ``faces.<k>.build_embedder`` and ``build_aligner`` (the crop an
embedder was trained on belongs with the embedder). A new pack (YuNet, SCRFD, ArcFace,
SFace) is one new module here; nothing else changes.

Images are RGB. Camera frames are BGR (as OpenCV decodes them): :class:`BgrPorts` adapts
the pipeline to the session's ports (``edge.session.ports``).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ModelError
from faces.settings import PipelineSettings
from faces.types import (
    Aligner,
    Detections,
    Detector,
    Embedder,
    FloatArray,
    Image,
    cosine_similarity,
)
from models.pack import load_pack

if TYPE_CHECKING:
    from models.pack import ModelPack

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Faces:
    """Faces of one image with their embeddings (row i belongs to face i)."""

    detections: Detections
    embeddings: FloatArray

    def __len__(self) -> int:
        return len(self.detections)


class FacePipeline:
    """Detect, crop and embed faces; compare embeddings with the pack's threshold."""

    def __init__(
        self, detector: Detector, aligner: Aligner, embedder: Embedder, match_threshold: float
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder
        #: cosine similarity at or above which two faces are the same person
        self.match_threshold = float(match_threshold)

    @property
    def embedder_id(self) -> str:
        """The embedding space of every embedding this pipeline makes."""
        return self.embedder.embedder_id

    def detect(self, image: Image, min_face: int | None = None) -> Detections:
        """Faces in an RGB image, best score first (empty arrays when none)."""
        return self.detector.detect(image, min_face)

    def embed(self, image: Image, faces: Detections) -> FloatArray:
        """Unit embeddings (n, dim) of ``faces`` in the RGB ``image``, in one batch."""
        if len(faces) == 0:
            return np.zeros((0, self.embedder.dim), np.float32)
        return self.embedder.embed(self.aligner.crops(image, faces))

    def analyse(self, image: Image, min_face: int | None = None) -> Faces:
        """Detect and embed every face of an RGB image."""
        found = self.detect(image, min_face)
        return Faces(found, self.embed(image, found))

    def similarity(self, a: FloatArray, b: FloatArray) -> float:
        """Cosine similarity of two embeddings of this pipeline's space."""
        return cosine_similarity(a, b)

    def same_person(self, similarity: float) -> bool:
        """Whether the pack's threshold calls a similarity the same person."""
        return similarity >= self.match_threshold


class BgrPorts:
    """The pipeline as the session's FaceDetector/FaceEmbedder ports, on BGR frames."""

    def __init__(self, pipeline: FacePipeline, min_face: int | None = None) -> None:
        self.pipeline = pipeline
        self.min_face = min_face

    def detect(self, image: Image) -> Detections:
        return self.pipeline.detect(np.ascontiguousarray(image[:, :, ::-1]), self.min_face)

    def embed(self, image: Image, faces: Any) -> FloatArray:
        dets = Detections(
            np.asarray(faces.boxes, np.float32).reshape(-1, 4),
            np.asarray(faces.scores, np.float32).reshape(-1),
            np.asarray(faces.landmarks, np.float32).reshape(-1, 5, 2),
        )
        return self.pipeline.embed(np.ascontiguousarray(image[:, :, ::-1]), dets)


def _stage_module(kind: str, role: str) -> Any:
    if not _KIND_RE.match(kind):
        raise ModelError(f"model pack: {role}.kind {kind!r} is not a valid name")
    try:
        return importlib.import_module(f"faces.{kind}")
    except ModuleNotFoundError:
        raise ModelError(f"model pack: {role} kind {kind!r} is not supported here") from None


def build_pipeline(pack: ModelPack, config: PipelineSettings) -> FacePipeline:
    """The pipeline of a loaded (hash-checked) model pack with the config's settings."""
    det_mod = _stage_module(pack.detector.kind, "detector")
    emb_mod = _stage_module(pack.embedder.kind, "embedder")
    for mod, fn in (
        (det_mod, "build_detector"),
        (emb_mod, "build_embedder"),
        (emb_mod, "build_aligner"),
    ):
        if not hasattr(mod, fn):
            raise ModelError(f"model pack: {mod.__name__} has no {fn}")
    detector = det_mod.build_detector(pack.detector, config)
    embedder = emb_mod.build_embedder(pack.embedder, config)
    aligner = emb_mod.build_aligner(pack.embedder, config)
    return FacePipeline(detector, aligner, embedder, pack.embedder.match_threshold)


def load_pipeline(config: PipelineSettings) -> FacePipeline:
    """Load the configured pack (``[models]``), check its hashes, build the pipeline."""

    return build_pipeline(load_pack(config.models.dir, config.models.pack), config)
