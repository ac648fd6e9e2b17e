"""Display messages (protobuf) -> the JSON the kiosk page renders, and the screen holder."""

from __future__ import annotations

import threading
import time
from typing import Any

from proto import display_pb2 as pb

_STATE = {
    pb.SESSION_STATE_UNSPECIFIED: "idle",
    pb.SESSION_STATE_IDLE: "idle",
    pb.SESSION_STATE_FACE_PRESENT: "face_present",
    pb.SESSION_STATE_CHALLENGE: "challenge",
    pb.SESSION_STATE_MATCHED: "matched",
    pb.SESSION_STATE_NOT_RECOGNISED: "not_recognised",
    pb.SESSION_STATE_LIVENESS_FAILED: "liveness_failed",
    pb.SESSION_STATE_TIMED_OUT: "timed_out",
    pb.SESSION_STATE_ENDED: "ended",
    pb.SESSION_STATE_CONFIRM: "confirm",
}


def _status_name(value: int) -> str:
    return pb.DossierStatus.Name(value).removeprefix("DOSSIER_STATUS_").lower()  # type: ignore[arg-type]


def _challenge_name(value: int) -> str:
    return pb.ChallengeKind.Name(value).removeprefix("CHALLENGE_KIND_").lower()  # type: ignore[arg-type]


def summary_view(d: pb.DossierSummary) -> dict[str, Any]:
    return {
        "masked_code": d.masked_code,
        "status": _status_name(d.status),
        "status_label_vi": d.status_label_vi,
        "status_label_en": d.status_label_en,
        "stage": d.stage,
        "received_on": d.received_on,
        "appointment_on": d.appointment_on,
    }


def detail_view(d: pb.DossierDetail) -> dict[str, Any]:
    return {
        "code": d.code,
        "procedure": d.procedure,
        "status": _status_name(d.status),
        "status_label_vi": d.status_label_vi,
        "status_label_en": d.status_label_en,
        "stage": d.stage,
        "received_on": d.received_on,
        "appointment_on": d.appointment_on,
        "counter": d.counter,
    }


def event_view(msg: pb.SessionEvent) -> dict[str, Any]:
    """The page's view of one display message (plain JSON types only)."""
    out: dict[str, Any] = {
        "connected": True,
        "seq": msg.seq,
        "session_id": msg.session_id,
        "state": _STATE.get(msg.state, "idle"),
        "time_unix_ms": msg.time_unix_ms,
        "face_seen_unix_ms": msg.face_seen_unix_ms,
        "help_counter": msg.help_counter,
        "reason": msg.reason,
        "hint": msg.hint,
        "can_rate": msg.can_rate,
        "rated": msg.rated,
        "camera_up": msg.camera_up,
        "challenge": None,
        "match": None,
        "confirmation": None,
    }
    if msg.state == pb.SESSION_STATE_CONFIRM:
        c = msg.confirmation
        out["confirmation"] = {
            "prompt_vi": c.prompt_vi,
            "prompt_en": c.prompt_en,
            "tries_left": c.tries_left,
            "wrong": c.wrong,
            "seconds_left": round(c.seconds_left, 1),
            "ask_id4": c.ask_id4,
            "id4_prompt_vi": c.id4_prompt_vi,
            "id4_prompt_en": c.id4_prompt_en,
        }
    if msg.state == pb.SESSION_STATE_CHALLENGE:
        c = msg.challenge
        out["challenge"] = {
            "kind": _challenge_name(c.kind),
            "prompt_vi": c.prompt_vi,
            "prompt_en": c.prompt_en,
            "progress": round(c.progress, 3),
            "seconds_left": round(c.seconds_left, 1),
        }
    if msg.HasField("match"):
        m = msg.match
        out["match"] = {
            "masked_name": m.masked_name,
            "dossiers": [summary_view(d) for d in m.dossiers],
            "pin_available": m.pin_available,
            "pin_tries_left": m.pin_tries_left,
            "pin_locked_until_unix_ms": m.pin_locked_until_unix_ms,
            # the district's survey link; the page shows it as a QR (/survey-qr.svg)
            "survey_url": m.survey_url,
        }
    return out


def disconnected_view(error: str = "") -> dict[str, Any]:
    return {"connected": False, "state": "disconnected", "error": error, "seq": 0,
            "session_id": "", "camera_up": False, "challenge": None, "match": None,
            "confirmation": None}


class Screen:
    """The newest screen state; web clients wait on it for changes (thread-safe)."""

    def __init__(self, language: str = "vi") -> None:
        self.language = language
        self._cond = threading.Condition()
        self._version = 0
        self._state: dict[str, Any] = disconnected_view()

    def update(self, state: dict[str, Any]) -> None:
        with self._cond:
            self._version += 1
            state = dict(state, version=self._version, shown_unix_ms=int(time.time() * 1000))
            self._state = state
            self._cond.notify_all()

    def get(self) -> tuple[int, dict[str, Any]]:
        with self._cond:
            return self._version, self._state

    def wait_change(self, version: int, timeout: float) -> tuple[int, dict[str, Any]]:
        """Block until the version differs from ``version`` (or timeout); return the newest."""
        with self._cond:
            if self._version == version:
                self._cond.wait(timeout)
            return self._version, self._state

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
