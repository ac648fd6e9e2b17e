"""A video file as a camera (demo, tests, benchmarks); optionally loops."""

from __future__ import annotations

from pathlib import Path

import cv2

from core.errors import CameraError
from edge.camera.base import Frame, Pacer, read_capture

#: frame rate assumed when the container does not say (most webcams record at 30)
DEFAULT_FPS = 30.0
#: a file that stops this many frames before its header's frame count is damaged,
#: not ended (containers round the count by a frame or two)
TRUNCATION_SLACK = 2


class VideoFileSource:
    """Frames of a video file; at the end it stops (``read`` -> None) or loops."""

    def __init__(self, path: Path | str, *, loop: bool = False, realtime: bool = True) -> None:
        self.path = Path(path)
        self.loop = loop
        self.realtime = realtime
        self.name = f"file {self.path.name}"
        self._cap: cv2.VideoCapture | None = None
        self._fps = DEFAULT_FPS
        self._expected = 0  # frame count from the container header (0 = unknown)
        self._in_file = 0  # frames read in the current pass
        self._index = 0  # frames delivered since first open
        self._media_t = 0.0
        self._pacer: Pacer | None = None

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise CameraError(f"{self.name}: video file not found: {self.path}")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.name}: cannot open video (corrupt or unsupported format)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if 1.0 <= fps <= 240.0 else DEFAULT_FPS
        self._expected = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._cap = cap
        self._in_file = 0
        if self.realtime and self._pacer is None:
            self._pacer = Pacer(self._fps)

    @property
    def fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        image = read_capture(self._cap, self.name)
        if image is None:
            if self._in_file == 0:
                raise CameraError(f"{self.name}: no frame could be decoded (corrupt file?)")
            if self._expected and self._in_file < self._expected - TRUNCATION_SLACK:
                raise CameraError(
                    f"{self.name}: video ends at frame {self._in_file} of {self._expected} "
                    "(truncated or corrupt)"
                )
            if not self.loop:
                return None
            self.open()  # rewind by reopening: seeking is unreliable on some containers
            return self.read()
        self._in_file += 1
        if self._pacer is not None:
            t = self._pacer.wait()
        else:
            t = self._media_t
            self._media_t += 1.0 / self._fps
        frame = Frame(image=image, t=t, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
