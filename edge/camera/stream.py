"""A network camera: RTSP or HTTP(S) stream read through FFmpeg."""

from __future__ import annotations

import time

import cv2

from core.errors import CameraError
from edge.camera.base import Frame, read_capture

SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def _redact(url: str) -> str:
    """The URL without user:password (camera URLs often carry them)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class StreamSource:
    """Frames of a network stream; a dropped connection is a CameraError (reconnected)."""

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 5.0):
        if not url.startswith(SCHEMES):
            raise CameraError(f"stream {url!r}: expected an rtsp:// or http(s):// URL")
        self.url = url
        self.name = f"stream {_redact(url)}"
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._index = 0

    def open(self) -> None:
        self.close()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
        ]
        try:
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        except cv2.error as exc:
            raise CameraError(f"{self.name}: cannot open: {exc}") from None
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.name}: cannot connect or not a video stream")
        self._cap = cap

    def read(self) -> Frame | None:
        image = read_capture(self._cap, self.name)
        if image is None:
            raise CameraError(f"{self.name}: stream stopped delivering frames")
        frame = Frame(image=image, t=time.monotonic(), index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
