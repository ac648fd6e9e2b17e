"""The district's operating point, derived from its own enrolled citizens for a target FPIR.

A stranger at a terminal is shown someone else's data in one of two ways: a SURE match
(best score >= ``threshold`` and ahead of the next citizen by ``margin``), or a CONFIRM
step (best score >= ``confirm_threshold``) in which they then guess one of the candidates'
confirmation secrets. So

    FPIR = P(SURE) + sum over strangers reaching CONFIRM of P(guess | its candidates)

with P(guess) <= tries x sum over the candidates c of 1 / space(c) (each try is checked
against every candidate; ``tries`` = min(the terminal's ``[session] confirm_tries``, the
per-citizen budget ``api.pin_max_failures``)). ``space(c)`` follows the secret candidate c
has on record (``[calibration] confirm_secret`` decides what the district hashes when it
has the number): the date of birth alone, ``plausible_dates``; the date of birth and the
last 4 digits of the personal identification number, ``plausible_dates x
id4_combinations``; no secret at all, no guess (the terminal never confirms them).
``confirm_floor`` keeps the CONFIRM step for faces that are near someone even when the
guess costs almost nothing.

Nobody in the gallery is a stranger, but every enrolled citizen is a stranger *to every
other citizen*: the best scores of each citizen's embedding against all OTHER citizens
(leave-one-out, LOO) are a sample of what a stranger's search returns from a gallery of
N - 1, i.e. of this size. Pairs >= ``duplicate_score`` are one person enrolled twice (a
data problem the district should review), not strangers, and are left out. The SURE
rate at a high threshold rests on a handful of LOO maxima (1e-3 of 5,000 = 5): above the
score where fewer than ``MIN_TAIL_EVENTS`` maxima remain, it comes from a generalised
Pareto tail fitted (probability-weighted moments) to the top ``TAIL_SHARE`` of the LOO
maxima, times the share of the highest ``MIN_TAIL_EVENTS`` maxima that clear the margin.

The N x N scores are computed in row blocks (numpy BLAS); 100k citizens is ~10^10 dot
products (bench/calibration_scale.py measures it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError, DistrictError
from district.log import DistrictLog

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

#: rows scored at once: a (ROW_BLOCK x N) float32 block is 100 MB at N = 100k
ROW_BLOCK = 256
#: below this many LOO events above a threshold the empirical rate is noise (Poisson
#: relative error 1/sqrt(n) ~ 22 % at 20); the GPD tail takes over
MIN_TAIL_EVENTS = 20
#: share of the LOO maxima (the highest) the tail is fitted to; at 5,000 citizens that
#: is 250 values, enough for two moments, and high enough to be a tail
TAIL_SHARE = 0.05
#: at least this many values in the tail fit
MIN_TAIL_FIT = 50
#: the scanned threshold grid (cosine); 0.001 steps are below the scores' noise
GRID_STEP = 0.001
#: name of the key in the change log's ``meta`` table holding the current point
META_KEY = "calibration"

#: the confirmation secrets (``[calibration] confirm_secret``; per citizen in the log):
#: the date of birth "DDMMYYYY" alone, or followed by the last 4 digits of the personal
#: identification number (số định danh cá nhân)
SECRET_DOB = "birth_date"
SECRET_DOB_ID4 = "birth_date_id4"
SECRETS = (SECRET_DOB, SECRET_DOB_ID4)
#: per-citizen secret codes in the arrays the predictor takes
KIND_NONE, KIND_DOB, KIND_DOB_ID4 = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """``[calibration]`` of the district configuration."""

    #: allowed share of strangers' lookups that show someone's data: 1e-3 = 1 stranger in
    #: 1,000 lookups (the issue's target)
    target_fpir: float = 1e-3
    #: share of the target given to the SURE path; the rest pays for the CONFIRM path.
    #: 0.7 = "most" of the budget to face alone, as the issue asks
    sure_share: float = 0.7
    #: the terminals' ``[session] margin`` (lead over the next citizen), published too
    margin: float = 0.08
    #: the terminals' ``[session] confirm_candidates``
    confirm_candidates: int = 3
    #: what the district hashes for the confirmation step when a record carries the
    #: personal identification number: "birth_date_id4" (date of birth + the number's last
    #: 4 digits) or "birth_date" (date of birth only, the number is not used). Citizens
    #: without a number always have the date of birth only; the prediction counts each
    #: candidate by the secret it has
    confirm_secret: str = SECRET_DOB_ID4
    #: values of the last 4 digits: the tail of a 6-digit serial issued in order within a
    #: province, century/sex and birth year, so close to uniform over 0000-9999; a
    #: stranger who does not hold the card has no better guess than 1 in 10,000
    id4_combinations: int = 10000
    #: lowest confirmation threshold, whatever the guess budget allows. With the 4 digits
    #: a guess costs ~1e-7 per candidate, so the budget alone would let every face reach
    #: the step, and each wrong answer (a stranger typing their own date) is charged to
    #: every candidate's per-citizen tries. A cosine on the embedder's scale, so None =
    #: the model pack's ``[embedder] confirm_floor`` (filled in by district.config from
    #: ``[models] pack``: 0.46 FaceNet, 0.50 the fused pack, each the highest floor at
    #: which FNIR with confirmation is <= 5 % on LFW's held-out split; docs/recognition.md)
    confirm_floor: float | None = None
    #: guesses a stranger gets per lookup: min(``[session] confirm_tries`` (3),
    #: ``api.pin_max_failures`` (5))
    confirm_tries: int = 3
    #: dates of birth a stranger must choose among. Conservative: the candidates look
    #: like the stranger, so assume the stranger guesses the candidates' age to within
    #: +-5 years (11 x 365.25 = 4,018 dates), not the whole 14-100 range (~31,400)
    plausible_dates: int = 4018
    #: pairs of enrolled citizens scoring this much are one person enrolled twice
    #: (bench/recognition.py: LFW people under two names score 0.85-0.98, twins 0.83)
    duplicate_score: float = 0.85
    #: below this many citizens the prediction is meaningless (1e-3 needs a few
    #: thousand); the pack's point is used and a warning printed
    min_gallery: int = 1000
    #: re-derive when the gallery grew or shrank by more than this share since the last
    #: derivation (the threshold a target needs rises with the gallery: ~0.04 in cosine
    #: from 1,000 to 5,000 citizens on LFW; 10 % moves it by well under 0.01)
    recompute_share: float = 0.10

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if not (math.isfinite(self.target_fpir) and 0.0 < self.target_fpir < 1.0):
            raise ConfigError(f"{p}target_fpir: a rate in (0, 1), got {self.target_fpir!r}")
        if not 0.0 < self.sure_share <= 1.0:
            raise ConfigError(f"{p}sure_share: in (0, 1], got {self.sure_share!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"{p}margin: in [0, 1), got {self.margin!r}")
        if self.confirm_secret not in SECRETS:
            raise ConfigError(f"{p}confirm_secret: one of {', '.join(SECRETS)}, got "
                              f"{self.confirm_secret!r}")
        if self.confirm_floor is not None and not 0.0 <= self.confirm_floor < 1.0:
            raise ConfigError(f"{p}confirm_floor: a cosine in [0, 1), got {self.confirm_floor!r}")
        for name in ("confirm_candidates", "confirm_tries", "plausible_dates", "min_gallery",
                     "id4_combinations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{p}{name}: at least 1")
        if not 0.0 < self.duplicate_score <= 1.0:
            raise ConfigError(f"{p}duplicate_score: in (0, 1]")
        if not 0.0 < self.recompute_share < 10.0:
            raise ConfigError(f"{p}recompute_share: a positive share, e.g. 0.1")

    @property
    def floor(self) -> float:
        """``confirm_floor`` once the model pack's value filled it in (ConfigError
        before: never a silent fallback to another embedder's scale)."""
        if self.confirm_floor is None:
            raise ConfigError("calibration.confirm_floor: not set, and no model pack's "
                              "[embedder] confirm_floor filled it in")
        return self.confirm_floor

    def with_pack_floor(self, pack_floor: float) -> CalibrationSettings:
        """These settings with ``confirm_floor`` defaulting to the model pack's value (a
        value set in the district configuration stays)."""
        if self.confirm_floor is not None:
            return self
        out = dataclasses.replace(self, confirm_floor=float(pack_floor))
        out.validate("calibration")
        return out

    @property
    def guess_per_candidate(self) -> float:
        """Upper bound of P(a stranger names one candidate's date of birth) per lookup
        (the weakest secret: a candidate with the date of birth only)."""
        return self.guess_for(KIND_DOB)

    def guess_for(self, kind: int) -> float:
        """Upper bound of P(a stranger names the secret of one candidate whose secret is
        ``kind``) per lookup."""
        if kind == KIND_NONE:
            return 0.0
        space = self.plausible_dates * (self.id4_combinations if kind == KIND_DOB_ID4 else 1)
        return min(1.0, self.confirm_tries / space)

    @property
    def default_kind(self) -> int:
        """The secret every citizen has when the district holds everyone's number."""
        return KIND_DOB_ID4 if self.confirm_secret == SECRET_DOB_ID4 else KIND_DOB


