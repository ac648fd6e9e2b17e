"""``motcua demo``'s district part (motcua/demo_district.py) when things go wrong: the
demo's real district service (ingest API, publisher, real Mosquitto) and a terminal that
never applies the change or a kiosk that never shows the citizen again. The status
change is reported FAILED and the demo's exit code (``summarise``) is 1.

The working path (the status posted, applied, shown on the kiosk) is checked by the demo
runs in tests/test_terminal_e2e.py."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from district.log import DistrictLog
from edge.api.state import summary_pb
from edge.display.view import Screen, event_view
from motcua.demo import DemoResult, summarise
from motcua.demo_district import StatusChange, start_district, wait_ready
from proto import display_pb2 as dpb
from sync.changes import Dossier, DossierStatus
from sync.keys import generate_keypair
from tests.broker import MosquittoBroker
from tests.sync_helpers import wait_for

CODE = "000.00.12.H29-261101-0001"


class StuckStore:
    """A terminal store that never applies anything (the boundary: no terminal here)."""

    last_seq = 0


class AppliedStore:
    """A terminal store that has applied everything."""

    last_seq = 10 ** 9


def district_with_one_dossier(tmp_path: Path, broker: MosquittoBroker,
                              stop: threading.Event):  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "district.key", tmp_path / "district.pub")
    db = tmp_path / "district.sqlite"
    dlog = DistrictLog.create(db, district_id="demo-q", embedder_id="x", dim=4)
    dlog.upsert_citizen("cd-0001", masked_name="Nguyễn T. T***",
                        embeddings=np.eye(1, 4, dtype=np.float32), pin_hash=b"",
                        pin_salt=b"")
    dlog.upsert_dossier(Dossier(code=CODE, citizen_id="cd-0001", procedure="Đăng ký khai sinh",
                                status=DossierStatus.PROCESSING, stage="Phòng Tư pháp",
                                received_on="2026-11-02"))
    dlog.close()

    def no_embedder() -> object:
        raise AssertionError("a status change embeds nothing")

    return start_district(tmp_path / "district", db, tmp_path / "district.key", "demo-q",
                          broker.host, broker.port, no_embedder, stop)  # type: ignore[arg-type]


def change(out: io.StringIO, looks: bool) -> StatusChange:
    return StatusChange(citizen_id="cd-0001", masked_name="Nguyễn T. T***", label="x",
                        code=CODE, old=DossierStatus.PROCESSING,
                        new=DossierStatus.RESULT_READY, looks=looks,
                        say=lambda line: out.write(line + "\n"), timeout_s=1.0)


def test_a_change_the_terminal_never_applies_fails_the_demo(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    stop = threading.Event()
    svc = district_with_one_dossier(tmp_path, broker, stop)
    out = io.StringIO()
    try:
        assert wait_ready(svc.url, 30, stop) >= 0
        sc = change(out, looks=False)
        sc.start(svc.url, svc.token, StuckStore(), Screen(), stop)
        sc.post_now()
        assert sc.done.wait(30)
        sc.finish(1.0)
        assert svc.log.head_seq == 3  # the POST itself was applied by the district
    finally:
        stop.set()
        svc.stop()
    text = out.getvalue()
    assert "dossier.status_changed" in text and "applied, change 3" in text, text
    assert not sc.ok and "did not apply change 3 within 1 s" in sc.error
    result = DemoResult(url="", people=[], events=[], matched=[], status_change=sc)
    summary = io.StringIO()
    assert summarise(result, summary) == 1
    assert "status change: FAILED: the terminal did not apply change 3" in summary.getvalue()


def test_a_change_never_shown_on_the_kiosk_fails_the_demo(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    stop = threading.Event()
    svc = district_with_one_dossier(tmp_path, broker, stop)
    out = io.StringIO()
    try:
        wait_ready(svc.url, 30, stop)
        sc = change(out, looks=True)
        sc.start(svc.url, svc.token, AppliedStore(), Screen(), stop)
        sc.post_now()  # as if the first look had ended; the citizen never comes back
        sc.finish(5.0)
    finally:
        stop.set()
        svc.stop()
    assert sc.applied_s is not None and sc.shown_after is None
    assert not sc.ok and "never showed Nguyễn T. T*** again" in sc.error, out.getvalue()
    result = DemoResult(url="", people=[], events=[], matched=[], status_change=sc)
    assert summarise(result, io.StringIO()) == 1


def test_a_refused_post_fails_the_demo(tmp_path: Path, broker: MosquittoBroker) -> None:
    stop = threading.Event()
    svc = district_with_one_dossier(tmp_path, broker, stop)
    out = io.StringIO()
    try:
        wait_ready(svc.url, 30, stop)
        sc = change(out, looks=False)
        sc.start(svc.url, "w" * 64, AppliedStore(), Screen(), stop)  # the wrong token
        sc.post_now()
        sc.finish(5.0)
        assert svc.log.head_seq == 2  # nothing got in
    finally:
        stop.set()
        svc.stop()
    assert not sc.ok and "refused" in sc.error and "bearer token" in sc.error, sc.error


def screen_of(status: DossierStatus, session: str, decided_unix_s: float) -> dict[str, Any]:
    """The kiosk page's data for a matched screen of the test's citizen, as the kiosk
    builds it from the terminal's display message."""
    d = Dossier(code=CODE, citizen_id="cd-0001", procedure="Đăng ký khai sinh",
                status=status, stage="Phòng Tư pháp", received_on="2026-11-02")
    msg = dpb.SessionEvent(session_id=session, state=dpb.SESSION_STATE_MATCHED,
                           time_unix_ms=int(decided_unix_s * 1000),
                           match=dpb.Match(masked_name="Nguyễn T. T***",
                                           dossiers=[summary_pb(d)]))
    return event_view(msg)


