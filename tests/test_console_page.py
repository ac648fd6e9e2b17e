"""The operator console in headless Debian chromium, against a real ``DistrictService``
over TLS (its own self-signed certificate: this test browser alone accepts it), a real
Mosquitto and three terminals' retained states (tests/console_helpers.py).

The browser logs in, sees every page in Vietnamese and in English, marks a "not me"
report reviewed, picks a rating period and reads a phone survey's comment. Screenshots go
to the test's tmp directory, and are copied to tests/artifacts/console/ when
MOTCUA_CONSOLE_SCREENSHOTS=1 (they are never committed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from district.console.i18n import T
from tests.chromium import assert_no_csp_violation, chromium
from tests.chromium import body_text as body
from tests.chromium import wait_page as wait_for
from tests.console_helpers import PASSWORD, SURVEY_COMMENT, USER, Rig, rig

__all__ = ["rig"]  # the fixture

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
#: set to 1 to keep the screenshots under tests/artifacts/console/
COPY_ENV = "MOTCUA_CONSOLE_SCREENSHOTS"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    # the test install's self-signed certificate: accepted by this test browser only
    with chromium(window="1366,900", prefix="motcua-console-chromium-",
                  insecure_certs=True) as driver:
        yield driver


class Shots:
    def __init__(self, driver: webdriver.Chrome, folder: Path) -> None:
        self.driver, self.folder = driver, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def __call__(self, name: str) -> None:
        path = self.folder / f"console_{len(self.paths) + 1:02d}_{name}.png"
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 5000
        self.paths.append(path)

    def keep(self) -> None:
        if os.environ.get(COPY_ENV) == "1":
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for p in self.paths:
                shutil.copy2(p, ARTIFACTS / p.name)


def test_console_in_chromium(browser: webdriver.Chrome, rig: Rig, tmp_path: Path) -> None:
    shot = Shots(browser, tmp_path / "screenshots")
    base = f"https://127.0.0.1:{rig.port}"
    browser.get(base + "/console/fleet")
    wait_for(browser, lambda d: d.find_elements(By.ID, "login"), "the login form")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi"
    shot("login_vi")
    # a wrong password first
    browser.find_element(By.ID, "user").send_keys(USER)
    browser.find_element(By.ID, "password").send_keys("không đúng mật khẩu")
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, lambda d: T["vi"]["login_wrong"] in body(d), "the wrong-password note")
    shot("login_wrong_vi")
    browser.find_element(By.ID, "user").send_keys(USER)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "fleet"), "the fleet table")
    # the session cookie is HttpOnly: no script could read it
    assert browser.execute_script("return document.cookie") == ""
    cookie = browser.get_cookie("__Host-motcua-console")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    pages = [
        ("fleet", "fleet_title", ["t-1", "t-2", "t-3", "1.4.0", "pack-2026.11"]),
        ("reports", "reports_title", ["t-1", "c1"]),
        ("deletions", "deletions_title", ["t-1", "t-2", "t-3"]),
        ("ratings", "ratings_title", ["Trần Thị Bình", "Quầy 2"]),
        ("calibration", "calibration_title", []),
    ]
    for lang in ("vi", "en"):
        for name, title, words in pages:
            browser.get(f"{base}/console/{name}?lang={lang}")
            wait_for(browser, lambda d, k=title, lg=lang: T[lg][k] in body(d), f"{name} {lang}")
            text = body(browser)
            for w in words:
                assert w in text, (name, lang, w)
            assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
            other = "en" if lang == "vi" else "vi"
            assert browser.find_element(By.ID, "lang-switch").text == T[lang]["other_lang"]
            assert T[other]["fleet_title"] not in text
            shot(f"{name}_{lang}")
        # the forged text a terminal sent is shown as text, never run
        browser.get(f"{base}/console/fleet?lang={lang}")
        assert "<script>alert(1)</script>" in body(browser)
        assert not browser.find_elements(By.CSS_SELECTOR, "td.err img, td.err script")
    # no CSP violation was reported on any page (there is no script, no inline style)
    assert_no_csp_violation(browser)

    # the language switch link: back to Vietnamese, and it stays chosen
    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: T["vi"]["fleet_title"] in body(d), "Vietnamese again")
    browser.get(base + "/console/reports")
    assert T["vi"]["reports_title"] in body(browser)
    # mark the report of t-1 reviewed
    row = browser.find_element(By.XPATH, "//table[@id='reports']//tr[td[2]='t-1']")
    row.find_element(By.CSS_SELECTOR, "button.review").click()
    wait_for(browser, lambda d: d.find_elements(
        By.XPATH, f"//table[@id='reports']//tr[td[2]='t-1']/td[@class='rev'][contains(., "
                  f"'{USER}')]"), "the report marked reviewed")
    assert {r[1]: r[5] for r in rig.dlog.reports_reviewed("not_me")}["s-1"] == USER
    shot("report_reviewed_vi")
    # suspend the face of the citizen that report names, from its row
    citizen = {r[1]: r[3] for r in rig.dlog.reports_reviewed("not_me")}["s-1"]
    assert citizen and not rig.dlog.face_suspended(citizen)
    row = browser.find_element(By.XPATH, "//table[@id='reports']//tr[td[2]='t-1']")
    row.find_element(By.CSS_SELECTOR, "button.suspend").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "suspended"), "the face suspended")
    assert rig.dlog.face_suspended(citizen)
    assert rig.dlog.report_suspension("t-1/s-1") is not None
    shot("face_suspended_vi")

    # pick a rating period: one that holds no rating, then today's
    browser.get(base + "/console/ratings")
    for field, value in (("from", "2025-01-01"), ("to", "2025-01-31")):
        # a date input's typed format follows the browser's locale: set its value
        browser.execute_script("arguments[0].value = arguments[1]",
                               browser.find_element(By.ID, field), value)
    browser.find_element(By.ID, "show").click()
    wait_for(browser, lambda d: "from=2025-01-01" in d.current_url, "the period chosen")
    wait_for(browser, lambda d: d.find_elements(By.ID, "no-ratings"), "an empty period")
    shot("ratings_empty_period_vi")
    # the language link keeps the chosen period
    browser.find_element(By.ID, "lang-switch").click()
    wait_for(browser, lambda d: T["en"]["no_ratings"] in body(d), "the period in English")
    assert "from=2025-01-01" in browser.current_url and "to=2025-01-31" in browser.current_url
    browser.get(base + "/console/ratings?lang=vi")  # the default period: the last 30 days
    wait_for(browser, lambda d: d.find_elements(By.ID, "officers"), "today's averages")
    officers = browser.find_element(By.ID, "officers").text
    assert "Trần Thị Bình" in officers and "4.00" in officers
    # the phone survey's comment is shown to staff as text, with its counter and officer
    row = browser.find_element(
        By.XPATH, "//table[@id='survey-comments']//tr[td[@class='comment'][contains(., "
                  "'Chị hướng dẫn')]]")
    assert row.find_element(By.CSS_SELECTOR, "td.comment").text == SURVEY_COMMENT
    assert row.find_element(By.CSS_SELECTOR, "td.officers").text == "Lê Văn Cường"
    assert row.find_element(By.CSS_SELECTOR, "td.counters").text == "Quầy 2"
    assert not browser.find_elements(By.CSS_SELECTOR, "td.comment img, td.comment script")
    shot("ratings_survey_comments_vi")

    # sign out: the pages want a login again
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "login"), "the login form again")
    browser.get(base + "/console/fleet")
    wait_for(browser, lambda d: d.find_elements(By.ID, "login"), "no way back in")
    shot.keep()
