"""The district operator console (district/console): logins, CSRF, sessions, escaping,
the deletion confirmations and the staff-rating join, against a real ``DistrictService``
over TLS on a free port with a real Mosquitto and terminal states published retained
(tests/console_helpers.py). The Chromium walk-through is tests/test_console_page.py."""

from __future__ import annotations

import datetime
import html
import http.client
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.errors import ConfigError
from district.config import ConsoleSection, load_district_config
from district.console import data
from district.console.auth import (
    Authenticator,
    FailureBound,
    Sessions,
    add_user,
    hash_password,
    read_users,
    verify_password,
)
from district.console.i18n import T
from district.console.tlscert import make_self_signed
from district.fleet import FleetCache, FleetRow
from district.ingest import Ingestor, parse_event
from district.log import DistrictLog
from district.service import DistrictService
from district.survey import Offer, SurveyStore
from proto import sync_pb2 as pb
from sync.changes import DossierStatus
from sync.survey import new_token, token_sha256
from tests.broker import MosquittoBroker
from tests.console_helpers import (
    DIM,
    DISTRICT,
    PASSWORD,
    REPO,
    SURVEY_COMMENT,
    USER,
    XSS,
    Browser,
    Rig,
    console_files,
    csrf_of,
    dossier,
    emb,
    iso,
    rig,
    seed,
    tls_console_config,
    write_console_config,
)
from tests.district_helpers import serve_process
from tests.sync_helpers import wait_for

__all__ = ["rig"]  # the fixture

# ---- against the real service ------------------------------------------------------------


def test_login_csrf_sessions_and_escaping(rig: Rig) -> None:
    b = Browser(rig)
    # with the console on, the whole server is HTTPS (the ingest API's health too)
    assert rig.svc.url.startswith("https://")
    assert b.get("/healthz")[0] == 200
    # no session: every page sends to the login page
    status, headers, _ = b.get("/console/fleet")
    assert status == 303 and headers["location"].startswith("/console/login")
    # the login page: strict headers, a CSRF token, Vietnamese by default
    status, headers, page = b.get("/console/login")
    assert status == 200
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src" not in headers["content-security-policy"]  # no script at all
    assert "<script" not in page and "Đăng nhập" in page
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    # a login without the form's token: 403
    assert b.post("/console/login", {"user": USER, "password": PASSWORD})[0] == 403
    # the wrong password: 401, the page says so, no session cookie
    status, page = b.login(password="sai-mật-khẩu-rồi")
    assert status == 401 and T["vi"]["login_wrong"] in page
    assert "__Host-motcua-console" not in b.cookies
    # the right one: a session cookie, HttpOnly, Secure, SameSite=Strict
    status, where = b.login()
    assert (status, where) == (303, "/console/fleet")
    session_id = b.cookies["__Host-motcua-console"]
    assert len(session_id) >= 40
    # the fleet page: what a terminal sent is shown escaped, never as markup
    status, headers, page = b.get("/console/fleet")
    assert status == 200 and "t-1" in page and "t-3" in page
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    snap = re.search(r'<tr class="online">\s*<td class="tid">t-1</td>(.*?)</tr>', page,
                     re.S)
    assert snap and " UTC</td>" in snap.group(1)  # t-1's snapshot, sent by the publisher
    # a POST without the CSRF token, or with another one, changes nothing: 403
    form = {"terminal": "t-1", "session": "s-1"}
    assert b.post("/console/reports/review", form)[0] == 403
    assert b.post("/console/reports/review", {**form, "csrf": "x" * 43})[0] == 403
    assert all(not r[5] for r in rig.dlog.reports_reviewed("not_me"))
    # the reports page shows the forged terminal id escaped
    status, _h, page = b.get("/console/reports")
    assert status == 200 and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<img src=x" not in page
    token = csrf_of(page)
    # with the token: reviewed, in the district log
    assert b.post("/console/reports/review", {**form, "csrf": token})[0] == 303
    reviewed = {r[1]: r[5] for r in rig.dlog.reports_reviewed("not_me")}
    assert reviewed == {"s-1": USER, "s-2": ""}
    # oversized or non-form bodies are refused before any parsing
    status = b.request("POST", "/console/reports/review", body=b"a=" + b"x" * 9000)[0]
    assert status == 413
    status = b.request("POST", "/console/reports/review", body=b"{}",
                       ctype="application/json")[0]
    assert status == 415
    # the session expires: the server's clock moves past the idle limit
    sessions = rig.svc.console.sessions
    real = sessions.clock
    sessions.clock = lambda: real() + 31 * 60  # type: ignore[method-assign]
    status, headers, _ = b.get("/console/fleet")
    assert status == 303 and "expired=1" in headers["location"]
    sessions.clock = real  # type: ignore[method-assign]
    assert b.get("/console/fleet")[0] == 303  # an expired session stays ended
    # log in again, log out: the session id is dead afterwards
    assert b.login()[0] == 303
    page = b.get("/console/fleet")[2]
    sid = b.cookies["__Host-motcua-console"]
    assert b.post("/console/logout", {"csrf": csrf_of(page)})[0] == 303
    b.cookies["__Host-motcua-console"] = sid
    assert b.get("/console/fleet")[0] == 303


