"""A folder of still images as a camera (a scripted sequence of frames)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from core.errors import CameraError
from edge.camera.base import Frame, Pacer, check_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: a file larger than this is not a camera frame (guards memory on a 1 GB Pi)
MAX_IMAGE_BYTES = 50_000_000


class ImageFolderSource:
    """The images of a folder in name order, at ``fps``; loops or ends.

    An unreadable image is skipped and counted in ``skipped`` (one bad file must not take
    the camera down); a folder with no readable image at all is a CameraError.
    """

    def __init__(
        self, path: Path | str, *, fps: float = 10.0, loop: bool = False, realtime: bool = True
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self.loop = loop
        self.realtime = realtime
        self.name = f"images {self.path.name}"
        self.skipped = 0
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0
        self._good_in_pass = 0
        self._pacer = Pacer(fps) if realtime else None

    def open(self) -> None:
        if not self.path.is_dir():
            raise CameraError(f"{self.name}: image folder not found: {self.path}")
        try:
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise CameraError(f"{self.name}: cannot list folder: {exc.strerror}") from None
        if not files:
            raise CameraError(f"{self.name}: no images in {self.path}")
        self._files = files
        self._pos = 0
        self._good_in_pass = 0

    def _load(self, path: Path) -> np.ndarray | None:
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise ValueError("file too large")
            data = np.fromfile(path, dtype=np.uint8)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError("not a decodable image")
            return check_image(image, self.name)
        except (OSError, ValueError, cv2.error, CameraError) as exc:
            self.skipped += 1
            log.warning("%s: skipping %s: %s", self.name, path.name, exc)
            return None

    def read(self) -> Frame | None:
        if not self._files:
            raise CameraError(f"{self.name}: not open")
        while True:
            if self._pos >= len(self._files):
                if self._good_in_pass == 0:
                    raise CameraError(f"{self.name}: none of the images can be read")
                if not self.loop:
                    return None
                self._pos = 0
                self._good_in_pass = 0
            path = self._files[self._pos]
            self._pos += 1
            image = self._load(path)
            if image is not None:
                break
        self._good_in_pass += 1
        t = self._pacer.wait() if self._pacer is not None else self._index / self.fps
        frame = Frame(image=image, t=t, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        pass