def test_the_kiosk_check_tells_a_look_before_the_change_from_a_lost_change(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    """The first look was not matched: the change is posted by the deadline before the
    second look. A look the terminal decided before it had the change may show the old
    status; one decided after it must show the new status, else the demo fails."""
    stop = threading.Event()
    svc = district_with_one_dossier(tmp_path, broker, stop)
    outs = [io.StringIO(), io.StringIO()]
    try:
        wait_ready(svc.url, 30, stop)
        good, bad = (change(out, looks=True) for out in outs)
        screens = [Screen(), Screen()]
        good.start(svc.url, svc.token, AppliedStore(), screens[0], stop)
        good.post_by(time.monotonic() + 0.1)
        wait_for(lambda: good.applied_s is not None, 20, "the change posted and applied")
        assert "not matched yet; posting the change before the planned second look" \
            in outs[0].getvalue()
        # decided 5 s ago, before the change arrived: the old status, not a failure
        screens[0].update(screen_of(DossierStatus.PROCESSING, "s1", time.time() - 5))
        wait_for(lambda: "looked before the change arrived" in outs[0].getvalue(), 10,
                 "the early look noticed")
        assert not good.done.is_set()
        screens[0].update(screen_of(DossierStatus.RESULT_READY, "s2", time.time()))
        assert good.done.wait(10) and good.ok and good.shown_after is DossierStatus.RESULT_READY
        good.finish(1.0)
        # the same with another event id would be a new change: run the lost-change case
        # against the duplicate answer of the same event (applied before, same seq)
        bad.start(svc.url, svc.token, AppliedStore(), screens[1], stop)
        bad.post_now()
        wait_for(lambda: bad.applied_s is not None, 20, "the duplicate answered")
        assert "duplicate, change 3" in outs[1].getvalue()
        # decided after the terminal applied the change, yet the old status: a lost change
        screens[1].update(screen_of(DossierStatus.PROCESSING, "s3", time.time() + 1))
        assert bad.done.wait(10)
        bad.finish(1.0)
    finally:
        stop.set()
        svc.stop()
    assert not bad.ok and "still showed processing at the next look, after the terminal " \
        "had applied the change" in bad.error, outs[1].getvalue()
