"""The open-set decision, in one place: is this face anyone, and who?

An :class:`OperatingPoint` (a cosine threshold and a lead over the next citizen) is
resolved once from the configuration and the model pack by :func:`operating_point`; a
:class:`Matcher` searches the gallery and applies it. The lookup session and the
staff-only ``LookupImage`` call use the same matcher, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.config import SessionConfig
from edge.session.ports import Gallery, GalleryMatch

F32 = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """When a face counts as a citizen: best score >= ``threshold`` and ahead of the next
    citizen by >= ``margin``. ``source`` says where the threshold came from."""

    threshold: float
    margin: float
    source: str

    def describe(self) -> str:
        return f"threshold {self.threshold:.3f}, lead {self.margin:.3f} ({self.source})"


def operating_point(cfg: SessionConfig, pack_threshold: float) -> OperatingPoint:
    """``[session] threshold`` when set, else the model pack's; ``[session] margin``."""
    if cfg.threshold:
        return OperatingPoint(cfg.threshold, cfg.margin, "[session] threshold")
    return OperatingPoint(pack_threshold, cfg.margin, "model pack")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the gallery said about a face."""

    citizen_id: str  # empty when not recognised
    score: float  # best citizen's score
    margin: float  # lead over the next citizen (score when there is none)


def decide(matches: Sequence[GalleryMatch], threshold: float, margin: float) -> Decision:
    """Best citizen if above ``threshold`` and ahead of the next *citizen* by ``margin``."""
    best: dict[str, float] = {}
    for m in matches:
        if m.score > best.get(m.citizen_id, -2.0):
            best[m.citizen_id] = float(m.score)
    ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)
    if not ranked:
        return Decision("", 0.0, 0.0)
    cid, score = ranked[0]
    lead = score - ranked[1][1] if len(ranked) > 1 else score
    if score >= threshold and lead >= margin:
        return Decision(cid, score, lead)
    return Decision("", score, lead)


class Matcher:
    """Search the gallery for one embedding and decide at the current operating point."""

    def __init__(self, gallery: Gallery, point: OperatingPoint, top_k: int) -> None:
        self.gallery = gallery
        self.top_k = top_k
        self._point = point
        self._lock = threading.Lock()

    @property
    def point(self) -> OperatingPoint:
        with self._lock:
            return self._point

    def set_point(self, point: OperatingPoint) -> None:
        """Switch to another operating point (e.g. one the district published)."""
        with self._lock:
            self._point = point

    def match(self, embedding: F32) -> Decision:
        p = self.point
        return decide(self.gallery.search(embedding, self.top_k), p.threshold, p.margin)
