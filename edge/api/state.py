"""What the screens see: session events turned into display messages, fanned out to watchers.

``DisplayState`` is the unit behind the gRPC servicer. It receives the session's typed events
(``edge.session.events``), looks up the matched citizen's masked name and dossiers in the
store, masks the dossier codes, keeps the newest message for screens that connect later,
and holds the per-session PIN tries. The servicer only converts requests and errors.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import grpc

from edge.api.attempts import AttemptLimiter, Verdict
from edge.api.masking import mask_code
from edge.api.survey import SurveyOffers
from edge.session import events as ev
from edge.store.records import CitizenRecord
from proto import display_pb2 as pb
from sync.changes import Dossier, DossierStatus
from sync.pin import DOB_ID4_LEN, valid_answer, valid_dob, valid_pin, verify_pin

log = logging.getLogger(__name__)

#: messages a watcher's queue holds before the oldest are dropped. Every message carries the
#: whole screen state, so a slow screen that loses old ones still shows the right thing;
#: 64 is minutes of normal traffic
WATCHER_QUEUE = 64


class CitizenDirectory(Protocol):
    """The part of the gallery store the display needs (edge.store GalleryStore has it)."""

    def citizen(self, citizen_id: str) -> CitizenRecord | None: ...

    def dossiers(self, citizen_id: str) -> Sequence[Dossier]: ...


class Refused(Exception):
    """A request the API turns down with a gRPC status code and a one-line reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_pb(status: DossierStatus) -> int:
    return pb.DossierStatus.Value("DOSSIER_STATUS_" + status.name)


def summary_pb(d: Dossier) -> pb.DossierSummary:
    return pb.DossierSummary(
        masked_code=mask_code(d.code),
        status=status_pb(d.status),  # type: ignore[arg-type]
        status_label_vi=d.status.label_vi,
        status_label_en=d.status.label_en,
        stage=d.stage,
        received_on=d.received_on,
        appointment_on=d.appointment_on,
    )


def detail_pb(d: Dossier) -> pb.DossierDetail:
    return pb.DossierDetail(
        code=d.code,
        procedure=d.procedure,
        status=status_pb(d.status),  # type: ignore[arg-type]
        status_label_vi=d.status.label_vi,
        status_label_en=d.status.label_en,
        stage=d.stage,
        received_on=d.received_on,
        appointment_on=d.appointment_on,
        counter=d.counter,
    )


def match_pb(directory: CitizenDirectory, citizen_id: str, tries_left: int,
             pin: Verdict | None = None) -> pb.Match | None:
    """The masked view of a citizen, or None when the store no longer has them. ``pin``
    is the citizen's PIN budget across sessions (None: only the session's counts)."""
    rec = directory.citizen(citizen_id)
    if rec is None:
        return None
    if pin is not None:
        tries_left = min(tries_left, pin.failures_left)
    return pb.Match(
        masked_name=rec.masked_name,
        dossiers=[summary_pb(d) for d in directory.dossiers(citizen_id)],
        pin_available=bool(rec.pin_hash),
        pin_tries_left=tries_left,
        pin_locked_until_unix_ms=int(pin.locked_until * 1000) if pin else 0,
    )


def _clock_time(unix_s: float) -> str:
    """A lock's end as the terminal's local "HH:MM dd/mm/yyyy" (what staff read)."""
    return datetime.datetime.fromtimestamp(unix_s).strftime("%H:%M %d/%m/%Y")


_CHALLENGE = {
    ev.Challenge.TURN_LEFT: pb.CHALLENGE_KIND_TURN_LEFT,
    ev.Challenge.TURN_RIGHT: pb.CHALLENGE_KIND_TURN_RIGHT,
    ev.Challenge.LOOK_UP: pb.CHALLENGE_KIND_LOOK_UP,
    ev.Challenge.LOOK_DOWN: pb.CHALLENGE_KIND_LOOK_DOWN,
}


