"""The small typed interfaces between the face-pipeline stages.

detector -> aligner -> embedder. Each stage is a Protocol, so another model pack (YuNet,
SCRFD, ArcFace, SFace) is one new module implementing it plus a line in the factory
(:mod:`faces.pipeline`). Images are always RGB ``uint8`` arrays of shape (h, w, 3).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import numpy.typing as npt

#: an RGB image, uint8, shape (height, width, 3)
Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

#: names of the five landmarks, in the order of ``Detections.landmarks[:, i]``;
#: "left"/"right" are as seen in the image (the person's right eye is ``left_eye``)
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclasses.dataclass(frozen=True)
class Detections:
    """Faces found in one image, as fixed-shape arrays (``n`` may be 0).

    ``boxes`` float32 (n, 4) as x1, y1, x2, y2 in image pixels (may reach slightly
    outside the image), ``scores`` float32 (n,) in [0, 1], ``landmarks`` float32 (n, 5, 2)
    as (x, y) in :data:`LANDMARK_NAMES` order. Sorted by score, best first.
    """

    boxes: FloatArray
    scores: FloatArray
    landmarks: FloatArray

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if (
            self.boxes.shape != (n, 4)
            or self.scores.shape != (n,)
            or self.landmarks.shape != (n, 5, 2)
        ):
            raise ValueError(
                f"inconsistent detection shapes {self.boxes.shape} {self.scores.shape} "
                f"{self.landmarks.shape}"
            )

    @classmethod
    def empty(cls) -> Detections:
        """No face: arrays of length 0 with the usual trailing shapes."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, index: npt.ArrayLike) -> Detections:
        """The detections selected by an index array or boolean mask."""
        idx = np.asarray(index)
        return Detections(self.boxes[idx], self.scores[idx], self.landmarks[idx])

    def largest(self) -> int:
        """Index of the largest face (the "main" face); raises IndexError when empty."""
        if len(self) == 0:
            raise IndexError("no face detected")
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return int(np.argmax(areas))


class Detector(Protocol):
    """Finds faces in an RGB image."""

    #: identifies the model (and its settings) for logs and JSON output
    detector_id: str

    def detect(self, image: Image, min_face: int | None = None) -> Detections:
        """All faces at least ``min_face`` pixels high (the configured size when None)."""
        ...


class Aligner(Protocol):
    """Cuts normalised face crops for an embedder out of an image."""

    #: side of the square crop in pixels
    size: int

    def crops(self, image: Image, faces: Detections) -> npt.NDArray[np.uint8]:
        """One RGB crop per face, uint8 (n, size, size, 3), in the order of ``faces``
        (a fused embedder's aligner gives each face's crops side by side: its embedder
        takes exactly what its aligner makes, faces/facenet_dlib.py)."""
        ...


class Embedder(Protocol):
    """Turns aligned face crops into L2-normalised embeddings."""

    #: names the embedding space; embeddings of different ids are never compared
    embedder_id: str
    #: embedding dimension
    dim: int

    def embed(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """Embeddings float32 (n, dim), unit length, for uint8 crops (n, size, size, 3)."""
        ...


def cosine_similarity(a: FloatArray, b: FloatArray) -> float:
    """Cosine similarity of two embeddings (dot product of the unit vectors)."""
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
