"""Every error the project raises on purpose, in one place.

Library exceptions (onnxruntime, OpenCV, hnswlib, sqlite3, paho-mqtt, grpc) are converted
into these at the boundary where they occur, so callers and the command line only ever
handle ``MotcuaError`` subclasses. ``docs/errors.md`` lists them for operators.
"""

from __future__ import annotations


class MotcuaError(Exception):
    """Base of all project errors; its message is one line meant for a person."""

    #: process exit status used by the command line for this kind of error
    exit_code = 1


class ConfigError(MotcuaError):
    """The terminal/district configuration is missing, malformed or invalid (names the key)."""

    exit_code = 2


class ImageError(MotcuaError):
    """An image or video frame cannot be read: missing, corrupt, truncated, too large."""


class ModelError(MotcuaError):
    """A model pack is missing, fails its sha256 check, or cannot be loaded or run."""


class ModelBuildError(ModelError):
    """Building a model pack from registry packages failed."""


class CameraError(MotcuaError):
    """A camera source cannot be opened or stopped delivering frames."""


class StoreError(MotcuaError):
    """The terminal gallery store refused a change or cannot be opened."""


class EmbedderMismatchError(StoreError):
    """An embedding or snapshot belongs to another embedding space than the gallery's."""


class ChangeOrderError(StoreError):
    """A change batch is not the next one in the log (gap or duplicate)."""


class SyncError(MotcuaError):
    """The MQTT sync failed: broker unreachable, authentication refused, bad message."""


class AuthenticationError(SyncError):
    """The broker refused our credentials; retrying will not help."""


class MessageRejected(SyncError):
    """A sync message was rejected; ``reason`` is the counter it is recorded under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class DistrictError(MotcuaError):
    """A district command refused its input (unknown citizen or dossier, bad record, log)."""


class ProvisionError(MotcuaError):
    """Provisioning or updating a device failed before or while changing anything."""
