"""The demo's district service and its status change (``motcua demo``, steps 3 and 6).

``start_district`` runs the real district service (:class:`district.service.
DistrictService`: ingest HTTP API with a bearer token, publisher, reports) in this
process, on loopback, over the demo's change log and local broker, with a token made for
the run. :class:`StatusChange` then plays the case system once while the terminal runs:
when the chosen citizen's first look at the camera has ended, it POSTs a
``dossier.status_changed`` event to the ingest API, waits for the terminal's store to
apply the change, and watches the kiosk page's data (the screen state the browser gets)
until the citizen's next look shows the new status. It records the times from the POST.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import SyncError
from district.config import DistrictConfig, DistrictSection, IngestSection
from district.enrol import PhotoEmbedder
from district.service import DistrictService
from edge.api.masking import mask_code
from edge.display.view import Screen
from edge.session import events as ev
from sync.changes import DossierStatus
from sync.localbroker import free_port
from sync.mqtt import BrokerConfig

#: how long after the POST the kiosk must show the new status: the citizen's next look
#: comes AGAIN_GAP_S (+ the 1 s the session needs to end) after the POST by the camera's
#: schedule, and the change itself takes ~10-170 ms (docs/district.md, "Performance");
#: 30 s also covers a machine so loaded that the camera falls behind
STATUS_TIMEOUT_S = 30.0
#: the poll of the terminal's applied change number; adds at most this to "applied"
APPLIED_POLL_S = 0.002
#: the poll of /readyz while the publisher connects to the local broker (~0.1 s)
READY_POLL_S = 0.05
#: how long one HTTP call to the ingest API may take (a status change takes ~5-80 ms)
HTTP_TIMEOUT_S = 10.0


def start_district(workdir: Path, db: Path, key_file: Path, district_id: str,
                   broker_host: str, broker_port: int, embedder: PhotoEmbedder,
                   stop: threading.Event) -> DistrictService:
    """The district service over ``db``, on a free loopback port, with a fresh token in
    ``workdir/ingest.token`` (0600); started (it listens and publishes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "ingest.token"
    token_file.touch(mode=0o600)
    token_file.write_text(secrets.token_hex(32) + "\n")
    cfg = DistrictConfig(
        district=DistrictSection(id=district_id, db=db, key_file=key_file),
        # quick reconnects: the broker is local and a demo should not wait a minute
        broker=BrokerConfig(broker=f"{broker_host}:{broker_port}", reconnect_min_s=0.2,
                            reconnect_max_s=2.0),
        ingest=IngestSection(listen=f"127.0.0.1:{free_port()}", token_file=token_file),
    )
    return DistrictService(cfg, stop_event=stop, embedder=embedder).start()


def wait_ready(url: str, timeout: float, stop: threading.Event) -> float:
    """Seconds until ``GET url/readyz`` answers 200 (the log open, the broker connected);
    SyncError after ``timeout``."""
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=HTTP_TIMEOUT_S) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass  # 503 until the publisher has connected to the broker
        if time.monotonic() - t0 > timeout or stop.is_set():
            raise SyncError(f"the district service at {url} was not ready within "
                            f"{timeout:.0f} s (GET /readyz)")
        stop.wait(READY_POLL_S)


def next_status(old: DossierStatus) -> DossierStatus:
    """The status the demo's case system moves a dossier to: the result is ready (or,
    for a dossier whose result was ready already, handed over)."""
    return DossierStatus.RETURNED if old is DossierStatus.RESULT_READY \
        else DossierStatus.RESULT_READY


