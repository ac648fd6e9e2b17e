"""Second liveness cue: does the face's *texture* move like a flat picture?

Corner points inside the face are tracked with pyramidal Lucas-Kanade optical flow from
the reference frame (forward-backward checked, frame to frame). A flat print or screen
moves all of them by one homography, whatever the hand does with it; a real head turning
moves nose, cheeks and eye sockets by different amounts (parallax), so a homography
fitted to them leaves large residuals. Unlike the landmark cue this does not depend on a
landmark network, which "sees" a turned head in a strongly tilted print.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

#: corners tracked in the face: enough for a robust homography after losing the half
#: that a head turn hides or that fail the forward-backward check
MAX_POINTS = 80
#: at fewer live points no residual is reported (a homography of 8 points is not telling)
MIN_POINTS = 8
#: a tracked point whose backward flow lands further than this (px) from where it started
#: is unreliable (occluded, blurred) and dropped
FB_MAX_PX = 1.0
#: RANSAC inlier distance as a fraction of the eye distance
RANSAC_IOD = 0.03
#: the inner face used for corners: box shrunk by this share per side (no background,
#: no hair edge, which moves differently from the face even on a real head)
INNER_X, INNER_Y = 0.15, 0.1
#: Lucas-Kanade window and pyramid depth: 15 px windows over 4 levels follow the ~60 px
#: frame-to-frame moves of a waved print at 15 fps
LK_WIN = (15, 15)
LK_LEVELS = 3
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)


def _flow(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], pts: F32
          ) -> tuple[F32, npt.NDArray[np.uint8]]:
    nxt, st, _ = cv2.calcOpticalFlowPyrLK(a, b, pts, None, winSize=LK_WIN,  # type: ignore[call-overload]
                                          maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    return np.asarray(nxt, np.float32), np.asarray(st, np.uint8)


def grey(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    out = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return np.asarray(out, np.uint8)


class TextureTracker:
    """Tracks face corners from a reference frame; ``update`` gives the non-planarity."""

    def __init__(self, image: npt.NDArray[np.uint8], box: F32, iod: float) -> None:
        g = grey(image)
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        mask = np.zeros_like(g)
        ya, yb = max(0, int(y1 + INNER_Y * h)), max(0, int(y2 - INNER_Y * h))
        xa, xb = max(0, int(x1 + INNER_X * w)), max(0, int(x2 - INNER_X * w))
        mask[ya:yb, xa:xb] = 255
        pts = cv2.goodFeaturesToTrack(g, maxCorners=MAX_POINTS, qualityLevel=0.01,
                                      minDistance=max(2, int(w / 20)), mask=mask)
        self.iod = max(iod, 1e-6)
        self._prev: npt.NDArray[np.uint8] | None = g
        self._ref = (pts.reshape(-1, 2).astype(np.float32) if pts is not None
                     else np.zeros((0, 2), np.float32))
        self._cur = self._ref.copy()
        self._alive = np.ones(len(self._ref), bool)

    @property
    def points(self) -> int:
        return int(self._alive.sum())

    def update(self, image: npt.NDArray[np.uint8]) -> float | None:
        """75th percentile of the homography residuals / IOD, or None if too few points."""
        if self._prev is None or self.points < MIN_POINTS:
            return None
        g = grey(image)
        cur = self._cur.reshape(-1, 1, 2)
        nxt, st = _flow(self._prev, g, cur)
        back, st2 = _flow(g, self._prev, nxt)
        fb = np.linalg.norm((back - cur).reshape(-1, 2), axis=1)
        self._alive &= (st.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < FB_MAX_PX)
        self._cur = nxt.reshape(-1, 2)
        self._prev = g
        if self.points < MIN_POINTS:
            return None
        a, b = self._ref[self._alive], self._cur[self._alive]
        h, _ = cv2.findHomography(a, b, cv2.RANSAC, RANSAC_IOD * self.iod)
        if h is None or not np.all(np.isfinite(h)):
            return None
        pred = cv2.perspectiveTransform(a.reshape(-1, 1, 2), h).reshape(-1, 2)
        res = np.linalg.norm(pred - b, axis=1) / self.iod
        return float(np.percentile(res, 75))

    def forget(self) -> None:
        """Drop the reference image and points (face data)."""
        self._prev = None
        self._ref = self._cur = np.zeros((0, 2), np.float32)
        self._alive = np.zeros(0, bool)
