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


def ratings(dlog: DistrictLog, first: datetime.date, last: datetime.date) -> RatingSummary:
    """Averages per officer and per counter of the ratings made in [first, last] (UTC
    days, inclusive), joined by :func:`join_rating`."""
    rows = dlog.ratings_between(_stamp(first), _stamp(last + datetime.timedelta(days=1)))
    history: dict[str, list[tuple[str, str, str, str, str, float]]] = {}
    for h in dlog.handling([r[3] for r in rows if r[3]]):
        history.setdefault(h[0], []).append(h)
    officers: dict[str, Average] = {}
    counters: dict[str, Average] = {}
    unattributed = 0
    for _t, _s, when, cid, stars in rows:
        try:
            at = datetime.datetime.fromisoformat(when).timestamp()
        except ValueError:
            unattributed += 1
            continue
        joined = join_rating(history.get(cid, []), at) if cid else None
        if joined is None:
            unattributed += 1
            continue
        for names, table in ((joined[0], officers), (joined[1], counters)):
            for name in names:
                avg = table.setdefault(name, Average(name))
                avg.count += 1
                avg.total += stars
    return RatingSummary(first, last, len(rows), unattributed,
                         sorted(officers.values(), key=lambda a: a.key),
                         sorted(counters.values(), key=lambda a: a.key))
