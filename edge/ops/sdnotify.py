"""A tiny sd_notify client (no dependency): READY=1, WATCHDOG=1, STATUS=, STOPPING=1.

systemd gives a ``Type=notify`` service the path of a unix datagram socket in
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace) and, with
``WatchdogSec=``, the watchdog period in ``$WATCHDOG_USEC`` (for ``$WATCHDOG_PID`` only).
Outside systemd both are unset and every call is a cheap no-op.

The watchdog must be fed from the terminal's *main loop* (:class:`WatchdogHook`), never
from a timer thread of its own: a loop that stalls must stop feeding it so that systemd
kills and restarts the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


class Notifier:
    """Sends state lines to systemd's notify socket; does nothing when there is none."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path if socket_path is not None else os.environ.get(
            "NOTIFY_SOCKET", ""
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET", ""))

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ...) as one datagram; False when not sent."""
        if not self.enabled:
            return False
        payload = "\n".join(lines).encode("utf-8")
        # a fresh socket per message: a few per watchdog period, nothing to leak or share
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, _address(self.socket_path))
        except OSError:
            # systemd gone or the socket full: never let notification kill the service
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog period in seconds systemd expects from this process, or None."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


class WatchdogHook:
    """Called by the main loop once per iteration; feeds the watchdog at a safe rate.

    ``tick()`` sends ``WATCHDOG=1`` when half the watchdog period has passed since the
    last one (systemd's own advice), so a loop at 30 fps does not flood the socket, and
    a loop that stops calling ``tick()`` stops feeding. ``healthy`` (optional) is asked
    before each feed: a loop that turns but whose parts are wedged can also starve it.
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        interval: float | None = None,
        healthy: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        period = interval if interval is not None else watchdog_interval()
        #: feed every half period, the margin systemd's documentation recommends
        self.every = period / 2 if period else None
        self.healthy = healthy
        self._clock = clock
        self._last = float("-inf")
        self.fed = 0

    @property
    def active(self) -> bool:
        return self.notifier.enabled and self.every is not None

    def tick(self) -> bool:
        """One main-loop iteration passed; True when a WATCHDOG=1 was sent now."""
        if not self.active:
            return False
        now = self._clock()
        assert self.every is not None
        if now - self._last < self.every:
            return False
        if self.healthy is not None and not self.healthy():
            return False
        if self.notifier.watchdog():
            self._last = now
            self.fed += 1
            return True
        return False