#: every page behind the session, and every form action behind the session + its token
PAGES = ("/console/fleet", "/console/reports", "/console/deletions", "/console/ratings",
         "/console/calibration")
ACTIONS = ("/console/logout", "/console/reports/review", "/console/reports/suspend")


def test_every_page_needs_a_session_and_every_action_its_token(rig: Rig) -> None:
    """No session: each page and each action sends to the login page and does nothing;
    a session without its CSRF token (none, another session's, a made-up one): 403 and
    nothing done (no report reviewed, no face suspended, the session not ended)."""
    report = {"terminal": "t-1", "session": "s-1"}  # a "not me" report of the seed
    head = rig.dlog.head_seq

    def untouched() -> bool:
        return rig.dlog.head_seq == head and all(
            not r[5] for r in rig.dlog.reports_reviewed("not_me"))

    b = Browser(rig)
    for path in PAGES:
        status, headers, _ = b.get(path)
        assert status == 303 and headers["location"].startswith("/console/login"), path
    other = Browser(rig)
    assert other.login()[0] == 303
    others_token = csrf_of(other.get("/console/fleet")[2])
    for path in ACTIONS:
        status, headers, _ = b.post(path, {**report, "csrf": others_token})
        assert status == 303 and headers["location"].startswith("/console/login"), path
    assert untouched()
    assert b.login()[0] == 303
    own_token = csrf_of(b.get("/console/fleet")[2])
    for path in ACTIONS:
        for token in (None, others_token, "x" * 43):
            form = report if token is None else {**report, "csrf": token}
            assert b.post(path, form)[0] == 403, (path, token)
    assert untouched()
    for path in PAGES:
        assert b.get(path)[0] == 200, path
    # the token of the session itself opens them (logout last: it ends the session)
    assert b.post("/console/reports/review", {**report, "csrf": own_token})[0] == 303
    assert b.post("/console/logout", {"csrf": own_token})[0] == 303
    assert b.get("/console/fleet")[0] == 303


def test_lockout_after_failures(rig: Rig) -> None:
    b = Browser(rig)
    for _ in range(3):
        assert b.login(password="sai-mật-khẩu-rồi")[0] == 401
    # locked now: even the right password is refused, with its own message
    status, page = b.login()
    assert status == 429 and T["vi"]["login_locked"] in page
    assert "__Host-motcua-console" not in b.cookies


