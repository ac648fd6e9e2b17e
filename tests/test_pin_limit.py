"""Wrong PINs are limited per citizen, across sessions and terminal restarts.

The attack of the issue: 120 wrong PINs over 40 sessions, then the right one. Run on the
real terminal service (real store in a state dir, real gRPC server on port 0, the real
audit log); the face pipeline is a boundary fake and the sessions are driven by feeding the
display the session machine's events.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest

from edge.api.attempts import AttemptLimiter, AttemptPolicy
from edge.config import ApiConfig, CameraConfig, Config, TerminalConfig
from edge.service import TerminalService, Vision
from edge.session import events as ev
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc
from sync.changes import CitizenUpsert
from sync.pin import hash_pin

PIN = "2468"
SALT = b"0123456789abcdef"


class NoFaces:
    def detect(self, image: np.ndarray) -> object:
        raise AssertionError("not used")

    def embed(self, image: np.ndarray, faces: object) -> np.ndarray:
        raise AssertionError("not used")


def terminal(state_dir: Path) -> TerminalService:
    faces = NoFaces()
    vision = Vision(detector=faces, embedder=faces, pack="fake", embedder_id="fake-4",  # type: ignore[arg-type]
                    dim=4, threshold=0.7)
    cfg = Config(terminal=TerminalConfig(id="t1", district="d", state_dir=state_dir),
                 camera=CameraConfig(source="unused"),
                 api=ApiConfig(listen="127.0.0.1:0"))
    service = TerminalService(cfg, vision)
    service.prepare_state()
    store, _ = service.open_store()
    if store.last_seq == 0:
        store.apply([CitizenUpsert(seq=1, citizen_id="c1", masked_name="Nguyễn T. T***",
                                   pin_hash=hash_pin(PIN, SALT), pin_salt=SALT,
                                   embeddings=np.eye(4, dtype=np.float32)[:1])], epoch=1)
    service.api.start()
    return service


def matched(service: TerminalService, sid: str) -> pb.SessionEvent:
    st = service.display_state
    st.on_event(ev.FacePresent(sid))
    st.on_event(ev.Matched(sid, citizen_id="c1", score=0.9, margin=0.5))
    return st.current()


def try_pin(stub: pb_grpc.DisplayStub, sid: str, pin: str) -> pb.SubmitPinResponse | str:
    try:
        return stub.SubmitPin(pb.SubmitPinRequest(session_id=sid, pin=pin), timeout=10)  # type: ignore[no-any-return]
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]


def test_120_wrong_pins_over_40_sessions_lock_the_citizen_even_across_a_restart(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    service = terminal(state)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.api.port}") as ch:
            stub = pb_grpc.DisplayStub(ch)
            checked = 0
            for n in range(40):
                sid = f"s{n}"
                matched(service, sid)
                for guess in ("0000", "1111", "2222"):
                    r = try_pin(stub, sid, guess)
                    if isinstance(r, pb.SubmitPinResponse):
                        assert not r.ok
                        checked += 1
                service.display_state.on_event(ev.Ended(sid, outcome=ev.Outcome.MATCHED))
            # only api.pin_max_failures of the 120 guesses were even checked
            assert checked == ApiConfig().pin_max_failures
            # the next match shows the lock, and the right PIN is refused
            shown = matched(service, "s40")
            assert shown.match.pin_locked_until_unix_ms > 0
            r = try_pin(stub, "s40", PIN)
            assert isinstance(r, str) and r.startswith("RESOURCE_EXHAUSTED"), r
            assert "locked until" in r
    finally:
        service.stop()
    # the lock was audited, once, with its end
    lines = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
    locks = [x for x in lines if x.get("outcome") == "pin_locked"]
    assert len(locks) == 1 and locks[0]["citizen_id"] == "c1" and locks[0]["locked_until"]
    # a terminal restart keeps the lock (the counter is in the state dir)
    service = terminal(state)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.api.port}") as ch:
            matched(service, "s41")
            r = try_pin(pb_grpc.DisplayStub(ch), "s41", PIN)
            assert isinstance(r, str) and r.startswith("RESOURCE_EXHAUSTED"), r
    finally:
        service.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_locks_escalates_resets_on_success_and_survives_reopening(
        tmp_path: Path) -> None:
    clock = Clock()
    locked: list[tuple[str, float]] = []
    policy = AttemptPolicy(max_failures=3, lockout_s=60, lockout_max_s=200)
    path = tmp_path / "attempts.sqlite"
    lim = AttemptLimiter(path, policy, clock=clock,
                         on_lock=lambda subject, v: locked.append((subject, v.locked_until)))
    assert lim.check("c1").failures_left == 3
    assert [lim.attempt("c1", lambda: False).failures_left for _ in range(3)] == [2, 1, 0]
    v = lim.check("c1")
    assert not v.allowed and v.locked_until == clock.now + 60
    assert locked == [("c1", clock.now + 60)]
    # while locked the secret is not even checked
    assert not lim.attempt("c1", lambda: pytest.fail("checked while locked")).allowed  # type: ignore[func-returns-value]
    assert lim.check("c2").allowed  # per subject
    lim.close()
    # reopened (a restart): still locked; after the lock, a fresh budget; the next lock is
    # twice as long, then capped
    lim = AttemptLimiter(path, policy, clock=clock)
    assert not lim.check("c1").allowed
    clock.now += 60
    assert lim.check("c1").allowed
    for _ in range(3):
        lim.attempt("c1", lambda: False)
    assert lim.check("c1").locked_until == clock.now + 120
    clock.now += 120
    for _ in range(3):
        lim.attempt("c1", lambda: False)
    assert lim.check("c1").locked_until == clock.now + 200
    clock.now += 200
    # success clears everything
    assert lim.attempt("c1", lambda: True).ok
    assert lim.check("c1").failures_left == 3
    # deleted citizens are forgotten
    lim.attempt("gone", lambda: False)
    assert lim.forget(keep=lambda subject: subject != "gone") == 1
    lim.close()
    rows = sqlite3.connect(path).execute("SELECT subject FROM attempts").fetchall()
    assert rows == []