@dataclasses.dataclass(frozen=True)
class CalibratedPoint:
    """What the district publishes (signed, in the manifest) and the terminals adopt."""

    threshold: float
    margin: float
    confirm_threshold: float  # 0 = no confirmation step
    target_fpir: float
    predicted_fpir: float
    #: the two paths of the prediction
    predicted_sure: float
    predicted_confirm: float
    gallery_size: int
    derived_at_ms: int
    #: "calibrated" or "pack" (gallery below min_gallery: the pack's threshold, no step)
    method: str
    duplicate_pairs: int = 0
    seconds: float = 0.0
    #: share of the citizens whose secret is the date of birth + 4 digits of the number
    secret_id4_share: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CalibratedPoint:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        conf = (f", confirm from {self.confirm_threshold:.3f}" if self.confirm_threshold
                else ", no confirmation step")
        return (f"threshold {self.threshold:.3f}, margin {self.margin:.3f}{conf}; target FPIR "
                f"{self.target_fpir:g}, predicted {self.predicted_fpir:.2e} (sure "
                f"{self.predicted_sure:.2e} + confirm {self.predicted_confirm:.2e}); gallery "
                f"{self.gallery_size} ({self.method})")


@dataclasses.dataclass
class LooScores:
    """Each citizen's best scores against the OTHER citizens (a stranger proxy)."""

    #: (N, k+1) the best distinct other citizens' scores, best first
    top: F32
    #: pairs of citizens >= duplicate_score (left out)
    duplicate_pairs: int
    #: (N, k+1) the row numbers of those citizens, same order (-1: none)
    idx: npt.NDArray[np.int64] | None = None