def test_deletions_ratings_calibration_pages(rig: Rig) -> None:
    b = Browser(rig)
    assert b.login()[0] == 303
    status, _h, page = b.get("/console/deletions?lang=en")
    assert status == 200 and "Pending" in page
    row = re.search(rf'<tr id="deletion-{rig.deleted_seq}".*?</tr>', page, re.S)
    assert row, page
    confirmed = re.search(r'class="confirmed-terminals">(.*?)</td>', row.group(0), re.S)
    pending = re.search(r'class="pending-terminals">(.*?)</td>', row.group(0), re.S)
    assert confirmed and pending
    assert "t-1" in confirmed.group(1) and "t-2" not in confirmed.group(1)
    assert "t-2" in pending.group(1) and "t-3" in pending.group(1)
    today = datetime.datetime.now(datetime.timezone.utc).date()
    yesterday = today - datetime.timedelta(days=1)
    status, _h, page = b.get(f"/console/ratings?from={yesterday}&to={today}")
    assert status == 200
    avg = dict(re.findall(r'<td class="name">([^<]*)</td><td class="num avg">([^<]*)</td>',
                          page))
    # Cường: 4 at the kiosk + 2 from the phone; the phone's 1s are the same session as a
    # kiosk rating (Bình's 5) and a session reported "not me": neither counts
    assert avg["Trần Thị Bình"] == "4.00" and avg["Lê Văn Cường"] == "3.00"
    assert avg["Quầy 1"] == "4.00" and avg["Quầy 2"] == "3.00"
    assert re.search(r'id="unattributed">1<', page)
    assert re.search(r'id="survey-same-session">1<', page)
    assert re.search(r'id="survey-disputed">1<', page)
    comments = re.search(r'<table id="survey-comments">.*?</table>', page, re.S)
    assert comments, page
    assert html.escape(SURVEY_COMMENT, quote=False) in comments.group(0)
    assert XSS not in page and "Lê Văn Cường" in comments.group(0)
    assert "N*** V**" not in comments.group(0)  # never the citizen's name
    assert b.get("/console/ratings?from=2026-13-01&to=x")[0] == 400
    status, _h, page = b.get("/console/calibration")  # English stays chosen
    assert status == 200 and "Not calibrated yet" in page and 'lang="en"' in page
    status, _h, page = b.get("/console/calibration?lang=vi")
    assert status == 200 and "Chưa hiệu chỉnh" in page and 'lang="vi"' in page


def test_console_through_a_real_serve_process(tmp_path: Path, broker: MosquittoBroker
                                              ) -> None:
    """``motcua district serve`` as a process, the console on: readyz over TLS against
    its self-signed certificate, log in, the fleet and ratings pages, SIGTERM ends it."""
    db = tmp_path / "district.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id="test-emb", dim=DIM).close()
    dlog = DistrictLog.open(db)
    try:
        seed(dlog)
    finally:
        dlog.close()
    cfg, cert = tls_console_config(tmp_path, broker, db)
    port = load_district_config(cfg).ingest.listen.rsplit(":", 1)[1]
    b = Browser.at(cert, int(port))
    log = (tmp_path / "serve.log").open("w")  # a file: a full pipe would block the server
    proc = serve_process(cfg, stderr=log)

    def ready() -> bool:
        try:
            return b.get("/readyz")[0] == 200
        except OSError:  # not listening yet (or exited: checked below)
            return proc.poll() is not None
    try:
        wait_for(ready, 60, "the service ready over TLS")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        # plain http is refused: the server speaks TLS only
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).close()
        assert b.login()[0] == 303
        status, _h, page = b.get("/console/fleet")
        assert status == 200 and T["vi"]["fleet_title"] in page
        status, _h, page = b.get("/console/ratings")
        assert status == 200 and html.escape(SURVEY_COMMENT, quote=False) in page
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


# ---- units -----------------------------------------------------------------------------


def test_passwords_and_users_file(tmp_path: Path) -> None:
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("x", "scrypt:bad")
    users = tmp_path / "users"
    assert add_user(users, "an", "mười ký tự ít nhất")
    assert users.stat().st_mode & 0o777 == 0o600
    assert not add_user(users, "an", "một mật khẩu khác")  # replaced
    assert verify_password("một mật khẩu khác", read_users(users)["an"])
    with pytest.raises(ConfigError, match="10..1024"):
        add_user(users, "binh", "short")
    users.chmod(0o644)
    with pytest.raises(ConfigError, match="console.users_file: .* readable by others"):
        read_users(users)


