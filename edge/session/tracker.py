"""Follow faces across frames by box overlap (IoU) or centre distance, pick the subject."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import numpy.typing as npt

from edge.session.ports import Detections

F32 = npt.NDArray[np.float32]

#: how much being off-centre costs a face when picking the subject: a face in a corner
#: counts as half its size, so the person at the screen beats a bigger passer-by only
#: when they are really in front
CENTRE_WEIGHT = 0.5


@dataclasses.dataclass
class Track:
    """One face followed across frames."""

    id: int
    box: F32
    landmarks: F32
    score: float
    first_t: float
    last_t: float
    #: frames this track was detected in
    hits: int = 1

    @property
    def size(self) -> float:
        """The box's smaller side in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def centre(self) -> F32:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2],
                        np.float32)


def iou(a: F32, b: F32) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Tracker:
    """Greedy frame-to-frame association; a track unseen for ``lost_s`` is dropped."""

    def __init__(self, *, iou_min: float = 0.3, centre_max: float = 0.5, lost_s: float = 1.0):
        self.iou_min = iou_min
        self.centre_max = centre_max
        self.lost_s = lost_s
        self.tracks: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def update(self, dets: Detections, t: float) -> list[Track]:
        """Associate this frame's detections; returns the tracks seen in this frame."""
        tracks = list(self.tracks.values())
        pairs: list[tuple[float, int, int]] = []
        for ti, tr in enumerate(tracks):
            side = max(tr.box[2] - tr.box[0], tr.box[3] - tr.box[1])
            for di in range(len(dets)):
                box = dets.boxes[di]
                o = iou(tr.box, box)
                if o >= self.iou_min:
                    pairs.append((1.0 + o, ti, di))  # overlap always ranks above distance
                    continue
                c = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
                dist = float(np.hypot(*(c - tr.centre))) / max(side, 1e-6)
                if dist <= self.centre_max:
                    pairs.append((1.0 - dist, ti, di))
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        used_d: set[int] = set()
        seen: list[Track] = []
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            tr = tracks[ti]
            tr.box = dets.boxes[di].astype(np.float32)
            tr.landmarks = dets.landmarks[di].astype(np.float32)
            tr.score = float(dets.scores[di])
            tr.last_t = t
            tr.hits += 1
            seen.append(tr)
        for di in range(len(dets)):
            if di not in used_d:
                tr = Track(id=next(self._ids), box=dets.boxes[di].astype(np.float32),
                           landmarks=dets.landmarks[di].astype(np.float32),
                           score=float(dets.scores[di]), first_t=t, last_t=t)
                self.tracks[tr.id] = tr
                seen.append(tr)
        for tid in [tid for tid, tr in self.tracks.items() if t - tr.last_t > self.lost_s]:
            del self.tracks[tid]
        return seen

    def subject(self, seen: list[Track], frame_shape: tuple[int, ...]) -> Track | None:
        """The largest, most central face among ``seen`` (None when no face)."""
        if not seen:
            return None
        h, w = frame_shape[:2]
        centre = np.array([w / 2, h / 2], np.float32)
        half_diag = float(np.hypot(w / 2, h / 2)) or 1.0

        def weight(tr: Track) -> float:
            off = float(np.hypot(*(tr.centre - centre))) / half_diag
            area = float((tr.box[2] - tr.box[0]) * (tr.box[3] - tr.box[1]))
            return area * (1.0 - CENTRE_WEIGHT * min(off, 1.0))

        return max(seen, key=weight)

    def clear(self) -> None:
        self.tracks.clear()