def loo_scores(gallery: F32, *, keep: int, duplicate_score: float,
               progress: Callable[[int, int], None] | None = None,
               row_block: int = ROW_BLOCK) -> LooScores:
    """Best ``keep`` scores of each row of ``gallery`` (one embedding per citizen,
    unit rows) against every other row, duplicates (>= ``duplicate_score``) excluded."""
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    n = len(g)
    keep = max(1, min(keep, n - 1)) if n > 1 else 1
    top = np.full((n, keep), -1.0, np.float32)
    idx = np.full((n, keep), -1, np.int64)
    dups = 0
    for a in range(0, n, row_block):
        s = g[a : a + row_block] @ g.T
        rows = np.arange(s.shape[0])
        s[rows, a + rows] = -2.0
        dup = s >= duplicate_score
        dups += int(dup.sum())
        s[dup] = -2.0
        if n > 1:
            cols = (np.argpartition(s, n - keep, axis=1)[:, n - keep:] if keep < n
                    else np.broadcast_to(np.arange(n), s.shape))
            vals = np.take_along_axis(s, cols, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")[:, :keep]
            top[a : a + row_block] = np.take_along_axis(vals, order, axis=1)
            idx[a : a + row_block] = np.take_along_axis(cols, order, axis=1)
        if progress is not None:
            progress(min(a + row_block, n), n)
    return LooScores(top=top, duplicate_pairs=dups // 2, idx=idx)


@dataclasses.dataclass(frozen=True)
class Tail:
    """A generalised Pareto tail above ``u`` holding share ``zeta`` of the maxima."""

    u: float
    zeta: float
    xi: float
    sigma: float

    def survival(self, t: float) -> float:
        """P(max >= t) for t >= u."""
        y = max(0.0, t - self.u)
        if abs(self.xi) < 1e-9:
            return self.zeta * math.exp(-y / self.sigma)
        z = 1.0 + self.xi * y / self.sigma
        if z <= 0.0:
            return 0.0
        return self.zeta * z ** (-1.0 / self.xi)


def fit_tail(maxima: F32, share: float = TAIL_SHARE, min_fit: int = MIN_TAIL_FIT) -> Tail | None:
    """GPD by probability-weighted moments (Hosking & Wallis 1987) on the top ``share``
    of ``maxima``; None when there are too few."""
    s = np.sort(maxima.astype(np.float64))
    n_top = max(min_fit, int(share * len(s)))
    if len(s) < min_fit + 1:
        return None
    n_top = min(n_top, len(s) - 1)
    u = float(s[-n_top - 1])
    y = s[-n_top:] - u
    n = len(y)
    a0 = float(y.mean())
    a1 = float(np.sum(y * (n - np.arange(1, n + 1)) / (n - 1)) / n)
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return None
    k = a0 / (a0 - 2 * a1) - 2.0
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    return Tail(u=u, zeta=n_top / len(s), xi=-k, sigma=sigma)


@dataclasses.dataclass
class Predictor:
    """Predicted stranger rates of one gallery at any (threshold, confirm_threshold)."""

    top: F32
    settings: CalibrationSettings
    tail: Tail | None
    #: (N, k+1) the row numbers of ``top``'s citizens; None: every candidate is taken to
    #: have the weakest secret (date of birth only)
    idx: npt.NDArray[np.int64] | None = None
    #: (N,) each citizen's secret (KIND_*); None: ``settings.default_kind`` for all
    kinds: npt.NDArray[np.int8] | None = None

    @classmethod
    def from_scores(cls, loo: LooScores, settings: CalibrationSettings,
                    kinds: npt.NDArray[np.int8] | None = None) -> Predictor:
        return cls(loo.top, settings, fit_tail(loo.top[:, 0]), loo.idx, kinds)

    def candidate_guess(self, k: int) -> npt.NDArray[np.float64]:
        """(N, k) P(guess) of each row's k best other citizens (by their secret)."""
        n = len(self.top)
        if self.idx is None:
            return np.full((n, k), self.settings.guess_for(KIND_DOB))
        table = np.array([self.settings.guess_for(c)
                          for c in (KIND_NONE, KIND_DOB, KIND_DOB_ID4)])
        if self.kinds is None:
            per_citizen = np.full(n, self.settings.default_kind, np.int64)
        else:
            per_citizen = self.kinds.astype(np.int64)
        ix = self.idx[:, :k]
        out = table[per_citizen[np.clip(ix, 0, None)]]
        return np.where(ix >= 0, out, 0.0)

    def sure_empirical(self, t: float) -> tuple[float, int]:
        best = self.top[:, 0]
        lead = best - self.top[:, 1] if self.top.shape[1] > 1 else best
        hit = (best >= t) & (lead >= self.settings.margin)
        return float(hit.mean()), int((best >= t).sum())

    def sure_rate(self, t: float, *, with_margin: bool = True) -> float:
        """Predicted P(stranger SURE) at threshold t (empirical, GPD in the thin tail);
        ``with_margin=False``: P(best >= t) alone."""
        rate, events = self.sure_empirical(t)
        if not with_margin:
            rate = events / len(self.top)
        if events >= MIN_TAIL_EVENTS or self.tail is None or t < self.tail.u:
            return rate
        return self.tail.survival(t) * (self.lead_share if with_margin else 1.0)

    @property
    def lead_share(self) -> float:
        """Share of the highest MIN_TAIL_EVENTS maxima that also clear the margin (it
        rises with the score: ~0.4 at the top 5 %, ~0.8-1 at the top 20 on synthetic data)."""
        best = self.top[:, 0]
        lead = best - self.top[:, 1] if self.top.shape[1] > 1 else best
        order = np.argsort(-best)[:MIN_TAIL_EVENTS]
        return float((lead[order] >= self.settings.margin).mean()) if len(order) else 1.0

    def confirm_rate(self, t: float, tc: float) -> float:
        """Predicted P(stranger reaches CONFIRM and guesses a candidate's secret)."""
        if tc <= 0.0 or tc >= t:
            return 0.0
        k = min(self.settings.confirm_candidates, self.top.shape[1])
        best = self.top[:, 0]
        lead = best - self.top[:, 1] if self.top.shape[1] > 1 else best
        sure = (best >= t) & (lead >= self.settings.margin)
        near = self.top[:, :k] >= tc
        reach = ~sure & near.any(axis=1)
        p = np.minimum(1.0, np.sum(np.where(near, self.candidate_guess(k), 0.0), axis=1))
        return float(np.sum(np.where(reach, p, 0.0)) / len(best))


def derive(gallery: F32, settings: CalibrationSettings, *, pack_threshold: float,
           progress: Callable[[int, int], None] | None = None,
           now_ms: int | None = None,
           kinds: npt.NDArray[np.int8] | None = None) -> CalibratedPoint:
    """The operating point of this gallery (one embedding per citizen, unit rows);
    ``kinds``: each citizen's confirmation secret (KIND_*, same rows; None: all have
    ``settings.default_kind``)."""
    t0 = time.perf_counter()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    n = len(gallery)
    target = settings.target_fpir
    if n < max(settings.min_gallery, 2):
        return CalibratedPoint(
            threshold=pack_threshold, margin=settings.margin, confirm_threshold=0.0,
            target_fpir=target, predicted_fpir=float("nan"), predicted_sure=float("nan"),
            predicted_confirm=0.0, gallery_size=n, derived_at_ms=now_ms, method="pack")
    loo = loo_scores(gallery, keep=max(2, settings.confirm_candidates),
                     duplicate_score=settings.duplicate_score, progress=progress)
    pred = Predictor.from_scores(loo, settings, kinds)
    grid = np.round(np.arange(1.0, 0.0, -GRID_STEP), 6)
    # T_sure: the lowest threshold at which the strangers' best score alone (margin not
    # counted) fits the sure share of the budget. Not leaning on the margin keeps a
    # gallery whose best and second scores are always close (a dense one) from getting
    # a threshold far down where the margin alone would hold the rate; on LFW the
    # margin changes little at these scores anyway (docs/recognition.md)
    sure_budget = settings.sure_share * target
    t_sure = 1.0
    for t in grid:
        if pred.sure_rate(float(t), with_margin=False) > sure_budget:
            break
        t_sure = float(t)
    sure = pred.sure_rate(t_sure)
    # T_confirm: the lowest threshold whose total still meets the target, not below the
    # floor (with a strong secret the budget alone would reach down to any face)
    t_conf = 0.0
    conf = 0.0
    for tc in grid[(grid < t_sure) & (grid >= settings.floor - 1e-9)]:
        c = pred.confirm_rate(t_sure, float(tc))
        if sure + c > target:
            break
        t_conf, conf = float(tc), c
    return CalibratedPoint(
        threshold=t_sure, margin=settings.margin, confirm_threshold=t_conf,
        target_fpir=target, predicted_fpir=sure + conf, predicted_sure=sure,
        predicted_confirm=conf, gallery_size=n, derived_at_ms=now_ms, method="calibrated",
        duplicate_pairs=loo.duplicate_pairs, seconds=round(time.perf_counter() - t0, 2),
        secret_id4_share=id4_share(kinds, n, settings))


def id4_share(kinds: npt.NDArray[np.int8] | None, n: int,
              settings: CalibrationSettings) -> float:
    """Share of the citizens whose secret includes the 4 digits."""
    if kinds is None:
        return 1.0 if settings.default_kind == KIND_DOB_ID4 and n else 0.0
    return float(np.mean(kinds == KIND_DOB_ID4)) if len(kinds) else 0.0


def predict(gallery: F32, settings: CalibrationSettings, threshold: float,
            confirm_threshold: float,
            kinds: npt.NDArray[np.int8] | None = None) -> tuple[float, float]:
    """Predicted (SURE, CONFIRM-and-guess) stranger rates at a given point."""
    loo = loo_scores(gallery, keep=max(2, settings.confirm_candidates),
                     duplicate_score=settings.duplicate_score)
    pred = Predictor.from_scores(loo, settings, kinds)
    return pred.sure_rate(threshold), pred.confirm_rate(threshold, confirm_threshold)


# ---- the change log -------------------------------------------------------------------


def gallery_of(dlog: DistrictLog) -> F32:
    """One embedding per enrolled citizen (the first, normally the ID photo)."""
    return dlog.first_embeddings()


def gallery_and_secrets(dlog: DistrictLog) -> tuple[F32, npt.NDArray[np.int8]]:
    """:func:`gallery_of` and each citizen's confirmation secret (KIND_*), row for row."""
    return dlog.first_embeddings_and_secrets()


def stored(dlog: DistrictLog) -> CalibratedPoint | None:
    """The point last derived for this log (None: never)."""
    text = dlog.get_meta(META_KEY)
    if not text:
        return None
    try:
        return CalibratedPoint.from_json(text)
    except (ValueError, TypeError) as exc:
        raise DistrictError(f"{dlog.path}: damaged calibration record: {exc}") from None


def is_stale(point: CalibratedPoint | None, citizens: int, settings: CalibrationSettings) -> bool:
    """Whether the gallery moved by more than ``recompute_share`` since ``point``, or the
    target changed."""
    if point is None:
        return citizens > 0
    if point.target_fpir != settings.target_fpir or point.margin != settings.margin:
        return True
    if 0.0 < point.confirm_threshold < settings.floor - 1e-9:
        return True  # derived before the floor (or a lower one) was set
    base = max(point.gallery_size, 1)
    return abs(citizens - point.gallery_size) / base > settings.recompute_share


def recompute(dlog: DistrictLog, settings: CalibrationSettings, *, pack_threshold: float,
              progress: Callable[[int, int], None] | None = None) -> CalibratedPoint:
    """Derive the point from the log's citizens now and store it in the log."""
    gallery, kinds = gallery_and_secrets(dlog)
    point = derive(gallery, settings, pack_threshold=pack_threshold, progress=progress,
                   kinds=kinds)
    dlog.set_meta(META_KEY, point.to_json())
    log.info("calibration: %s", point.describe())
    return point


def ensure_current(dlog: DistrictLog, settings: CalibrationSettings, *, pack_threshold: float,
                   progress: Callable[[int, int], None] | None = None) -> CalibratedPoint | None:
    """Re-derive when the gallery grew or shrank past ``recompute_share``; the point now."""
    point = stored(dlog)
    if is_stale(point, dlog.info().citizen_count, settings):
        return recompute(dlog, settings, pack_threshold=pack_threshold, progress=progress)
    return point


#: what the command line shows under the figures, always
LIMITS = (
    "population shift: the method was checked on LFW (mostly Western adults, press "
    "photos); the citizens are Vietnamese and this model separates East Asian faces less "
    "well there (docs/recognition.md): strangers who are not enrolled may score higher "
    "against the gallery than citizens score against each other",
    "photo quality: the gallery is ID photos, lookups are camera frames; the leave-one-out "
    "scores are ID photo vs ID photo",
    "twins and relatives: pairs >= the duplicate score are left out as one person "
    "enrolled twice (review them); a relative who is not enrolled is a stranger the "
    "method does not see",
    "date-of-birth guessing assumes uniform dates within the plausible range; "
    "IDs with an unknown day (01/01) make some dates likelier",
    "the 4 digits of the personal identification number stop a stranger, not someone who "
    "knows the citizen: a relative or anyone who has seen the ID card (a targeted attack, "
    "docs/security.md); citizens without the number on record count with the date of "
    "birth alone",
)