def test_authenticator_bounds_per_user_and_per_address(tmp_path: Path) -> None:
    users = tmp_path / "users"
    add_user(users, "an", "mật-khẩu-đủ-dài")
    add_user(users, "binh", "mật-khẩu-khác-1")
    now = [1000.0]
    auth = Authenticator(users, max_failures=3, lockout_s=60, clock=lambda: now[0])
    assert auth.login("an", "wrong-one", "10.0.0.1") == "wrong"
    assert auth.login("nobody", "wrong-one", "10.0.0.1") == "wrong"  # unknown user too
    assert auth.login("an", "wrong-one", "10.0.0.2") == "wrong"
    # the address 10.0.0.1 has 2 failures, the user "an" 2; one more on "an" locks it
    assert auth.login("an", "wrong-one", "10.0.0.3") == "wrong"
    assert auth.login("an", "mật-khẩu-đủ-dài", "10.0.0.4") == "locked"  # per user
    assert auth.login("binh", "mật-khẩu-khác-1", "10.0.0.4") == "ok"  # others unaffected
    # the address bound: 3 failures from one address on different user names
    for name in ("x1", "x2", "x3"):
        assert auth.login(name, "nope-nope", "10.9.9.9") == "wrong"
    assert auth.login("binh", "mật-khẩu-khác-1", "10.9.9.9") == "locked"
    now[0] += 61  # the lockout ends
    assert auth.login("an", "mật-khẩu-đủ-dài", "10.0.0.4") == "ok"
    assert auth.login("binh", "mật-khẩu-khác-1", "10.9.9.9") == "ok"
    bound = FailureBound(max_failures=2, window_s=10, clock=lambda: now[0])
    bound.fail("k")
    now[0] += 11
    bound.fail("k")  # the first one is outside the window
    assert not bound.locked("k")


def test_sessions_expire() -> None:
    now = [0.0]
    s = Sessions(lifetime_s=3600, idle_s=600, clock=lambda: now[0], max_sessions=2)
    a = s.create("an")
    now[0] = 599
    assert s.get(a.sid) is a  # used: the idle timer restarts
    now[0] = 1198
    assert s.get(a.sid) is a
    now[0] = 1799
    assert s.get(a.sid) is None  # idle for 601 s
    b = s.create("an")
    for t in range(1800, 1800 + 3600, 500):
        now[0] = t
        assert s.get(b.sid) is b
    now[0] = 1800 + 3601
    assert s.get(b.sid) is None  # the absolute lifetime
    c, d, e = s.create("a"), s.create("b"), s.create("c")
    assert s.get(c.sid) is None and s.get(d.sid) is d and s.get(e.sid) is e  # bounded
    assert s.get("") is None and s.get("x" * 1000) is None


def test_join_rule() -> None:
    h = [
        ("c", "A", "processing", "Q1", "off-a", 10.0),
        ("c", "A", "returned", "Q1", "off-a", 20.0),
        ("c", "B", "received", "Q2", "off-b", 30.0),
        ("c", "B", "processing", "Q3", "off-c", 40.0),
    ]
    assert data.join_rating(h, 5.0) is None  # no dossier yet
    assert data.join_rating(h, 15.0) == ({"off-a"}, {"Q1"})  # A open then
    assert data.join_rating(h, 25.0) == ({"off-a"}, {"Q1"})  # none open: updated last
    assert data.join_rating(h, 35.0) == ({"off-b"}, {"Q2"})  # B open, A finished
    assert data.join_rating(h, 45.0) == ({"off-c"}, {"Q3"})  # B moved counter/officer
    two_open = [*h[:1], ("c", "C", "received", "Q1", "off-a", 12.0)]
    assert data.join_rating(two_open, 13.0) == ({"off-a"}, {"Q1"})  # counted once


