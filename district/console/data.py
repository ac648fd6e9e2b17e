"""What the console's pages show, computed from the district log and the fleet cache
(no HTTP here, so each rule is unit-tested alone).

Deletion confirmation: a terminal has applied a change when its retained state's epoch
equals the log's epoch and its ``applied_seq`` is at least the change's number. A
terminal of another epoch (it has not installed the current gallery yet) or without a
state is pending.

Staff ratings (the join rule): a rating carries the citizen's id (never a name) and the
terminal's time. The district joins it to that citizen's dossiers *as they were at that
time* (district/log.py ``dossier_handling`` keeps each dossier's status, counter and
officer at every change): the dossiers not finished then (status other than returned or
rejected); if none, the one updated last before that time. The rating counts once for
each distinct officer and once for each distinct counter of those dossiers. A rating
without a citizen (older terminals), of a citizen deleted since, or of a citizen with no
dossier before that time is "not joined" and counted apart.

Survey answers (district/survey.py: the citizen rated from their phone after scanning the
kiosk's QR) are joined by the same rule, at the answer's time (district clock), and
counted with their source (kiosk button or phone survey) per officer and counter. One
session counts once: when a session has both a kiosk rating and a survey answer, the
kiosk rating counts and the answer is counted apart as "same session" (the kiosk rating
is made at the counter, nearer the handling it rates, and it is what terminals without
the survey send). A "disputed" answer (the session also has a "not me" report: the
citizen shown was not the one at the terminal) counts toward no officer, apart too.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from district.fleet import FleetRow
from district.log import DistrictLog
from sync.changes import DossierStatus

#: statuses after which a dossier is closed: the citizen has it back, or it was refused
FINISHED = frozenset({DossierStatus.RETURNED.value, DossierStatus.REJECTED.value})
#: longest rating period one page computes (a year of a busy district is ~100k ratings)
MAX_PERIOD_DAYS = 366


def has_applied(row: FleetRow, *, epoch: int, seq: int) -> bool:
    """Whether this terminal's retained state shows change ``seq`` of ``epoch`` applied."""
    return row.epoch == epoch and row.applied_seq is not None and row.applied_seq >= seq


@dataclasses.dataclass(frozen=True)
class Deletion:
    seq: int
    citizen_id: str
    at: float
    confirmed: list[str]
    pending: list[str]


def deletions(dlog: DistrictLog, rows: list[FleetRow], *, limit: int = 200) -> list[Deletion]:
    """The newest citizen deletions with the terminals that applied each, and those not."""
    epoch = dlog.epoch
    out = []
    for seq, cid, at in dlog.citizen_deletions(limit):
        done = [r.terminal_id for r in rows if has_applied(r, epoch=epoch, seq=seq)]
        waiting = [r.terminal_id for r in rows if not has_applied(r, epoch=epoch, seq=seq)]
        out.append(Deletion(seq, cid, at, done, waiting))
    return out


@dataclasses.dataclass
class Average:
    key: str
    count: int = 0
    total: int = 0
    kiosk: int = 0  # of count: from the kiosk's buttons
    survey: int = 0  # of count: from the phone survey

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclasses.dataclass
class RatingSummary:
    first: datetime.date
    last: datetime.date
    total: int
    unattributed: int
    officers: list[Average]
    counters: list[Average]
    #: survey answers in the period, and of them: those of a session also rated at the
    #: kiosk (not counted again), and those disputed by a "not me" report (not counted)
    survey_total: int = 0
    survey_same_session: int = 0
    survey_disputed: int = 0


@dataclasses.dataclass(frozen=True)
class SurveyComment:
    """A survey comment for staff: where it was joined, never who wrote it."""

    time: str  # district clock, ISO 8601 UTC
    terminal_id: str
    stars: int
    comment: str
    officers: list[str]  # empty: not joined (no dossier, deleted, or disputed)
    counters: list[str]
    disputed: bool


def parse_period(first: str, last: str) -> tuple[datetime.date, datetime.date]:
    """[first, last] as dates (inclusive); ValueError when not dates, reversed or longer
    than MAX_PERIOD_DAYS."""
    a, b = datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
    if b < a or (b - a).days >= MAX_PERIOD_DAYS or len(first) != 10 or len(last) != 10:
        raise ValueError("bad period")
    return a, b


