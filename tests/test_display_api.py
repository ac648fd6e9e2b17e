"""The gRPC display API on a real server (port 0) fed by typed session events.

The store and the session machine are unit-boundary fakes here (tests/display_fakes.py);
the end-to-end tests run the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from display_fakes import PIN, FakeControl, FakeDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.errors import ConfigError
from edge.api.masking import mask_code
from edge.api.server import SERVICE_NAME, ApiServer, create_server
from edge.api.state import DisplayState
from edge.config import ApiConfig, config_from_dict
from edge.session import events as ev
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc


def make_api(**overrides: object) -> tuple[ApiServer, FakeControl]:
    cfg = ApiConfig(**{"listen": "127.0.0.1:0", "grace_s": 0.5, **overrides})  # type: ignore[arg-type]
    state = DisplayState(
        FakeDirectory(),
        pin_tries=cfg.pin_tries,
        help_counter="5",
        max_watchers=cfg.max_watchers,
    )
    control = FakeControl()
    api = create_server(cfg, state, control=control)
    api.start()
    return api, control


@pytest.fixture
def api() -> Iterator[tuple[ApiServer, FakeControl, grpc.Channel]]:
    server, control = make_api()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, control, channel
    channel.close()
    server.stop(0.5)


def stub(channel: grpc.Channel) -> pb_grpc.DisplayStub:
    return pb_grpc.DisplayStub(channel)


def match_session(state: DisplayState, sid: str = "s1", citizen: str = "c1") -> None:
    state.on_event(ev.FacePresent(sid))
    state.on_event(ev.ChallengeIssued(sid, challenge=ev.Challenge.TURN_LEFT))
    state.on_event(ev.Matched(sid, citizen_id=citizen, score=0.8, margin=0.3))


def code_of(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined,no-any-return]


def test_mask_code_keeps_last_four_and_separators() -> None:
    assert mask_code("000.00.12.H29-240915-0042") == "***.**.**.***-******-0042"
    assert mask_code("AB12") == "AB12"
    assert mask_code("") == ""


def test_health_not_serving_until_store_loaded_then_serving(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.set_serving()
    for service in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_display_and_health(api) -> None:  # type: ignore[no-untyped-def]
    _, _, channel = api
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICE_NAME == "motcua.display.v1.Display"
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_stream_starts_with_current_state_and_follows_a_session(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    stream = stub(channel).WatchSession(pb.WatchSessionRequest(client_name="t"), timeout=10)
    first = next(stream)
    assert first.state == pb.SESSION_STATE_IDLE and first.camera_up
    state = server.state
    match_session(state)
    state.on_event(ev.Ended("s1", outcome=ev.Outcome.MATCHED))
    got = [next(stream) for _ in range(4)]
    stream.cancel()
    assert [m.state for m in got] == [
        pb.SESSION_STATE_FACE_PRESENT,
        pb.SESSION_STATE_CHALLENGE,
        pb.SESSION_STATE_MATCHED,
        pb.SESSION_STATE_ENDED,
    ]
    assert [m.seq for m in got] == list(range(got[0].seq, got[0].seq + 4))
    assert got[1].challenge.prompt_vi == "Xin quay đầu sang trái"
    m = got[2].match
    assert m.masked_name == "Nguyễn T. T***"
    assert [d.masked_code for d in m.dossiers] == [
        "***.**.**.***-******-0042",
        "***.**.**.***-******-0107",
    ]
    assert [d.status_label_vi for d in m.dossiers] == ["Đang giải quyết", "Đã có kết quả"]
    assert m.dossiers[0].stage == "Phòng Tài nguyên - Môi trường"
    assert m.dossiers[0].appointment_on == "2026-12-01"
    # the full code and the procedure are not on the stream without a PIN
    assert "H29" not in str(got[2]) and "quyền sử dụng" not in str(got[2])
    assert m.pin_available and m.pin_tries_left == 3
    assert got[2].session_id == "s1" and got[2].face_seen_unix_ms > 0
    assert got[3].reason == "matched" and got[3].can_rate


def test_a_screen_connecting_late_gets_the_current_state(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    match_session(server.state)
    stream = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
    first = next(stream)
    stream.cancel()
    assert first.state == pb.SESSION_STATE_MATCHED
    assert first.match.masked_name == "Nguyễn T. T***"


def test_not_recognised_and_failures_carry_the_help_counter(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    state = server.state
    stream = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
    next(stream)
    state.on_event(ev.NotRecognised("s2"))
    state.on_event(ev.LivenessFailed("s3", reason="flat"))
    state.on_event(ev.TimedOut("s4", stage="challenge"))
    # a match whose citizen was deleted meanwhile shows nobody
    state.on_event(ev.Matched("s5", citizen_id="gone", score=0.9, margin=0.5))
    got = [next(stream) for _ in range(4)]
    stream.cancel()
    assert [m.state for m in got] == [
        pb.SESSION_STATE_NOT_RECOGNISED,
        pb.SESSION_STATE_LIVENESS_FAILED,
        pb.SESSION_STATE_TIMED_OUT,
        pb.SESSION_STATE_NOT_RECOGNISED,
    ]
    assert all(m.help_counter == "5" for m in got)
    assert not got[3].HasField("match")


def test_many_display_clients_at_once_see_the_same_events() -> None:
    server, _ = make_api(max_watchers=24)
    n = 20
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(n)]
    results: list[list[int]] = [[] for _ in range(n)]
    ready = threading.Barrier(n + 1, timeout=20)

    def watch(i: int) -> None:
        stream = stub(channels[i]).WatchSession(pb.WatchSessionRequest(), timeout=30)
        results[i].append(next(stream).state)
        ready.wait()
        for msg in stream:
            results[i].append(msg.state)
            if msg.state == pb.SESSION_STATE_ENDED:
                stream.cancel()
                return

    threads = [threading.Thread(target=watch, args=(i,), name=f"w{i}") for i in range(n)]
    try:
        for t in threads:
            t.start()
        ready.wait()
        assert server.state.watcher_count == n
        match_session(server.state)
        server.state.on_event(ev.Ended("s1", outcome=ev.Outcome.LEFT))
        for t in threads:
            t.join(20)
        expected = [
            pb.SESSION_STATE_IDLE,
            pb.SESSION_STATE_FACE_PRESENT,
            pb.SESSION_STATE_CHALLENGE,
            pb.SESSION_STATE_MATCHED,
            pb.SESSION_STATE_ENDED,
        ]
        assert results == [expected] * n
        deadline = time.monotonic() + 5
        while server.state.watcher_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.state.watcher_count == 0  # cancelled streams are cleaned up
    finally:
        for c in channels:
            c.close()
        server.stop(0.5)


def test_watchers_past_the_limit_get_resource_exhausted() -> None:
    server, _ = make_api(max_watchers=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        s1 = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
        s2 = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
        next(s1), next(s2)
        s3 = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as exc:
            next(s3)
        assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        s1.cancel()
        deadline = time.monotonic() + 5
        while server.state.watcher_count > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        s4 = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
        assert next(s4).state == pb.SESSION_STATE_IDLE  # a freed slot is usable again
        s2.cancel(), s4.cancel()
    finally:
        channel.close()
        server.stop(0.5)


def test_pin_tries_are_limited_then_locked_for_the_session(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    s = stub(channel)
    match_session(server.state, "s1")
    # malformed PINs and wrong session ids are refused without using a try
    for bad in ("", "12", "abcd", "123456789", "12 34"):
        with pytest.raises(grpc.RpcError) as exc:
            s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=bad), timeout=5)
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="other", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    lefts = []
    for _ in range(3):
        r = s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin="0000"), timeout=5)
        assert not r.ok and not r.dossiers
        lefts.append((r.tries_left, r.locked))
    assert lefts == [(2, False), (1, False), (0, True)]
    # locked: even the right PIN is refused for this session
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a new session starts with fresh tries; the right PIN shows the full details
    server.state.on_event(ev.Ended("s1", outcome=ev.Outcome.MATCHED))
    match_session(server.state, "s2")
    r = s.SubmitPin(pb.SubmitPinRequest(session_id="s2", pin=PIN), timeout=5)
    assert r.ok and r.tries_left == 3
    assert [d.code for d in r.dossiers] == [
        "000.00.12.H29-240915-0042",
        "000.00.12.H29-241001-0107",
    ]
    assert r.dossiers[0].procedure == "Cấp giấy chứng nhận quyền sử dụng đất"
    assert r.dossiers[0].counter == "3"
    # once the session ends, its PIN no longer opens anything
    server.state.on_event(ev.Ended("s2", outcome=ev.Outcome.MATCHED))
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="s2", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION


def test_pin_for_a_citizen_without_pin_is_a_failed_precondition(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    match_session(server.state, "s9", citizen="c2")
    assert not server.state.current().match.pin_available
    with pytest.raises(grpc.RpcError) as exc:
        stub(channel).SubmitPin(pb.SubmitPinRequest(session_id="s9", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION


def test_parallel_pin_guesses_cannot_exceed_the_limit(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    match_session(server.state, "s1")
    s = stub(channel)
    outcomes: list[str] = []
    lock = threading.Lock()

    def guess(pin: str) -> None:
        try:
            r = s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=pin), timeout=10)
            res = "ok" if r.ok else "wrong"
        except grpc.RpcError as exc:
            res = exc.code().name  # type: ignore[attr-defined]
        with lock:
            outcomes.append(res)

    threads = [threading.Thread(target=guess, args=(f"{1000 + i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * 5 + ["wrong"] * 3


def test_expired_deadlines_get_deadline_exceeded_and_free_the_watcher(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    s = stub(channel)
    match_session(server.state, "s1")
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=PIN), timeout=0.000001)
    assert code_of(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    stream = s.WatchSession(pb.WatchSessionRequest(), timeout=0.5)
    with pytest.raises(grpc.RpcError) as exc:
        for _ in stream:
            pass
    assert code_of(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while server.state.watcher_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.state.watcher_count == 0
    # the expired call used no PIN try
    assert server.state.current().match.pin_tries_left == 3
    r = s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=PIN), timeout=5)
    assert r.ok and r.tries_left == 3


def test_not_me_and_rate_check_their_arguments(api) -> None:  # type: ignore[no-untyped-def]
    server, control, channel = api
    s = stub(channel)
    match_session(server.state, "s1")
    control.current.add("s1")
    for req, code in [
        (pb.RateRequest(session_id="s1", score=0), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RateRequest(session_id="s1", score=6), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RateRequest(session_id="", score=4), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RateRequest(session_id="nope", score=4), grpc.StatusCode.FAILED_PRECONDITION),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            s.Rate(req, timeout=5)
        assert code_of(exc) == code, req
    s.Rate(pb.RateRequest(session_id="s1", score=5), timeout=5)
    with pytest.raises(grpc.RpcError) as exc:  # one tap only
        s.Rate(pb.RateRequest(session_id="s1", score=1), timeout=5)
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert control.ratings == [("s1", 5)]
    with pytest.raises(grpc.RpcError) as exc:
        s.NotMe(pb.NotMeRequest(session_id=""), timeout=5)
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        s.NotMe(pb.NotMeRequest(session_id="old"), timeout=5)
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    s.NotMe(pb.NotMeRequest(session_id="s1"), timeout=5)
    assert control.not_mes == ["s1"]


def test_lookup_image_is_off_by_default() -> None:
    assert ApiConfig().lookup_image is False
    server, _ = make_api()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(grpc.RpcError) as exc:
            stub(channel).LookupImage(pb.LookupImageRequest(image=b"\xff\xd8junk"), timeout=5)
        assert code_of(exc) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
        server.stop(0.5)


def test_lookup_image_when_on_rejects_empty_and_oversized_images() -> None:
    server, _ = make_api(lookup_image=True, max_image_bytes=2048)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        s = stub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            s.LookupImage(pb.LookupImageRequest(image=b""), timeout=5)
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as exc:
            s.LookupImage(pb.LookupImageRequest(image=b"x" * 4096), timeout=5)
        assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # on, but no face pipeline attached to this server
        with pytest.raises(grpc.RpcError) as exc:
            s.LookupImage(pb.LookupImageRequest(image=b"x" * 100), timeout=5)
        assert code_of(exc) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
        server.stop(0.5)


def test_status_reports_watchers_uptime_and_session_state(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    match_session(server.state)
    st = stub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    assert st.session_state == pb.SESSION_STATE_MATCHED
    assert st.uptime_s >= 0 and st.version


def test_camera_down_is_on_every_message_until_it_comes_back(api) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = api
    stream = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
    next(stream)
    server.state.on_event(ev.CameraState("", up=False, error="unplugged"))
    down = next(stream)
    server.state.on_event(ev.CameraState("", up=True))
    up = next(stream)
    stream.cancel()
    assert down.state == pb.SESSION_STATE_IDLE and not down.camera_up
    assert up.camera_up


def test_stop_ends_open_streams_gracefully() -> None:
    server, _ = make_api()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=30)
    next(stream)
    t0 = time.monotonic()
    server.stop(2.0)
    with pytest.raises((grpc.RpcError, StopIteration)):
        next(stream)
    assert time.monotonic() - t0 < 10
    channel.close()


def test_api_config_refuses_a_network_address_without_tls() -> None:
    with pytest.raises(ConfigError, match="api.listen"):
        config_from_dict({"api": {"listen": "0.0.0.0:50051"}})
    with pytest.raises(ConfigError, match="api.tls_cert"):
        config_from_dict({"api": {"tls_cert": "/x.pem"}})
    with pytest.raises(ConfigError, match="api.pin_tries"):
        config_from_dict({"api": {"pin_tries": 0}})
    with pytest.raises(ConfigError, match="display.language"):
        config_from_dict({"display": {"language": "fr"}})


def test_relay_carries_bus_events_to_the_screens(api) -> None:  # type: ignore[no-untyped-def]
    from edge.api.relay import EventRelay
    from edge.session.events import EventBus

    server, _, channel = api
    bus = EventBus()
    stop = threading.Event()
    relay = EventRelay(bus, server.state, stop).start()
    try:
        stream = stub(channel).WatchSession(pb.WatchSessionRequest(), timeout=10)
        next(stream)
        bus.publish(ev.FacePresent("r1"))
        bus.publish(ev.Matched("r1", citizen_id="c1", score=0.9, margin=0.4))
        got = [next(stream), next(stream)]
        stream.cancel()
        assert [m.state for m in got] == [pb.SESSION_STATE_FACE_PRESENT,
                                          pb.SESSION_STATE_MATCHED]
        assert got[1].match.masked_name == "Nguyễn T. T***"
    finally:
        stop.set()
        relay.join(5)
    assert not relay.thread.is_alive()


def test_bad_watch_request_and_store_failure_get_status_codes(api) -> None:  # type: ignore[no-untyped-def]
    from core.errors import StoreError

    server, _, channel = api
    s = stub(channel)
    with pytest.raises(grpc.RpcError) as exc:
        next(s.WatchSession(pb.WatchSessionRequest(client_name="x" * 201), timeout=5))
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    match_session(server.state, "s1")
    directory = server.state._directory

    def broken(citizen_id: str) -> None:
        raise StoreError("the gallery store is closed")

    directory.citizen = broken  # type: ignore[method-assign]
    with pytest.raises(grpc.RpcError) as exc:
        s.SubmitPin(pb.SubmitPinRequest(session_id="s1", pin=PIN), timeout=5)
    assert code_of(exc) == grpc.StatusCode.UNAVAILABLE
    assert "closed" in exc.value.details()  # type: ignore[attr-defined]