def test_ratings_averages_from_the_log(tmp_path: Path) -> None:
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id=DISTRICT,
                              embedder_id="test-emb", dim=DIM)
    base = datetime.datetime(2026, 11, 10, tzinfo=datetime.timezone.utc).timestamp()
    clock = [base]
    dlog.clock = lambda: clock[0]
    dlog.upsert_citizen("c1", masked_name="N*** A", embeddings=emb(0))
    dlog.upsert_citizen("c2", masked_name="N*** B", embeddings=emb(1))
    dlog.upsert_dossier(dossier("D1", "c1"), officer="Bình")
    clock[0] = base + 3600
    dlog.update_dossier("D1", status=DossierStatus.RETURNED)  # officer kept
    clock[0] = base + 7200
    dlog.upsert_dossier(dossier("D2", "c2", counter="Quầy 2"), officer="Cường")
    clock[0] = base + 86400 * 2
    dlog.update_dossier("D2", counter="Quầy 3", officer="Dung")
    rows = [
        ("t", "r1", "rating", iso(base + 60), "c1", 5, 0.0),  # D1 open: Bình, Quầy 1
        ("t", "r2", "rating", iso(base + 4000), "c1", 3, 0.0),  # D1 returned: still D1
        ("t", "r3", "rating", iso(base + 8000), "c2", 2, 0.0),  # D2: Cường, Quầy 2
        ("t", "r4", "rating", iso(base + 86400 * 3), "c2", 4, 0.0),  # D2 now Dung, Quầy 3
        ("t", "r5", "rating", iso(base - 60), "c2", 1, 0.0),  # before any dossier
        ("t", "r6", "rating", iso(base + 61), "", 1, 0.0),  # no citizen
    ]
    dlog.add_reports(rows)
    day = datetime.date(2026, 11, 10)
    s = data.ratings(dlog, day - datetime.timedelta(days=1), day + datetime.timedelta(days=5))
    assert s.total == 6 and s.unattributed == 2
    assert {(a.key, a.count, a.mean) for a in s.officers} == {
        ("Bình", 2, 4.0), ("Cường", 1, 2.0), ("Dung", 1, 4.0)}
    assert {(a.key, a.count, a.mean) for a in s.counters} == {
        ("Quầy 1", 2, 4.0), ("Quầy 2", 1, 2.0), ("Quầy 3", 1, 4.0)}
    # the period picks ratings by their time (UTC days, inclusive)
    s = data.ratings(dlog, day, day)
    assert s.total == 4 and {a.key for a in s.officers} == {"Bình", "Cường"}
    with pytest.raises(ValueError):
        data.parse_period("2026-11-10", "2026-11-09")
    with pytest.raises(ValueError):
        data.parse_period("2025-01-01", "2026-11-09")
    # survey answers from phones join by the same rule, at the answer's time
    store = SurveyStore(tmp_path / "d.sqlite", lifetime_s=600)
    try:
        def answer(terminal: str, session: str, cid: str, at: float, stars: int,
                   comment: str) -> None:
            tok = new_token()
            assert store.add_offers([Offer(token_sha256(tok), terminal, session, cid, at)],
                                    now=at) == 1
            assert store.answer(tok, stars, comment, now=at + 30) == "ok"

        answer("t", "r3", "c2", base + 8000, 1, "trùng phiên")  # r3 rated at the kiosk too
        answer("t", "s1", "c2", base + 8100, 4, "")  # D2: Cường, Quầy 2
        answer("t", "s2", "c1", base + 8200, 5, "<b>tận tình</b>")  # D1 (returned): Bình
        answer("t", "s3", "c1", base + 8300, 1, "không phải tôi")  # disputed below
        answer("t", "s4", "c2", base - 600, 2, "")  # before any dossier
        dlog.add_reports([("t", "s3", "not_me", iso(base + 8290), "c1", 0, 0.7)])
    finally:
        store.close()
    s = data.ratings(dlog, day, day + datetime.timedelta(days=5))
    assert (s.total, s.survey_total, s.survey_same_session, s.survey_disputed) == (5, 4, 1, 1)
    assert s.unattributed == 1  # r6 (s4 is the day before the period)
    assert {(a.key, a.count, a.total, a.kiosk, a.survey) for a in s.officers} == {
        ("Bình", 3, 13, 2, 1), ("Cường", 2, 6, 1, 1), ("Dung", 1, 4, 1, 0)}
    s = data.ratings(dlog, day - datetime.timedelta(days=1), day)
    assert s.survey_total == 5 and s.unattributed == 2 + 1  # r5, r6; s4
    comments = data.survey_comments(dlog, day, day, limit=10)
    assert [(c.comment, c.officers, c.counters, c.disputed) for c in comments] == [
        ("không phải tôi", [], [], True),  # newest first; disputed: joined to no one
        ("<b>tận tình</b>", ["Bình"], ["Quầy 1"], False),
        ("trùng phiên", ["Cường"], ["Quầy 2"], False),
    ]
    assert len(data.survey_comments(dlog, day, day, limit=1)) == 1
    # a deleted citizen's handling history goes with them (right to be forgotten)
    dlog.delete_citizen("c2")
    assert dlog.handling(["c2"]) == []
    dlog.close()


