"""A V4L2 camera (USB webcam, Pi camera through libcamera's V4L2 compatibility)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from core.errors import CameraError
from edge.camera.base import Frame, read_capture


def device_path(device: int | str) -> Path:
    """``0`` / ``"0"`` / ``"/dev/video0"`` -> Path("/dev/video0")."""
    text = str(device)
    return Path(f"/dev/video{text}") if text.isdigit() else Path(text)


class V4L2Source:
    """Frames from a V4L2 device, by index or path."""

    def __init__(
        self, device: int | str, *, width: int = 640, height: int = 480, fps: float = 30.0
    ) -> None:
        self.path = device_path(device)
        self.width, self.height, self.fps = width, height, fps
        self.name = f"v4l2 {self.path}"
        self._cap: cv2.VideoCapture | None = None
        self._index = 0

    def open(self) -> None:
        self.close()
        if not self.path.exists():
            raise CameraError(f"{self.name}: no such camera device (unplugged?)")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.name}: cannot open camera (busy, or not a capture device)")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        # one buffered frame: the grabber wants the newest frame, never a queue of old ones
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def read(self) -> Frame | None:
        image = read_capture(self._cap, self.name)
        if image is None:
            gone = not self.path.exists()
            raise CameraError(f"{self.name}: {'camera unplugged' if gone else 'read failed'}")
        frame = Frame(image=image, t=time.monotonic(), index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
