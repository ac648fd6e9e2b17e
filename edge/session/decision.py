"""The open-set decision, in one place: is this face anyone, and who?

An :class:`OperatingPoint` (a cosine threshold, a lead over the next citizen, and a lower
``confirm_threshold``) is resolved once from the configuration and the model pack by
:func:`operating_point`; a :class:`Matcher` searches the gallery and applies it. The
lookup session and the staff-only ``LookupImage`` call use the same matcher, so they
cannot disagree.

Three ways out (:class:`Verdict`): SURE (as :func:`decide` always said: above the
threshold and ahead of the next citizen), CONFIRM (not sure, but a few citizens score
>= ``confirm_threshold``: the session asks for something a stranger does not know and
checks it against those candidates only), NO.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.config import SessionConfig
from edge.session.ports import Gallery, GalleryMatch
from sync.wire import PublishedPoint

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """When a face counts as a citizen: best score >= ``threshold`` and ahead of the next
    citizen by >= ``margin``. ``source`` says where the threshold came from.

    ``confirm_threshold``: citizens scoring at least this (but not a sure match) may be
    confirmed by the date of birth; 0, or >= ``threshold``, turns that step off."""

    threshold: float
    margin: float
    source: str
    confirm_threshold: float = 0.0

    @property
    def confirm_on(self) -> bool:
        """Whether the confirmation step is on at this point."""
        return 0.0 < self.confirm_threshold < self.threshold

    def describe(self) -> str:
        confirm = (f", confirm from {self.confirm_threshold:.3f}" if self.confirm_on
                   else ", no confirmation step")
        return (f"threshold {self.threshold:.3f}, lead {self.margin:.3f}{confirm} "
                f"({self.source})")


def operating_point(cfg: SessionConfig, pack_threshold: float) -> OperatingPoint:
    """``[session] threshold`` when set, else the model pack's; ``[session] margin`` and
    ``confirm_threshold``."""
    if cfg.threshold:
        return OperatingPoint(cfg.threshold, cfg.margin, "[session] threshold",
                              cfg.confirm_threshold)
    return OperatingPoint(pack_threshold, cfg.margin, "model pack", cfg.confirm_threshold)


class Verdict(enum.Enum):
    """The three ways out of a decision."""

    SURE = "sure"  # show the masked dossiers
    CONFIRM = "confirm"  # ask for the date of birth, check it against ``candidates``
    NO = "no"  # not recognised


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the gallery said about a face."""

    citizen_id: str  # empty when not a sure match
    score: float  # best citizen's score
    margin: float  # lead over the next citizen (score when there is none)
    verdict: Verdict = Verdict.NO
    #: CONFIRM only: the best distinct citizens scoring >= confirm_threshold, best first.
    #: Never shown on screen; the session checks the answer against them
    candidates: tuple[str, ...] = ()
    #: their scores, in the same order
    candidate_scores: tuple[float, ...] = ()


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
        return Decision(cid, score, lead, Verdict.SURE)
    return Decision("", score, lead)


def classify(matches: Sequence[GalleryMatch], point: OperatingPoint,
             max_candidates: int) -> Decision:
    """:func:`decide` at ``point``; when that is not sure and the confirmation step is on,
    CONFIRM with the best ``max_candidates`` distinct citizens scoring >=
    ``point.confirm_threshold`` (NO when there is none)."""
    d = decide(matches, point.threshold, point.margin)
    if d.verdict is Verdict.SURE or not point.confirm_on or max_candidates < 1:
        return d
    best: dict[str, float] = {}
    for m in matches:
        if m.score > best.get(m.citizen_id, -2.0):
            best[m.citizen_id] = float(m.score)
    ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)
    chosen = [(cid, score) for cid, score in ranked[:max_candidates]
              if score >= point.confirm_threshold]
    if not chosen:
        return d
    return dataclasses.replace(d, verdict=Verdict.CONFIRM,
                               candidates=tuple(cid for cid, _ in chosen),
                               candidate_scores=tuple(score for _, score in chosen))


class Matcher:
    """Search the gallery for one embedding and decide at the current operating point."""

    def __init__(self, gallery: Gallery, point: OperatingPoint, top_k: int,
                 confirm_candidates: int = 3) -> None:
        self.gallery = gallery
        self.top_k = top_k
        #: at most this many CONFIRM candidates ([session] confirm_candidates)
        self.confirm_candidates = confirm_candidates
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
        """SURE, CONFIRM (with candidates) or NO for one embedding."""
        p = self.point
        k = max(self.top_k, self.confirm_candidates) if p.confirm_on else self.top_k
        return classify(self.gallery.search(embedding, k), p, self.confirm_candidates)


def adopt_published(matcher: Matcher, point: PublishedPoint, local_threshold: float,
                    local_confirm: float = 0.0) -> bool:
    """Switch ``matcher`` to the district's signed operating point (already checked by
    the sync), unless ``local_threshold`` (``[session] threshold``) is set: an explicit
    local override wins and is logged as a warning. A "pack" point (the district's gallery
    was too small to calibrate) keeps the local ``[session] confirm_threshold``
    (``local_confirm``). True when adopted."""
    if local_threshold:
        log.warning("district operating point (%s, threshold %.3f) NOT used: [session] "
                    "threshold = %s overrides it", point.source(), point.threshold,
                    local_threshold)
        return False
    confirm = local_confirm if point.method == "pack" else point.confirm_threshold
    matcher.set_point(OperatingPoint(point.threshold, point.margin, point.source(), confirm))
    log.info("decision: %s", matcher.point.describe())
    return True