def test_deletion_confirmation_rule(tmp_path: Path) -> None:
    assert data.has_applied(FleetRow("a", epoch=2, applied_seq=10), epoch=2, seq=10)
    assert not data.has_applied(FleetRow("a", epoch=2, applied_seq=9), epoch=2, seq=10)
    assert not data.has_applied(FleetRow("a", epoch=1, applied_seq=99), epoch=2, seq=10)
    assert not data.has_applied(FleetRow("a"), epoch=2, seq=10)  # no state seen
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id=DISTRICT,
                              embedder_id="test-emb", dim=DIM)
    dlog.upsert_citizen("c1", masked_name="N*** A", embeddings=emb(0))
    dlog.upsert_citizen("c2", masked_name="N*** B", embeddings=emb(1))
    d1 = dlog.delete_citizen("c1")
    dlog.upsert_citizen("c3", masked_name="N*** C", embeddings=emb(2))
    d2 = dlog.delete_citizen("c2")
    rows = [FleetRow("t-a", epoch=1, applied_seq=d2), FleetRow("t-b", epoch=1, applied_seq=d1),
            FleetRow("t-c", epoch=5, applied_seq=d2)]
    out = data.deletions(dlog, rows)
    assert [(d.seq, d.citizen_id, d.confirmed, d.pending) for d in out] == [
        (d2, "c2", ["t-a"], ["t-b", "t-c"]),
        (d1, "c1", ["t-a", "t-b"], ["t-c"]),
    ]
    dlog.close()


def test_ingest_officer_is_district_side_only(tmp_path: Path) -> None:
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id=DISTRICT,
                              embedder_id="test-emb", dim=DIM)
    dlog.upsert_citizen("c1", masked_name="N*** A", embeddings=emb(0))
    ing = Ingestor(dlog, None)
    ing.apply(parse_event({"event_id": "e1", "kind": "dossier.created", "version": 1, "data": {
        "code": "HS-9", "citizen_id": "c1", "procedure": "Đăng ký", "status": "received",
        "received_on": "2026-11-02", "counter": "Quầy 4", "officer": "Phạm Thu"}}))
    assert dlog.dossier_officer("HS-9") == "Phạm Thu"
    ing.apply(parse_event({"event_id": "e2", "kind": "dossier.status_changed", "version": 2,
                           "data": {"code": "HS-9", "status": "processing"}}))
    assert dlog.dossier_officer("HS-9") == "Phạm Thu"  # unchanged when not named
    ing.apply(parse_event({"event_id": "e3", "kind": "dossier.stage_changed", "version": 3,
                           "data": {"code": "HS-9", "stage": "Thẩm định",
                                    "officer": "Võ Minh"}}))
    assert dlog.dossier_officer("HS-9") == "Võ Minh"
    # what terminals get carries no officer: the changes as published
    for blob in dlog.changes(1, dlog.head_seq):
        assert b"Ph\xe1\xba\xa1m Thu" not in blob and "Võ Minh".encode() not in blob
    dlog.close()


