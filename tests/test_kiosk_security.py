"""The kiosk page server and the watcher slots against a hostile browser or local process.

Real parts: the display API on port 0, the display process's page server on port 0, real
HTTP requests (http.client) as a foreign web page or a DNS-rebinding attacker would send.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from display_fakes import PIN, FakeControl, FakeDirectory

from core.errors import ConfigError
from edge.api.server import ApiServer, create_server
from edge.api.state import DisplayState
from edge.config import ApiConfig, DisplayConfig, config_from_dict
from edge.display.app import DisplayApp
from edge.session import events as ev
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc


class Rig:
    def __init__(self, tmp: Path, token: str = "") -> None:
        cfg = ApiConfig(listen="127.0.0.1:0", grace_s=0.2)
        self.state = DisplayState(FakeDirectory(), pin_tries=3, max_watchers=16,
                                  max_watchers_per_peer=cfg.max_watchers_per_peer)
        self.api: ApiServer = create_server(cfg, self.state, control=FakeControl())
        self.api.start()
        token_file = tmp / "display.token"
        if token:
            token_file.write_text(token)
            self.api.servicer.display_token = token.encode()
        self.display = DisplayApp(DisplayConfig(
            api=f"127.0.0.1:{self.api.port}", http_listen="127.0.0.1:0", reconnect_max_s=0.3,
            api_token_file=token_file), name="kiosk")
        self.display.start()
        self.host, self.port = self.display.web.server_address[:2]
        deadline = time.monotonic() + 10
        while not self.display.screen.get()[1].get("connected"):
            assert time.monotonic() < deadline, "the display never connected"
            time.sleep(0.02)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection(str(self.host), int(self.port), timeout=10)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(data) if ctype.startswith("application/json") else data
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed

    def close(self) -> None:
        self.display.close()
        self.api.stop(0.2)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def pin_body(sid: str = "s1") -> bytes:
    return json.dumps({"session_id": sid, "pin": PIN}).encode()


def test_a_cross_origin_text_plain_post_gets_nothing(rig: Rig) -> None:
    rig.state.on_event(ev.Matched("s1", citizen_id="c1", score=0.9, margin=0.5))
    # what <form enctype=text/plain> or fetch(no-cors) on evil.example sends
    status, _, data = rig.request("POST", "/api/pin", pin_body(), {
        "Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status in (403, 415) and "dossiers" not in data
    status, _, data = rig.request("POST", "/api/pin", pin_body(), {
        "Content-Type": "text/plain", "Origin": rig.origin})
    assert status == 415 and "dossiers" not in data
    # JSON from a foreign origin, or with no origin at all
    for origin in ("http://evil.example", "null", None):
        headers = {"Content-Type": "application/json"}
        if origin:
            headers["Origin"] = origin
        status, _, data = rig.request("POST", "/api/pin", pin_body(), headers)
        assert status == 403 and "dossiers" not in data, origin
    # a DNS-rebinding page: right address, foreign Host name
    status, _, data = rig.request("GET", "/state", headers={"Host": f"evil.example:{rig.port}"})
    assert status == 403
    status, _, data = rig.request("POST", "/api/pin", pin_body(), {
        "Content-Type": "application/json", "Host": f"evil.example:{rig.port}",
        "Origin": f"http://evil.example:{rig.port}"})
    assert status == 403 and "dossiers" not in data
    # the page itself still gets the details
    status, headers, data = rig.request("POST", "/api/pin", pin_body(), {
        "Content-Type": "application/json; charset=utf-8", "Origin": rig.origin})
    assert status == 200 and data["ok"] and data["dossiers"]
    assert headers["cache-control"] == "no-store"


def test_security_headers_on_the_page_and_the_api(rig: Rig) -> None:
    for path in ("/", "/static/app.js", "/state"):
        status, headers, _ = rig.request("GET", path)
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
    assert rig.request("GET", "/state")[1]["cache-control"] == "no-store"


def test_a_non_loopback_page_or_api_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="display.http_listen"):
        config_from_dict({"display": {"http_listen": "0.0.0.0:8080"}})
    with pytest.raises(ConfigError, match="display.http_listen"):
        config_from_dict({"display": {"http_listen": "127.attacker.example:8080"}})
    with pytest.raises(ConfigError, match="api.listen"):
        config_from_dict({"api": {"listen": "127.attacker.example:50051"}})
    for ok in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "127.0.0.2:0"):
        assert config_from_dict({"display": {"http_listen": ok}}).display.http_listen == ok


def test_a_local_process_cannot_take_every_watcher_slot_from_the_kiosk(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, token="t0ken-" + "x" * 40)
    streams: list[Any] = []
    refused = 0
    kiosk = None
    try:
        rig.display.close()  # the kiosk process goes away (a crash, an update) ...
        deadline = time.monotonic() + 10
        while rig.state.watcher_count:
            assert time.monotonic() < deadline, "the kiosk's stream never ended"
            time.sleep(0.02)
        with grpc.insecure_channel(f"127.0.0.1:{rig.api.port}") as ch:
            stub = pb_grpc.DisplayStub(ch)
            for i in range(20):  # ... and a local process grabs every slot it can
                s = stub.WatchSession(pb.WatchSessionRequest(client_name=f"hog{i}"),
                                      timeout=30)
                try:
                    next(s)
                    streams.append(s)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                    refused += 1
            print("local process served", len(streams), "refused", refused)
            assert len(streams) == ApiConfig().max_watchers_per_peer
            # the kiosk comes back and is served at once
            kiosk = DisplayApp(rig.display.cfg, name="kiosk")
            kiosk.start()
            rig.state.on_event(ev.NotRecognised("p1"))
            deadline = time.monotonic() + 10
            while kiosk.screen.get()[1].get("state") != "not_recognised":
                assert time.monotonic() < deadline, (
                    f"the kiosk was locked out: {kiosk.screen.get()[1]}")
                time.sleep(0.02)
            for s in streams:
                s.cancel()
    finally:
        if kiosk is not None:
            kiosk.close()
        rig.close()
