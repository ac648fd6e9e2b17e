"""Camera sources (one module per kind), the factory from ``[camera]`` and the grabber."""

from edge.camera.base import Frame, Source
from edge.camera.factory import guess_kind, make_source
from edge.camera.grabber import CameraStatus, Grabber

__all__ = ["CameraStatus", "Frame", "Grabber", "Source", "guess_kind", "make_source"]