def test_i18n_every_string_in_both_languages() -> None:
    assert set(T["vi"]) == set(T["en"])
    assert all(T["vi"][k] and T["en"][k] for k in T["vi"])
    used = set()
    for tpl in (REPO / "district" / "console" / "templates").glob("*.html"):
        used |= set(re.findall(r"t\('([a-z_]+)'", tpl.read_text()))
    used |= set(re.findall(r'message_key="([a-z_]+)"',
                           (REPO / "district" / "console" / "views.py").read_text()))
    assert used - set(T["vi"]) == set()


def test_config_refuses_console_without_tls(tmp_path: Path, broker: MosquittoBroker) -> None:
    db = tmp_path / "district.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id="test-emb", dim=DIM).close()
    users, cert, key = console_files(tmp_path)
    with pytest.raises(ConfigError, match="console.tls_cert_file: required"):
        load_district_config(write_console_config(tmp_path, broker, db, console=f"""
enabled = true
users_file = "{users}"
"""))
    with pytest.raises(ConfigError, match="console.users_file: required"):
        ConsoleSection(enabled=True, tls_cert_file=cert, tls_key_file=key).validate("console")
    with pytest.raises(ConfigError, match="console.session_hours"):
        ConsoleSection(session_hours=0).validate("console")
    # a key that is not the certificate's: named before serving
    other = tmp_path / "other"
    make_self_signed(other / "c.crt", other / "k.pem", ["localhost"])
    cfg = load_district_config(write_console_config(tmp_path, broker, db, console=f"""
enabled = true
users_file = "{users}"
tls_cert_file = "{cert}"
tls_key_file = "{other / 'k.pem'}"
"""))
    with pytest.raises(ConfigError, match="console.tls_cert_file: .* not a usable"):
        DistrictService(cfg)
    assert not load_district_config(None).console.enabled  # off by default


