"""Headless Debian chromium for the page tests (kiosk, survey, console): the driver with
its throw-away profile, waiting on what a page shows, and the CSP check."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(*, window: str = "1280,800", prefix: str = "motcua-chromium-",
             insecure_certs: bool = False, browser_log: bool = False
             ) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile (removed afterwards). ``window``: its
    size as "W,H"; ``insecure_certs``: accept a self-signed certificate (a test install's,
    this browser only); ``browser_log``: keep every console message, not only errors."""
    profile = tempfile.mkdtemp(prefix=prefix)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={window}", "--hide-scrollbars",
    ):
        opts.add_argument(flag)
    if insecure_certs:
        opts.accept_insecure_certs = True
    if browser_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def body_text(driver: webdriver.Chrome) -> str:
    """The page's visible text."""
    return str(driver.find_element(By.TAG_NAME, "body").text)


def wait_page(driver: webdriver.Chrome, cond: Callable[[webdriver.Chrome], object],
              what: str, timeout: float = 10) -> None:
    """Poll ``cond`` until true; fail naming ``what`` and the text the page shows."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)
    except TimeoutException:
        raise AssertionError(
            f"page never showed {what}; it shows: {body_text(driver)!r}") from None


def assert_no_csp_violation(driver: webdriver.Chrome) -> None:
    """No Content-Security-Policy violation in the browser's log since the last read."""
    logs = driver.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs
