"""The confirmation step of an uncertain match, from the decision to the gRPC API.

Real parts: the decision, the session machine, the per-citizen attempt counter (SQLite in
tmp), the date-of-birth KDF, DisplayState and a gRPC server on port 0. Stand-ins only at
the pipeline boundary (scripted detector, fixed embedder, a list gallery) and the store
boundary (a dict of citizen records with real hashes); the store itself is covered by
tests/test_sync_confirm_dob.py through the real broker.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from display_fakes import SALT, Citizen, FakeDirectory

from core.errors import ConfigError
from edge.api.attempts import AttemptLimiter, AttemptPolicy
from edge.api.confirm import DobConfirmer
from edge.api.server import ApiServer, create_server
from edge.api.state import DisplayState
from edge.camera.base import Frame
from edge.config import ApiConfig, SessionConfig, config_from_dict
from edge.session.audit import AuditLog
from edge.session.decision import Decision, OperatingPoint, Verdict, classify, decide
from edge.session.events import (
    ConfirmAsked,
    ConfirmStatus,
    EventBus,
    Matched,
    NotRecognised,
    Outcome,
    SessionEvent,
)
from edge.session.loop import FrameLoop
from edge.session.machine import SessionMachine, State
from edge.session.tracker import Tracker
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc
from sync.pin import hash_dob, hash_dob_id4, hash_pin, valid_dob, verify_dob
from tests.test_session_machine import (
    FPS,
    FixedEmbedder,
    ListGallery,
    ScriptedDetector,
    head,
    photo,  # noqa: F401  (fixture)
    unit,
)


@dataclasses.dataclass
class M:
    citizen_id: str
    score: float


# -- the decision ------------------------------------------------------------------------

POINT = OperatingPoint(0.6, 0.08, "test", confirm_threshold=0.35)


def test_three_way_decision() -> None:
    sure = classify([M("a", 0.7), M("b", 0.3)], POINT, 3)
    assert sure.verdict is Verdict.SURE and sure.citizen_id == "a" and not sure.candidates
    unsure = classify([M("a", 0.5), M("b", 0.4), M("c", 0.2)], POINT, 3)
    assert unsure.verdict is Verdict.CONFIRM and unsure.citizen_id == ""
    assert unsure.candidates == ("a", "b")  # c is below confirm_threshold
    assert unsure.candidate_scores == pytest.approx((0.5, 0.4))
    # above the threshold but too close to a look-alike: both are asked, no one is sure
    twins = classify([M("a", 0.7), M("b", 0.68)], POINT, 3)
    assert twins.verdict is Verdict.CONFIRM and twins.candidates == ("a", "b")
    no = classify([M("a", 0.3), M("b", 0.1)], POINT, 3)
    assert no.verdict is Verdict.NO and no.candidates == ()
    assert classify([], POINT, 3).verdict is Verdict.NO


def test_candidates_are_distinct_citizens_capped() -> None:
    matches = [M("a", 0.55), M("a", 0.5), M("b", 0.5), M("c", 0.45), M("d", 0.44),
               M("e", 0.43)]
    d = classify(matches, POINT, 3)
    assert d.candidates == ("a", "b", "c")
    assert classify(matches, POINT, 1).candidates == ("a",)


def test_confirmation_is_off_by_default_and_decide_unchanged() -> None:
    off = OperatingPoint(0.6, 0.08, "test")
    assert not off.confirm_on and classify([M("a", 0.5)], off, 3) == decide([M("a", 0.5)],
                                                                           0.6, 0.08)
    assert classify([M("a", 0.5)], off, 3).verdict is Verdict.NO
    # a confirm threshold at or above the match threshold is off too
    assert not OperatingPoint(0.6, 0.08, "t", confirm_threshold=0.6).confirm_on
    assert SessionConfig().confirm_threshold == 0.0
    assert decide([M("a", 0.7)], 0.6, 0.08) == Decision("a", 0.7, 0.7, Verdict.SURE)
    with pytest.raises(ConfigError, match="confirm_threshold"):
        config_from_dict({"session": {"confirm_threshold": 1.5}})
    with pytest.raises(ConfigError, match="confirm_candidates"):
        config_from_dict({"session": {"confirm_candidates": 0}})
    cfg = config_from_dict({"session": {"confirm_threshold": 0.3}})
    assert cfg.session.confirm_threshold == 0.3 and cfg.session.confirm_candidates == 3


def test_date_of_birth_shape_and_hash() -> None:
    assert valid_dob("29021988") and valid_dob("01011900")
    for bad in ("2902198", "290219888", "30021988", "0101180a", "00011990", "01131990",
                "01011899", "", "１２０３１９８５"):
        assert not valid_dob(bad), bad
    h = hash_dob("12031985", SALT)
    assert verify_dob("12031985", h, SALT) and not verify_dob("13031985", h, SALT)
    assert h != hash_pin("12031985", SALT[::-1])
    assert not verify_dob("12031985", b"", b"")  # no date on record


# -- per-citizen counting over several candidates -----------------------------------------

def test_a_wrong_answer_counts_on_every_candidate_and_shares_the_pin_budget(tmp_path) -> None:
    now = [1000.0]
    lim = AttemptLimiter(tmp_path / "attempts.sqlite", AttemptPolicy(max_failures=3),
                         clock=lambda: now[0])
    right, v = lim.attempt_any(["a", "b", "c"], lambda s: False)
    assert right == [] and {s: x.failures_left for s, x in v.items()} == {"a": 2, "b": 2,
                                                                           "c": 2}
    lim.attempt("a", lambda: False)  # a wrong PIN for a: the same budget
    right, v = lim.attempt_any(["a", "b", "c"], lambda s: False)
    assert v["a"].just_locked and v["b"].allowed and v["b"].failures_left == 1
    seen: list[str] = []
    right, v = lim.attempt_any(["a", "b", "c"], lambda s: seen.append(s) or s == "c")
    assert seen == ["b", "c"]  # the locked one is not checked at all
    assert right == ["c"] and v["c"].ok and v["b"].failures_left == 1  # b untouched
    assert lim.check("c").failures_left == 3  # cleared
    lim.close()
    again = AttemptLimiter(tmp_path / "attempts.sqlite", AttemptPolicy(max_failures=3),
                           clock=lambda: now[0])
    assert not again.check("a").allowed  # kept across a restart
    again.close()


# -- the session machine ------------------------------------------------------------------

ALICE_DOB, BOB_DOB, CARO_DOB = "12031985", "01021990", "24121979"
RNG = np.random.default_rng(7)


def _near(v: np.ndarray, cos: float) -> np.ndarray:
    other = unit(RNG.normal(size=v.shape[0]))
    other = unit(other - (other @ v) * v)
    return unit(cos * v + np.sqrt(1 - cos * cos) * other)


def people() -> dict[str, np.ndarray]:
    base = unit(RNG.normal(size=128))
    # three look-alikes around "base": a face at base scores ~0.5 against each
    return {"alice": _near(base, 0.52), "bob": _near(base, 0.5), "caro": _near(base, 0.48),
            "dan": unit(RNG.normal(size=128))}


class Directory(FakeDirectory):
    """``id4s``: the last 4 digits of the personal number of the citizens whose hash
    covers them (date of birth + 4 digits)."""

    def __init__(self, dobs: dict[str, str], id4s: dict[str, str] | None = None) -> None:
        super().__init__()
        for cid, dob in dobs.items():
            salt = (cid * 16)[:16].encode()
            id4 = (id4s or {}).get(cid, "")
            if dob and id4:
                self.citizens[cid] = dataclasses.replace(
                    Citizen(f"{cid.title()} ***", b"", b"", hash_dob_id4(dob, id4, salt), salt),
                    dob_id4=True)
                continue
            self.citizens[cid] = Citizen(f"{cid.title()} ***", b"", b"",
                                         hash_dob(dob, salt) if dob else b"", salt)


def machine_setup(tmp_path: Path, photo_img: np.ndarray, *, dobs: dict[str, str] | None = None,
                  max_failures: int = 5, id4s: dict[str, str] | None = None, **cfg_kw: object):
    tmp_path.mkdir(parents=True, exist_ok=True)
    gal = people()
    base_dobs = {"alice": ALICE_DOB, "bob": BOB_DOB, "caro": CARO_DOB, "dan": ""}
    directory = Directory(base_dobs if dobs is None else dobs, id4s)
    limiter = AttemptLimiter(tmp_path / "attempts.sqlite",
                             AttemptPolicy(max_failures=max_failures))
    kw = {"liveness": "off", "confirm_threshold": 0.35, "result_s": 3.0, "message_s": 2.0,
          **cfg_kw}
    cfg = SessionConfig(**kw)  # type: ignore[arg-type]
    bus = EventBus()
    events: list[SessionEvent] = []
    bus.add_listener(events.append)
    audit = AuditLog.in_state_dir(tmp_path)
    face = unit(sum(gal[c] for c in ("alice", "bob", "caro")))  # ~0.8 to each: not sure
    machine = SessionMachine(cfg, embedder=FixedEmbedder(face), gallery=ListGallery(gal),
                             threshold=0.9, bus=bus, audit=audit, terminal_id="t1",
                             rng=random.Random(0), confirmer=DobConfirmer(directory, limiter))
    loop = FrameLoop(detector=ScriptedDetector([head(photo_img)] * 2000), machine=machine,
                     tracker=Tracker(lost_s=cfg.lost_s), bus=bus)
    return loop, machine, events, audit, limiter, directory


def play(loop: FrameLoop, img: np.ndarray, n: int, start: int = 0) -> int:
    for i in range(start, start + n):
        loop.step(Frame(image=img, t=i / FPS, index=i))
    return start + n


def test_session_asks_then_a_right_date_shows_the_match(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, audit, limiter, _ = machine_setup(tmp_path, photo)
    i = play(loop, photo, 10)
    assert machine.state is State.CONFIRM
    asked = [e for e in events if isinstance(e, ConfirmAsked)]
    assert len(asked) == 1 and asked[0].tries_left == 3
    assert "alice" not in repr(asked[0]) and "bob" not in repr(asked[0])  # nothing leaks
    assert asked[0].prompt_vi == "Vui lòng nhập ngày sinh (ngày/tháng/năm) để xác nhận"
    assert set(machine.session.candidates) == {"alice", "bob", "caro"}
    assert not machine.session.embeddings  # only the person-change reference is kept
    assert machine.confirm("other-session", BOB_DOB).status is ConfirmStatus.NO_SESSION
    sid = asked[0].session_id
    wrong = machine.confirm(sid, "02021990")
    assert wrong.status is ConfirmStatus.WRONG and wrong.tries_left == 2
    for cid in ("alice", "bob", "caro"):  # counted on every candidate
        assert limiter.check(cid).failures_left == 4
    ok = machine.confirm(sid, BOB_DOB)
    assert ok.status is ConfirmStatus.CONFIRMED
    m = [e for e in events if isinstance(e, Matched)]
    assert len(m) == 1 and m[0].citizen_id == "bob" and m[0].session_id == sid
    assert machine.state is State.SHOWING
    assert limiter.check("bob").failures_left == 5  # a right answer clears bob
    assert limiter.check("alice").failures_left == 4  # not the others
    play(loop, photo, 60, start=i)
    assert machine.state is State.IDLE and not machine.holds_face_data()
    line = audit.read()[0]
    assert line["outcome"] == "matched_confirmed" and line["citizen_id"] == "bob"
    assert machine.outcome_counts() == {"matched_confirmed": 1}


def test_wrong_dates_end_the_session_and_lock_the_candidates(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, audit, limiter, _ = machine_setup(tmp_path, photo, max_failures=4)
    play(loop, photo, 10)
    sid = machine.session.id
    assert machine.confirm(sid, "01011950").status is ConfirmStatus.WRONG
    assert machine.confirm(sid, "01011951").status is ConfirmStatus.WRONG
    end = machine.confirm(sid, "01011952")
    assert end.status is ConfirmStatus.ENDED and machine.state is State.SHOWING
    nr = [e for e in events if isinstance(e, NotRecognised)]
    assert nr[-1].reason == "confirm_failed"
    assert audit.read()[0]["outcome"] == "not_recognised"
    assert not machine.holds_face_data() and machine.session.candidates == ()
    assert machine.confirm(sid, ALICE_DOB).status is ConfirmStatus.NO_SESSION  # over
    # the next session: one wrong date locks all three (4 per citizen), the right one is
    # refused afterwards: the stranger got 4 tries in all, not 12
    i = play(loop, photo, 200, start=10)
    assert machine.state is State.CONFIRM and machine.session.id != sid
    end = machine.confirm(machine.session.id, "01011953")
    assert end.status is ConfirmStatus.ENDED
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == "confirm_locked"
    assert all(not limiter.check(c).allowed for c in ("alice", "bob", "caro"))
    # locked candidates are not asked any more: the next session says "not recognised"
    play(loop, photo, 200, start=i)
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == ""
    assert sum(isinstance(e, ConfirmAsked) for e in events) == 4  # 3 + 1, no more


def test_timeout_cancel_and_no_dob_are_not_recognised(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, _, _, _ = machine_setup(tmp_path, photo, confirm_timeout_s=5.0)
    play(loop, photo, 10)
    assert machine.state is State.CONFIRM
    play(loop, photo, 80, start=10)  # 5.3 s
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == "confirm_timeout"
    loop, machine, events, _, _, _ = machine_setup(tmp_path / "b", photo)
    play(loop, photo, 10)
    assert not machine.cancel_confirmation("nope")
    assert machine.cancel_confirmation(machine.session.id)
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == "confirm_cancelled"
    assert not machine.holds_face_data()
    # nobody with a date of birth on record: no question, plain "not recognised"
    loop, machine, events, _, _, _ = machine_setup(tmp_path / "c", photo, dobs={})
    play(loop, photo, 10)
    assert not any(isinstance(e, ConfirmAsked) for e in events)
    assert [e.kind for e in events if isinstance(e, NotRecognised)] == ["not_recognised"]
    # the step is off by default: same face, no question
    loop, machine, events, _, _, _ = machine_setup(tmp_path / "d", photo,
                                                   confirm_threshold=0.0)
    play(loop, photo, 10)
    assert not any(isinstance(e, ConfirmAsked) for e in events)


def test_twins_with_one_date_see_nothing(tmp_path, photo) -> None:  # noqa: F811
    dobs = {"alice": ALICE_DOB, "bob": ALICE_DOB, "caro": CARO_DOB}
    loop, machine, events, _, _, _ = machine_setup(tmp_path, photo, dobs=dobs)
    play(loop, photo, 10)
    assert machine.confirm(machine.session.id, ALICE_DOB).status is ConfirmStatus.ENDED
    assert not any(isinstance(e, Matched) for e in events)
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == \
        "confirm_ambiguous"


def test_another_face_during_confirmation_ends_it(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, _, _, _ = machine_setup(tmp_path, photo)
    i = play(loop, photo, 10)
    assert machine.state is State.CONFIRM
    machine.embedder.vector = unit(RNG.normal(size=128))  # someone else steps in
    play(loop, photo, 20, start=i)
    assert [e for e in events if isinstance(e, NotRecognised)][-1].reason == "face_changed"
    assert Outcome.MATCHED.value not in machine.outcome_counts()


# -- the gRPC API ---------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path, photo) -> Iterator[tuple]:  # noqa: F811
    loop, machine, events, audit, limiter, directory = machine_setup(tmp_path, photo)
    state = DisplayState(directory, pin_tries=3, help_counter="5", pin_limiter=limiter)
    machine.bus.add_listener(state.on_event)
    api: ApiServer = create_server(ApiConfig(listen="127.0.0.1:0", grace_s=0.5), state,
                                   control=machine)
    api.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{api.port}")
    yield loop, machine, state, limiter, pb_grpc.DisplayStub(channel), directory
    channel.close()
    api.stop(0.5)


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined,no-any-return]


def test_grpc_right_answer_turns_the_screen_to_matched(served, photo) -> None:  # noqa: F811
    loop, machine, state, limiter, stub, _ = served
    play(loop, photo, 10)
    screen = state.current()
    assert screen.state == pb.SESSION_STATE_CONFIRM
    c = screen.confirmation
    assert c.prompt_vi.startswith("Vui lòng nhập ngày sinh") and c.tries_left == 3
    # the screen state carries nothing about the candidates
    assert not screen.HasField("match") and b"Alice" not in screen.SerializeToString()
    assert b"alice" not in screen.SerializeToString()
    sid = screen.session_id
    r = stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid,
                                                             answer="11111990"), timeout=10)
    assert not r.ok and r.tries_left == 2 and not r.ended
    assert state.current().confirmation.wrong and state.current().confirmation.tries_left == 2
    r = stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid,
                                                             answer=CARO_DOB), timeout=10)
    assert r.ok
    screen = state.current()
    assert screen.state == pb.SESSION_STATE_MATCHED and screen.session_id == sid
    assert screen.match.masked_name == "Caro ***" and screen.can_rate
    with pytest.raises(grpc.RpcError) as exc:  # no longer waiting for an answer
        stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid,
                                                             answer=CARO_DOB), timeout=10)
    assert _code(exc) is grpc.StatusCode.FAILED_PRECONDITION


def test_grpc_bad_answers_are_rejected_and_count_nothing(served, photo) -> None:  # noqa: F811
    loop, machine, state, limiter, stub, _ = served
    play(loop, photo, 10)
    sid = state.current().session_id
    for sess, answer in ((sid, "1203198"), (sid, "120319855"), (sid, "31021990"),
                         (sid, "12-03-85"), (sid, ""), (sid, "٠١٠٢١٩٩٠"), ("", ALICE_DOB)):
        with pytest.raises(grpc.RpcError) as exc:
            stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sess,
                                                                 answer=answer), timeout=10)
        assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT, answer
    assert limiter.check("alice").failures_left == 5
    assert state.current().state == pb.SESSION_STATE_CONFIRM
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id="other",
                                                             answer=ALICE_DOB), timeout=10)
    assert _code(exc) is grpc.StatusCode.FAILED_PRECONDITION
    stub.CancelConfirmation(pb.CancelConfirmationRequest(session_id=sid), timeout=10)
    screen = state.current()
    assert screen.state == pb.SESSION_STATE_NOT_RECOGNISED
    assert screen.reason == "confirm_cancelled" and screen.help_counter == "5"


def test_grpc_limit_is_shared_with_the_pin_and_counted_on_every_candidate(
        served, photo) -> None:  # noqa: F811
    loop, machine, state, limiter, stub, directory = served
    # two wrong PINs for bob earlier (another session): the same budget of 5
    for _ in range(2):
        limiter.attempt("bob", lambda: False)
    play(loop, photo, 10)
    sid = state.current().session_id
    for answer in ("01011950", "01011951"):
        r = stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid,
                                                                 answer=answer), timeout=10)
        assert not r.ok and not r.ended
    assert limiter.check("alice").failures_left == 3 and limiter.check("caro").failures_left == 3
    assert limiter.check("bob").failures_left == 1
    r = stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid,
                                                             answer="01011952"), timeout=10)
    assert r.ended and state.current().reason == "confirm_failed"
    assert limiter.check("bob").failures_left == 0 and not limiter.check("bob").allowed
    # a new session: bob is locked, so even bob's right date no longer shows bob
    play(loop, photo, 200, start=10)
    assert state.current().state == pb.SESSION_STATE_CONFIRM
    sid = state.current().session_id
    assert set(machine.session.candidates) == {"alice", "caro"}
    r = stub.SubmitConfirmation(pb.SubmitConfirmationRequest(session_id=sid, answer=BOB_DOB),
                                timeout=10)
    assert not r.ok
    # and bob's PIN is locked too: one budget for both secrets
    assert not limiter.check("bob").allowed


# -- date of birth + the last 4 digits of the personal number ----------------------------

ALICE_ID4, BOB_ID4 = "4321", "0707"


def test_grpc_asks_the_four_digits_and_checks_the_mix_per_citizen(tmp_path, photo) -> None:  # noqa: F811
    """alice and bob have the 4 digits on record, caro only her date of birth."""
    loop, machine, events, audit, limiter, directory = machine_setup(
        tmp_path, photo, id4s={"alice": ALICE_ID4, "bob": BOB_ID4})
    state = DisplayState(directory, pin_tries=3, help_counter="5", pin_limiter=limiter)
    machine.bus.add_listener(state.on_event)
    api: ApiServer = create_server(ApiConfig(listen="127.0.0.1:0", grace_s=0.5), state,
                                   control=machine)
    api.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{api.port}")
    stub = pb_grpc.DisplayStub(channel)
    try:
        play(loop, photo, 10)
        screen = state.current()
        c = screen.confirmation
        assert screen.state == pb.SESSION_STATE_CONFIRM and c.ask_id4
        assert c.id4_prompt_vi.startswith("Vui lòng nhập 4 số cuối")
        assert "last 4 digits" in c.id4_prompt_en
        assert b"alice" not in screen.SerializeToString()
        sid = screen.session_id

        def submit(answer: str) -> pb.SubmitConfirmationResponse:
            return stub.SubmitConfirmation(pb.SubmitConfirmationRequest(
                session_id=sid, answer=answer), timeout=10)

        # the date alone is refused as malformed when the 4 digits were asked: no try
        for bad in (ALICE_DOB, ALICE_DOB + "123", ALICE_DOB + "12345", "31021990" + "1234"):
            with pytest.raises(grpc.RpcError) as exc:
                submit(bad)
            assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT, bad
        assert limiter.check("alice").failures_left == 5
        # alice's date with bob's digits, then her digits with a wrong date: both wrong,
        # each counted once on every candidate
        r = submit(ALICE_DOB + BOB_ID4)
        assert not r.ok and r.tries_left == 2
        r = submit("13031985" + ALICE_ID4)
        assert not r.ok and r.tries_left == 1
        for cid in ("alice", "bob", "caro"):
            assert limiter.check(cid).failures_left == 3
        r = submit(ALICE_DOB + ALICE_ID4)
        assert r.ok
        assert state.current().match.masked_name == "Alice ***"
        assert limiter.check("alice").failures_left == 5  # a right answer clears her
        assert limiter.check("bob").failures_left == 3
    finally:
        channel.close()
        api.stop(0.5)


def test_a_date_only_candidate_still_confirms_with_its_date(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, audit, limiter, _ = machine_setup(
        tmp_path, photo, id4s={"alice": ALICE_ID4})
    play(loop, photo, 10)
    asked = [e for e in events if isinstance(e, ConfirmAsked)]
    assert asked and asked[-1].ask_id4
    # caro has no number on record: her date, whatever the 4 digits, confirms her
    reply = machine.confirm(asked[-1].session_id, CARO_DOB + "0000")
    assert reply.status is ConfirmStatus.CONFIRMED
    assert [e.citizen_id for e in events if isinstance(e, Matched)] == ["caro"]


def test_no_four_digits_asked_when_no_candidate_has_them(tmp_path, photo) -> None:  # noqa: F811
    loop, machine, events, *_ = machine_setup(tmp_path, photo)
    play(loop, photo, 10)
    asked = [e for e in events if isinstance(e, ConfirmAsked)]
    assert asked and not asked[-1].ask_id4 and asked[-1].id4_prompt_en == ""