def test_console_commands(tmp_path: Path) -> None:
    users, cert, key = tmp_path / "u", tmp_path / "c.crt", tmp_path / "k.pem"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the files named by an enabled [console] that has none of them yet
    toml = tmp_path / "district.toml"
    toml.write_text(f'[console]\nenabled = true\nusers_file = "{users}"\n'
                    f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "motcua", "--config", str(toml), "district", "console-cert",
         "--host", "127.0.0.1"], text=True, capture_output=True, cwd=REPO, env=env,
        timeout=60)
    assert run.returncode == 0, run.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    run = subprocess.run(
        [sys.executable, "-m", "motcua", "--config", str(toml), "district", "console-user",
         "add", "lan"], input="một mật khẩu dài\n", text=True,
        capture_output=True, cwd=REPO, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert users.stat().st_mode & 0o777 == 0o600
    assert verify_password("một mật khẩu dài", read_users(users)["lan"])
    assert "một mật khẩu" not in users.read_text()
    run = subprocess.run(  # never over an existing pair
        [sys.executable, "-m", "motcua", "district", "console-cert", "--host", "x",
         "--cert", str(cert), "--key", str(key)], text=True, capture_output=True, cwd=REPO,
        env=env, timeout=60)
    assert run.returncode != 0 and "exists" in run.stderr




def test_suspend_face_from_a_not_me_report(rig: Rig) -> None:
    """The "suspend face" button acts on the report it is on: the district suspends the
    citizen that report names (not one the browser names), records the report with the
    suspension and marks it reviewed; a forged or unknown report changes nothing."""
    dlog = rig.svc.log
    dlog.upsert_citizen("c-sus", masked_name="N*** S", embeddings=emb(7))
    dlog.upsert_citizen("c-other", masked_name="N*** O", embeddings=emb(8))
    dlog.add_reports([("t-sus", "s-sus", "not_me", iso(time.time()), "c-sus", 0, 0.61)])
    b = Browser(rig)
    assert b.login()[0] == 303
    page = b.get("/console/reports")[2]
    assert re.search(r'<button class="suspend" type="submit">', page)
    token = csrf_of(page)
    report = {"terminal": "t-sus", "session": "s-sus"}
    assert b.post("/console/reports/suspend", report)[0] == 403  # no token
    assert not dlog.face_suspended("c-sus")
    # a report that does not exist, and a browser naming a citizen itself: refused
    assert b.post("/console/reports/suspend",
                  {"csrf": token, "terminal": "t-sus", "session": "nope"})[0] == 409
    assert b.post("/console/reports/suspend",
                  {"csrf": token, "citizen": "c-other"})[0] == 409
    assert not dlog.face_suspended("c-other")
    status, headers, _ = b.post("/console/reports/suspend", {"csrf": token, **report})
    seq = dlog.report_suspension("t-sus/s-sus")
    assert status == 303 and seq is not None
    assert headers["location"] == f"/console/reports?suspended={seq}"
    assert dlog.face_suspended("c-sus"), (seq, dlog.suspensions(), dlog.head_seq)
    assert not dlog.face_suspended("c-other")
    rows = {(t, sid): by for t, sid, _tm, _c, _sc, by, _at in dlog.reports_reviewed("not_me")}
    assert rows[("t-sus", "s-sus")] == USER
    assert str(seq) in b.get(headers["location"])[2]


def test_fleet_cache_bounds_what_terminals_send() -> None:
    cache = FleetCache(max_terminals=2)
    st = pb.TerminalState(epoch=3, applied_seq=9, version="v" * 5000, last_error=XSS,
                          updated_at_ms=int(time.time() * 1000), syncing=True)
    cache.update("t-1", state=st.SerializeToString())
    cache.update("t-1", status=b"online")
    cache.update("t-2", state=b"\xff\xff\xff")  # not a state message
    cache.update("t-3", status=b"online")  # beyond max_terminals: not kept
    cache.update("t-2", state=b"\x0a" * (17 * 1024))  # larger than a state ever is
    rows = {r.terminal_id: r for r in cache.rows(head=12)}
    assert set(rows) == {"t-1", "t-2"} and cache.refused == 1
    r1 = rows["t-1"]
    assert (r1.online, r1.epoch, r1.applied_seq, r1.lag, r1.syncing) == (True, 3, 9, 3, True)
    assert len(r1.version) == 200 and r1.last_error == XSS  # stored raw, escaped when shown
    assert rows["t-2"].last_error == "unreadable state message"
    assert rows["t-2"].applied_seq is None and rows["t-2"].lag is None


def test_an_older_log_gets_its_dossiers_handling_history(tmp_path: Path) -> None:
    """A log made before the officer existed: its current dossiers are recorded once at
    the next open (status and counter as of their last change, no officer)."""
    path = tmp_path / "d.sqlite"
    dlog = DistrictLog.create(path, district_id=DISTRICT, embedder_id="test-emb", dim=DIM)
    dlog.upsert_citizen("c1", masked_name="N*** A", embeddings=emb(0))
    dlog.upsert_dossier(dossier("D1", "c1", counter="Quầy 7"), officer="Bình")
    dlog.update_dossier("D1", status=DossierStatus.RESULT_READY)
    dlog.close()
    db = sqlite3.connect(path)  # as an older release left it
    db.execute("DROP TABLE dossier_handling")
    db.commit()
    db.close()
    dlog = DistrictLog.open(path)
    rows = dlog.handling(["c1"])
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [("D1", "result_ready", "Quầy 7", "")]
    assert rows[0][5] > 0  # the time of its last change
    dlog.close()
    dlog = DistrictLog.open(path)  # once only
    assert len(dlog.handling(["c1"])) == 1
    dlog.close()
