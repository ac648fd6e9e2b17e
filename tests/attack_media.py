"""Presentation-attack material made from real photos: a print held still, moved around,
tilted like a hand-held print (a plane rotated in 3-D, seen through a pinhole camera), with
camera noise. Frames are BGR 640x480 like a kiosk camera's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

FRAME_W, FRAME_H = 640, 480


def load_print(path: Path, face_width: int = 300) -> np.ndarray:
    """The photo scaled so that it is ``face_width`` px wide (the printed sheet)."""
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    s = face_width / img.shape[1]
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)


def plane_homography(w: int, h: int, *, yaw_deg: float, pitch_deg: float, roll_deg: float,
                     scale: float, shift: tuple[float, float], f: float = 600.0,
                     dist: float = 600.0) -> np.ndarray:
    """Homography taking the print's pixels to the camera image when the print (a plane
    ``w`` x ``h`` centred on the optical axis at ``dist``) is rotated, scaled and shifted."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    pts3 = np.c_[(corners - [w / 2, h / 2]) * scale, np.zeros(4)] @ rot.T + [0, 0, dist]
    img = np.c_[f * pts3[:, 0] / pts3[:, 2] + FRAME_W / 2 + shift[0],
                f * pts3[:, 1] / pts3[:, 2] + FRAME_H / 2 + shift[1]]
    return cv2.getPerspectiveTransform(corners.astype(np.float32), img.astype(np.float32))


def render(sheet: np.ndarray, hmat: np.ndarray, rng: np.random.Generator,
           noise: float = 3.0) -> np.ndarray:
    """The print seen by the camera: warped onto a grey wall, with sensor noise."""
    wall = np.full((FRAME_H, FRAME_W, 3), 90, np.uint8)
    out = cv2.warpPerspective(sheet, hmat, (FRAME_W, FRAME_H), dst=wall,
                              borderMode=cv2.BORDER_TRANSPARENT, flags=cv2.INTER_LINEAR)
    if noise:
        out = np.clip(out + rng.normal(0, noise, out.shape), 0, 255).astype(np.uint8)
    return out


def still_print(sheet: np.ndarray, n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The print held still (only sensor noise changes)."""
    rng = np.random.default_rng(seed)
    h = plane_homography(sheet.shape[1], sheet.shape[0], yaw_deg=0, pitch_deg=0, roll_deg=0,
                         scale=1.0, shift=(0, 0))
    for _ in range(n):
        yield render(sheet, h, rng)


def moved_print(sheet: np.ndarray, n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The print waved about: shifted, scaled, rolled and tilted in 3-D (up to ~35
    degrees about either axis, like someone imitating a head turn with a photo)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, 6)
    for i in range(n):
        a = i / 15.0  # seconds at 15 fps
        h = plane_homography(
            sheet.shape[1], sheet.shape[0],
            yaw_deg=35 * math.sin(1.7 * a + phase[0]),
            pitch_deg=25 * math.sin(1.3 * a + phase[1]),
            roll_deg=15 * math.sin(0.9 * a + phase[2]),
            scale=1.0 + 0.25 * math.sin(0.7 * a + phase[3]),
            shift=(60 * math.sin(1.1 * a + phase[4]), 40 * math.sin(0.8 * a + phase[5])),
        )
        yield render(sheet, h, rng)
