"""The liveness challenge: did the face make the commanded 3-D head movement?

Checked from landmark geometry only (see :mod:`edge.session.geometry`): the nose's
parallax against the homography of the eyes and mouth corners, measured from the
reference frame taken when the challenge was issued. A flat picture (photo, print moved,
tilted or rotated, a phone screen) shows no parallax whatever way it is moved. Movement
in another direction than commanded fails at once, so a replayed video of a moving face
passes only if it happens to move the right way in the few seconds after the prompt.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

from edge.config import SessionConfig
from edge.session.events import Challenge
from edge.session.geometry import PLANE, nose_parallax, pose
from edge.session.texture import TextureTracker

F32 = npt.NDArray[np.float32]

#: unit direction of the nose parallax each gesture produces, in the face frame of
#: :func:`nose_parallax` (x towards image right, y down). The camera image is not
#: mirrored: a citizen turning to their own left turns their nose towards image right.
DIRECTIONS: dict[Challenge, tuple[float, float]] = {
    Challenge.TURN_LEFT: (1.0, 0.0),
    Challenge.TURN_RIGHT: (-1.0, 0.0),
    Challenge.LOOK_UP: (0.0, -1.0),
    Challenge.LOOK_DOWN: (0.0, 1.0),
}
#: how far (IOD) the eye/mouth points may move around before a failure is reported as
#: "moved like a flat picture" rather than "no movement": a tenth of the eye distance
PLANAR_MOTION = 0.1


class Verdict(enum.Enum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


class LivenessCheck:
    """One challenge: feed the subject's landmarks per frame until PASSED or FAILED."""

    def __init__(self, cfg: SessionConfig, challenge: Challenge, reference: F32, t0: float,
                 image: npt.NDArray[np.uint8] | None = None, box: F32 | None = None):
        self.cfg = cfg
        #: the texture cue (None when disabled or no image was given, e.g. unit tests of
        #: the landmark cue alone)
        self.texture: TextureTracker | None = None
        if cfg.texture_min > 0 and image is not None and box is not None:
            self.texture = TextureTracker(image, np.asarray(box, np.float32),
                                          pose(np.asarray(reference, np.float32)).iod)
        #: newest and largest texture non-planarity seen (IOD), for tests and tuning
        self.texture_last: float | None = None
        self.texture_best = 0.0
        #: when the landmark cue alone was first satisfied (None: not yet)
        self.landmarks_passed_t: float | None = None
        self.challenge = challenge
        self.reference: F32 | None = np.asarray(reference, np.float32).copy()
        self.t0 = t0
        self.streak = 0
        #: best parallax along the commanded direction so far (IOD), for progress
        self.best = 0.0
        #: largest movement of the four plane points seen (IOD), to explain failures
        self.planar = 0.0
        self.reason = ""
        self.frames = 0

    @property
    def progress(self) -> float:
        return min(1.0, self.best / self.cfg.parallax_min)

    def update(self, landmarks: F32, t: float,
               image: npt.NDArray[np.uint8] | None = None) -> Verdict:
        if self.reference is None:
            return Verdict.FAILED if self.reason else Verdict.PASSED
        cfg = self.cfg
        if self.texture is not None and image is not None:
            self.texture_last = self.texture.update(image)
            if self.texture_last is not None:
                self.texture_best = max(self.texture_best, self.texture_last)
        if t - self.t0 > cfg.challenge_s:
            if self.planar > PLANAR_MOTION or self.landmarks_passed_t is not None:
                return self._fail("the face moved like a flat picture (no 3-D movement)")
            return self._fail("the requested head movement was not seen")
        self.frames += 1
        cur = np.asarray(landmarks, np.float32)
        iod = max(pose(cur).iod, 1e-6)
        moved = np.linalg.norm(cur[PLANE] - self.reference[PLANE], axis=1).max() / iod
        self.planar = max(self.planar, float(moved))
        par = nose_parallax(self.reference, cur)
        if par is None:
            self.streak = 0
            return Verdict.PENDING
        vec = np.array(par)
        along = {ch: float(vec @ np.array(d)) for ch, d in DIRECTIONS.items()}
        wanted = along[self.challenge]
        other_ch, other = max(
            ((ch, v) for ch, v in along.items() if ch is not self.challenge),
            key=lambda kv: kv[1],
        )
        if other > cfg.wrong_way_max and other > wanted:
            return self._fail(f"moved the wrong way ({other_ch.value} instead of "
                              f"{self.challenge.value})")
        self.best = max(self.best, wanted)
        if wanted >= cfg.parallax_min:
            self.streak += 1
            if self.streak >= cfg.parallax_frames:
                if self.landmarks_passed_t is None:
                    self.landmarks_passed_t = t
                if self.texture is None or (self.texture_last is not None
                                            and self.texture_last >= cfg.texture_min):
                    self._forget()
                    return Verdict.PASSED
                if t - self.landmarks_passed_t > cfg.texture_grace_s:
                    return self._fail("the face moved like a flat picture (landmarks turned, "
                                      "texture did not)")
        else:
            self.streak = 0
        return Verdict.PENDING

    def _fail(self, reason: str) -> Verdict:
        self.reason = reason
        self._forget()
        return Verdict.FAILED

    def _forget(self) -> None:
        """Nothing about the face is kept once decided."""
        self.reference = None
        if self.texture is not None:
            self.texture.forget()
