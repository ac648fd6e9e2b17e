"""The terminal's main loop: camera -> detect -> track -> session -> events.

``step()`` processes one frame (tests call it directly, with frames they choose);
``run()`` loops at a low frame rate while nobody is in front and at full rate while a
face is present, and calls a heartbeat hook once per iteration (the service feeds
systemd's watchdog from it, so a hung loop gets the terminal restarted).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from core.errors import CameraError
from edge.camera.base import Frame
from edge.camera.grabber import CameraStatus, Grabber
from edge.config import CameraConfig
from edge.session.events import CameraState, EventBus
from edge.session.machine import SessionMachine
from edge.session.ports import FaceDetector
from edge.session.tracker import Tracker

log = logging.getLogger(__name__)

#: longest a loop iteration waits for a new frame before beating the heartbeat anyway
#: (must stay well below the systemd watchdog interval)
FRAME_WAIT_S = 0.5


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step did (for tests and the benchmark)."""

    frame_index: int
    faces: int
    subject_id: int | None
    state: str
    #: seconds spent detecting + running the session on this frame
    seconds: float


@dataclasses.dataclass(frozen=True)
class LoopStats:
    """A snapshot of the processing loop's figures (metrics)."""

    #: frames processed since start
    frames: int
    #: frames per second over the last 2 s
    fps: float
    #: sessions ended, by outcome
    outcomes: dict[str, int]


class FrameLoop:
    """Ties the grabber, detector, tracker and session machine together."""

    def __init__(
        self,
        *,
        detector: FaceDetector,
        machine: SessionMachine,
        tracker: Tracker,
        bus: EventBus,
        camera: Grabber | None = None,
        camera_cfg: CameraConfig | None = None,
    ) -> None:
        self.detector = detector
        self.machine = machine
        self.tracker = tracker
        self.bus = bus
        self.camera = camera
        self.camera_cfg = camera_cfg or CameraConfig()
        self.frames_processed = 0
        self._last_index = -1
        self._camera_up: bool | None = None
        self._camera_downs = 0
        self._proc_times: list[float] = []
        self.started = time.monotonic()

    # -- one frame
    def step(self, frame: Frame | None = None, timeout: float = FRAME_WAIT_S) -> StepResult | None:
        """Process ``frame``, or the newest camera frame (None if none came in ``timeout``)."""
        if frame is None:
            if self.camera is None:
                raise CameraError("no camera attached and no frame given")
            self._watch_camera()
            frame = self.camera.latest(after=self._last_index, timeout=timeout)
            if frame is None:
                return None
        t0 = time.perf_counter()
        self._last_index = frame.index
        dets = self.detector.detect(frame.image)
        seen = self.tracker.update(dets, frame.t)
        subject = self.tracker.subject(seen, frame.image.shape)
        self.machine.step(frame.t, frame.image, subject, alive=list(self.tracker.tracks))
        self.frames_processed += 1
        now = time.monotonic()
        self._proc_times.append(now)
        if len(self._proc_times) > 256:
            del self._proc_times[:128]
        return StepResult(frame_index=frame.index, faces=len(dets),
                          subject_id=subject.id if subject else None,
                          state=self.machine.state.value, seconds=time.perf_counter() - t0)

    def _watch_camera(self) -> None:
        assert self.camera is not None
        st = self.camera.status()
        missed = st.downs > self._camera_downs
        self._camera_downs = st.downs
        if missed and st.up and self._camera_up:
            # down and back up between two looks (a quick reconnect while this loop was
            # busy or idling at 4 fps): the outage still ends a session and is reported
            self._camera_went_down(st.last_error)
            self.bus.publish(CameraState("", up=True, error=""))
            return
        if st.up == self._camera_up or (not st.up and not st.error):
            return  # no change, or still opening for the first time
        first = self._camera_up is None
        self._camera_up = st.up
        if first and st.up:
            return
        if st.up:
            self.bus.publish(CameraState("", up=True, error=""))
        else:
            self._camera_went_down(st.error)

    def _camera_went_down(self, error: str) -> None:
        self.bus.publish(CameraState("", up=False, error=error))
        self.tracker.clear()
        self.machine.camera_down(time.monotonic())

    # -- the loop
    @property
    def active(self) -> bool:
        """Someone is in front (full frame rate) or a session runs."""
        return self.machine.busy or bool(self.tracker.tracks)

    def frame_period(self) -> float:
        """Seconds per processed frame: ``idle_fps`` with nobody in front, else ``active_fps``."""
        fps = self.camera_cfg.active_fps if self.active else self.camera_cfg.idle_fps
        return 1.0 / fps

    def run(self, stop: threading.Event, heartbeat: Callable[[], None] | None = None) -> None:
        """Process frames until ``stop`` is set or a finite camera source has ended."""
        if self.camera is None:
            raise CameraError("no camera attached")
        while not stop.is_set():
            began = time.monotonic()
            self.step()
            if heartbeat is not None:
                heartbeat()
            st = self.camera.status()
            if st.ended and not self.camera.alive:
                log.info("camera source ended")
                break
            stop.wait(max(0.0, self.frame_period() - (time.monotonic() - began)))

    # -- status
    def processing_fps(self) -> float:
        now = time.monotonic()
        recent = [t for t in self._proc_times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def stats(self) -> LoopStats:
        """Frames, frame rate and session outcomes so far (a snapshot)."""
        return LoopStats(frames=self.frames_processed, fps=self.processing_fps(),
                         outcomes=self.machine.outcome_counts())

    def camera_status(self) -> CameraStatus | None:
        return self.camera.status() if self.camera is not None else None

    def uptime_s(self) -> float:
        return time.monotonic() - self.started