def _stamp(d: datetime.date) -> str:
    """The reports table's time text at the start of a UTC day (they compare as text)."""
    return datetime.datetime(d.year, d.month, d.day,
                             tzinfo=datetime.timezone.utc).isoformat(timespec="milliseconds")


def join_rating(history: Iterable[tuple[str, str, str, str, str, float]],
                at: float) -> tuple[set[str], set[str]] | None:
    """(officers, counters) a rating at unix time ``at`` belongs to, from one citizen's
    handling history (citizen, code, status, counter, officer, at), oldest first; None
    when the citizen had no dossier then."""
    state: dict[str, tuple[str, str, str, float]] = {}
    for _cid, code, status, counter, officer, t in history:
        if t <= at:
            state[code] = (status, counter, officer, t)
    if not state:
        return None
    open_ = [v for v in state.values() if v[0] not in FINISHED]
    chosen = open_ or [max(state.values(), key=lambda v: v[3])]
    return {v[2] for v in chosen}, {v[1] for v in chosen}


def _history(dlog: DistrictLog, citizens: Iterable[str]
             ) -> dict[str, list[tuple[str, str, str, str, str, float]]]:
    history: dict[str, list[tuple[str, str, str, str, str, float]]] = {}
    for h in dlog.handling([c for c in citizens if c]):
        history.setdefault(h[0], []).append(h)
    return history


def _join_at(history: dict[str, list[tuple[str, str, str, str, str, float]]], cid: str,
             when: str) -> tuple[set[str], set[str]] | None:
    try:
        at = datetime.datetime.fromisoformat(when).timestamp()
    except ValueError:
        return None
    return join_rating(history.get(cid, []), at) if cid else None


def ratings(dlog: DistrictLog, first: datetime.date, last: datetime.date) -> RatingSummary:
    """Averages per officer and per counter of the kiosk ratings and survey answers made
    in [first, last] (UTC days, inclusive), joined by :func:`join_rating`; one count per
    session (the module's docstring)."""
    lo, hi = _stamp(first), _stamp(last + datetime.timedelta(days=1))
    rows = dlog.ratings_between(lo, hi)
    answers = dlog.survey_answers_between(lo, hi)
    history = _history(dlog, [r[3] for r in rows] + [a[3] for a in answers])
    officers: dict[str, Average] = {}
    counters: dict[str, Average] = {}
    unattributed = same = disputed = 0
    counted: list[tuple[str, str, int, bool]] = [(r[3], r[2], r[4], True) for r in rows]
    for _t, _s, when, cid, stars, _c, is_disputed, rated in answers:
        if rated:
            same += 1
        elif is_disputed:
            disputed += 1
        else:
            counted.append((cid, when, stars, False))
    for cid, when, stars, kiosk in counted:
        joined = _join_at(history, cid, when)
        if joined is None:
            unattributed += 1
            continue
        for names, table in ((joined[0], officers), (joined[1], counters)):
            for name in names:
                avg = table.setdefault(name, Average(name))
                avg.count += 1
                avg.total += stars
                if kiosk:
                    avg.kiosk += 1
                else:
                    avg.survey += 1
    return RatingSummary(first, last, len(rows), unattributed,
                         sorted(officers.values(), key=lambda a: a.key),
                         sorted(counters.values(), key=lambda a: a.key),
                         len(answers), same, disputed)


def survey_comments(dlog: DistrictLog, first: datetime.date, last: datetime.date, *,
                    limit: int) -> list[SurveyComment]:
    """The newest ``limit`` non-empty survey comments made in [first, last], each with the
    officers and counters its answer is joined to (none when disputed)."""
    answers = dlog.survey_answers_between(
        _stamp(first), _stamp(last + datetime.timedelta(days=1)), limit, comments=True)
    history = _history(dlog, [a[3] for a in answers if not a[6]])
    out = []
    for t, _s, when, cid, stars, comment, is_disputed, _rated in answers:
        joined = None if is_disputed else _join_at(history, cid, when)
        out.append(SurveyComment(when, t, stars, comment,
                                 sorted(joined[0]) if joined else [],
                                 sorted(joined[1]) if joined else [], is_disputed))
    return out
