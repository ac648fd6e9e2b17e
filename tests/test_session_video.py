"""Lookup sessions on real video through the real pipeline (MTCNN + FaceNet from the built
model pack) and a real GalleryStore with the sample faces enrolled.

Liveness policy in these tests (see docs/session.md, "Validation"):
- hamilton_clip.mp4 contains no *commanded* gesture, but Lin-Manuel Miranda really turns
  his head to his right (frames ~95-135). The recognition test runs the whole clip twice:
  with ``liveness = "off"`` (the recognition path alone) and with the challenge fixed to
  ``turn_right`` -- the turn he really makes -- and the *same frames* with every other
  challenge must fail (so the check is not passing by construction).
- Attacks: a print of his (enrolled) photo held still, and waved about (shifted, scaled,
  rolled and tilted up to ~35 degrees in perspective) with seeds the thresholds were not
  tuned on; each with every challenge. The same material *is* matched with liveness off,
  so it is recognisable: only the liveness gate stops it.
- A looping replay of the real turn passes only the challenge it happens to show; that
  is the known limit of a geometric check and is pinned here, not hidden.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.camera.base import Frame
from edge.camera.file import VideoFileSource
from edge.camera.grabber import Grabber
from edge.config import CameraConfig, SessionConfig
from edge.session.audit import AuditLog
from edge.session.events import (
    CameraState,
    ChallengeIssued,
    EventBus,
    LivenessFailed,
    Matched,
    SessionEvent,
)
from edge.session.loop import FrameLoop
from edge.session.machine import SessionMachine
from edge.session.tracker import Tracker
from edge.store import GalleryStore
from faces.pipeline import BgrPorts, FacePipeline
from tests.attack_media import load_print, moved_print, still_print
from tests.session_real import CachedDetector, enrol_gallery, pipeline, run_frames

LIN = "lin_manuel_miranda"
ALL = ("turn_left", "turn_right", "look_up", "look_down")
#: the clip is 29.97 fps; the terminal processes active_fps = 15, so every other frame
STEP = 2


@pytest.fixture(scope="module")
def pipe() -> FacePipeline:
    return pipeline()


@pytest.fixture(scope="module")
def ports(pipe: FacePipeline) -> BgrPorts:
    return BgrPorts(pipe)


@pytest.fixture(scope="module")
def gallery(pipe: FacePipeline, media_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    store = enrol_gallery(pipe, media_dir, tmp_path_factory.mktemp("gallery") / "g")
    yield store
    store.close()


@pytest.fixture(scope="module")
def hamilton(media_dir: Path) -> list[Frame]:
    src = VideoFileSource(media_dir / "video" / "hamilton_clip.mp4", realtime=False)
    src.open()
    frames = []
    while (f := src.read()) is not None:
        if f.index % STEP == 0:
            frames.append(f)
    src.close()
    assert len(frames) == 138
    return frames


@pytest.fixture(scope="module")
def hamilton_det(ports: BgrPorts) -> CachedDetector:
    return CachedDetector(ports)


def cfg(**kw: object) -> SessionConfig:
    return dataclasses.replace(SessionConfig(), **kw)  # type: ignore[arg-type]


def test_hamilton_recognition_path_matches_lin_and_nobody_else(
        hamilton, ports, gallery, pipe, hamilton_det) -> None:
    run = run_frames(hamilton, ports, gallery, cfg(liveness="off"), pipe.match_threshold,
                     detector=hamilton_det)
    assert run.matched() == [LIN]
    m = next(e for e in run.events if isinstance(e, Matched))
    assert m.score >= pipe.match_threshold and m.margin >= SessionConfig().margin
    # other people in the clip (pianist, audience, the Obamas) start sessions too
    assert run.machine.sessions_started >= 2


def test_hamilton_real_head_turn_passes_only_the_turn_it_shows(
        hamilton, ports, gallery, pipe, hamilton_det) -> None:
    run = run_frames(hamilton, ports, gallery, cfg(challenges=("turn_right",)),
                     pipe.match_threshold, detector=hamilton_det)
    assert run.matched() == [LIN]
    kinds = run.kinds()
    assert kinds.index("challenge") < kinds.index("matched")
    for challenge in ("turn_left", "look_up", "look_down"):
        other = run_frames(hamilton, ports, gallery, cfg(challenges=(challenge,)),
                           pipe.match_threshold, detector=hamilton_det)
        assert other.matched() == [], challenge
        failed = [e for e in other.events if isinstance(e, LivenessFailed)]
        assert failed and "wrong way" in failed[0].reason, challenge
    # with the random choice over all four, a match happens only for Lin, never others
    for seed in range(4):
        run = run_frames(hamilton, ports, gallery, cfg(challenges=ALL), pipe.match_threshold,
                         seed=seed, detector=hamilton_det)
        issued = [e.challenge.value for e in run.events if isinstance(e, ChallengeIssued)]
        assert set(run.matched()) <= {LIN}
        assert (run.matched() == [LIN]) == (issued[0] == "turn_right"), (seed, issued)


def print_frames(images, fps: float = 15.0) -> list[Frame]:
    return [Frame(image=img, t=i / fps, index=i) for i, img in enumerate(images)]


def attack_runs(frames: list[Frame], ports, gallery, pipe) -> dict[str, list[SessionEvent]]:
    det = CachedDetector(ports)
    out = {}
    for challenge in ALL:
        run = run_frames(frames, ports, gallery, cfg(challenges=(challenge,)),
                         pipe.match_threshold, detector=det)
        assert run.matched() == [], challenge
        out[challenge] = run.events
    # the same material is recognised when liveness is off: only the gate stops it
    off = run_frames(frames, ports, gallery, cfg(liveness="off"), pipe.match_threshold,
                     detector=det)
    assert off.matched() and off.matched()[0] == LIN
    return out


def test_still_print_of_enrolled_face_never_matches(media_dir, ports, gallery, pipe) -> None:
    sheet = load_print(media_dir / "faces" / LIN / "1.png")
    frames = print_frames(still_print(sheet, 150, seed=20))  # 10 s > challenge_s
    for challenge, events in attack_runs(frames, ports, gallery, pipe).items():
        failed = [e for e in events if isinstance(e, LivenessFailed)]
        assert failed and "not seen" in failed[0].reason, challenge


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_moved_and_tilted_print_never_matches(media_dir, ports, gallery, pipe, seed) -> None:
    sheet = load_print(media_dir / "faces" / LIN / "1.png")
    frames = print_frames(moved_print(sheet, 150, seed=seed))
    for challenge, events in attack_runs(frames, ports, gallery, pipe).items():
        assert any(isinstance(e, LivenessFailed) for e in events), challenge


def test_looping_replay_of_the_turn_passes_only_the_shown_gesture(
        hamilton, ports, gallery, pipe) -> None:
    # frames 84..140 (Lin frontal, then turning to his right), replayed four times
    segment = [f for f in hamilton if 84 <= f.index <= 140]
    frames = []
    for _loop in range(4):
        for f in segment:
            i = len(frames)
            frames.append(Frame(image=f.image, t=i / 15.0, index=i))
    det = CachedDetector(ports)
    for challenge in ALL:
        run = run_frames(frames, ports, gallery, cfg(challenges=(challenge,)),
                         pipe.match_threshold, detector=det)
        assert set(run.matched()) <= {LIN}
        # known limit: a replay that happens to show the commanded gesture passes
        assert bool(run.matched()) == (challenge == "turn_right"), challenge


def test_run_loop_on_a_grabbed_corrupt_video_reports_camera_down(
        media_dir, ports, gallery, pipe, tmp_path) -> None:
    data = bytearray((media_dir / "video" / "hamilton_clip.mp4").read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    rng = np.random.default_rng(2)
    for p in range((mdat + moov) // 2, moov - 600, 1000):
        data[p : p + 400] = rng.integers(0, 256, 400, np.uint8).tobytes()
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(bytes(data))
    stop = threading.Event()
    bus = EventBus()
    events: list[SessionEvent] = []
    bus.add_listener(events.append)
    audit = AuditLog.in_state_dir(tmp_path / "state")
    machine = SessionMachine(SessionConfig(liveness="off"), embedder=ports, gallery=gallery,
                             threshold=pipe.match_threshold, bus=bus, audit=audit)
    grabber = Grabber(VideoFileSource(bad, realtime=True), stop, reconnect_initial_s=0.0,
                      reconnect_max_s=0.0).start()
    term = FrameLoop(detector=ports, machine=machine, tracker=Tracker(), bus=bus,
                    camera=grabber, camera_cfg=CameraConfig(idle_fps=15, active_fps=15))
    beats = []

    def heartbeat() -> None:
        beats.append(1)
        if any(isinstance(e, CameraState) and e.up for e in events):
            stop.set()  # it went down and came back: enough

    runner = threading.Thread(target=term.run, args=(stop, heartbeat), name="test-terminal")
    runner.start()
    runner.join(120)
    stop.set()
    grabber.join(10)
    assert not runner.is_alive()
    cams = [e for e in events if isinstance(e, CameraState)]
    assert cams[0].up is False and "truncated or corrupt" in cams[0].error
    assert cams[-1].up is True and len(beats) > 10
    st = grabber.status()
    assert st.reconnects >= 1 and term.frames_processed > 0
    assert term.frames_processed < st.frames_grabbed  # the loop skipped stale frames


def test_gallery_is_a_real_store(gallery: GalleryStore) -> None:
    assert gallery.citizen_count == 10
    assert {m.citizen_id for m in gallery.search(np.ones(gallery.dim, np.float32), k=3)}


def test_tilted_print_that_fools_the_landmark_cue_is_stopped_by_the_texture_cue(
        media_dir, ports) -> None:
    """Held-out seed 4 of Angelina Jolie's photo waved as a print: from frame 90 the tilt
    makes MTCNN place the nose as if the head turned left (parallax 0.3-0.4 for seconds).
    The landmark cue alone passes ``turn_left``; the texture of the print still moves by
    one homography, so both cues together fail it."""
    from edge.session.events import Challenge
    from edge.session.liveness import LivenessCheck, Verdict

    imgs = list(moved_print(load_print(media_dir / "faces" / "angelina_jolie" / "1.jpg"),
                            150, seed=4))[90:]
    dets = [ports.detect(img) for img in imgs]
    first = dets[0]
    k = first.largest()

    def verdict(texture_min: float) -> tuple[Verdict, str]:
        c = cfg(texture_min=texture_min)
        chk = LivenessCheck(c, Challenge.TURN_LEFT, first.landmarks[k], 0.0, image=imgs[0],
                            box=first.boxes[k])
        v = Verdict.PENDING
        for i in range(1, len(imgs)):
            if len(dets[i]):
                v = chk.update(dets[i].landmarks[dets[i].largest()], i / 15, imgs[i])
                if v is not Verdict.PENDING:
                    break
        return v, chk.reason

    assert verdict(0.0)[0] is Verdict.PASSED  # the landmark cue alone is fooled
    v, reason = verdict(SessionConfig().texture_min)
    assert v is Verdict.FAILED and "flat picture" in reason
