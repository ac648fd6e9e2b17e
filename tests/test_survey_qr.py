"""Survey QR hand-off end to end, with real parts only.

District: a real ``DistrictService`` (uvicorn on a loopback port, its publisher on a real
Mosquitto) with ``[survey]`` enabled. Terminal: a real gallery store synced by a real
``TerminalSubscriber`` (its sync engine takes the survey from the signed manifest, its
outbox sends the offer), the real ``DisplayState`` + gRPC display API + kiosk page
server, shown by headless Chromium. The QR is decoded from a screenshot with OpenCV's
QRCodeDetector, its URL opened in Chromium as a phone, answered once; a second answer is
refused and the district stores exactly one; concurrent answers store one; a phone faster
than the offer waits on a self-reloading page. Then the district turns the survey off and
the next result screen has no QR. Screenshots go to tests/artifacts/survey_*.png.
"""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from district.config import load_district_config
from district.service import DistrictService
from district.survey_page import MAX_FORM_BYTES, PENDING_TRIES
from edge.api.server import create_server
from edge.api.state import DisplayState
from edge.api.survey import SurveyOffers
from edge.config import ApiConfig, DisplayConfig
from edge.display.app import DisplayApp
from edge.session import events as ev
from edge.session.audit import OutboxReporter
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from sync.keys import load_public_key
from sync.mqtt import BrokerSettings
from sync.survey import PublishedSurvey, new_token
from tests.broker import MosquittoBroker, PortReservation
from tests.chromium import assert_no_csp_violation, body_text, chromium, wait_page
from tests.district_helpers import write_district_config
from tests.sync_helpers import EMBEDDER, add_citizens, new_district, wait_for

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DISTRICT = "q7"
TERMINAL = "t1"
DIM = 16


def write_config(tmp: Path, broker: MosquittoBroker, port: int, *, survey: bool) -> Path:
    """The district's config (tests/district_helpers.py), the survey on or off."""
    return write_district_config(tmp, broker, district=DISTRICT, db=tmp / "district.sqlite",
                                 port=port, sections=f"""
[survey]
enabled = true
base_url = "http://127.0.0.1:{port}/"
token_lifetime_s = 900
# the test stands in for a reverse proxy on loopback: X-Forwarded-For is believed
trusted_proxies = ["127.0.0.1"]
""" if survey else "")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium(browser_log=True) as driver:
        yield driver


def kiosk_screen(driver: webdriver.Chrome) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                            "mobile": False})


def phone_screen(driver: webdriver.Chrome) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 2,
                            "mobile": True})


def until(driver: webdriver.Chrome, cond, what: str, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    wait_page(driver, cond, what, timeout)


def shows(driver: webdriver.Chrome, state: str, session: str) -> None:
    def ok(d: webdriver.Chrome) -> bool:
        el = d.find_element(By.ID, "screen")
        return el.get_attribute("data-state") == state and \
            el.get_attribute("data-session") == session
    until(driver, ok, f"state {state} of {session}")


def shot(driver: webdriver.Chrome, name: str) -> bytes:
    ARTIFACTS.mkdir(exist_ok=True)
    png = driver.get_screenshot_as_png()
    (ARTIFACTS / f"survey_{name}.png").write_bytes(png)
    return png


def decode_qr(png: bytes) -> str:
    """The text of the one QR code in a screenshot ("" when none is found)."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(img)
    return text if points is not None else ""


def http(method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Terminal:
    """The terminal's parts the hand-off runs through (no camera: the session's Matched
    event is fed to the display state, as the session machine's relay does)."""

    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        self.store = GalleryStore.open(tmp / "store", embedder_id=EMBEDDER, dim=DIM)
        self.offers = SurveyOffers(OutboxReporter.in_state_dir(tmp / "state"), TERMINAL)
        self.tmp, self.broker = tmp, broker
        self.sub = self._subscriber()
        self.state = DisplayState(self.store, pin_tries=3, help_counter="5",  # type: ignore[arg-type]
                                  survey=self.offers)
        self.api = create_server(ApiConfig(listen="127.0.0.1:0", grace_s=0.2), self.state)
        self.api.start()
        self.api.set_serving()
        self.display = DisplayApp(DisplayConfig(api=f"127.0.0.1:{self.api.port}",
                                                http_listen="127.0.0.1:0",
                                                reconnect_max_s=0.5), name="survey-kiosk")
        self.display.start()
        self.sub.start()

    def _subscriber(self) -> TerminalSubscriber:
        tmp, broker = self.tmp, self.broker
        sub = TerminalSubscriber(
            self.store,
            BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.0,  # type: ignore[arg-type]
                           reconnect_max_s=0.5, keepalive_s=5),
            district_id=DISTRICT, terminal_id=TERMINAL,
            public_key=load_public_key(tmp / "keys" / "district.pub"),
            spool_dir=tmp, state_interval_s=0.2, outbox_dir=tmp / "state" / "outbox")
        sub.engine.on_survey = self.offers.configure
        return sub

    def restart_sync(self) -> None:
        self.sub = self._subscriber().start()

    def close(self) -> None:
        self.display.close()
        self.api.stop(0.2)
        self.sub.stop()
        self.store.close()


