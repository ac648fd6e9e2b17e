"""Synthetic face geometry for unit tests of tracking, quality and liveness.

A rigid 3-D head (5 landmarks, units of the eye distance) projected through a pinhole
camera, and the same face printed flat (all points on one plane) and warped in 2-D.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: eyes, nose tip (in front of the eye plane), mouth corners; x right, y down, z away
HEAD = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0.55, -0.55], [-0.4, 1.05, -0.1],
                 [0.4, 1.05, -0.1]])


def project(yaw_deg: float = 0.0, pitch_deg: float = 0.0, *, dist: float = 8.0,
            f: float = 400.0, cx: float = 320.0, cy: float = 240.0) -> np.ndarray:
    """Landmarks (5, 2) of the 3-D head turned by yaw (>0: to the person's left)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    c, s = math.cos(yaw), math.sin(yaw)
    ry = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    c, s = math.cos(pitch), math.sin(pitch)
    rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    p = (HEAD - [0, 0.5, 0]) @ ry.T @ rx.T
    z = p[:, 2] + dist
    return np.stack([cx + f * p[:, 0] / z, cy + f * p[:, 1] / z], 1).astype(np.float32)


def warp(points: np.ndarray, *, shift=(0.0, 0.0), scale: float = 1.0, rot_deg: float = 0.0,
         tilt: float = 0.0) -> np.ndarray:
    """A flat picture's landmarks moved: shifted, scaled, rotated and tilted (perspective)."""
    centre = points.mean(axis=0)
    a = math.radians(rot_deg)
    m = np.array([[scale * math.cos(a), -scale * math.sin(a), 0],
                  [scale * math.sin(a), scale * math.cos(a), 0], [tilt, tilt / 2, 1]])
    t1 = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
    t2 = np.array([[1, 0, centre[0] + shift[0]], [0, 1, centre[1] + shift[1]], [0, 0, 1]])
    h = t2 @ m @ t1
    return cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float32), h).reshape(-1, 2)


def box_of(lm: np.ndarray) -> np.ndarray:
    """A face box around landmarks, like a detector's (about 2 eye distances wide)."""
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    c = lm.mean(axis=0)
    return np.array([c[0] - iod, c[1] - 1.2 * iod, c[0] + iod, c[1] + 1.1 * iod], np.float32)
