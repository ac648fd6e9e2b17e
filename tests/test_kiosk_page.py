"""The kiosk page in headless Debian chromium, fed by a real display API server.

Chain under test: session events -> DisplayState -> gRPC server (port 0) -> display client
process parts (TerminalLink + page server) -> SSE -> chromium renders. Each state is checked
for its Vietnamese text and a screenshot is written to tests/artifacts/kiosk_*.png.
The store and session machine are unit-boundary fakes (tests/display_fakes.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from display_fakes import PIN, FakeControl, FakeDirectory
from selenium import webdriver
from selenium.webdriver.common.by import By

from edge.api.server import ApiServer, create_server
from edge.api.state import DisplayState
from edge.config import ApiConfig, DisplayConfig
from edge.display.app import DisplayApp
from edge.session import events as ev
from tests.broker import PortReservation
from tests.chromium import assert_no_csp_violation, chromium
from tests.chromium import body_text as text
from tests.chromium import wait_page as wait_for

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def start_api(port: int = 0) -> tuple[ApiServer, FakeControl]:
    cfg = ApiConfig(listen=f"127.0.0.1:{port}", grace_s=0.2)
    state = DisplayState(FakeDirectory(), pin_tries=3, help_counter="5", max_watchers=8)
    control = FakeControl()
    api = create_server(cfg, state, control=control)
    api.start()
    api.set_serving()
    return api, control


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        # the kiosk screen is 1280x800: make that the page's viewport, not the window's
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                                "mobile": False})
        yield driver


class Rig:
    def __init__(self) -> None:
        # restart_api() binds the same port again: a port from bind(0) would be back in
        # the kernel's pool meanwhile, for any process to take; a reserved one is not
        self._reserved = PortReservation()
        self.api, self.control = start_api(self._reserved.port)
        self.port = self.api.port
        cfg = DisplayConfig(api=f"127.0.0.1:{self.port}", http_listen="127.0.0.1:0",
                            reconnect_max_s=0.5)
        self.display = DisplayApp(cfg, name="test-kiosk")
        self.display.start()

    @property
    def state(self) -> DisplayState:
        return self.api.state

    def restart_api(self) -> None:
        self.api.stop(0.2)
        deadline = time.monotonic() + 10
        while True:  # the port is free again once the old server is gone
            try:
                self.api, self.control = start_api(self.port)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.display.close()
        self.api.stop(0.2)
        self._reserved.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def shows_state(driver: webdriver.Chrome, state: str, session: str | None = None) -> None:
    def ok(d: webdriver.Chrome) -> bool:
        el = d.find_element(By.ID, "screen")
        return el.get_attribute("data-state") == state and (
            session is None or el.get_attribute("data-session") == session
        )

    wait_for(driver, ok, f"state {state}")


def shot(driver: webdriver.Chrome, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"kiosk_{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000


def test_each_session_state_in_vietnamese(browser: webdriver.Chrome, rig: Rig) -> None:
    browser.get(rig.display.url)
    assert browser.execute_script("return document.characterSet") == "UTF-8"
    shows_state(browser, "idle")
    assert "Tra cứu hồ sơ bằng khuôn mặt" in text(browser)
    assert "Nhìn thẳng vào camera phía trên màn hình." in text(browser)
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi"
    shot(browser, "01_idle")

    rig.state.on_event(ev.FacePresent("s1", hint=ev.Hint.TOO_SMALL))
    shows_state(browser, "face_present")
    assert "Đang nhận diện" in text(browser) and "Xin tiến lại gần hơn." in text(browser)
    shot(browser, "02_face_present")

    rig.state.on_event(ev.ChallengeIssued("s1", challenge=ev.Challenge.TURN_LEFT, progress=0.4))
    shows_state(browser, "challenge")
    assert "Xin quay đầu sang trái" in text(browser)
    assert "Xác minh người thật" in text(browser)
    # the progress bar is drawn under the page's strict CSP (no inline style attribute)
    bar = browser.find_element(By.CSS_SELECTOR, ".progress .bar")
    assert bar.get_attribute("style") == "width: 40%;"
    assert bar.size["width"] > 0
    assert_no_csp_violation(browser)
    shot(browser, "03_challenge")

    rig.state.on_event(ev.Matched("s1", citizen_id="c1", score=0.8, margin=0.3))
    shows_state(browser, "matched")
    body = text(browser)
    assert "Xin chào, Nguyễn T. T***" in body
    assert "***.**.**.***-******-0042" in body and "***.**.**.***-******-0107" in body
    assert "Đang giải quyết" in body and "Đã có kết quả" in body
    assert "Phòng Tài nguyên - Môi trường" in body
    assert "01/12/2026" in body and "02/11/2026" in body
    assert "H29" not in body and "quyền sử dụng" not in body  # masked until PIN
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    colours = {c.get_attribute("class"): c.value_of_css_property("border-left-color")
               for c in cards}
    assert len(set(colours.values())) == 2, colours  # one colour per status
    assert "Không phải tôi" in body and "Xem chi tiết (mã PIN)" in body
    shot(browser, "04_matched")

    # the PIN pad: a wrong PIN is counted, the right one shows the full details
    browser.find_element(By.ID, "btn-pin").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "pinpad").is_displayed(), "PIN pad")
    shot(browser, "05_pin_pad")

    def enter(pin: str) -> None:
        for digit in pin:
            browser.find_element(By.CSS_SELECTOR, f'.key[data-key="{digit}"]').click()
        browser.find_element(By.CSS_SELECTOR, '.key[data-key="ok"]').click()

    enter("1111")
    wait_for(browser, lambda d: "Còn 2 lần thử" in d.find_element(By.ID, "pin-msg").text,
             "wrong PIN message")
    shot(browser, "06_pin_wrong")
    enter(PIN)
    wait_for(browser, lambda d: "000.00.12.H29-240915-0042" in text(d), "full details")
    assert "Cấp giấy chứng nhận quyền sử dụng đất" in text(browser)
    assert "Quầy trả kết quả: 3" in text(browser)
    assert "Chi tiết hồ sơ" in text(browser)
    shot(browser, "07_pin_details")
    browser.find_element(By.ID, "pin-close").click()

    # rating: one tap reaches the terminal
    rig.control.current.add("s1")
    rig.state.on_event(ev.Ended("s1", outcome=ev.Outcome.MATCHED))
    shows_state(browser, "ended")
    assert "Cảm ơn quý khách!" in text(browser)
    assert "Quý khách đánh giá dịch vụ thế nào?" in text(browser)
    shot(browser, "08_ended_rate")
    browser.find_element(By.CSS_SELECTOR, '.star[data-score="5"]').click()
    wait_for(browser, lambda d: "Cảm ơn quý khách đã đánh giá!" in text(d), "rating thanks")
    assert rig.control.ratings == [("s1", 5)]
    shot(browser, "09_rated")

    rig.state.on_event(ev.Idle(""))
    shows_state(browser, "idle")
    assert "Nguyễn" not in text(browser)  # cleared at the end of the session

    rig.state.on_event(ev.NotRecognised("s2"))
    shows_state(browser, "not_recognised")
    assert "Không nhận diện được" in text(browser)
    assert "Xin vui lòng đến quầy số 5 để được hỗ trợ." in text(browser)
    shot(browser, "10_not_recognised")

    rig.state.on_event(ev.LivenessFailed("s3", reason="flat"))
    shows_state(browser, "liveness_failed")
    assert "Chưa xác minh được" in text(browser) and "quầy số 5" in text(browser)
    shot(browser, "11_liveness_failed")

    rig.state.on_event(ev.TimedOut("s4", stage="quality"))
    shows_state(browser, "timed_out")
    assert "Đã hết thời gian" in text(browser)
    shot(browser, "12_timed_out")

    rig.state.on_event(ev.CameraState("", up=False, error="unplugged"))
    wait_for(browser, lambda d: d.find_element(By.ID, "banner").is_displayed(), "camera banner")
    assert "Camera đang gặp sự cố" in text(browser)
    shot(browser, "13_camera_down")
    rig.state.on_event(ev.CameraState("", up=True))
    wait_for(browser, lambda d: not d.find_element(By.ID, "banner").is_displayed(),
             "banner gone")


def test_not_me_button_and_english(browser: webdriver.Chrome, rig: Rig) -> None:
    rig.state.on_event(ev.FacePresent("s7"))
    rig.state.on_event(ev.Matched("s7", citizen_id="c1", score=0.8, margin=0.3))
    browser.get(rig.display.url + "?lang=en")
    shows_state(browser, "matched")
    body = text(browser)
    assert "Hello, Nguyễn T. T***" in body and "In progress" in body and "Result ready" in body
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    shot(browser, "14_matched_english")
    browser.find_element(By.ID, "lang").click()  # switch back to Vietnamese on the spot
    wait_for(browser, lambda d: "Xin chào" in text(d), "Vietnamese after toggle")
    rig.control.current.add("s7")
    browser.find_element(By.ID, "btn-notme").click()
    wait_for(browser, lambda d: rig.control.not_mes == ["s7"], "not-me reaching the terminal")
    rig.state.on_event(ev.Ended("s7", outcome=ev.Outcome.NOT_ME))
    shows_state(browser, "ended")
    assert "Đã ghi nhận" in text(browser)
    assert "Nguyễn" not in text(browser)
    assert "đánh giá" not in text(browser)  # no rating after "not me"
    shot(browser, "15_not_me")


def test_display_survives_the_terminal_restarting(browser: webdriver.Chrome, rig: Rig) -> None:
    browser.get(rig.display.url)
    shows_state(browser, "idle")
    connects = rig.display.link.connects
    rig.api.stop(0.2)
    shows_state(browser, "disconnected")
    assert "Đang kết nối lại" in text(browser)
    shot(browser, "16_disconnected")
    rig.restart_api()
    shows_state(browser, "idle")
    assert rig.display.link.connects == connects + 1
    # the new terminal process's sessions reach the same page
    rig.state.on_event(ev.FacePresent("s9"))
    rig.state.on_event(ev.Matched("s9", citizen_id="c1", score=0.8, margin=0.3))
    shows_state(browser, "matched", session="s9")
    assert "Nguyễn T. T***" in text(browser)


def test_a_citizen_locked_out_of_the_pin_is_told_until_when(
        browser: webdriver.Chrome, rig: Rig) -> None:
    """Wrong PINs over two sessions reach api.pin_max_failures (5): the page says the PIN
    is locked and until when, and the next match offers no PIN pad."""
    browser.get(rig.display.url)
    shows_state(browser, "idle")

    def enter(pin: str) -> None:
        for digit in pin:
            browser.find_element(By.CSS_SELECTOR, f'.key[data-key="{digit}"]').click()
        browser.find_element(By.CSS_SELECTOR, '.key[data-key="ok"]').click()

    def wrong_pins(sid: str, messages: list[str]) -> None:
        rig.state.on_event(ev.Matched(sid, citizen_id="c1", score=0.8, margin=0.3))
        shows_state(browser, "matched", sid)
        browser.find_element(By.ID, "btn-pin").click()
        wait_for(browser, lambda d: d.find_element(By.ID, "pinpad").is_displayed(), "PIN pad")
        for i, want in enumerate(messages):
            enter(f"{1000 + i}")
            wait_for(browser, lambda d, w=want: w in d.find_element(By.ID, "pin-msg").text, want)
            if i < len(messages) - 1:  # the next wait must see the next answer
                browser.execute_script("document.getElementById('pin-msg').textContent = ''")

    # the session's 3 tries
    wrong_pins("k1", ["Còn 2 lần thử", "Còn 1 lần thử", "Đã nhập sai quá số lần cho phép."])
    browser.find_element(By.ID, "pin-close").click()
    rig.state.on_event(ev.Ended("k1", outcome=ev.Outcome.MATCHED))
    # the next session has what is left of the citizen's 5
    wrong_pins("k2", ["Còn 1 lần thử", "Mã PIN tạm khoá đến"])
    shot(browser, "09_pin_locked")
    browser.find_element(By.ID, "pin-close").click()
    rig.state.on_event(ev.Ended("k2", outcome=ev.Outcome.MATCHED))
    rig.state.on_event(ev.Matched("k3", citizen_id="c1", score=0.8, margin=0.3))
    shows_state(browser, "matched", "k3")
    assert "Mã PIN tạm khoá đến" in browser.find_element(By.ID, "pin-locked").text
    assert not browser.find_elements(By.ID, "btn-pin")


def test_page_server_rejects_bad_taps(rig: Rig) -> None:
    import http.client
    import json

    host, port = rig.display.web.server_address[:2]

    def post(path: str, body: bytes) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection(str(host), int(port), timeout=5)
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "Origin": f"http://{host}:{port}"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        return resp.status, data

    deadline = time.monotonic() + 10
    while not rig.display.screen.get()[1].get("connected") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert post("/api/pin", b"not json")[0] == 400
    assert post("/api/pin", b"[1,2]")[0] == 400
    assert post("/api/rate", b'{"session_id": "x", "score": "5"}')[0] == 400
    assert post("/api/nothing", b"{}")[0] == 404
    status, data = post("/api/pin", b'{"session_id": "nope", "pin": "1234"}')
    assert status == 409 and data["code"] == "FAILED_PRECONDITION"
    status, data = post("/api/pin", b'{"session_id": "nope", "pin": "12"}')
    assert status == 409 and data["code"] == "INVALID_ARGUMENT"


def test_real_terminal_matched_and_not_recognised_on_the_page(
        browser: webdriver.Chrome, media_dir: Path, tmp_path: Path) -> None:
    """The real chain: model pack, store, image-sequence camera, session loop, API, display
    client, chromium. Lin-Manuel Miranda is enrolled, Shea Whigham is not."""
    import random

    from edge.config import CameraConfig, Config, SessionConfig, TerminalConfig
    from edge.service import TerminalService, load_vision
    from faces.pipeline import load_pipeline
    from motcua.demo import SEQ_FPS, Person, enrol_into_store, write_sequence

    faces = media_dir / "faces"
    people = [
        Person("lin_manuel_miranda", "cd-0001", "Lê M. M***",
               [faces / "lin_manuel_miranda" / "1.png"], faces / "lin_manuel_miranda" / "1.png"),
        Person("shea_whigham", "cd-0002", "Ngô V. S***", [], faces / "shea_whigham" / "1.jpg",
               enrolled=False),
    ]
    seq = tmp_path / "camera"
    write_sequence(seq, None, people)
    cfg = Config(
        terminal=TerminalConfig(id="kiosk-e2e", district="d", state_dir=tmp_path / "state"),
        camera=CameraConfig(source=str(seq), kind="images", images_fps=SEQ_FPS, loop=False),
        session=SessionConfig(liveness="off"),
        api=ApiConfig(listen="127.0.0.1:0", help_counter="3"),
    )
    assert enrol_into_store(tmp_path / "state" / "store", people, load_pipeline(cfg),
                            random.Random(1)) == 1
    service = TerminalService(cfg, load_vision(cfg)).start()
    display = DisplayApp(DisplayConfig(api=f"127.0.0.1:{service.api.port}",
                                       http_listen="127.0.0.1:0"), name="kiosk-e2e")
    display.start()
    try:
        browser.get(display.url)
        wait_for(browser, lambda d: d.find_element(By.ID, "screen").get_attribute(
            "data-state") == "matched", "a match", timeout=60)
        body = text(browser)
        assert "Xin chào, Lê M. M***" in body and "Ngô" not in body
        assert "H29" not in body  # codes masked
        shot(browser, "20_real_terminal_matched")
        wait_for(browser, lambda d: d.find_element(By.ID, "screen").get_attribute(
            "data-state") == "not_recognised", "not recognised", timeout=60)
        assert "Xin vui lòng đến quầy số 3 để được hỗ trợ." in text(browser)
        assert "Lê M." not in text(browser)
        shot(browser, "21_real_terminal_not_recognised")
    finally:
        display.close()
        service.stop()


def test_display_command_runs_as_its_own_process_and_reconnects(tmp_path: Path) -> None:
    """``motcua display`` as a process: serves the page with no terminal ("reconnecting"),
    follows a terminal that appears later, exits cleanly on SIGTERM."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.broker import free_port

    api_port, http_port = free_port(), free_port()
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "motcua", "display", "--api", f"127.0.0.1:{api_port}",
         "--listen", f"127.0.0.1:{http_port}"],
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))

    def state() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/state", timeout=2) as r:
            return json.loads(r.read())

    def until(cond: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + 30
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = state()
                if cond(last):
                    return last
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"display never showed {what}: {last}")

    api = None
    try:
        until(lambda s: s["state"] == "disconnected", "disconnected without a terminal")
        api, _ = start_api(api_port)
        api.state.on_event(ev.NotRecognised("p1"))
        st = until(lambda s: s["state"] == "not_recognised", "the terminal's state")
        assert st["help_counter"] == "5" and st["connected"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if api is not None:
            api.stop(0.2)
