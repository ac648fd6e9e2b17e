"""The camera source interface: one small class per kind of source, all alike.

A source is opened, read one frame at a time, and closed. ``read`` returns the next
frame, or None when a finite source (a video file or image folder that does not loop)
has ended; it raises :class:`core.errors.CameraError` when the camera fails, so the
grabber can report it down and reconnect.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from core.errors import CameraError


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """One camera image (BGR, uint8, HxWx3) with its capture time and sequence number."""

    image: npt.NDArray[np.uint8]
    #: seconds on the source's clock: time.monotonic() for live sources, media time
    #: (frame number / fps) for files read faster than real time; always increasing
    t: float
    #: frame number since the source was first opened (keeps counting across loops and
    #: reconnects)
    index: int


class Source(Protocol):
    """A kind of camera. Adding a kind = one module with one class like this."""

    #: short description for logs and the status call ("file hamilton_clip.mp4")
    name: str

    def open(self) -> None:
        """Open (or reopen after a failure); raises CameraError."""
        ...

    def read(self) -> Frame | None:
        """The next frame; None when a finite source ended; raises CameraError."""
        ...

    def close(self) -> None:
        """Release the device; safe to call twice or when open failed."""
        ...


class Pacer:
    """Delivers frames of a file at their own rate, like a live camera would."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next: float | None = None

    def wait(self) -> float:
        """Sleep until the next frame is due; return its monotonic time."""
        now = time.monotonic()
        if self._next is None or now - self._next > 1.0:  # first frame, or fell far behind
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        due = self._next
        self._next += self.period
        return max(due, now)


def check_image(image: object, what: str) -> npt.NDArray[np.uint8]:
    """A decoded frame as BGR uint8 HxWx3 (grey frames are converted); raises CameraError."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise CameraError(f"{what}: no image data")
    if image.dtype != np.uint8:
        raise CameraError(f"{what}: unexpected pixel type {image.dtype}")
    if image.ndim == 2:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise CameraError(f"{what}: unexpected frame shape {image.shape}")
    return np.asarray(image, np.uint8)


def read_capture(cap: cv2.VideoCapture | None, what: str) -> npt.NDArray[np.uint8] | None:
    """One frame from an OpenCV capture, checked; None when the capture gave no frame.

    A capture that is not open, an OpenCV error and a malformed frame raise CameraError;
    what "no frame" means (end of file, unplugged camera, dropped stream) is the caller's.
    """
    if cap is None:
        raise CameraError(f"{what}: not open")
    try:
        ok, image = cap.read()
    except cv2.error as exc:
        raise CameraError(f"{what}: read failed: {exc}") from None
    if not ok or image is None:
        return None
    return check_image(image, what)
