"""Unit tests of the session's parts: geometry, tracker, quality gate, liveness, decision.

These use synthetic landmarks (a projected 3-D head, a warped flat picture) or simple
stand-ins at the pipeline boundary; tests/test_session_video.py runs the real pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SessionConfig
from edge.session.decision import decide
from edge.session.events import Challenge, Hint
from edge.session.geometry import nose_parallax, pose
from edge.session.liveness import LivenessCheck, Verdict
from edge.session.ports import Detections
from edge.session.quality import QualityGate, sharpness_and_brightness
from edge.session.tracker import Tracker, iou
from tests.session_helpers import box_of, project, warp

CFG = SessionConfig()


def dets(*faces: np.ndarray) -> Detections:
    lms = np.stack(faces).astype(np.float32) if faces else np.zeros((0, 5, 2), np.float32)
    boxes = np.stack([box_of(f) for f in faces]) if faces else np.zeros((0, 4), np.float32)
    return Detections(boxes.astype(np.float32), np.ones(len(faces), np.float32), lms)


# ---------------------------------------------------------------- geometry
def test_pose_of_frontal_and_turned_head() -> None:
    p = pose(project())
    assert abs(p.yaw) < 0.01 and 0.4 < p.pitch < 0.6 and abs(p.roll_deg) < 0.1
    assert pose(project(yaw_deg=25)).yaw > 0.2  # turned to the person's left: nose right
    assert pose(project(yaw_deg=-25)).yaw < -0.2
    rolled = warp(project(), rot_deg=30)
    assert pose(rolled).roll_deg == pytest.approx(30, abs=0.5)
    assert abs(pose(rolled).yaw) < 0.01  # roll does not read as yaw


@pytest.mark.parametrize(("yaw", "pitch", "axis", "sign"),
                         [(35, 0, 0, 1), (-35, 0, 0, -1), (0, 35, 1, -1), (0, -35, 1, 1)])
def test_head_turn_shows_parallax_in_its_direction(yaw, pitch, axis, sign) -> None:
    dx, dy = nose_parallax(project(), project(yaw_deg=yaw, pitch_deg=pitch))
    along = (dx, dy)[axis] * sign
    across = abs((dx, dy)[1 - axis])
    assert along > CFG.parallax_min and across < 0.04
    # a small turn stays below the threshold: the gesture must be clear
    dx, dy = nose_parallax(project(), project(yaw_deg=yaw / 5, pitch_deg=pitch / 5))
    assert max(abs(dx), abs(dy)) < CFG.parallax_min


def test_flat_picture_moved_any_way_shows_no_parallax() -> None:
    ref = project()
    rng = np.random.default_rng(3)
    for _ in range(200):
        moved = warp(ref, shift=rng.uniform(-80, 80, 2), scale=rng.uniform(0.6, 1.6),
                     rot_deg=rng.uniform(-40, 40), tilt=rng.uniform(-0.002, 0.002))
        dx, dy = nose_parallax(ref, moved)
        assert np.hypot(dx, dy) < 1e-3
    # even a print of a *turned* face, then moved, stays flat
    turned_print = project(yaw_deg=20)
    dx, dy = nose_parallax(turned_print, warp(turned_print, rot_deg=15, tilt=0.001))
    assert np.hypot(dx, dy) < 1e-3


def test_degenerate_landmarks_give_none() -> None:
    flat = np.array([[0, 0], [10, 0], [5, 0], [20, 0], [30, 0]], np.float32)
    assert nose_parallax(flat, flat) is None


# ---------------------------------------------------------------- tracker
def test_iou() -> None:
    a = np.array([0, 0, 10, 10], np.float32)
    assert iou(a, a) == 1.0
    assert iou(a, np.array([5, 0, 15, 10], np.float32)) == pytest.approx(1 / 3)
    assert iou(a, np.array([20, 20, 30, 30], np.float32)) == 0.0


def test_tracker_follows_moving_face_and_keeps_ids() -> None:
    tr = Tracker(iou_min=0.3, centre_max=0.5, lost_s=1.0)
    a = project(cx=200)
    b = project(cx=500, dist=12)  # another, smaller face
    first = tr.update(dets(a, b), 0.0)
    ida, idb = first[0].id, first[1].id
    for i in range(1, 10):  # both drift 8 px per frame
        seen = tr.update(dets(a + [8 * i, 0], b - [8 * i, 0]), i * 0.1)
        ids = {s.id for s in seen}
        assert ids == {ida, idb}
    assert tr.tracks[ida].hits == 10
    # a fast move (no overlap) but within half a box: the centre rule keeps the track
    big_step = a + [8 * 9 + 40, 0]
    seen = tr.update(dets(big_step), 1.0)
    assert [s.id for s in seen] == [ida]
    # a face far away is a new track; the old ones are dropped after lost_s
    seen = tr.update(dets(project(cx=50, cy=50)), 1.5)
    assert seen[0].id not in (ida, idb)
    tr.update(dets(), 2.6)
    assert ida not in tr.tracks and idb not in tr.tracks


def test_subject_is_largest_most_central() -> None:
    tr = Tracker()
    central_small = project(cx=320, cy=240, dist=10)
    corner_big = project(cx=60, cy=60, dist=8)
    central_big = project(cx=330, cy=250, dist=6)
    seen = tr.update(dets(central_small, corner_big), 0.0)
    subject = tr.subject(seen, (480, 640, 3))
    # corner face is bigger (area ratio (10/8)^2 = 1.56) but pays for being off-centre
    assert subject is not None and subject.box[0] > 200
    tr2 = Tracker()
    seen = tr2.update(dets(central_small + [0, 150], central_big), 0.0)
    assert tr2.subject(seen, (480, 640, 3)).size == max(s.size for s in seen)
    assert tr2.subject([], (480, 640, 3)) is None


# ---------------------------------------------------------------- quality gate
@pytest.fixture
def face_photo(media_dir: Path) -> np.ndarray:
    img = cv2.imread(str(media_dir / "faces" / "barack_obama" / "1.jpg"))
    assert img is not None
    return img


def test_sharpness_drops_with_blur(face_photo: np.ndarray) -> None:
    h, w = face_photo.shape[:2]
    box = np.array([w * 0.25, h * 0.15, w * 0.75, h * 0.75], np.float32)
    sharp, bright = sharpness_and_brightness(face_photo, box)
    # blur of 2.5% of the face size: what a head moving during the exposure gives
    blurred, _ = sharpness_and_brightness(cv2.GaussianBlur(face_photo, (0, 0), 0.025 * w), box)
    dark, dark_b = sharpness_and_brightness((face_photo * 0.1).astype(np.uint8), box)
    assert sharp > CFG.min_sharpness > blurred
    assert CFG.min_brightness < bright < CFG.max_brightness and dark_b < CFG.min_brightness
    assert sharpness_and_brightness(face_photo, np.array([5, 5, 5, 5], np.float32)) == (0, 0)


def test_quality_gate_hints(face_photo: np.ndarray) -> None:
    gate = QualityGate(CFG)
    h, w = face_photo.shape[:2]
    # synthetic landmarks laid over the real photo's face region (~50% of the width)
    lm = project(cx=w / 2, cy=h * 0.45, f=w * 0.25 * 8)
    box = box_of(lm)
    assert gate.check(face_photo, box, lm).hint is Hint.OK
    small = project(cx=w / 2, cy=h * 0.45, f=120)
    assert gate.check(face_photo, box_of(small), small).hint is Hint.TOO_SMALL
    blurry = cv2.GaussianBlur(face_photo, (0, 0), 0.025 * w)
    assert gate.check(blurry, box, lm).hint is Hint.BLURRY
    dark = (face_photo * 0.1).astype(np.uint8)
    assert gate.check(dark, box, lm).hint is Hint.TOO_DARK
    for yaw, pitch in ((25, 0), (0, 30), (0, -30)):
        turned = project(yaw_deg=yaw, pitch_deg=pitch, cx=w / 2, cy=h * 0.45, f=w * 0.25 * 8)
        assert gate.check(face_photo, box, turned).hint is Hint.NOT_FRONTAL, (yaw, pitch)
    rolled = warp(lm, rot_deg=30)
    assert gate.check(face_photo, box, rolled).hint is Hint.NOT_FRONTAL


# ---------------------------------------------------------------- liveness
def run_check(challenge: Challenge, frames: list[np.ndarray], dt: float = 1 / 15,
              cfg: SessionConfig = CFG) -> tuple[Verdict, LivenessCheck]:
    chk = LivenessCheck(cfg, challenge, frames[0], 0.0)
    verdict = Verdict.PENDING
    for i, lm in enumerate(frames[1:], 1):
        verdict = chk.update(lm, i * dt)
        if verdict is not Verdict.PENDING:
            break
    return verdict, chk


def turn(yaw_to: float = 0.0, pitch_to: float = 0.0, n: int = 15) -> list[np.ndarray]:
    return [project(yaw_deg=yaw_to * i / n, pitch_deg=pitch_to * i / n) for i in range(n + 1)]


@pytest.mark.parametrize(("challenge", "yaw", "pitch"), [
    (Challenge.TURN_LEFT, 50, 0), (Challenge.TURN_RIGHT, -50, 0),
    (Challenge.LOOK_UP, 0, 50), (Challenge.LOOK_DOWN, 0, -50)])
def test_commanded_gesture_passes_and_other_gestures_fail(challenge, yaw, pitch) -> None:
    verdict, chk = run_check(challenge, turn(yaw, pitch))
    assert verdict is Verdict.PASSED and chk.reference is None  # reference dropped
    for other in Challenge:
        if other is not challenge:
            v, c = run_check(other, turn(yaw, pitch))
            assert v is Verdict.FAILED and "wrong way" in c.reason


def test_still_and_moved_photo_never_pass() -> None:
    ref = project()
    still = [ref] * 120  # 8 s at 15 fps: longer than challenge_s
    for challenge in Challenge:
        v, chk = run_check(challenge, still)
        assert v is Verdict.FAILED and "not seen" in chk.reason
    rng = np.random.default_rng(5)
    moved = [warp(ref, shift=(3 * i, -2 * i), scale=1 + 0.01 * i, rot_deg=i,
                  tilt=0.00005 * i) + rng.normal(0, 0.4, (5, 2)) for i in range(120)]
    for challenge in Challenge:
        v, chk = run_check(challenge, moved)
        assert v is Verdict.FAILED and "flat picture" in chk.reason


def test_one_frame_glitch_does_not_pass() -> None:
    frames = [project()] * 10 + [project(yaw_deg=40)] + [project()] * 100
    v, chk = run_check(Challenge.TURN_LEFT, frames)
    assert v is Verdict.FAILED and chk.best > CFG.parallax_min  # it was seen, once


# ---------------------------------------------------------------- decision
@dataclasses.dataclass
class M:
    citizen_id: str
    score: float


def test_decide_threshold_and_margin_over_next_citizen() -> None:
    assert decide([M("a", 0.8), M("b", 0.5)], 0.6, 0.08).citizen_id == "a"
    assert decide([M("a", 0.55), M("b", 0.3)], 0.6, 0.08).citizen_id == ""  # below
    close = decide([M("a", 0.8), M("b", 0.76)], 0.6, 0.08)
    assert close.citizen_id == "" and close.margin == pytest.approx(0.04)
    # two embeddings of the same citizen are not "the next citizen"
    same = decide([M("a", 0.8), M("a", 0.79), M("b", 0.5)], 0.6, 0.08)
    assert same.citizen_id == "a" and same.margin == pytest.approx(0.3)
    assert decide([M("a", 0.7)], 0.6, 0.08).citizen_id == "a"
    assert decide([], 0.6, 0.08).citizen_id == ""


# ---------------------------------------------------------------- texture cue
def test_texture_of_a_warped_photo_is_planar_and_of_two_planes_is_not(media_dir) -> None:
    from edge.session.texture import TextureTracker
    from tests.attack_media import load_print, plane_homography, render

    sheet = load_print(media_dir / "faces" / "barack_obama" / "1.jpg", 300)
    rng = np.random.default_rng(0)
    hs = [plane_homography(sheet.shape[1], sheet.shape[0], yaw_deg=2 * i, pitch_deg=-i,
                           roll_deg=i, scale=1 + 0.01 * i, shift=(2 * i, i))
          for i in range(15)]
    frames = [render(sheet, h, rng) for h in hs]
    box = np.array([250, 140, 390, 300], np.float32)  # the face region of the print
    tex = TextureTracker(frames[0], box, iod=50.0)
    assert tex.points >= 20
    res = [tex.update(f) for f in frames[1:]]
    assert all(r is not None and r < CFG.texture_min / 2 for r in res), res
    # two planes: the left half of the face slides right while the right half stays
    two = []
    for i in range(15):
        img = frames[0].copy()
        left = img[:, :320].copy()
        img[:, 2 * i : 320] = left[:, : 320 - 2 * i]
        two.append(img)
    tex2 = TextureTracker(two[0], box, iod=50.0)
    res2 = [tex2.update(f) for f in two[1:]]
    assert res2[-1] is not None and res2[-1] > CFG.texture_min
    tex2.forget()
    assert tex2.points == 0 and tex2.update(two[0]) is None
