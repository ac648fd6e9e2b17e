"""Face geometry from the five landmarks: pose proxies and nose parallax.

Landmark order: left eye, right eye, nose, left mouth corner, right mouth corner
(image left/right). Lengths are in units of the inter-ocular distance (IOD).

Parallax, the liveness cue: the eyes and mouth corners of a *flat* picture move between
two frames by a homography (any shift, scale, rotation or tilt of a print or screen), and
then the nose of the picture moves by that same homography. A real head is not flat: the
nose tip stands ~0.5 IOD in front of the eye-mouth plane, so when the head turns the nose
leaves the position the homography predicts, towards where the face turns.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
EYE_L, EYE_R, NOSE, MOUTH_L, MOUTH_R = range(5)
PLANE = [EYE_L, EYE_R, MOUTH_L, MOUTH_R]


@dataclasses.dataclass(frozen=True)
class Pose:
    """Landmark proxies of head pose (not angles; see the [session] settings)."""

    #: inter-ocular distance in pixels
    iod: float
    #: eye-line angle in degrees
    roll_deg: float
    #: nose offset from the eye-mouth midline / IOD; > 0 when the nose is to image right
    yaw: float
    #: nose height between eye line (0) and mouth line (1)
    pitch: float


def _deroll(points: F32, centre: npt.NDArray[np.float64], angle: float) -> F32:
    c, s = math.cos(-angle), math.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    return ((points - centre) @ rot.T).astype(np.float32)


def pose(lm: F32) -> Pose:
    """Pose proxies of one face's landmarks (5, 2)."""
    lm = np.asarray(lm, dtype=np.float64)
    eye_vec = lm[EYE_R] - lm[EYE_L]
    iod = float(np.hypot(*eye_vec))
    angle = math.atan2(eye_vec[1], eye_vec[0])
    eye_mid = (lm[EYE_L] + lm[EYE_R]) / 2
    p = _deroll(lm, eye_mid, angle)  # eye midpoint at the origin, eye line horizontal
    mouth_mid = (p[MOUTH_L] + p[MOUTH_R]) / 2
    mid_x = mouth_mid[0] / 2  # midline x at the nose's height, roughly
    iod_safe = max(iod, 1e-6)
    yaw = float((p[NOSE][0] - mid_x) / iod_safe)
    span = float(mouth_mid[1])
    pitch = float(p[NOSE][1] / span) if span > 1e-6 else float("nan")
    return Pose(iod=iod, roll_deg=math.degrees(angle), yaw=yaw, pitch=pitch)


#: a quadrilateral of eyes and mouth corners smaller than this (in IOD squared) is not a
#: face seen from the front half (a real one is ~1); no homography is fitted to it
MIN_QUAD_AREA = 0.1


def _degenerate(lm: F32) -> bool:
    quad = lm[[EYE_L, EYE_R, MOUTH_R, MOUTH_L]].astype(np.float64)
    x, y = quad[:, 0], quad[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    iod2 = float(np.sum((lm[EYE_R] - lm[EYE_L]) ** 2))
    return iod2 < 1e-6 or area / iod2 < MIN_QUAD_AREA


def nose_parallax(ref: F32, cur: F32) -> tuple[float, float] | None:
    """How far the nose left the eye/mouth homography from ``ref`` to ``cur``.

    Returns (dx, dy) in IOD units of ``cur``, in the face's own frame (x along the eye
    line towards the image-right eye, y down towards the mouth), or None when the four
    points are degenerate (e.g. nearly collinear) so no homography fits.
    """
    ref = np.asarray(ref, np.float32)
    cur = np.asarray(cur, np.float32)
    if _degenerate(ref) or _degenerate(cur):
        return None
    try:
        h = cv2.getPerspectiveTransform(ref[PLANE], cur[PLANE])
    except cv2.error:
        return None
    if h is None or not np.all(np.isfinite(h)) or abs(np.linalg.det(h)) < 1e-9:
        return None
    predicted = cv2.perspectiveTransform(ref[NOSE].reshape(1, 1, 2), h).reshape(2)
    if not np.all(np.isfinite(predicted)):
        return None
    resid = cur[NOSE].astype(np.float64) - predicted
    eye_vec = cur[EYE_R].astype(np.float64) - cur[EYE_L]
    iod = float(np.hypot(*eye_vec))
    if iod < 1e-6:
        return None
    angle = math.atan2(eye_vec[1], eye_vec[0])
    c, s = math.cos(-angle), math.sin(-angle)
    dx = (c * resid[0] - s * resid[1]) / iod
    dy = (s * resid[0] + c * resid[1]) / iod
    return float(dx), float(dy)