@dataclasses.dataclass
class StatusChange:
    """One dossier status change from the case system to the kiosk, and its times.

    ``citizen_id``/``masked_name``: whose dossier; ``code``: the dossier; ``old``/``new``:
    its status before and after; ``looks``: whether the camera shows the citizen again
    after the first look (else only the terminal's store is checked).
    """

    citizen_id: str
    masked_name: str
    label: str
    code: str
    old: DossierStatus
    new: DossierStatus
    looks: bool
    say: Callable[[str], None]
    #: the bound from the POST to the change on the terminal and on the kiosk
    timeout_s: float = STATUS_TIMEOUT_S
    #: what the kiosk showed for the dossier at the first look (None: not seen)
    shown_before: DossierStatus | None = None
    #: the POST's answer ("applied", change number) or the error
    post_outcome: str = ""
    seq: int = 0
    #: seconds from the POST to the terminal's store having the change / to the kiosk
    applied_s: float | None = None
    shown_s: float | None = None
    #: what the kiosk showed at the first look after the POST
    shown_after: DossierStatus | None = None
    error: str = ""

    def __post_init__(self) -> None:
        self.masked_code = mask_code(self.code)
        self._trigger = threading.Event()
        self.done = threading.Event()
        self._first_session = ""
        self._matched_session = ""
        self._posted_at: float | None = None
        #: wall time (ms) the terminal's store was seen with the change
        self._applied_wall_ms: float | None = None
        #: monotonic time to POST by even if the first look was never matched
        self._post_by: float | None = None
        self._threads: list[threading.Thread] = []

    # -- inputs ---------------------------------------------------------------------------

    def on_event(self, event: ev.SessionEvent) -> None:
        """Session events (the terminal's bus): the first look's end triggers the POST."""
        if isinstance(event, ev.Matched) and event.citizen_id == self.citizen_id \
                and not self._matched_session:
            self._matched_session = event.session_id
        elif isinstance(event, ev.Ended) and event.session_id == self._matched_session:
            self._trigger.set()

    def post_now(self) -> None:
        """POST without waiting for a look (a camera of the user's own, or liveness on)."""
        self._trigger.set()

    def post_by(self, deadline: float) -> None:
        """POST at ``deadline`` (monotonic) at the latest: before the second look, also
        when the first look was not matched (a loaded machine drops frames)."""
        self._post_by = deadline

    # -- the two threads ---------------------------------------------------------------------

    def start(self, url: str, token: str, store: Any, screen: Screen,
              stop: threading.Event) -> None:
        """The case system (waits for the trigger, POSTs, waits for the terminal's store)
        and the kiosk watcher (reads the kiosk page's screen state)."""
        self._threads = [
            threading.Thread(target=self._case_system, args=(url, token, store, stop),
                             name="demo-case-system", daemon=True),
            threading.Thread(target=self._kiosk, args=(screen, stop),
                             name="demo-kiosk-watch", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _case_system(self, url: str, token: str, store: Any, stop: threading.Event) -> None:
        while not self._trigger.wait(0.05):
            if stop.is_set() or self.done.is_set():
                return
            if self._post_by is not None and time.monotonic() >= self._post_by:
                self.say(f"{_clock()} case system: {self.masked_name} not matched yet; "
                         "posting the change before the planned second look")
                break
        event = {"event_id": f"demo-{self.code}-status-2", "kind": "dossier.status_changed",
                 "version": 2, "data": {"code": self.code, "status": self.new.value}}
        req = urllib.request.Request(
            url + "/v1/events", data=json.dumps(event).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        self._posted_at = t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                answer = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = exc.read().decode(errors="replace")[:300] \
                if isinstance(exc, urllib.error.HTTPError) else str(exc)
            self._fail(f"the ingest API refused the status change: {detail}")
            return
        self.seq = int(answer.get("seq", 0))
        self.post_outcome = f"{answer.get('outcome')}, change {self.seq}"
        self.say(f"{_clock()} case system: POST {url}/v1/events dossier.status_changed "
                 f"{self.masked_code} -> {self.new.value}: {self.post_outcome} "
                 f"({(time.monotonic() - t0) * 1000:.0f} ms)")
        while store.last_seq < self.seq:
            if self.done.is_set():
                return  # finish() gave up (the demo is closing the store)
            if time.monotonic() - t0 > self.timeout_s or stop.is_set():
                self._fail(f"the terminal did not apply change {self.seq} within "
                           f"{self.timeout_s:.0f} s of the POST")
                return
            time.sleep(APPLIED_POLL_S)
        self.applied_s = time.monotonic() - t0
        self._applied_wall_ms = time.time() * 1000
        self.say(f"{_clock()} terminal: change {self.seq} applied "
                 f"{self.applied_s * 1000:.0f} ms after the POST"
                 + (f"; the kiosk shows it at {self.masked_name}'s next look" if self.looks
                    else ""))
        if not self.looks:
            self.done.set()

    def _kiosk(self, screen: Screen, stop: threading.Event) -> None:
        version = 0
        while not stop.is_set() and not self.done.is_set():
            version, st = screen.wait_change(version, 0.5)
            match = st.get("match") if st.get("state") == "matched" else None
            if not match or match.get("masked_name") != self.masked_name:
                continue
            status = next((DossierStatus(d["status"]) for d in match.get("dossiers", [])
                           if d.get("masked_code") == self.masked_code), None)
            session = str(st.get("session_id", ""))
            posted = self._posted_at
            if posted is None or session == self._first_session:
                if self._first_session == "":
                    self._first_session = session
                    self.shown_before = status
                    self.say(f"{_clock()} kiosk: {self.masked_code} "
                             f"\"{_label(status)}\" ({_value(status)})")
                continue
            shown_s = time.monotonic() - posted
            applied = self._applied_wall_ms
            if status is not self.new and (applied is None
                                           or int(st.get("time_unix_ms", 0)) <= applied):
                # a look the terminal decided before it had the change: the old status
                # is right there; the next look must show the new one
                self.say(f"{_clock()} kiosk: {self.masked_code} \"{_label(status)}\" "
                         f"({_value(status)}): looked before the change arrived")
                continue
            self.shown_after, self.shown_s = status, shown_s
            self.say(f"{_clock()} kiosk: {self.masked_code} \"{_label(status)}\" "
                     f"({_value(status)}), {shown_s:.1f} s after the POST")
            if status is not self.new:
                self._fail(f"the kiosk still showed {_value(status)} at the next look, "
                           f"after the terminal had applied the change ({shown_s:.1f} s "
                           "after the POST)")
            self.done.set()

    def _fail(self, why: str) -> None:
        if not self.error:
            self.error = why
            self.say(f"{_clock()} STATUS CHANGE FAILED: {why}")
        self.done.set()

    # -- the end ------------------------------------------------------------------------------

    def finish(self, timeout: float) -> None:
        """After the camera: wait (at most ``timeout``) for a pending result, then stop."""
        if self._trigger.is_set() and self._posted_at is None:
            # triggered, the POST not sent yet: give the case-system thread its HTTP call
            deadline = time.monotonic() + HTTP_TIMEOUT_S
            while self._posted_at is None and not self.done.is_set() and \
                    time.monotonic() < deadline:
                self.done.wait(0.01)
        posted = self._posted_at
        if posted is not None and not self.done.is_set():
            self.done.wait(max(0.0, min(timeout, posted + self.timeout_s - time.monotonic())))
        if not self.done.is_set():
            if self._posted_at is None:
                self._fail(f"not posted: {self.label}'s first look was never matched")
            elif self.applied_s is None:
                self._fail(f"the terminal did not apply change {self.seq}")
            else:
                self._fail(f"the kiosk never showed {self.masked_name} again after the POST")
        self.done.set()
        for t in self._threads:
            t.join(HTTP_TIMEOUT_S)

    @property
    def ok(self) -> bool:
        return not self.error and self.applied_s is not None and \
            (not self.looks or self.shown_after is self.new)

    def describe(self) -> str:
        """The summary line."""
        if self.error:
            return f"status change: FAILED: {self.error}"
        assert self.applied_s is not None
        line = (f"status change: {self.masked_code} of {self.masked_name} "
                f"{self.old.value} -> {self.new.value}; POST -> terminal "
                f"{self.applied_s * 1000:.0f} ms")
        if self.looks and self.shown_s is not None:
            line += f", POST -> kiosk {self.shown_s:.1f} s (at the next look)"
        return line


def _label(status: DossierStatus | None) -> str:
    return status.label_vi if status is not None else "(dossier not on screen)"


def _value(status: DossierStatus | None) -> str:
    return status.value if status is not None else "?"


def _clock() -> str:
    return f"      {time.strftime('%H:%M:%S')} {'':<8}"


__all__ = ["STATUS_TIMEOUT_S", "StatusChange", "next_status", "start_district", "wait_ready"]
