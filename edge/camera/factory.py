"""Make the configured camera source (``[camera]`` section)."""

from __future__ import annotations

from pathlib import Path

from core.errors import CameraError
from edge.camera.base import Source
from edge.camera.file import VideoFileSource
from edge.camera.imagefolder import ImageFolderSource
from edge.camera.libcamera import LibcameraSource
from edge.camera.stream import StreamSource
from edge.camera.v4l2 import V4L2Source
from edge.config import CameraConfig


def guess_kind(source: str) -> str:
    """The kind of a source string: URL -> stream, digits or /dev/ -> v4l2, dir, file."""
    if source.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return "stream"
    if source.isdigit() or source.startswith("/dev/"):
        return "v4l2"
    path = Path(source).expanduser()
    if path.is_dir():
        return "images"
    if path.is_file():
        return "file"
    raise CameraError(f"camera.source: {source!r} is not a device, URL, folder or video file")


def make_source(cfg: CameraConfig) -> Source:
    """The source ``cfg`` describes (not opened yet)."""
    kind = guess_kind(cfg.source) if cfg.kind == "auto" else cfg.kind
    if kind == "v4l2":

        return V4L2Source(cfg.source, width=cfg.width, height=cfg.height, fps=cfg.fps)
    if kind == "file":

        return VideoFileSource(Path(cfg.source).expanduser(), loop=cfg.loop,
                               realtime=cfg.realtime)
    if kind == "images":

        return ImageFolderSource(Path(cfg.source).expanduser(), fps=cfg.images_fps,
                                 loop=cfg.loop, realtime=cfg.realtime)
    if kind == "libcamera":

        return LibcameraSource(cfg.source, width=cfg.width, height=cfg.height, fps=cfg.fps,
                               command=cfg.libcamera_cmd, read_timeout_s=cfg.read_timeout_s)
    if kind == "stream":

        return StreamSource(cfg.source, open_timeout_s=cfg.open_timeout_s,
                            read_timeout_s=cfg.read_timeout_s)
    raise CameraError(f"camera.kind: unknown kind {kind!r}")
