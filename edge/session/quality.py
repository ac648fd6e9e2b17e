"""The quality gate: is this face good enough to embed and to start a challenge on?"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import SessionConfig
from edge.session.events import Hint
from edge.session.geometry import pose

F32 = npt.NDArray[np.float32]

#: side the face is resized to before measuring sharpness, so the Laplacian variance
#: means the same at any distance (112 px is the embedder's own input scale)
SHARPNESS_SIDE = 112


@dataclasses.dataclass(frozen=True)
class Quality:
    hint: Hint
    size: float
    sharpness: float
    brightness: float
    yaw: float
    pitch: float
    roll_deg: float

    @property
    def ok(self) -> bool:
        return self.hint is Hint.OK


def sharpness_and_brightness(image: npt.NDArray[np.uint8], box: F32) -> tuple[float, float]:
    """Variance of the Laplacian and mean grey level of the face box (clipped to the image)."""
    h, w = image.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0, 0.0
    crop = image[y1:y2, x1:x2]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    grey = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    return float(lap.var()), float(grey.mean())


class QualityGate:
    """Checks size, brightness, sharpness and frontal pose, in that order."""

    def __init__(self, cfg: SessionConfig) -> None:
        self.cfg = cfg

    def check(self, image: npt.NDArray[np.uint8], box: F32, landmarks: F32) -> Quality:
        cfg = self.cfg
        size = float(min(box[2] - box[0], box[3] - box[1]))
        sharp, bright = sharpness_and_brightness(image, box)
        p = pose(landmarks)
        if size < cfg.min_face_px:
            hint = Hint.TOO_SMALL
        elif not cfg.min_brightness <= bright <= cfg.max_brightness:
            hint = Hint.TOO_DARK
        elif sharp < cfg.min_sharpness:
            hint = Hint.BLURRY
        elif (
            abs(p.yaw) > cfg.max_yaw
            or not cfg.min_pitch <= p.pitch <= cfg.max_pitch
            or abs(p.roll_deg) > cfg.max_roll_deg
        ):
            hint = Hint.NOT_FRONTAL
        else:
            hint = Hint.OK
        return Quality(hint=hint, size=size, sharpness=sharp, brightness=bright, yaw=p.yaw,
                       pitch=p.pitch, roll_deg=p.roll_deg)
