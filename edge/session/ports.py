"""The small interfaces the session needs from the face pipeline and the store.

The terminal adapts the real detector, embedder and gallery store to these; unit tests
can put simple stand-ins at this boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from faces.types import Detections

__all__ = ["Confirmer", "Detections", "F32", "FaceDetector", "FaceEmbedder", "Gallery",
           "GalleryMatch"]

F32 = npt.NDArray[np.float32]


class FaceDetector(Protocol):
    def detect(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Faces in a BGR image (camera frames are BGR, as OpenCV decodes them)."""
        ...


class FaceEmbedder(Protocol):
    def embed(self, image: npt.NDArray[np.uint8], faces: Detections) -> F32:
        """Aligned embeddings (n, dim), L2-normalised, of ``faces`` in a BGR image."""
        ...


class GalleryMatch(Protocol):
    @property
    def citizen_id(self) -> str: ...

    @property
    def score(self) -> float: ...


class Gallery(Protocol):
    def search(self, embedding: F32, k: int) -> Sequence[GalleryMatch]:
        """The ``k`` nearest enrolled embeddings, best first, with cosine scores."""
        ...


class Confirmer(Protocol):
    """Checks the confirmation step's answer (the date of birth) against candidates; the
    terminal's is edge.api.confirm.DobConfirmer (store hashes + per-citizen tries)."""

    def usable(self, candidates: Sequence[str]) -> list[str]:
        """The candidates that can be asked: a date of birth on record, not locked."""
        ...

    def needs_id4(self, candidates: Sequence[str]) -> bool:
        """Whether the answer must include the personal number's last 4 digits."""
        ...

    def check(self, candidates: Sequence[str], answer: str) -> tuple[list[str], bool]:
        """(the candidates the answer is right for, whether every candidate is now
        locked). A wrong answer counts against every candidate it was checked against."""
        ...
