"""The lookup session state machine: one person in front of the terminal = one session.

States: IDLE -> QUALITY (wait for a good frontal face, embed a few good frames) ->
CHALLENGE (liveness gesture) -> decision -> [CONFIRM (not sure: the date of birth is
asked and checked against the few best candidates)] -> SHOWING (the result or a message
stays on screen) -> IDLE. Every change is published as a typed event (:mod:`edge.session.events`).
Time is the frame's timestamp, so a video read faster than real time behaves as if it
were live. Face data (embeddings, landmarks) lives only inside the running session and is
dropped when it ends; the audit log gets time, citizen id, score and outcome.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.config import SessionConfig
from edge.session.audit import AuditLog, Reporter
from edge.session.decision import Matcher, operating_point
from edge.session.decision import Verdict as Decided
from edge.session.events import (
    Challenge,
    ChallengeIssued,
    ConfirmAsked,
    ConfirmReply,
    ConfirmStatus,
    Ended,
    EventBus,
    FacePresent,
    Hint,
    Idle,
    LivenessFailed,
    Matched,
    NotRecognised,
    Outcome,
    RatingReceived,
    SessionEvent,
    TimedOut,
)
from edge.session.liveness import LivenessCheck, Verdict
from edge.session.ports import Confirmer, Detections, FaceEmbedder, Gallery
from edge.session.quality import QualityGate
from edge.session.tracker import Track

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


class State(enum.Enum):
    IDLE = "idle"
    QUALITY = "quality"
    CHALLENGE = "challenge"
    CONFIRM = "confirm"
    SHOWING = "showing"


@dataclasses.dataclass(eq=False)
class _Session:
    id: str
    track_id: int
    started: float
    hint: Hint | None = None
    good_streak: int = 0
    embeddings: list[F32] = dataclasses.field(default_factory=list)
    challenge: Challenge | None = None
    liveness: LivenessCheck | None = None
    progress_step: int = 0
    outcome: Outcome | None = None
    show_until: float = 0.0
    citizen_id: str = ""
    score: float | None = None
    #: while a match is shown: the matched face's embedding, to notice a person change
    watch_ref: F32 | None = None
    next_watch: float = 0.0
    #: CONFIRM: the candidates the answer is checked against (never shown), their
    #: scores, the frame time the step ends, and the wrong answers still allowed
    candidates: tuple[str, ...] = ()
    candidate_scores: tuple[float, ...] = ()
    confirm_until: float = 0.0
    confirm_tries: int = 0
    #: the step asks the personal number's last 4 digits after the date of birth
    ask_id4: bool = False
    #: the match came through the confirmation step (audit: matched_confirmed)
    confirmed: bool = False

    def forget_face(self, *, keep_watch: bool = False) -> None:
        """Drop everything derived from the face (embeddings, landmark references, the
        confirmation candidates)."""
        self.embeddings.clear()
        self.liveness = None
        self.candidates = ()
        self.candidate_scores = ()
        if not keep_watch:
            self.watch_ref = None

    @property
    def outcome_label(self) -> str:
        """The audit/metrics label: ``matched_confirmed`` for a confirmed match."""
        assert self.outcome is not None
        if self.outcome is Outcome.MATCHED and self.confirmed:
            return MATCHED_CONFIRMED
        return self.outcome.value


#: the audit outcome of a match made through the confirmation step (FPIR/FNIR count both
#: paths); the screen shows it exactly like a sure match
MATCHED_CONFIRMED = "matched_confirmed"


class SessionMachine:
    """Feed it one frame's subject per ``step``; implements ``SessionControl``."""

    def __init__(
        self,
        cfg: SessionConfig,
        *,
        embedder: FaceEmbedder,
        gallery: Gallery | None = None,
        threshold: float = 0.0,
        matcher: Matcher | None = None,
        bus: EventBus,
        audit: AuditLog | None = None,
        reporter: Reporter | None = None,
        terminal_id: str = "",
        rng: random.Random | None = None,
        confirmer: Confirmer | None = None,
    ) -> None:
        self.cfg = cfg
        self.embedder = embedder
        if matcher is None:
            if gallery is None:
                raise ValueError("SessionMachine needs a gallery or a matcher")
            matcher = Matcher(gallery, operating_point(cfg, threshold), cfg.top_k,
                              cfg.confirm_candidates)
        #: the one decision path (edge.session.decision), shared with LookupImage
        self.matcher = matcher
        #: checks the confirmation step's answers; None: the step is off
        self.confirmer = confirmer
        self.bus = bus
        self.audit = audit
        self.reporter = reporter
        self.terminal_id = terminal_id
        self.rng = rng or random.SystemRandom()
        self.gate = QualityGate(cfg)
        self.state = State.IDLE
        self.session: _Session | None = None
        self._lock = threading.RLock()
        #: one confirmation answer checked at a time (the check runs outside _lock)
        self._confirm_lock = threading.Lock()
        #: the newest frame time seen (answers arrive between frames)
        self._last_t = 0.0
        self._pending: list[SessionEvent] = []
        #: track id -> (frame time the session on it ended, whether it may retry)
        self._spent: dict[int, tuple[float, bool]] = {}
        #: session id -> (monotonic time of the match, citizen id) for ratings
        self._ratable: dict[str, tuple[float, str]] = {}
        self.sessions_started = 0
        self.outcomes: dict[str, int] = {}

    # ------------------------------------------------------------------ public
    @property
    def busy(self) -> bool:
        """A session is running (the loop runs at full frame rate)."""
        return self.state is not State.IDLE

    def outcome_counts(self) -> dict[str, int]:
        """Sessions ended so far, by outcome (a copy)."""
        with self._lock:
            return dict(self.outcomes)

    def step(self, t: float, image: npt.NDArray[np.uint8], subject: Track | None,
             alive: Sequence[int] = ()) -> None:
        """Advance with one processed frame; ``alive`` = ids of all live tracks."""
        with self._lock:
            self._step(t, image, subject, set(alive) | ({subject.id} if subject else set()))
            events, self._pending = self._pending, []
        for ev in events:
            self.bus.publish(ev)

    def camera_down(self, t: float) -> None:
        """The camera failed: a running session ends (its face can no longer be checked)."""
        with self._lock:
            if self.session is not None and self.state is not State.SHOWING:
                self._end(Outcome.CAMERA_DOWN, t)
            elif self.session is not None:
                self._finish(t)
            events, self._pending = self._pending, []
        for ev in events:
            self.bus.publish(ev)

    def not_me(self, session_id: str) -> bool:
        with self._lock:
            s = self.session
            if (s is None or s.id != session_id or self.state is not State.SHOWING
                    or s.outcome is not Outcome.MATCHED):
                return False
            if self.audit is not None:
                self.audit.session(terminal=self.terminal_id, session_id=s.id,
                                   outcome=Outcome.NOT_ME.value, citizen_id=s.citizen_id,
                                   score=s.score, challenge=_cv(s.challenge))
            if self.reporter is not None:
                self.reporter.report("not_me", {
                    "terminal": self.terminal_id, "session": s.id,
                    "citizen_id": s.citizen_id, "score": s.score,
                })
            self._ratable.pop(s.id, None)
            s.outcome = Outcome.NOT_ME
            self._finish(None)
            events, self._pending = self._pending, []
        for ev in events:
            self.bus.publish(ev)
        return True

    def rate(self, session_id: str, stars: int) -> bool:
        if not 1 <= stars <= 5:
            return False
        with self._lock:
            entry = self._ratable.get(session_id)
            if entry is None or time.monotonic() - entry[0] > self.cfg.rating_window_s:
                self._ratable.pop(session_id, None)
                return False
            del self._ratable[session_id]  # one rating per session
        if self.reporter is not None:
            # the citizen's id (never a name): the district joins the rating to the
            # counter and officer of their dossier (docs/district.md, staff ratings)
            self.reporter.report("rating", {"terminal": self.terminal_id,
                                            "session": session_id, "stars": stars,
                                            "citizen_id": entry[1]})
        self.bus.publish(RatingReceived(session_id, stars=stars))
        return True

    def confirm(self, session_id: str, answer: str) -> ConfirmReply:
        """Check the date of birth of the session waiting in CONFIRM (see SessionControl)."""
        with self._confirm_lock:
            with self._lock:
                s = self.session
                if (s is None or s.id != session_id or self.state is not State.CONFIRM
                        or self.confirmer is None):
                    return ConfirmReply(ConfirmStatus.NO_SESSION)
                candidates = s.candidates
            # scrypt per candidate: outside the session lock, so frames keep flowing
            right, all_locked = self.confirmer.check(candidates, answer)
            with self._lock:
                if self.session is not s or self.state is not State.CONFIRM:
                    return ConfirmReply(ConfirmStatus.NO_SESSION)  # ended meanwhile
                reply = self._answered(s, right, all_locked)
                events, self._pending = self._pending, []
        for ev in events:
            self.bus.publish(ev)
        return reply

    def cancel_confirmation(self, session_id: str) -> bool:
        with self._lock:
            s = self.session
            if s is None or s.id != session_id or self.state is not State.CONFIRM:
                return False
            self._not_recognised(s, self._last_t, "confirm_cancelled")
            events, self._pending = self._pending, []
        for ev in events:
            self.bus.publish(ev)
        return True

    def holds_face_data(self) -> bool:
        """True while any embedding or landmark reference of a face is held."""
        s = self.session
        return s is not None and (bool(s.embeddings) or s.liveness is not None
                                  or s.watch_ref is not None or bool(s.candidates))

    # ------------------------------------------------------------------ steps
    def _step(self, t: float, image: npt.NDArray[np.uint8], subject: Track | None,
              alive: set[int]) -> None:
        self._spent = {k: v for k, v in self._spent.items() if k in alive}
        self._last_t = t
        if self.state is State.IDLE:
            if subject is not None and subject.last_t == t and self._may_start(subject, t):
                self._start(subject, t)
            else:
                return
        s = self.session
        assert s is not None
        if self.state is State.SHOWING:
            gone = s.track_id not in alive
            if t >= s.show_until or (gone and s.outcome is Outcome.MATCHED):
                self._finish(t)
            elif (s.watch_ref is not None and subject is not None and subject.id == s.track_id
                  and subject.last_t == t and t >= s.next_watch):
                s.next_watch = t + self.cfg.watch_s
                if float(self._embed(image, subject) @ s.watch_ref) < self.cfg.same_person_min:
                    log.info("session %s: another face took the place; clearing", s.id)
                    self._finish(t)
            return
        if s.track_id not in alive:
            self._end(Outcome.LEFT, t)
            return
        if self.state is State.CONFIRM:
            self._confirm_step(s, t, image, subject)
            return
        if t - s.started > self.cfg.timeout_s:
            stage = self.state.value
            self._emit(TimedOut(s.id, stage=stage))
            self._end(Outcome.TIMED_OUT, t)
            return
        if subject is None or subject.id != s.track_id or subject.last_t != t:
            return  # the subject was not detected in this frame (or another face leads)
        if self.state is State.QUALITY:
            self._quality(s, t, image, subject)
        elif self.state is State.CHALLENGE:
            self._challenge(s, t, image, subject)

    def _may_start(self, subject: Track, t: float) -> bool:
        if subject.hits < self.cfg.present_frames:
            return False
        spent = self._spent.get(subject.id)
        if spent is None:
            return True
        ended_t, may_retry = spent
        return may_retry and t - ended_t >= self.cfg.retry_after_s

    def _start(self, subject: Track, t: float) -> None:
        self._spent.pop(subject.id, None)
        self.session = _Session(id=uuid.uuid4().hex[:12], track_id=subject.id, started=t)
        self.state = State.QUALITY
        self.sessions_started += 1

    def _quality(self, s: _Session, t: float, image: npt.NDArray[np.uint8], tr: Track) -> None:
        q = self.gate.check(image, tr.box, tr.landmarks)
        if q.hint is not s.hint:
            s.hint = q.hint
            self._emit(FacePresent(s.id, hint=q.hint))
        if not q.ok:
            s.good_streak = 0
            return
        s.good_streak += 1
        if len(s.embeddings) < self.cfg.embed_frames:
            s.embeddings.append(self._embed(image, tr))
        if s.good_streak < self.cfg.good_frames or len(s.embeddings) < self.cfg.embed_frames:
            return
        if self.cfg.liveness == "off":
            self._decide(s, t)
            return
        s.challenge = Challenge(self.rng.choice(self.cfg.challenges))
        s.liveness = LivenessCheck(self.cfg, s.challenge, tr.landmarks, t, image=image,
                                   box=tr.box)
        self.state = State.CHALLENGE
        self._emit(ChallengeIssued(s.id, challenge=s.challenge))

    def _challenge(self, s: _Session, t: float, image: npt.NDArray[np.uint8], tr: Track) -> None:
        assert s.liveness is not None and s.challenge is not None
        verdict = s.liveness.update(tr.landmarks, t, image)
        if verdict is Verdict.FAILED:
            self._emit(LivenessFailed(s.id, reason=s.liveness.reason))
            self._end(Outcome.LIVENESS_FAILED, t)
            return
        if verdict is Verdict.PENDING:
            step = int(s.liveness.progress * 4)  # re-send the prompt per quarter of progress
            if step > s.progress_step:
                s.progress_step = step
                self._emit(ChallengeIssued(s.id, challenge=s.challenge,
                                           progress=s.liveness.progress))
            return
        # passed: the face after the gesture must be the one embedded before it
        after = self._embed(image, tr)
        before = _mean_unit(s.embeddings)
        same = float(after @ before)
        if same < self.cfg.same_person_min:
            self._emit(LivenessFailed(s.id, reason="the face changed during the challenge"))
            self._end(Outcome.LIVENESS_FAILED, t)
            return
        self._decide(s, t)

    def _decide(self, s: _Session, t: float) -> None:
        query = _mean_unit(s.embeddings)
        d = self.matcher.match(query)
        s.score = d.score
        if d.verdict is Decided.SURE:
            self._matched(s, t, d.citizen_id, d.score, d.margin, query)
            return
        usable = (self.confirmer.usable(d.candidates)
                  if d.verdict is Decided.CONFIRM and self.confirmer is not None else [])
        if not usable:  # no candidate with a date of birth that is not locked
            self._not_recognised(s, t, "")
            return
        scores = dict(zip(d.candidates, d.candidate_scores, strict=True))
        s.candidates = tuple(usable)
        s.candidate_scores = tuple(scores[c] for c in usable)
        s.embeddings.clear()  # only the reference to notice a person change is kept
        s.liveness = None
        s.watch_ref = query
        s.next_watch = t + self.cfg.watch_s
        s.confirm_until = t + self.cfg.confirm_timeout_s
        s.confirm_tries = self.cfg.confirm_tries
        s.ask_id4 = self.confirmer is not None and self.confirmer.needs_id4(usable)
        self.state = State.CONFIRM
        log.info("session %s: not sure (%.3f), asking for the date of birth%s", s.id, d.score,
                 " and the 4 digits" if s.ask_id4 else "")
        self._emit(ConfirmAsked(s.id, tries_left=s.confirm_tries,
                                seconds_left=self.cfg.confirm_timeout_s, ask_id4=s.ask_id4))

    def _confirm_step(self, s: _Session, t: float, image: npt.NDArray[np.uint8],
                      subject: Track | None) -> None:
        """One frame while the date of birth is awaited: time limit, same person."""
        if t >= s.confirm_until:
            self._not_recognised(s, t, "confirm_timeout")
            return
        if (s.watch_ref is not None and subject is not None and subject.id == s.track_id
                and subject.last_t == t and t >= s.next_watch):
            s.next_watch = t + self.cfg.watch_s
            if float(self._embed(image, subject) @ s.watch_ref) < self.cfg.same_person_min:
                log.info("session %s: another face took the place during confirmation", s.id)
                self._not_recognised(s, t, "face_changed")

    def _answered(self, s: _Session, right: list[str], all_locked: bool) -> ConfirmReply:
        t = self._last_t
        if len(right) == 1:
            cid = right[0]
            score = dict(zip(s.candidates, s.candidate_scores, strict=True)).get(cid, 0.0)
            s.confirmed = True
            s.score = score
            assert s.watch_ref is not None
            self._matched(s, t, cid, score, 0.0, s.watch_ref)
            return ConfirmReply(ConfirmStatus.CONFIRMED)
        if len(right) > 1:  # e.g. twins: the same date for two candidates; show no one
            self._not_recognised(s, t, "confirm_ambiguous")
            return ConfirmReply(ConfirmStatus.ENDED)
        s.confirm_tries -= 1
        if all_locked:
            self._not_recognised(s, t, "confirm_locked")
            return ConfirmReply(ConfirmStatus.ENDED)
        if s.confirm_tries <= 0:
            self._not_recognised(s, t, "confirm_failed")
            return ConfirmReply(ConfirmStatus.ENDED)
        self._emit(ConfirmAsked(s.id, tries_left=s.confirm_tries, wrong=True,
                                seconds_left=max(s.confirm_until - t, 0.0), ask_id4=s.ask_id4))
        return ConfirmReply(ConfirmStatus.WRONG, tries_left=s.confirm_tries)

    def _matched(self, s: _Session, t: float, citizen_id: str, score: float, margin: float,
                 query: F32) -> None:
        s.citizen_id = citizen_id
        s.watch_ref = query
        s.next_watch = t + self.cfg.watch_s
        self._emit(Matched(s.id, citizen_id=citizen_id, score=score, margin=margin))
        self._ratable[s.id] = (time.monotonic(), citizen_id)
        self._end(Outcome.MATCHED, t)

    def _not_recognised(self, s: _Session, t: float, reason: str) -> None:
        self._emit(NotRecognised(s.id, reason=reason))
        self._end(Outcome.NOT_RECOGNISED, t)

    def _end(self, outcome: Outcome, t: float) -> None:
        """A decision (or failure) was reached: drop face data, audit, show the result."""
        s = self.session
        assert s is not None
        s.forget_face(keep_watch=outcome is Outcome.MATCHED)
        s.outcome = outcome
        if self.audit is not None and outcome is not Outcome.NOT_ME:
            self.audit.session(terminal=self.terminal_id, session_id=s.id,
                               outcome=s.outcome_label, citizen_id=s.citizen_id,
                               score=s.score, challenge=_cv(s.challenge))
        if outcome in (Outcome.LEFT, Outcome.CAMERA_DOWN):
            self._finish(t)
            return
        self.state = State.SHOWING
        s.show_until = t + (self.cfg.result_s if outcome is Outcome.MATCHED
                            else self.cfg.message_s)

    def _finish(self, t: float | None) -> None:
        """The screen clears: Ended, then Idle."""
        s = self.session
        assert s is not None and s.outcome is not None
        s.forget_face()
        label = s.outcome_label
        self.outcomes[label] = self.outcomes.get(label, 0) + 1
        may_retry = s.outcome not in (Outcome.MATCHED, Outcome.NOT_ME)
        self._spent[s.track_id] = (t if t is not None else s.show_until, may_retry)
        self._emit(Ended(s.id, outcome=s.outcome))
        self._emit(Idle(""))
        log.info("session %s ended: %s", s.id, s.outcome.value)
        self.session = None
        self.state = State.IDLE

    def _embed(self, image: npt.NDArray[np.uint8], tr: Track) -> F32:
        faces = Detections(tr.box[None].astype(np.float32),
                           np.array([tr.score], np.float32),
                           tr.landmarks[None].astype(np.float32))
        emb = self.embedder.embed(image, faces)
        return np.asarray(emb[0], np.float32)

    def _emit(self, ev: SessionEvent) -> None:
        self._pending.append(ev)


def _mean_unit(vectors: list[F32]) -> F32:
    m = np.mean(np.stack(vectors), axis=0)
    n = float(np.linalg.norm(m))
    return (m / n if n > 0 else m).astype(np.float32)


def _cv(ch: Challenge | None) -> str:
    return ch.value if ch is not None else ""