def test_qr_hand_off_end_to_end(tmp_path: Path, broker: MosquittoBroker,
                                browser: webdriver.Chrome) -> None:
    dlog = new_district(tmp_path / "district.sqlite", dim=DIM, district=DISTRICT)
    [cid] = add_citizens(dlog, 1)
    dlog.close()
    reserved = PortReservation()
    port = reserved.port
    svc = DistrictService(load_district_config(
        write_config(tmp_path, broker, port, survey=True))).start()
    assert svc.survey is not None
    term = Terminal(tmp_path, broker)
    try:
        # the signed manifest switched the terminal's survey on; the citizen is synced
        wait_for(lambda: term.offers.enabled, 20, "the survey from the manifest")
        wait_for(lambda: term.store.citizen(cid) is not None, 20, "the citizen's sync")
        base = f"http://127.0.0.1:{port}"

        # -- the kiosk result screen shows the QR -------------------------------------
        kiosk_screen(browser)
        browser.get(term.display.url)
        term.state.on_event(ev.Matched("sess-1", citizen_id=cid, score=0.8, margin=0.3))
        shows(browser, "matched", "sess-1")
        until(browser, lambda d: d.execute_script(
            "const i = document.getElementById('survey-qr');"
            "return i !== null && i.complete && i.naturalWidth > 0;"), "the QR image")
        assert "Góp ý trên điện thoại" in browser.find_element(By.ID, "survey").text
        url = decode_qr(shot(browser, "01_kiosk_result_qr"))
        # scannable, and it carries only /s/<opaque token>: no code, no name, no id
        m = re.fullmatch(re.escape(base) + r"/s/([A-Za-z0-9_-]{24})", url)
        assert m, url
        token = m.group(1)
        for secret in (cid, "Nguyễn", "HS-", "sess-1", TERMINAL):
            assert secret not in url
        assert_no_csp_violation(browser)

        # -- the offer reached the district through the outbox and the broker ----------
        wait_for(lambda: svc.survey is not None and svc.survey.offer_count() == 1, 20,
                 "the offer at the district")
        assert term.sub.outbox is not None
        wait_for(lambda: term.sub.outbox is not None and term.sub.outbox.sent == 1, 10,
                 "the offer's PUBACK")

        # -- the untrusted phone side, over real HTTP -----------------------------------
        never = new_token()
        code, headers, body = http("GET", f"{base}/s/{never}")
        assert code == 404 and 'http-equiv="refresh"' in body and "try=1" in body
        assert "Đang chờ máy tra cứu gửi mã" in body
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"
        code, _h, body = http("GET", f"{base}/s/{never}?try={PENDING_TRIES}")
        assert code == 404 and "refresh" not in body and "Không tìm thấy mã" in body
        assert http("GET", f"{base}/s/not-a-token")[0] == 404
        # bounded bodies, forms only, a rating required; none of these uses the token
        assert http("POST", f"{base}/s/{token}", b"x" * (MAX_FORM_BYTES + 1), FORM)[0] == 413
        assert http("POST", f"{base}/s/{token}", b'{"rating": 5}',
                    {"Content-Type": "application/json"})[0] == 400
        code, _h, body = http("POST", f"{base}/s/{token}", b"comment=hi", FORM)
        assert code == 400 and "Xin chọn một mức đánh giá." in body
        assert http("POST", f"{base}/s/{never}", b"rating=5", FORM)[0] == 404
        # the per-address limit (the address a trusted proxy names)
        codes = [http("GET", f"{base}/s/{never}?try={PENDING_TRIES}",
                      headers={"X-Forwarded-For": "198.51.100.7"})[0] for _ in range(31)]
        assert codes[:30] == [404] * 30 and codes[30] == 429
        assert http("GET", f"{base}/s/{never}?try={PENDING_TRIES}",
                    headers={"X-Forwarded-For": "198.51.100.8"})[0] == 404

        # -- the phone opens the QR's URL, answers, is thanked ------------------------
        phone_screen(browser)
        browser.get(url)
        until(browser, lambda d: d.find_elements(By.ID, "survey"), "the survey form")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi"
        shot(browser, "02_phone_form_vi")
        browser.find_element(By.LINK_TEXT, "English").click()
        until(browser, lambda d: "How satisfied were you?" in d.page_source, "English")
        browser.find_element(By.LINK_TEXT, "Tiếng Việt").click()
        until(browser, lambda d: "Đánh giá mức độ hài lòng" in d.page_source, "Vietnamese")
        browser.find_element(By.CSS_SELECTOR, 'input[name="rating"][value="4"]').click()
        browser.find_element(By.ID, "comment").send_keys("Cán bộ hướng dẫn tận tình")
        browser.find_element(By.ID, "send").click()
        until(browser, lambda d: d.find_elements(By.ID, "thanks"), "the thanks page")
        assert "Cảm ơn quý khách!" in body_text(browser)
        shot(browser, "03_phone_thanks")
        assert_no_csp_violation(browser)

        # -- a second answer is refused; the district counts exactly one ----------------
        browser.get(url)
        until(browser, lambda d: d.find_elements(By.ID, "used"), "the used page")
        shot(browser, "04_phone_used")
        code, _h, body = http("POST", url, b"rating=1&comment=again", FORM)
        assert code == 410 and "Mã này đã được dùng" in body
        answers = svc.survey.answers()
        assert len(answers) == 1
        a = answers[0]
        assert (a.terminal_id, a.session_id, a.citizen_id, a.rating, a.comment) == (
            TERMINAL, "sess-1", cid, 4, "Cán bộ hướng dẫn tận tình")

        # -- answers racing for one token over HTTP: one is stored ----------------------
        term.state.on_event(ev.Matched("sess-3", citizen_id=cid, score=0.8, margin=0.3))
        url3 = term.state.current().match.survey_url
        assert url3.startswith(f"{base}/s/") and url3 != url
        wait_for(lambda: svc.survey is not None and svc.survey.offer_count() == 2, 20,
                 "the second offer")
        start = threading.Barrier(8)
        results: list[int] = []

        def answer(i: int) -> None:
            start.wait()
            results.append(http("POST", url3, f"rating={1 + i % 5}".encode(),
                                {**FORM, "X-Forwarded-For": f"203.0.113.{i}"})[0])

        threads = [threading.Thread(target=answer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [200] + [410] * 7
        assert [a.session_id for a in svc.survey.answers()].count("sess-3") == 1
        assert len(svc.survey.answers()) == 2
        metrics = http("GET", f"{base}/metrics")[2]
        assert "motcua_district_survey_answers 2.0" in metrics
        assert "motcua_district_survey_offers 2.0" in metrics
        assert "motcua_district_survey_limited_requests 1.0" in metrics
        assert 'motcua_district_survey_offers_refused{reason="bad"} 0.0' in metrics

        # -- the phone is faster than the offer: the page waits, then shows the form ----
        term.sub.stop()  # the terminal's link is down: the offer waits in its outbox
        term.state.on_event(ev.Matched("sess-4", citizen_id=cid, score=0.8, margin=0.3))
        url4 = term.state.current().match.survey_url
        phone_screen(browser)
        browser.get(url4)
        until(browser, lambda d: d.find_elements(By.ID, "pending"), "the waiting page")
        shot(browser, "05_phone_pending")
        term.restart_sync()
        # the page reloads itself (meta refresh, no script) until the offer is there
        until(browser, lambda d: d.find_elements(By.ID, "survey"), "the form after waiting",
              timeout=25)
        assert svc.survey.status(url4.rsplit("/", 1)[1]) == "open"

        # -- the district turns the survey off: the next result has no QR ----------------
        svc.stop()
        svc = DistrictService(load_district_config(
            write_config(tmp_path, broker, port, survey=False))).start()
        assert svc.survey is None
        wait_for(lambda: not term.offers.enabled, 20, "the survey switched off")
        kiosk_screen(browser)
        browser.get(term.display.url)
        term.state.on_event(ev.Matched("sess-2", citizen_id=cid, score=0.8, margin=0.3))
        shows(browser, "matched", "sess-2")
        assert browser.find_elements(By.ID, "survey") == []
        assert decode_qr(shot(browser, "06_kiosk_result_no_qr")) == ""
        code = http("GET", term.display.url + "survey-qr.svg")[0]
        assert code == 404
        assert http("GET", f"{base}/s/{token}")[0] == 404  # the pages are gone too
        assert term.offers.offered == 3
    finally:
        term.close()
        svc.stop()
        reserved.close()


def test_off_by_default_no_qr_and_offers_refused(tmp_path: Path, broker: MosquittoBroker
                                                 ) -> None:
    """A district without [survey]: the manifest carries none, the terminal never offers,
    and an offer report a terminal sends anyway is a bad report, stored nowhere."""
    dlog = new_district(tmp_path / "district.sqlite", dim=DIM, district=DISTRICT)
    [cid] = add_citizens(dlog, 1)
    dlog.close()
    reserved = PortReservation()
    svc = DistrictService(load_district_config(
        write_config(tmp_path, broker, reserved.port, survey=False))).start()
    term = Terminal(tmp_path, broker)
    try:
        wait_for(lambda: term.store.citizen(cid) is not None, 20, "the citizen's sync")
        assert term.sub.engine.survey is None and not term.offers.enabled
        msg = term.state.on_event(ev.Matched("sess-1", citizen_id=cid, score=0.8, margin=0.3))
        assert msg is not None and msg.match.masked_name and msg.match.survey_url == ""
        # a terminal that offers anyway (old settings, a forgery): counted and dropped
        before = svc.publisher.stats.bad_reports
        term.offers.configure(PublishedSurvey("https://ks.example.vn", 900))
        assert term.offers.offer("sess-2", cid)
        wait_for(lambda: svc.publisher.stats.bad_reports == before + 1, 20, "the bad report")
        assert svc.survey is None
        code = http("GET", f"http://127.0.0.1:{reserved.port}/s/{new_token()}")[0]
        assert code == 404
    finally:
        term.close()
        svc.stop()
        reserved.close()
