"""The publisher lease (district/lease.py) with a clock the test moves: two workers'
views of one real SQLite change log, in one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from district.lease import Lease, LeaseLost, read_lease
from district.log import DistrictLog
from tests.sync_helpers import add_citizens, new_district

TTL, MARGIN = 5.0, 1.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    dlog = new_district(tmp_path / "d.sqlite", dim=8)
    clock = Clock()
    a = Lease(dlog.path, "a", ttl_s=TTL, margin_s=MARGIN, clock=clock)
    b = Lease(dlog.path, "b", ttl_s=TTL, margin_s=MARGIN, clock=clock)
    yield dlog, clock, a, b
    a.close()
    b.close()
    dlog.close()


def row(dlog: DistrictLog) -> tuple[str, int]:
    r = read_lease(dlog._db)
    assert r is not None
    return r.holder, r.generation


def test_one_holder_and_a_standby_that_waits_while_it_renews(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, clock, a, b = setup
    assert a.tick(eligible=True) and a.generation == 1
    assert not b.tick(eligible=True) and b.generation == 0
    for _ in range(30):  # 30 s of renewals every second: b never takes it
        clock.t += 1.0
        assert a.tick(eligible=True)
        assert not b.tick(eligible=True)
    assert row(dlog) == ("a", 1)
    assert (a.takeovers, b.takeovers) == (1, 0)


def test_takeover_exactly_one_ttl_after_the_last_renewal_was_seen(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, clock, a, b = setup
    a.tick(eligible=True)
    b.tick(eligible=True)  # b sees generation 1, beat 0
    clock.t += 1.0
    a.tick(eligible=True)  # the last renewal (beat 1); then a is "killed"
    b.tick(eligible=True)  # b sees beat 1 at t0
    t0 = clock.t
    clock.t = t0 + TTL - 0.01
    assert not b.tick(eligible=True)
    assert not a.held(), "a's validity must end before b may take over"
    clock.t = t0 + TTL
    assert b.tick(eligible=True) and b.generation == 2
    assert row(dlog) == ("b", 2)


def test_holder_stops_publishing_before_a_standby_can_take_over(setup) -> None:  # type: ignore[no-untyped-def]
    _dlog, clock, a, b = setup
    a.tick(eligible=True)
    start = clock.t
    b.tick(eligible=True)
    while a.held():
        clock.t += 0.1
        assert not b.tick(eligible=True)
    assert clock.t == pytest.approx(start + TTL - MARGIN, abs=0.11)


def test_a_stale_holder_is_fenced_from_the_log(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, clock, a, b = setup
    add_citizens(dlog, 2)
    a.tick(eligible=True)
    fence_a = a.fence()
    b.tick(eligible=True)
    clock.t += TTL  # a stopped (SIGSTOP) for a TTL; b takes over
    assert b.tick(eligible=True)
    assert not a.held()
    with pytest.raises(LeaseLost):
        a.fence()
    # even with the fencing numbers it read before it stopped, a's write is refused
    with pytest.raises(LeaseLost):
        dlog.mark_published(2, fence_a)
    assert dlog.published_seq == 0
    dlog.mark_published(2, b.fence())
    assert dlog.published_seq == 2
    # a's next tick notices the loss and never renews b's lease
    assert not a.tick(eligible=True)
    assert a.losses == 1 and a.generation == 0 and row(dlog) == ("b", 2)


def test_only_a_worker_connected_to_the_broker_takes_or_keeps_it(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, clock, a, b = setup
    assert not a.tick(eligible=False)  # not connected: never takes a free lease
    assert a.tick(eligible=True)
    b.tick(eligible=False)
    for _ in range(int(TTL)):  # a loses its broker link: it stops renewing
        clock.t += 1.0
        a.tick(eligible=False)
        assert not b.tick(eligible=False)  # b is cut off too: keeps waiting
    assert b.tick(eligible=True) and row(dlog) == ("b", 2)


def test_holder_whose_lease_nobody_took_renews_it(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, clock, a, _b = setup
    a.tick(eligible=True)
    clock.t += 3 * TTL  # stopped long, but no standby ran meanwhile
    assert not a.held()
    assert a.tick(eligible=True) and a.generation == 1 and row(dlog) == ("a", 1)


def test_release_lets_a_standby_take_it_at_once(setup) -> None:  # type: ignore[no-untyped-def]
    dlog, _clock, a, b = setup
    a.tick(eligible=True)
    assert not b.tick(eligible=True)
    a.release()
    assert not a.held()
    assert b.tick(eligible=True) and row(dlog) == ("b", 2)


def test_a_late_standby_waits_a_whole_ttl_from_its_first_look(setup) -> None:  # type: ignore[no-untyped-def]
    _dlog, clock, a, b = setup
    a.tick(eligible=True)
    clock.t += 100.0  # a has been dead for long before b starts: b cannot know when
    assert not b.tick(eligible=True)
    clock.t += TTL - 0.01
    assert not b.tick(eligible=True)
    clock.t += 0.01
    assert b.tick(eligible=True)
