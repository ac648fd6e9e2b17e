"""The session state machine and main loop with stand-ins at the pipeline boundary.

The detector stand-in returns synthetic landmarks (a projected 3-D head or a warped flat
picture) laid over a real photo; the embedder returns a fixed vector per "person"; the
gallery is a list. The real pipeline runs in tests/test_session_video.py.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera.base import Frame
from edge.camera.grabber import CameraStatus
from edge.config import SessionConfig
from edge.session.audit import AuditLog, OutboxReporter
from edge.session.events import (
    CameraState,
    ChallengeIssued,
    Ended,
    EventBus,
    FacePresent,
    Idle,
    LivenessFailed,
    Matched,
    NotRecognised,
    Outcome,
    RatingReceived,
    SessionEvent,
    TimedOut,
)
from edge.session.loop import FrameLoop
from edge.session.machine import SessionMachine, State
from edge.session.ports import Detections
from edge.session.tracker import Tracker
from tests.session_helpers import box_of, project, warp

FPS = 15.0


@dataclasses.dataclass
class Match:
    citizen_id: str
    score: float


class ListGallery:
    def __init__(self, people: dict[str, np.ndarray]) -> None:
        self.people = people

    def search(self, embedding: np.ndarray, k: int) -> list[Match]:
        scored = [Match(c, float(e @ embedding)) for c, e in self.people.items()]
        return sorted(scored, key=lambda m: m.score, reverse=True)[:k]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


RNG = np.random.default_rng(0)
ALICE, BOB = unit(RNG.normal(size=128)), unit(RNG.normal(size=128))


class ScriptedDetector:
    """Returns the next scripted landmarks (or none) per call."""

    def __init__(self, script: list[np.ndarray | None]) -> None:
        self.script = script
        self.i = 0

    def detect(self, image: np.ndarray) -> Detections:
        lm = self.script[min(self.i, len(self.script) - 1)]
        self.i += 1
        if lm is None:
            return Detections.empty()
        return Detections(box_of(lm)[None], np.ones(1, np.float32), lm[None].astype(np.float32))


class FixedEmbedder:
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.calls = 0

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        self.calls += 1
        return np.repeat(self.vector[None], len(faces), axis=0)


@pytest.fixture
def photo(media_dir: Path) -> np.ndarray:
    img = cv2.imread(str(media_dir / "faces" / "barack_obama" / "1.jpg"))
    assert img is not None
    return img


def head(photo: np.ndarray, yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    h, w = photo.shape[:2]
    return project(yaw_deg=yaw, pitch_deg=pitch, cx=w / 2, cy=h * 0.45, f=w * 2.0)


def setup(tmp_path: Path, photo: np.ndarray, script: list, *, vector=ALICE,
          cfg: SessionConfig | None = None, challenge: str = "turn_left"):
    # the texture cue is off: the stand-in detector moves landmarks over a still photo,
    # whose texture never moves (tests/test_session_video.py runs both cues on video)
    cfg = cfg or SessionConfig(challenges=(challenge,), result_s=3.0, message_s=2.0,
                               texture_min=0.0)
    bus = EventBus()
    events: list[SessionEvent] = []
    bus.add_listener(events.append)
    audit = AuditLog.in_state_dir(tmp_path)
    reporter = OutboxReporter.in_state_dir(tmp_path)
    machine = SessionMachine(cfg, embedder=FixedEmbedder(vector),
                             gallery=ListGallery({"alice": ALICE, "bob": BOB}), threshold=0.6,
                             bus=bus, audit=audit, reporter=reporter, terminal_id="t1",
                             rng=random.Random(0))
    term = FrameLoop(detector=ScriptedDetector(script), machine=machine,
                    tracker=Tracker(lost_s=cfg.lost_s), bus=bus)
    return term, machine, events, audit, reporter


def play(term: FrameLoop, photo: np.ndarray, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        term.step(Frame(image=photo, t=i / FPS, index=i))


def kinds(events: list[SessionEvent]) -> list[str]:
    out: list[str] = []
    for e in events:
        if not out or out[-1] != e.kind:
            out.append(e.kind)
    return out


def test_live_turn_is_matched_then_ends_and_can_be_rated(tmp_path, photo) -> None:
    script = [head(photo)] * 8 + [head(photo, yaw=5 * i) for i in range(1, 9)]
    script += [head(photo, 40)] * 5 + [head(photo)] * 80
    term, machine, events, audit, reporter = setup(tmp_path, photo, script)
    play(term, photo, 25)
    assert kinds(events) == ["face_present", "challenge", "matched"]
    m = next(e for e in events if isinstance(e, Matched))
    assert m.citizen_id == "alice" and m.score == pytest.approx(1.0, abs=1e-5)
    # while shown, only the matched face's embedding is held (to notice a person change)
    assert machine.state is State.SHOWING and machine.session.watch_ref is not None
    assert not machine.session.embeddings and machine.session.liveness is None
    challenge = next(e for e in events if isinstance(e, ChallengeIssued))
    assert challenge.prompt_vi == "Xin quay đầu sang trái"
    play(term, photo, 60, start=25)  # result_s = 3 s at 15 fps
    assert kinds(events)[-2:] == ["ended", "idle"]
    ended = next(e for e in events if isinstance(e, Ended))
    assert ended.outcome is Outcome.MATCHED and ended.session_id == m.session_id
    assert machine.sessions_started == 1  # the same face does not start a second session
    assert not machine.holds_face_data()
    line = audit.read()[0]
    assert line["outcome"] == "matched" and line["citizen_id"] == "alice"
    assert line["session"] == m.session_id and line["challenge"] == "turn_left"
    assert set(line) == {"time", "terminal", "session", "outcome", "citizen_id", "score",
                         "challenge"}  # nothing about the face
    assert machine.rate(m.session_id, 5)
    assert not machine.rate(m.session_id, 4)  # once per session
    assert not machine.rate("other", 4) and not machine.rate(m.session_id, 9)
    assert isinstance(events[-1], RatingReceived) and events[-1].stars == 5
    assert reporter.read()[0]["kind"] == "rating" and reporter.read()[0]["stars"] == 5


def test_not_me_ends_session_and_reports(tmp_path, photo) -> None:
    script = [head(photo)] * 8 + [head(photo, yaw=7 * i) for i in range(1, 7)]
    script += [head(photo, 42)] * 4 + [head(photo)] * 20
    term, machine, events, audit, reporter = setup(tmp_path, photo, script)
    play(term, photo, 20)
    m = next(e for e in events if isinstance(e, Matched))
    assert not machine.not_me("someone-else")
    assert machine.not_me(m.session_id)
    assert not machine.not_me(m.session_id)  # already ended
    assert isinstance(events[-2], Ended) and events[-2].outcome is Outcome.NOT_ME
    assert isinstance(events[-1], Idle)
    rep = reporter.read()
    assert rep[0]["kind"] == "not_me" and rep[0]["citizen_id"] == "alice"
    assert [a["outcome"] for a in audit.read()] == ["matched", "not_me"]
    assert not machine.rate(m.session_id, 5)  # a disowned match cannot be rated


def test_still_photo_fails_liveness(tmp_path, photo) -> None:
    script = [head(photo)] * 200
    term, machine, events, audit, _ = setup(tmp_path, photo, script)
    play(term, photo, 130)  # 8.7 s > challenge_s
    assert "matched" not in kinds(events)
    failed = next(e for e in events if isinstance(e, LivenessFailed))
    assert "not seen" in failed.reason
    assert [a["outcome"] for a in audit.read()] == ["liveness_failed"]
    assert audit.read()[0]["citizen_id"] == ""


def test_moved_print_fails_and_wrong_way_fails(tmp_path, photo) -> None:
    ref = head(photo)
    moved = [warp(ref, shift=(2 * i, i), scale=1 + 0.005 * i, rot_deg=0.5 * i,
                  tilt=0.00002 * i) for i in range(200)]
    term, _, events, _, _ = setup(tmp_path, photo, [ref] * 8 + moved)
    play(term, photo, 130)
    failed = [e for e in events if isinstance(e, LivenessFailed)]
    assert failed and "flat picture" in failed[0].reason and "matched" not in kinds(events)
    script = [head(photo)] * 8 + [head(photo, yaw=-5 * i) for i in range(1, 9)] * 3
    term, _, events, _, _ = setup(tmp_path / "b", photo, script)
    play(term, photo, 30)
    failed = [e for e in events if isinstance(e, LivenessFailed)]
    assert failed and "wrong way" in failed[0].reason


def test_stranger_not_recognised_and_may_retry(tmp_path, photo) -> None:
    stranger = unit(RNG.normal(size=128))
    script = [head(photo)] * 8 + [head(photo, yaw=7 * i) for i in range(1, 7)]
    script += [head(photo, 42)] * 4 + [head(photo)] * 200
    term, machine, events, audit, _ = setup(tmp_path, photo, script, vector=stranger)
    play(term, photo, 200)
    assert any(isinstance(e, NotRecognised) for e in events)
    assert audit.read()[0]["outcome"] == "not_recognised"
    # after message_s the session ends; after retry_after_s the same face starts another
    assert machine.sessions_started >= 2


def test_bad_quality_times_out_and_leaving_ends(tmp_path, photo) -> None:
    turned = head(photo, yaw=30)  # never frontal
    cfg = SessionConfig(timeout_s=3.0, message_s=1.0)
    term, _, events, audit, _ = setup(tmp_path, photo, [turned] * 100, cfg=cfg)
    play(term, photo, 60)
    fp = next(e for e in events if isinstance(e, FacePresent))
    assert fp.hint.value == "not_frontal"
    assert any(isinstance(e, TimedOut) and e.stage == "quality" for e in events)
    assert audit.read()[0]["outcome"] == "timed_out"
    script = [head(photo)] * 5 + [None] * 40
    term, machine, events, audit, _ = setup(tmp_path / "b", photo, script)
    play(term, photo, 40)
    ended = [e for e in events if isinstance(e, Ended)]
    assert ended and ended[0].outcome is Outcome.LEFT and machine.state is State.IDLE
    assert not machine.holds_face_data()


def test_liveness_off_policy_decides_without_challenge(tmp_path, photo) -> None:
    cfg = SessionConfig(liveness="off")
    term, _, events, _, _ = setup(tmp_path, photo, [head(photo)] * 20, cfg=cfg)
    play(term, photo, 10)
    assert "challenge" not in kinds(events) and "matched" in kinds(events)


def test_camera_down_ends_running_session(tmp_path, photo) -> None:
    term, machine, events, _, _ = setup(tmp_path, photo, [head(photo)] * 20)
    play(term, photo, 6)
    assert machine.state is State.CHALLENGE and machine.holds_face_data()
    machine.camera_down(1.0)
    assert isinstance(events[-2], Ended) and events[-2].outcome is Outcome.CAMERA_DOWN
    assert not machine.holds_face_data() and machine.session is None


class BlinkingCamera:
    """A grabber stand-in whose camera fails and reconnects between two looks of the loop
    (a quick reconnect while the loop is busy): status() shows it up, with one more down."""

    def __init__(self, photo: np.ndarray) -> None:
        self.photo = photo
        self.index = 0
        self.downs = 0

    def status(self) -> CameraStatus:
        return CameraStatus(name="blink", up=True, error="", ended=False,
                            frames_grabbed=self.index, frames_dropped=0, reconnects=self.downs,
                            fps=15.0, downs=self.downs, last_error="read failed (USB reset)")

    def latest(self, after: int = -1, timeout: float | None = None) -> Frame:
        self.index += 1
        return Frame(image=self.photo, t=self.index / FPS, index=self.index)


def test_an_outage_between_two_looks_is_not_lost(tmp_path, photo) -> None:
    term, machine, events, _, _ = setup(tmp_path, photo, [head(photo)] * 40)
    cam = BlinkingCamera(photo)
    term.camera = cam  # type: ignore[assignment]
    for _ in range(6):
        term.step()
    assert machine.state is State.CHALLENGE
    assert not [e for e in events if isinstance(e, CameraState)]  # up from the start: quiet
    cam.downs += 1  # went down and came back while the loop was elsewhere
    term.step()
    cams = [e for e in events if isinstance(e, CameraState)]
    assert [(c.up, c.error) for c in cams] == [(False, "read failed (USB reset)"), (True, "")]
    ended = [e for e in events if isinstance(e, Ended)]
    assert ended and ended[-1].outcome is Outcome.CAMERA_DOWN  # the session did not survive
    term.step()
    assert len([e for e in events if isinstance(e, CameraState)]) == 2  # reported once


def test_another_face_in_the_same_place_clears_a_shown_match(tmp_path, photo) -> None:
    script = [head(photo)] * 8 + [head(photo, yaw=7 * i) for i in range(1, 7)]
    script += [head(photo, 42)] * 4 + [head(photo)] * 200
    term, machine, events, _, _ = setup(tmp_path, photo, script)
    play(term, photo, 25)
    assert machine.state is State.SHOWING
    calls = machine.embedder.calls
    play(term, photo, 20, start=25)  # 1.3 s: re-checked, still alice
    assert machine.state is State.SHOWING and machine.embedder.calls > calls  # re-checked
    machine.embedder.vector = BOB  # bob steps into alice's place without losing the track
    play(term, photo, 20, start=45)
    assert isinstance(events[-2], Ended) and events[-2].outcome is Outcome.MATCHED
    assert machine.state is State.IDLE and not machine.holds_face_data()


def test_audit_write_failure_is_counted_and_the_terminal_goes_on(tmp_path, photo) -> None:
    """A state dir that cannot be written (here: a file where the directory should be,
    like a read-only or full disk) must not stop sessions."""
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    script = [head(photo)] * 8 + [head(photo, yaw=7 * i) for i in range(1, 7)]
    script += [head(photo, 42)] * 4 + [head(photo)] * 20
    term, machine, events, _, _ = setup(tmp_path, photo, script)
    machine.audit = AuditLog.in_state_dir(blocker)
    machine.reporter = OutboxReporter.in_state_dir(blocker)
    play(term, photo, 25)
    m = next(e for e in events if isinstance(e, Matched))
    assert machine.audit.failures == 1 and machine.audit.read() == []
    assert machine.rate(m.session_id, 4)  # the report could not be written either
    assert machine.reporter.failures == 1
    assert machine.not_me(m.session_id)  # still works; its audit line is lost and counted
    assert machine.audit.failures == 2 and machine.reporter.failures == 2


def test_loop_runs_slowly_while_idle_and_fast_while_a_face_is_present(tmp_path, photo) -> None:
    from edge.config import CameraConfig

    script = [None] * 3 + [head(photo)] * 5 + [None] * 40
    term, machine, _, _, _ = setup(tmp_path, photo, script)
    term.camera_cfg = CameraConfig(idle_fps=4.0, active_fps=15.0)
    periods = []
    for i in range(len(script)):
        term.step(Frame(image=photo, t=i / 15.0, index=i))
        periods.append(term.frame_period())
    assert periods[:3] == [0.25] * 3  # nobody: 4 fps
    assert periods[3:8] == [pytest.approx(1 / 15)] * 5  # a face: 15 fps
    assert periods[-1] == 0.25  # the face left (track dropped after lost_s): idle again
    assert machine.state is State.IDLE