@dataclasses.dataclass
class _MatchedSession:
    session_id: str
    citizen_id: str
    tries_left: int
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class Watcher:
    """One screen's bounded queue of display messages."""

    def __init__(self, state: DisplayState, name: str, first: pb.SessionEvent,
                 peer: str = "", display: bool = False) -> None:
        self.name = name
        self.peer = peer
        #: the kiosk display itself (proved by token or certificate): a reserved slot
        self.display = display
        self._state = state
        self._items: collections.deque[pb.SessionEvent] = collections.deque(
            [first], maxlen=WATCHER_QUEUE
        )
        self._cond = threading.Condition()
        self.closed = False
        self.dropped = 0

    def put(self, msg: pb.SessionEvent) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(msg)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> pb.SessionEvent | None:
        """The next message, or None after ``timeout`` or once closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._state._drop(self)


class DisplayState:
    """Session events in, display messages out; PIN tries per matched session."""

    def __init__(
        self,
        directory: CitizenDirectory,
        *,
        pin_tries: int = 3,
        help_counter: str = "1",
        max_watchers: int = 16,
        pin_limiter: AttemptLimiter | None = None,
        max_watchers_per_peer: int | None = None,
        display_watchers: int = 2,
        survey: SurveyOffers | None = None,
    ) -> None:
        self._directory = directory
        #: the district's survey QR for matched sessions (edge/api/survey.py); None: never
        self.survey = survey
        self._pin_tries = pin_tries
        #: wrong PINs per citizen across sessions (the terminal passes one kept in its
        #: state dir; the in-memory default still spans sessions, not restarts)
        self.pin_limiter = pin_limiter if pin_limiter is not None else AttemptLimiter(None)
        self._help_counter = help_counter
        self._max_watchers = max_watchers
        self._per_peer = max_watchers_per_peer or max_watchers
        self._display_watchers = display_watchers
        self._lock = threading.Lock()
        self._watchers: list[Watcher] = []
        self._seq = 0
        self._camera_up = True
        self._current = self._stamp(pb.SessionEvent(state=pb.SESSION_STATE_IDLE))
        self._matched: _MatchedSession | None = None
        #: session id of the newest match that may still be rated
        self._rateable: str = ""
        self._session_started: dict[str, int] = {}
        #: session id of the confirmation step on screen ("" when none)
        self._confirm_session = ""
        #: the confirmation step on screen asks the 4 digits too (12-digit answers)
        self._confirm_id4 = False
        self._closed = False

    # -- fan-out -------------------------------------------------------------------------

    def _stamp(self, msg: pb.SessionEvent, at: float | None = None) -> pb.SessionEvent:
        self._seq += 1
        msg.seq = self._seq
        if not msg.time_unix_ms:
            msg.time_unix_ms = int((at if at is not None else time.time()) * 1000)
        msg.camera_up = self._camera_up
        return msg

    def current(self) -> pb.SessionEvent:
        with self._lock:
            out = pb.SessionEvent()
            out.CopyFrom(self._current)
            return out

    @property
    def watcher_count(self) -> int:
        with self._lock:
            return len(self._watchers)

    def watch(self, name: str = "", peer: str = "", display: bool = False) -> Watcher:
        """A new watcher whose first message is the current screen state.

        ``peer`` is who is calling (for api.max_watchers_per_peer); ``display`` marks the
        kiosk display, which has its own slots (api.display_watchers): when they are
        taken its oldest stream is dropped, so the display is always served.
        """
        evicted: Watcher | None = None
        with self._lock:
            if self._closed:
                raise Refused(grpc.StatusCode.UNAVAILABLE, "the terminal is shutting down")
            if display:
                mine = [w for w in self._watchers if w.display]
                if len(mine) >= self._display_watchers:
                    evicted = mine[0]
                    self._watchers.remove(evicted)
            else:
                others = [w for w in self._watchers if not w.display]
                if len(others) >= self._max_watchers:
                    raise Refused(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many screens watching (api.max_watchers = {self._max_watchers})",
                    )
                if sum(w.peer == peer for w in others) >= self._per_peer:
                    raise Refused(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "too many streams from this client "
                        f"(api.max_watchers_per_peer = {self._per_peer})",
                    )
            first = pb.SessionEvent()
            first.CopyFrom(self._current)
            w = Watcher(self, name, first, peer=peer, display=display)
            self._watchers.append(w)
            count = len(self._watchers)
        if evicted is not None:
            log.warning("display watcher %r replaced by a new display stream", evicted.name)
            evicted.close()
        log.info("display watcher %r from %s connected (%d watching%s)", name, peer or "?",
                 count, ", the display" if display else "")
        return w

    def _drop(self, w: Watcher) -> None:
        with self._lock:
            if w in self._watchers:
                self._watchers.remove(w)

    def close(self) -> None:
        """End every watcher stream (shutdown)."""
        with self._lock:
            self._closed = True
            watchers = list(self._watchers)
        for w in watchers:
            w.close()

    def _publish(self, msg: pb.SessionEvent, at: float | None) -> pb.SessionEvent:
        with self._lock:
            self._stamp(msg, at)
            self._current = msg
            watchers = list(self._watchers)
        for w in watchers:
            copy = pb.SessionEvent()
            copy.CopyFrom(msg)
            w.put(copy)
        return msg

    # -- session events in ---------------------------------------------------------------

    def on_event(self, event: ev.SessionEvent) -> pb.SessionEvent | None:
        """Turn one session event into the screen message (and publish it); never raises."""
        try:
            return self._on_event(event)
        except Exception:  # a bad lookup must not kill the relay thread
            log.exception("display: cannot convert %r", event)
            return None

    def _on_event(self, event: ev.SessionEvent) -> pb.SessionEvent | None:
        sid = event.session_id
        started = self._session_started
        if sid and sid not in started:
            started.clear()  # one session at a time: forget the previous one
            started[sid] = int(event.at * 1000)
        msg = pb.SessionEvent(session_id=sid, face_seen_unix_ms=started.get(sid, 0))
        if isinstance(event, ev.CameraState):
            self._camera_up = event.up
            msg = pb.SessionEvent()
            msg.CopyFrom(self.current())
            msg.time_unix_ms = 0
            return self._publish(msg, event.at)
        if isinstance(event, ev.Idle):
            with self._lock:
                if self._current.state == pb.SESSION_STATE_IDLE:
                    return None  # already idle: nothing changes on screen
            msg = pb.SessionEvent(state=pb.SESSION_STATE_IDLE)
        elif isinstance(event, ev.FacePresent):
            msg.state = pb.SESSION_STATE_FACE_PRESENT
            msg.hint = event.hint.value
        elif isinstance(event, ev.ChallengeIssued):
            msg.state = pb.SESSION_STATE_CHALLENGE
            msg.challenge.CopyFrom(
                pb.Challenge(
                    kind=_CHALLENGE[event.challenge],  # type: ignore[arg-type]
                    prompt_vi=event.prompt_vi,
                    prompt_en=event.prompt_en,
                    progress=event.progress,
                )
            )
        elif isinstance(event, ev.ConfirmAsked):
            with self._lock:
                self._confirm_session = sid
                self._confirm_id4 = event.ask_id4
            msg.state = pb.SESSION_STATE_CONFIRM
            msg.confirmation.CopyFrom(pb.Confirmation(
                prompt_vi=event.prompt_vi, prompt_en=event.prompt_en,
                tries_left=max(event.tries_left, 0), wrong=event.wrong,
                seconds_left=event.seconds_left, ask_id4=event.ask_id4,
                id4_prompt_vi=event.id4_prompt_vi, id4_prompt_en=event.id4_prompt_en))
        elif isinstance(event, ev.Matched):
            match = match_pb(self._directory, event.citizen_id, self._pin_tries,
                             self.pin_limiter.check(event.citizen_id))
            if match is None:  # deleted between the search and now: do not show anyone
                msg.state = pb.SESSION_STATE_NOT_RECOGNISED
                msg.help_counter = self._help_counter
            else:
                with self._lock:
                    self._matched = _MatchedSession(sid, event.citizen_id, self._pin_tries)
                    self._rateable = sid
                msg.state = pb.SESSION_STATE_MATCHED
                msg.match.CopyFrom(match)
                if self.survey is not None:
                    msg.match.survey_url = self.survey.offer(sid, event.citizen_id)
                msg.can_rate = True
        elif isinstance(event, ev.NotRecognised):
            msg.state = pb.SESSION_STATE_NOT_RECOGNISED
            msg.help_counter = self._help_counter
            msg.reason = event.reason
        elif isinstance(event, ev.LivenessFailed):
            msg.state = pb.SESSION_STATE_LIVENESS_FAILED
            msg.help_counter = self._help_counter
            msg.reason = event.reason
        elif isinstance(event, ev.TimedOut):
            msg.state = pb.SESSION_STATE_TIMED_OUT
            msg.help_counter = self._help_counter
            msg.reason = event.stage
        elif isinstance(event, ev.Ended):
            with self._lock:
                if self._confirm_session == sid:
                    self._confirm_session = ""
                if self._matched is not None and self._matched.session_id == sid:
                    self._matched = None  # nothing of the match stays after the session
                can_rate = self._rateable == sid and event.outcome is ev.Outcome.MATCHED
                if not can_rate and self._rateable == sid:
                    self._rateable = ""
            msg.state = pb.SESSION_STATE_ENDED
            msg.reason = event.outcome.value
            msg.can_rate = can_rate
        elif isinstance(event, ev.RatingReceived):
            with self._lock:
                if self._rateable == sid:
                    self._rateable = ""
            msg = self.current()
            msg.time_unix_ms = 0
            msg.can_rate = False
            msg.rated = True
        else:
            log.debug("display: ignoring %s", type(event).__name__)
            return None
        return self._publish(msg, event.at)

    # -- requests from the screen --------------------------------------------------------

    def submit_pin(self, session_id: str, pin: str) -> pb.SubmitPinResponse:
        """Check ``pin`` for the matched session; raises Refused for bad or locked requests."""
        if not session_id:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        if not valid_pin(pin):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a PIN is 4 to 8 digits")
        with self._lock:
            m = self._matched
        if m is None or m.session_id != session_id:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, "no matched session with this id on screen"
            )
        with m.lock:  # one try at a time per session: no parallel guessing
            if m.tries_left <= 0:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many wrong PINs: locked for this session",
                )
            rec = self._directory.citizen(m.citizen_id)
            if rec is None or not rec.pin_hash:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "this citizen has no PIN")
            v = self.pin_limiter.attempt(
                m.citizen_id, lambda: verify_pin(pin, rec.pin_hash, rec.pin_salt))
            if not v.allowed and not v.just_locked:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many wrong PINs for this citizen: locked until "
                    f"{_clock_time(v.locked_until)} (api.pin_lockout_s)",
                )
            if v.ok:
                dossiers = [detail_pb(d) for d in self._directory.dossiers(m.citizen_id)]
                return pb.SubmitPinResponse(ok=True, tries_left=m.tries_left, dossiers=dossiers)
            m.tries_left = min(m.tries_left - 1, v.failures_left)
            log.info("wrong PIN for session %s (%d tries left)", session_id, m.tries_left)
            return pb.SubmitPinResponse(
                ok=False, tries_left=m.tries_left, locked=m.tries_left == 0,
                locked_until_unix_ms=int(v.locked_until * 1000),
            )

    def check_confirmation(self, session_id: str, answer: str) -> None:
        """Refuse a malformed confirmation (INVALID_ARGUMENT): no session id, or not 8
        digits DDMMYYYY of a real date, followed by the 4 digits of the personal number
        when the step on screen asked for them (and only then): a wrong shape costs no
        try."""
        self.check_session(session_id)
        with self._lock:
            id4 = self._confirm_id4 and session_id == self._confirm_session
        if id4:
            if len(answer) != DOB_ID4_LEN or not valid_answer(answer):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              "the answer is the date of birth DDMMYYYY (a real date) and the "
                              "last 4 digits of the personal identification number: 12 digits")
        elif not valid_dob(answer):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          "the date of birth is 8 digits DDMMYYYY of a real date")

    @property
    def confirm_session(self) -> str:
        """The session whose confirmation step is on screen ("" when none)."""
        with self._lock:
            return self._confirm_session

    def check_session(self, session_id: str) -> None:
        """Refuse requests that name no session (INVALID_ARGUMENT)."""
        if not session_id:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")

    @property
    def matched_session(self) -> str:
        with self._lock:
            return self._matched.session_id if self._matched else ""
