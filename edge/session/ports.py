"""The small interfaces the session needs from the face pipeline and the store.

The terminal adapts the real detector, embedder and gallery store to these; unit tests
can put simple stand-ins at this boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one frame, in image pixels.

    ``boxes`` (n, 4) as x1, y1, x2, y2; ``scores`` (n,); ``landmarks`` (n, 5, 2) in the
    order left eye, right eye, nose, left mouth corner, right mouth corner, where "left"
    is the image's left (the person's right).
    """

    boxes: F32
    scores: F32
    landmarks: F32

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )


class FaceDetector(Protocol):
    def detect(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Faces in a BGR image (camera frames are BGR, as OpenCV decodes them)."""
        ...


class FaceEmbedder(Protocol):
    def embed(self, image: npt.NDArray[np.uint8], faces: Detections) -> F32:
        """Aligned embeddings (n, dim), L2-normalised, of ``faces`` in a BGR image."""
        ...


class GalleryMatch(Protocol):
    citizen_id: str
    score: float


class Gallery(Protocol):
    def search(self, embedding: F32, k: int) -> Sequence[GalleryMatch]:
        """The ``k`` nearest enrolled embeddings, best first, with cosine scores."""
        ...
