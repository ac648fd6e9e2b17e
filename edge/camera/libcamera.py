"""A Raspberry Pi camera module (CSI) through libcamera: frames from ``rpicam-vid``.

On current Raspberry Pi OS the CSI cameras are driven by libcamera; OpenCV's V4L2 capture
does not drive them. This source runs ``rpicam-vid`` (rpicam-apps; ``libcamera-vid`` on
older images) with raw I420 output on its standard output and reads it in frames of
exactly ``width * height * 3 / 2`` bytes, converted to BGR with OpenCV.

Why raw I420 and not MJPEG: every frame has the same size, so framing is a plain read of
N bytes (no scanning for JPEG markers, no way for a broken marker to merge or split
frames), and there is no JPEG encode in rpicam-vid (done in software on a Pi 5, which has
no hardware JPEG encoder) nor decode here. The price is bandwidth through the pipe:
460 KB a frame at 640x480, 14 MB/s at 30 fps, which a pipe carries easily.

picamera2 is not used: it comes only as a Debian package for the system Python, and the
terminal runs in its own virtual environment; rpicam-vid needs nothing from Python.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np

from core.errors import CameraError
from edge.camera.base import Frame, check_image

#: stderr lines of rpicam-vid kept for error messages (it logs a line per frame at
#: verbose levels; the last few say why it stopped)
_STDERR_LINES = 20
#: longest stderr line kept: bounds memory whatever the tool prints
_STDERR_LINE_MAX = 400
#: seconds rpicam-vid gets to exit after SIGTERM before it is killed
_STOP_TIMEOUT_S = 2.0
#: row alignment of the ISP's YUV output: with a width that is a multiple of 64 the
#: Y rows and the half-width U and V rows carry no padding, so a frame is exactly
#: width * height * 3 / 2 bytes
WIDTH_ALIGN = 64


class LibcameraSource:
    """Frames of a CSI camera from ``rpicam-vid``; its exit or a stall is a CameraError
    (the grabber reconnects, which starts it again)."""

    def __init__(self, camera: str = "0", *, width: int = 640, height: int = 480,
                 fps: float = 30.0, command: tuple[str, ...] = ("rpicam-vid",),
                 read_timeout_s: float = 5.0) -> None:
        if not camera.isdigit():
            raise CameraError(f"libcamera camera {camera!r}: expected a camera number "
                              "(0 for the first; `rpicam-hello --list-cameras` lists them)")
        if width % WIDTH_ALIGN or height % 2 or width <= 0 or height <= 0:
            raise CameraError(f"libcamera: width {width} must be a multiple of {WIDTH_ALIGN} "
                              f"and height {height} even (e.g. 640x480, 1280x720)")
        if not command:
            raise CameraError("camera.libcamera_cmd: empty command")
        self.camera = camera
        self.width, self.height, self.fps = width, height, fps
        self.command = command
        self.read_timeout_s = read_timeout_s
        self.frame_bytes = width * height * 3 // 2
        self.name = f"libcamera camera {camera}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_thread: threading.Thread | None = None
        self._buf = bytearray(self.frame_bytes)
        self._index = 0

    def argv(self) -> list[str]:
        """The command line: endless (-t 0), raw I420 to stdout, no preview window."""
        return [*self.command, "--camera", self.camera, "-t", "0", "--codec", "yuv420",
                "--width", str(self.width), "--height", str(self.height),
                "--framerate", f"{self.fps:g}", "-n", "--flush", "-o", "-"]

    def open(self) -> None:
        self.close()
        exe = self.command[0]
        if os.sep not in exe and shutil.which(exe) is None:
            raise CameraError(
                f"{self.name}: {exe!r} not found: install rpicam-apps (apt install "
                "rpicam-apps) or set camera.libcamera_cmd")
        try:
            proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise CameraError(f"{self.name}: cannot start {exe}: {exc.strerror}") from None
        self._proc = proc
        self._stderr.clear()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, args=(proc,),
                                               name="libcamera-stderr", daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw[:_STDERR_LINE_MAX].decode("utf-8", errors="replace").strip()
            if line:
                self._stderr.append(line)

    def _why(self) -> str:
        """The exit status and rpicam-vid's last words."""
        proc = self._proc
        code = proc.poll() if proc is not None else None
        status = f"exited with status {code}" if code is not None else "stopped"
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)  # its last lines arrive as it exits
        last = [ln for ln in self._stderr if "ERROR" in ln.upper()] or list(self._stderr)
        return f"{status}: {last[-1]}" if last else status

    def read(self) -> Frame | None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise CameraError(f"{self.name}: not open")
        fd = proc.stdout.fileno()
        view = memoryview(self._buf)
        got = 0
        deadline = time.monotonic() + self.read_timeout_s
        while got < self.frame_bytes:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise CameraError(f"{self.name}: no frame for {self.read_timeout_s:g} s")
            chunk = os.read(fd, self.frame_bytes - got)
            if not chunk:  # end of output: it exited (or closed its stdout)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(_STOP_TIMEOUT_S)
                where = " in the middle of a frame" if got else ""
                raise CameraError(f"{self.name}: rpicam-vid {self._why()}{where}")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        yuv = np.frombuffer(self._buf, np.uint8).reshape(self.height * 3 // 2, self.width)
        try:
            bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
        except cv2.error as exc:
            raise CameraError(f"{self.name}: cannot convert the frame: {exc}") from None
        frame = Frame(image=check_image(bgr, self.name), t=time.monotonic(), index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)  # ends at the EOF of the exited process
            self._stderr_thread = None
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
