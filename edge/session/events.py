"""Typed events of the lookup session, and the bus that delivers them to listeners.

The session state machine (``edge.session.machine``) publishes one event per state change;
the gRPC display API subscribes and turns each event into a protobuf message. Events carry
no face data (no crops, no embeddings), only what the screen needs.

Use::

    bus = EventBus()
    sub = bus.subscribe()            # a bounded queue; the newest "state" event comes first
    ev = sub.get(timeout=1.0)        # -> SessionEvent | None
    sub.close()

or ``bus.add_listener(callable)`` for synchronous callbacks (called on the loop thread:
keep them short and never raise).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Challenge(enum.Enum):
    """The liveness gesture asked of the citizen (chosen at random per session)."""

    TURN_LEFT = "turn_left"  # the citizen turns their head to their own left
    TURN_RIGHT = "turn_right"
    LOOK_UP = "look_up"
    LOOK_DOWN = "look_down"

    @property
    def prompt_vi(self) -> str:
        return _PROMPTS_VI[self]

    @property
    def prompt_en(self) -> str:
        return _PROMPTS_EN[self]


_PROMPTS_VI = {
    Challenge.TURN_LEFT: "Xin quay đầu sang trái",
    Challenge.TURN_RIGHT: "Xin quay đầu sang phải",
    Challenge.LOOK_UP: "Xin ngẩng đầu lên",
    Challenge.LOOK_DOWN: "Xin cúi đầu xuống",
}
_PROMPTS_EN = {
    Challenge.TURN_LEFT: "Please turn your head to the left",
    Challenge.TURN_RIGHT: "Please turn your head to the right",
    Challenge.LOOK_UP: "Please look up",
    Challenge.LOOK_DOWN: "Please look down",
}


class Outcome(enum.Enum):
    """How a session ended (also the ``outcome`` field of the audit line)."""

    MATCHED = "matched"
    NOT_RECOGNISED = "not_recognised"
    LIVENESS_FAILED = "liveness_failed"
    TIMED_OUT = "timed_out"
    NOT_ME = "not_me"  # the citizen pressed "not me" on a match
    LEFT = "left"  # the face went away before a decision
    CAMERA_DOWN = "camera_down"  # the camera failed during the session


class Hint(enum.Enum):
    """Why the quality gate is still waiting (the screen may show it as guidance)."""

    OK = "ok"
    TOO_SMALL = "too_small"  # come closer
    BLURRY = "blurry"  # hold still
    NOT_FRONTAL = "not_frontal"  # look at the camera
    TOO_DARK = "too_dark"


@dataclasses.dataclass(frozen=True)
class SessionEvent:
    """Base of all events. ``session_id`` is empty for idle/camera events outside a session."""

    session_id: str
    #: wall-clock time (seconds since the epoch) the event was made
    at: float = dataclasses.field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return _KIND[type(self)]


@dataclasses.dataclass(frozen=True)
class Idle(SessionEvent):
    """Nobody in front; the screen shows instructions."""


@dataclasses.dataclass(frozen=True)
class FacePresent(SessionEvent):
    """A subject face is tracked; ``hint`` says what the quality gate still waits for."""

    hint: Hint = Hint.OK


@dataclasses.dataclass(frozen=True)
class ChallengeIssued(SessionEvent):
    """Ask for a liveness gesture; ``progress`` in [0, 1] may be re-sent as it advances."""

    challenge: Challenge
    progress: float = 0.0

    @property
    def prompt_vi(self) -> str:
        return self.challenge.prompt_vi

    @property
    def prompt_en(self) -> str:
        return self.challenge.prompt_en


@dataclasses.dataclass(frozen=True)
class Matched(SessionEvent):
    """Recognised: look up the masked name and dossiers of ``citizen_id`` in the store."""

    citizen_id: str
    #: cosine similarity of the best citizen, and its lead over the next citizen
    score: float
    margin: float


#: what the screen asks in the confirmation step (both languages, like the challenges)
CONFIRM_PROMPT_VI = "Vui lòng nhập ngày sinh (ngày/tháng/năm) để xác nhận"
CONFIRM_PROMPT_EN = "Please enter your date of birth (day/month/year) to confirm"
#: then, when a candidate's secret includes them, the personal number's last 4 digits
ID4_PROMPT_VI = "Vui lòng nhập 4 số cuối của số định danh cá nhân (trên thẻ CCCD)"
ID4_PROMPT_EN = ("Please enter the last 4 digits of your personal identification number "
                 "(on your ID card)")


@dataclasses.dataclass(frozen=True)
class ConfirmAsked(SessionEvent):
    """Not a sure match: the citizen is asked for their date of birth. Carries nothing
    about the candidates (they stay inside the session); re-sent after a wrong answer."""

    #: wrong answers this session still allows
    tries_left: int
    #: the previous answer was wrong
    wrong: bool = False
    #: seconds left to answer
    seconds_left: float = 0.0
    #: after the date of birth, ask the last 4 digits of the personal identification number
    ask_id4: bool = False

    @property
    def prompt_vi(self) -> str:
        return CONFIRM_PROMPT_VI

    @property
    def prompt_en(self) -> str:
        return CONFIRM_PROMPT_EN

    @property
    def id4_prompt_vi(self) -> str:
        return ID4_PROMPT_VI if self.ask_id4 else ""

    @property
    def id4_prompt_en(self) -> str:
        return ID4_PROMPT_EN if self.ask_id4 else ""


@dataclasses.dataclass(frozen=True)
class NotRecognised(SessionEvent):
    """Live face but no confident match (below threshold or too close to a second citizen).

    ``reason`` is empty for a plain decision, else how the confirmation step ended:
    ``confirm_cancelled``, ``confirm_timeout``, ``confirm_failed`` (the session's tries
    are used up), ``confirm_locked`` (the per-citizen limit is hit), ``face_changed``."""

    reason: str = ""


@dataclasses.dataclass(frozen=True)
class LivenessFailed(SessionEvent):
    """The gesture was not seen, or the face moved like a flat picture."""

    reason: str = ""


@dataclasses.dataclass(frozen=True)
class TimedOut(SessionEvent):
    """The session took longer than ``session.timeout_s`` without a decision."""

    stage: str = ""  # which stage it was in: "quality", "challenge"


@dataclasses.dataclass(frozen=True)
class Ended(SessionEvent):
    """The session is over; the screen clears. Always the last event of a session."""

    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class RatingReceived(SessionEvent):
    """The citizen rated the service after a match (1..5); the screen may say thanks."""

    stars: int


@dataclasses.dataclass(frozen=True)
class CameraState(SessionEvent):
    """The camera went down or came back (session_id is empty)."""

    up: bool
    error: str = ""


_KIND: dict[type, str] = {
    Idle: "idle",
    FacePresent: "face_present",
    ChallengeIssued: "challenge",
    ConfirmAsked: "confirm",
    Matched: "matched",
    NotRecognised: "not_recognised",
    LivenessFailed: "liveness_failed",
    TimedOut: "timed_out",
    Ended: "ended",
    RatingReceived: "rating",
    CameraState: "camera",
}

Listener = Callable[[SessionEvent], None]


class ConfirmStatus(enum.Enum):
    """What became of one answer in the confirmation step."""

    CONFIRMED = "confirmed"  # right: the Matched screen follows
    WRONG = "wrong"  # wrong, tries are left
    ENDED = "ended"  # the session ended on this answer (no tries left, per citizen or
    # session, or the date fits several candidates): "not recognised" is on screen
    NO_SESSION = "no_session"  # no session with this id is waiting for an answer


@dataclasses.dataclass(frozen=True)
class ConfirmReply:
    """The answer to :meth:`SessionControl.confirm`."""

    status: ConfirmStatus
    tries_left: int = 0


class SessionControl(Protocol):
    """What the display may ask of the running session (implemented by the session machine).

    Both return False (and change nothing) when ``session_id`` is not the current session,
    or for ``rate`` not a matched session still inside its rating window.
    """

    def not_me(self, session_id: str) -> bool:
        """The citizen says the match is not them: end the session, report to the district."""
        ...

    def rate(self, session_id: str, stars: int) -> bool:
        """One-tap satisfaction rating (1..5) after a match; goes to the district."""
        ...

    def confirm(self, session_id: str, answer: str) -> ConfirmReply:
        """The citizen's date of birth (DDMMYYYY, then the 4 digits when the step asked
        for them; already checked for shape) for the session waiting in the
        confirmation step."""
        ...

    def cancel_confirmation(self, session_id: str) -> bool:
        """The citizen gives up the confirmation step: the session ends not recognised."""
        ...

#: events a subscriber queue holds before the oldest are dropped: a display that stalls
#: for a few seconds must not grow memory; 64 is minutes of normal traffic
SUBSCRIBER_QUEUE = 64


class Subscription:
    """A bounded queue of events for one consumer (e.g. one gRPC display stream)."""

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        self._bus = bus
        self._items: collections.deque[SessionEvent] = collections.deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.closed = False
        #: events dropped because this consumer was too slow
        self.dropped = 0

    def _put(self, event: SessionEvent) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(event)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> SessionEvent | None:
        """The next event, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return None

    def close(self) -> None:
        """Stop receiving events and wake a waiting ``get``."""
        self._bus._unsubscribe(self)
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of session events to listeners and subscriber queues (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._subs: list[Subscription] = []
        self._last_state: SessionEvent = Idle("")
        self._last_camera: CameraState | None = None

    @property
    def last_state(self) -> SessionEvent:
        """The newest non-camera event (what the screen should show now)."""
        with self._lock:
            return self._last_state

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def subscribe(self, maxlen: int = SUBSCRIBER_QUEUE) -> Subscription:
        """A new queue; it starts with the current camera state (if down) and screen state."""
        sub = Subscription(self, maxlen)
        with self._lock:
            if self._last_camera is not None and not self._last_camera.up:
                sub._put(self._last_camera)
            sub._put(self._last_state)
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: SessionEvent) -> None:
        with self._lock:
            if isinstance(event, CameraState):
                self._last_camera = event
            else:
                self._last_state = event
            listeners = list(self._listeners)
            subs = list(self._subs)
        for sub in subs:
            sub._put(event)
        for listener in listeners:
            listener(event)
