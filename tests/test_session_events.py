"""The session event bus: fan-out, bounded queues, current state for late subscribers."""

from __future__ import annotations

import threading

from edge.session.events import (
    CameraState,
    Challenge,
    ChallengeIssued,
    Ended,
    EventBus,
    FacePresent,
    Idle,
    Matched,
    Outcome,
)


def test_subscriber_gets_current_state_then_new_events() -> None:
    bus = EventBus()
    bus.publish(FacePresent("s1"))
    with bus.subscribe() as sub:
        first = sub.get(timeout=1)
        assert isinstance(first, FacePresent) and first.session_id == "s1"
        bus.publish(ChallengeIssued("s1", challenge=Challenge.TURN_LEFT))
        ev = sub.get(timeout=1)
        assert isinstance(ev, ChallengeIssued)
        assert ev.kind == "challenge" and "trái" in ev.prompt_vi
    assert sub.get(timeout=0) is None  # closed


def test_slow_subscriber_drops_oldest_and_counts() -> None:
    bus = EventBus()
    sub = bus.subscribe(maxlen=3)
    for i in range(10):
        bus.publish(Matched(f"s{i}", citizen_id="c", score=0.9, margin=0.2))
    got = [sub.get(timeout=0) for _ in range(3)]
    assert [e.session_id for e in got if e] == ["s7", "s8", "s9"]
    assert sub.dropped == 8  # 1 initial Idle + 10 events - 3 kept
    sub.close()


def test_listeners_and_camera_state_for_late_subscriber() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.add_listener(lambda e: seen.append(e.kind))
    bus.publish(CameraState("", up=False, error="gone"))
    bus.publish(Ended("s", outcome=Outcome.CAMERA_DOWN))
    bus.publish(Idle(""))
    assert seen == ["camera", "ended", "idle"]
    sub = bus.subscribe()
    a, b = sub.get(timeout=0), sub.get(timeout=0)
    assert isinstance(a, CameraState) and not a.up and a.error == "gone"
    assert isinstance(b, Idle)


def test_get_wakes_on_close() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    assert isinstance(sub.get(timeout=0), Idle)
    t = threading.Timer(0.05, sub.close)
    t.start()
    assert sub.get(timeout=10) is None
    t.join()
