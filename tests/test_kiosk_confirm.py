"""The confirmation step on the kiosk page, in headless Debian chromium (the date of
birth alone, and the date of birth then the last 4 digits of the personal number).

Chain: the real session machine (scripted detector, fixed embedder) in CONFIRM -> real
DisplayState -> gRPC server (port 0) -> display client + page server -> chromium. The
citizen types the date of birth on the page's keypad; the real DobConfirmer checks it
with a real AttemptLimiter. Screenshots go to tests/artifacts/kiosk_confirm_*.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from edge.api.server import create_server
from edge.api.state import DisplayState
from edge.config import ApiConfig, DisplayConfig
from edge.display.app import DisplayApp
from tests.test_confirmation import ALICE_DOB, ALICE_ID4, BOB_ID4, machine_setup, play
from tests.test_kiosk_page import browser, shot, shows_state, text, wait_for  # noqa: F401
from tests.test_session_machine import photo  # noqa: F401


class ConfirmRig:
    def __init__(self, tmp_path: Path, img: np.ndarray, **kw: object) -> None:
        (self.loop, self.machine, self.events, self.audit, self.limiter,
         directory) = machine_setup(tmp_path, img, **kw)  # type: ignore[arg-type]
        self.state = DisplayState(directory, pin_tries=3, help_counter="5",
                                  pin_limiter=self.limiter)
        self.machine.bus.add_listener(self.state.on_event)
        self.api = create_server(ApiConfig(listen="127.0.0.1:0", grace_s=0.2), self.state,
                                 control=self.machine)
        self.api.start()
        self.api.set_serving()
        self.display = DisplayApp(DisplayConfig(api=f"127.0.0.1:{self.api.port}",
                                                http_listen="127.0.0.1:0",
                                                reconnect_max_s=0.5), name="test-kiosk")
        self.display.start()

    def close(self) -> None:
        self.display.close()
        self.api.stop(0.2)


@pytest.fixture
def confirm_rig(tmp_path, photo) -> Iterator[ConfirmRig]:  # noqa: F811
    r = ConfirmRig(tmp_path, photo)
    yield r
    r.close()


def type_date(driver: webdriver.Chrome, digits: str) -> None:
    for k in digits:
        driver.find_element(By.CSS_SELECTOR, f"#dob-keys [data-key='{k}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "dob-field").text.replace(" ", "")
             .replace("/", "").startswith(digits), f"{digits} in the date field")
    driver.find_element(By.CSS_SELECTOR, "#dob-keys [data-key='ok']").click()


def test_date_keypad_in_vietnamese_and_english(browser: webdriver.Chrome,  # noqa: F811
                                               confirm_rig: ConfirmRig, photo) -> None:  # noqa: F811
    rig = confirm_rig
    browser.get(rig.display.url)
    play(rig.loop, photo, 10)
    sid = rig.machine.session.id
    shows_state(browser, "confirm", sid)
    body = text(browser)
    assert "Vui lòng nhập ngày sinh (ngày/tháng/năm) để xác nhận" in body
    assert "__ / __ / ____" in body
    # nothing about who the face might be is on the page
    for name in ("Alice", "Bob", "Caro", "alice", "bob", "caro"):
        assert name not in browser.page_source
    shot(browser, "confirm_01_keypad_vi")
    type_date(browser, "01011950")  # a wrong date
    wait_for(browser, lambda d: "Ngày sinh không đúng. Còn 2 lần thử." in text(d),
             "the wrong-date message")
    assert rig.limiter.check("alice").failures_left == 4
    shot(browser, "confirm_02_wrong_vi")
    browser.find_element(By.ID, "lang").click()
    wait_for(browser, lambda d: "Please enter your date of birth (day/month/year) to confirm"
             in text(d), "the English prompt")
    type_date(browser, "31021990")  # no such day: refused on the page, nothing counted
    wait_for(browser, lambda d: "Not a valid date" in text(d), "the invalid-date message")
    assert rig.limiter.check("alice").failures_left == 4
    shot(browser, "confirm_03_keypad_en")
    type_date(browser, ALICE_DOB)
    shows_state(browser, "matched", sid)
    wait_for(browser, lambda d: "Hello, Alice ***" in text(d), "the matched citizen")
    shot(browser, "confirm_04_matched_en")
    assert rig.audit.read() and rig.audit.read()[0]["outcome"] == "matched_confirmed"


def test_lockout_message_when_the_citizen_limit_is_hit(browser: webdriver.Chrome,  # noqa: F811
                                                       tmp_path, photo) -> None:  # noqa: F811
    rig = ConfirmRig(tmp_path, photo, max_failures=1)
    try:
        browser.get(rig.display.url)
        play(rig.loop, photo, 10)
        shows_state(browser, "confirm", rig.machine.session.id)
        type_date(browser, "02021960")
        shows_state(browser, "not_recognised")
        wait_for(browser, lambda d: "tạm thời bị khóa" in text(d), "the lockout message")
        assert "Xin vui lòng đến quầy số 5" in text(browser)
        shot(browser, "confirm_05_locked_vi")
        browser.find_element(By.ID, "lang").click()
        wait_for(browser, lambda d: "Too many wrong answers" in text(d), "English lockout")
    finally:
        rig.close()


def test_cancel_button_ends_as_not_recognised(browser: webdriver.Chrome,  # noqa: F811
                                              confirm_rig: ConfirmRig, photo) -> None:  # noqa: F811
    browser.get(confirm_rig.display.url + "?lang=vi")
    play(confirm_rig.loop, photo, 10)
    shows_state(browser, "confirm", confirm_rig.machine.session.id)
    browser.find_element(By.ID, "btn-confirm-cancel").click()
    shows_state(browser, "not_recognised")
    assert "Không nhận diện được" in text(browser)


def type_id4(driver: webdriver.Chrome, digits: str) -> None:
    wait_for(driver, lambda d: d.find_element(By.ID, "confirm-prompt")
             .get_attribute("data-step") == "id4", "the 4-digit step")
    for k in digits:
        driver.find_element(By.CSS_SELECTOR, f"#dob-keys [data-key='{k}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "dob-field").text.replace(" ", "")
             .startswith(digits), f"{digits} in the 4-digit field")
    driver.find_element(By.CSS_SELECTOR, "#dob-keys [data-key='ok']").click()


def test_date_then_four_digits_in_vietnamese_and_english(browser: webdriver.Chrome,  # noqa: F811
                                                         tmp_path, photo) -> None:  # noqa: F811
    rig = ConfirmRig(tmp_path, photo, id4s={"alice": ALICE_ID4, "bob": BOB_ID4})
    try:
        browser.get(rig.display.url)
        play(rig.loop, photo, 10)
        sid = rig.machine.session.id
        shows_state(browser, "confirm", sid)
        assert "Vui lòng nhập ngày sinh (ngày/tháng/năm) để xác nhận" in text(browser)
        type_date(browser, ALICE_DOB)  # the date first: nothing sent yet
        wait_for(browser, lambda d: "Vui lòng nhập 4 số cuối của số định danh cá nhân"
                 in text(d), "the Vietnamese 4-digit prompt")
        assert "_ _ _ _" in text(browser)
        for name in ("Alice", "Bob", "Caro", "alice", "bob", "caro"):
            assert name not in browser.page_source  # still nothing about the candidates
        assert rig.limiter.check("alice").failures_left == 5
        shot(browser, "confirm_06_id4_vi")
        type_id4(browser, BOB_ID4)  # alice's date with bob's digits: wrong
        wait_for(browser, lambda d: "Ngày sinh hoặc 4 số cuối không đúng. Còn 2 lần thử."
                 in text(d), "the wrong-answer message")
        for cid in ("alice", "bob", "caro"):  # one wrong answer, counted on each
            assert rig.limiter.check(cid).failures_left == 4
        browser.find_element(By.ID, "lang").click()
        wait_for(browser, lambda d: "Please enter your date of birth (day/month/year) to "
                 "confirm" in text(d), "back to the date, in English")
        type_date(browser, ALICE_DOB)
        wait_for(browser, lambda d: "Please enter the last 4 digits of your personal "
                 "identification number" in text(d), "the English 4-digit prompt")
        shot(browser, "confirm_07_id4_en")
        browser.find_element(By.CSS_SELECTOR, "#dob-keys [data-key='1']").click()
        browser.find_element(By.CSS_SELECTOR, "#dob-keys [data-key='ok']").click()
        wait_for(browser, lambda d: "Please enter all 4 digits." in text(d),
                 "too few digits refused on the page")
        assert rig.limiter.check("alice").failures_left == 4  # nothing counted
        browser.find_element(By.CSS_SELECTOR, "#dob-keys [data-key='del']").click()
        type_id4(browser, ALICE_ID4)
        shows_state(browser, "matched", sid)
        wait_for(browser, lambda d: "Hello, Alice ***" in text(d), "the matched citizen")
        shot(browser, "confirm_08_id4_matched_en")
        assert rig.audit.read()[0]["outcome"] == "matched_confirmed"
    finally:
        rig.close()
