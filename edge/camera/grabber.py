"""The grabber thread: reads the camera continuously and keeps only the newest frame.

A slow pipeline therefore always works on the latest image, never on a queue of stale
ones. When the camera fails (read error, unplugged, stream dropped) the grabber marks it
down with the error, closes it and reopens it with exponential backoff until it is back.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from core.errors import CameraError
from edge.camera.base import Frame, Source

log = logging.getLogger(__name__)

#: window over which the grab rate is measured for the status call
FPS_WINDOW_S = 2.0


@dataclasses.dataclass(frozen=True)
class CameraStatus:
    """What the status call shows about the camera."""

    name: str
    up: bool
    #: the last failure, empty while up
    error: str
    #: the finite source (file / folder that does not loop) has played to its end
    ended: bool
    frames_grabbed: int
    #: frames replaced by a newer one before the pipeline took them
    frames_dropped: int
    reconnects: int
    #: grab rate over the last ``FPS_WINDOW_S`` seconds
    fps: float
    #: times the camera went down (entered a failure); with ``last_error`` it lets a
    #: watcher notice an outage that began and ended between two of its looks
    downs: int = 0
    #: the most recent failure, kept after the camera came back
    last_error: str = ""


class Grabber:
    """Runs ``source`` on a named thread; ``latest()`` hands out the newest frame."""

    def __init__(
        self,
        source: Source,
        stop: threading.Event,
        *,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        name: str = "camera-grabber",
    ) -> None:
        self.source = source
        self.stop = stop
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self._up = False
        self._error = ""  # down with no error = not opened yet
        self._ended = False
        self._grabbed = 0
        self._dropped = 0
        self._reconnects = 0
        self._downs = 0
        self._last_error = ""
        self._times: list[float] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Grabber:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def latest(self, after: int = -1, timeout: float | None = None) -> Frame | None:
        """The newest frame with index > ``after``; waits up to ``timeout``; else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.index <= after:
                if self.stop.is_set() or (self._ended and self._taken):
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            self._taken = True
            return self._frame

    def status(self) -> CameraStatus:
        with self._cond:
            now = time.monotonic()
            recent = [t for t in self._times if now - t <= FPS_WINDOW_S]
            fps = 0.0
            if len(recent) >= 2:
                fps = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)
            return CameraStatus(
                name=self.source.name, up=self._up, error=self._error, ended=self._ended,
                frames_grabbed=self._grabbed, frames_dropped=self._dropped,
                reconnects=self._reconnects, fps=fps, downs=self._downs,
                last_error=self._last_error,
            )

    def _set_down(self, error: str) -> None:
        with self._cond:
            was_up = self._up
            if was_up or not self._error:  # entering a failure, not failing again
                self._downs += 1
            self._up = False
            self._error = self._last_error = error
            self._cond.notify_all()
        if was_up:
            log.warning("camera down: %s", error)

    def _run(self) -> None:
        delay = self.reconnect_initial_s
        first = True
        while not self.stop.is_set():
            try:
                if not first:
                    with self._cond:
                        self._reconnects += 1
                first = False
                self.source.open()
            except CameraError as exc:
                self._set_down(str(exc))
                if self.stop.wait(delay):
                    break
                delay = min(max(delay * 2, 0.0), self.reconnect_max_s)
                continue
            with self._cond:
                self._up = True
                self._error = ""
                self._cond.notify_all()
            log.info("camera up: %s", self.source.name)
            grabbed_before = self._grabbed
            try:
                self._pump()
            except CameraError as exc:
                if self._grabbed > grabbed_before:
                    delay = self.reconnect_initial_s  # it delivered: start backoff afresh
                self._set_down(str(exc))
                self.source.close()
                if self.stop.wait(delay):
                    break
                delay = min(max(delay * 2, 0.0), self.reconnect_max_s)
                continue
            break  # ended or stopped
        self.source.close()
        with self._cond:
            self._cond.notify_all()

    def _pump(self) -> None:
        """Read until stopped or the source ends; raises CameraError on a failure."""
        while not self.stop.is_set():
            frame = self.source.read()
            if frame is None:
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()
                return
            with self._cond:
                if not self._taken:
                    self._dropped += 1
                self._frame = frame
                self._taken = False
                self._grabbed += 1
                self._times.append(time.monotonic())
                if len(self._times) > 256:
                    del self._times[:128]
                self._cond.notify_all()
