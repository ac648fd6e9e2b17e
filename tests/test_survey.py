"""Survey QR hand-off, unit level: the shared rules (sync/survey.py), the district's token
store and answer rules (district/survey.py, a real SQLite log file), the terminal's
offers (edge/api/survey.py, a real outbox file) and the settings (district/config.py)."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import pytest

from core.errors import ConfigError, MessageRejected
from district.config import load_district_config
from district.log import DistrictLog
from district.survey import (
    MAX_COMMENT_CHARS,
    AddressLimiter,
    Offer,
    SurveyStore,
    check_offer,
    survey_answers,
)
from edge.api.survey import SurveyOffers
from edge.session.audit import OutboxReporter
from edge.syncclient.outbox import to_pb
from motcua.cli import main
from proto import sync_pb2 as pb
from sync.survey import (
    BAD_SURVEY,
    TOKEN_RE,
    PublishedSurvey,
    check_base_url,
    new_token,
    survey_from_pb,
    token_sha256,
)
from sync.wire import PROTOCOL_VERSION
from tests.sync_helpers import DISTRICT, add_citizens, new_district

LIFETIME = 1800.0
T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "district.sqlite"
    new_district(path, dim=16).close()
    return path


def offer(token: str, session: str = "s-1", terminal: str = "t1", citizen: str = "c1",
          at: float = T0) -> Offer:
    return Offer(token_sha256(token), terminal, session, citizen, at)


# ---- shared rules ----------------------------------------------------------------------

def test_tokens_are_opaque_random_and_144_bits() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(TOKEN_RE.match(t) for t in tokens)
    # 24 base64url characters = 144 bits
    assert {len(t) for t in tokens} == {24}


@pytest.mark.parametrize("url", [
    "https://khaosat.quan1.gov.vn", "https://dv.example.vn:8443/motcua/khao-sat/",
    "http://127.0.0.1:8470", "http://localhost:1"])
def test_base_url_accepted(url: str) -> None:
    assert check_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url,why", [
    ("", "printable"), ("ftp://x.vn", "https://host"), ("http://khaosat.quan1.gov.vn", "https"),
    ("https://a.vn/?q=1", "query"), ("https://a.vn/#x", "query"),
    ("https://u:p@a.vn", "user name"), ("https://a.vn/a b", "path"),
    ("https://a.vn/<script>", "path"), ("https://a.vn/" + "x" * 200, "printable"),
    ("https://a.vn/../x", "path"), ("https://a.vn:99999", "not a URL"),
    ("https://quận1.vn", "printable")])
def test_base_url_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_base_url(url)


def test_manifest_survey_is_checked_on_the_terminal() -> None:
    assert survey_from_pb(pb.Manifest()) is None
    good = pb.Manifest(survey=pb.SurveySettings(base_url="https://ks.vn/", token_lifetime_s=600))
    assert survey_from_pb(good) == PublishedSurvey("https://ks.vn", 600)
    for bad in (pb.SurveySettings(base_url="http://evil.example", token_lifetime_s=600),
                pb.SurveySettings(base_url="https://ks.vn", token_lifetime_s=0)):
        with pytest.raises(MessageRejected) as err:
            survey_from_pb(pb.Manifest(survey=bad))
        assert err.value.reason == BAD_SURVEY


def test_config_is_off_by_default_and_checked(tmp_path: Path) -> None:
    assert load_district_config(None).survey.enabled is False
    cfg = tmp_path / "d.toml"
    cfg.write_text('[survey]\nenabled = true\n')
    with pytest.raises(ConfigError, match="survey.base_url: required"):
        load_district_config(cfg)
    cfg.write_text('[survey]\nenabled = true\nbase_url = "http://ks.example.vn"\n')
    with pytest.raises(ConfigError, match="survey.base_url: https is required"):
        load_district_config(cfg)
    cfg.write_text('[survey]\nenabled = true\nbase_url = "https://ks.vn"\n'
                   'token_lifetime_s = 10\n')
    with pytest.raises(ConfigError, match="survey.token_lifetime_s"):
        load_district_config(cfg)
    cfg.write_text('[survey]\nenabled = true\nbase_url = "https://ks.vn/"\n'
                   'trusted_proxies = ["proxy.local"]\n')
    with pytest.raises(ConfigError, match=r"survey.trusted_proxies\[0\]: an IP address"):
        load_district_config(cfg)
    cfg.write_text('[survey]\nenabled = true\nbase_url = "https://ks.vn/"\n'
                   'trusted_proxies = ["127.0.0.1"]\n')
    s = load_district_config(cfg).survey
    assert (s.enabled, s.base_url, s.token_lifetime_s, s.trusted_proxies) == (
        True, "https://ks.vn/", 1800, ("127.0.0.1",))


# ---- the terminal's offers ---------------------------------------------------------------

def test_terminal_offers_only_when_enabled_once_per_session_and_reports_the_hash(
        tmp_path: Path) -> None:
    outbox = OutboxReporter.in_state_dir(tmp_path)
    offers = SurveyOffers(outbox, "t1")
    assert offers.offer("s-1", "c0000001") == ""  # off by default: no QR, no report
    assert outbox.read() == []
    offers.configure(PublishedSurvey("https://ks.vn/q1", 1800))
    url = offers.offer("s-2", "c0000001")
    assert url.startswith("https://ks.vn/q1/s/")
    token = url.rsplit("/", 1)[1]
    assert TOKEN_RE.match(token) and "c0000001" not in url
    assert offers.offer("s-2", "c0000001") == url  # the same session: the same QR
    other = offers.offer("s-3", "c0000002")
    assert other != url
    lines = outbox.read()
    assert [(e["kind"], e["session"], e["citizen_id"]) for e in lines] == [
        ("survey_offer", "s-2", "c0000001"), ("survey_offer", "s-3", "c0000002")]
    # the outbox holds the hash, never the token
    assert lines[0]["token_sha256"] == token_sha256(token).hex()
    assert token not in (tmp_path / "outbox" / "reports.jsonl").read_text()
    rep = to_pb(lines[0], terminal_id="t1", district_id=DISTRICT)
    assert rep.kind == pb.TerminalReport.KIND_SURVEY_OFFER
    assert rep.survey_token_sha256 == token_sha256(token)
    # a citizen deleted meanwhile: the terminal blanks their id in the outbox, and the
    # offer still goes out (naming nobody) rather than sitting there for ever
    assert outbox.redact_citizens(lambda c: c != "c0000002") == 1
    redacted = to_pb(outbox.read()[1], terminal_id="t1", district_id=DISTRICT)
    assert redacted.citizen_id == "" and len(redacted.survey_token_sha256) == 32
    o = check_offer(redacted, terminal="t1", district=DISTRICT,
                    now=datetime.datetime.fromisoformat(redacted.time).timestamp())
    assert o.citizen_id == ""
    offers.configure(None)  # the district switched it off
    assert offers.offer("s-4", "c0000001") == ""


def test_offer_report_fields_are_checked() -> None:
    now = T0
    stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat()
    good = pb.TerminalReport(protocol_version=PROTOCOL_VERSION, terminal_id="t1",
                             district_id=DISTRICT, kind=pb.TerminalReport.KIND_SURVEY_OFFER,
                             session_id="s-1", time=stamp, citizen_id="c1",
                             survey_token_sha256=b"\x01" * 32)
    o = check_offer(good, terminal="t1", district=DISTRICT, now=now)
    assert (o.terminal_id, o.session_id, o.citizen_id, o.offered_at) == ("t1", "s-1", "c1", now)
    bad: list[tuple[dict[str, object], str]] = [
        ({"terminal_id": "t2"}, "topic"), ({"district_id": "other"}, "topic"),
        ({"survey_token_sha256": b"\x01" * 31}, "32 bytes"), ({"citizen_id": "a/b"}, "citizen"),
        ({"session_id": "a/b"}, "session"), ({"session_id": "x" * 129}, "session"),
        ({"rating": 3}, "no rating"), ({"time": "yesterday"}, "time"),
        ({"time": "2020-01-01T00:00:00+00:00"}, "too old"),
        ({"kind": pb.TerminalReport.KIND_RATING}, "kind")]
    for change, why in bad:
        rep = pb.TerminalReport()
        rep.CopyFrom(good)
        for k, v in change.items():
            setattr(rep, k, v)
        with pytest.raises(ValueError, match=why):
            check_offer(rep, terminal="t1", district=DISTRICT, now=now)


# ---- the district's store and answer rules -----------------------------------------------

def test_token_states_and_one_answer_per_token(db: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    store = SurveyStore(db, LIFETIME)
    tok = new_token()
    assert store.status(tok, now=T0) == "unknown"  # never offered (or not arrived yet)
    assert store.answer(tok, 5, "", now=T0) == "unknown"
    assert store.add_offers([offer(tok)], now=T0 + 1) == 1
    assert store.status(tok, now=T0 + 2) == "open"
    assert store.status("not a token!", now=T0) == "unknown"
    assert store.answer(tok, 4, "Nhanh, chu đáo", now=T0 + 60) == "ok"
    assert store.answer(tok, 1, "again", now=T0 + 61) == "used"
    assert store.status(tok, now=T0 + 62) == "used"
    [a] = store.answers()
    assert (a.terminal_id, a.session_id, a.citizen_id, a.rating, a.comment) == (
        "t1", "s-1", "c1", 4, "Nhanh, chu đáo")
    assert a.time.startswith("2027-01-15T08:01:00")
    with pytest.raises(ValueError):
        store.answer(new_token(), 6, "", now=T0)
    with pytest.raises(ValueError):
        store.answer(new_token(), 3, "x" * (MAX_COMMENT_CHARS + 1), now=T0)
    store.close()
    assert [x.rating for x in survey_answers(db)] == [4]
    # the operator's listing (the comment came from a phone: printed inert)
    assert main(["district", "survey-answers", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Nhanh, chu đáo" in out and "s-1" in out and "1 answer(s)" in out


def test_expiry_counts_from_the_terminal_clock_capped_at_arrival(db: Path) -> None:
    store = SurveyStore(db, LIFETIME)
    late, ahead = new_token(), new_token()
    # shown 20 min before it reached the district (terminal offline): 10 min are left
    store.add_offers([offer(late, "s-1", at=T0 - 1200)], now=T0)
    assert store.status(late, now=T0 + 599) == "open"
    assert store.status(late, now=T0 + 600) == "expired"
    assert store.answer(late, 5, "", now=T0 + 601) == "expired"
    # a terminal clock an hour ahead buys no extra time
    store.add_offers([offer(ahead, "s-2", at=T0 + 3600)], now=T0)
    assert store.status(ahead, now=T0 + LIFETIME) == "expired"
    # old unanswered offers are pruned a day after they expired; answers stay
    assert store.prune(now=T0 + LIFETIME + 86400 + 1) == 2
    assert store.offer_count() == 0
    store.close()


def test_a_known_token_or_session_cannot_be_taken_over(db: Path) -> None:
    store = SurveyStore(db, LIFETIME)
    tok = new_token()
    assert store.add_offers([offer(tok, "s-1", "t1", "c1")], now=T0) == 1
    # terminal t2 replays t1's token hash for its own session and citizen: ignored
    assert store.add_offers([offer(tok, "s-9", "t2", "c2")], now=T0) == 0
    # t1 re-offers the same session with another token (a resend or a forgery): ignored
    assert store.add_offers([offer(new_token(), "s-1", "t1", "c1")], now=T0) == 0
    assert store.answer(tok, 2, "", now=T0 + 5) == "ok"
    [a] = store.answers()
    assert (a.terminal_id, a.session_id, a.citizen_id) == ("t1", "s-1", "c1")
    store.close()


def test_concurrent_answers_to_one_token_store_one(db: Path) -> None:
    """16 threads over 4 connections (as good as 4 processes: each its own SQLite
    connection, BEGIN IMMEDIATE) answer the same token at once: one wins."""
    stores = [SurveyStore(db, LIFETIME) for _ in range(4)]
    tok = new_token()
    stores[0].add_offers([offer(tok)], now=T0)
    start = threading.Barrier(16)
    verdicts: list[str] = []
    lock = threading.Lock()

    def answer(i: int) -> None:
        start.wait()
        v = stores[i % 4].answer(tok, 1 + i % 5, f"answer {i}", now=T0 + 10)
        with lock:
            verdicts.append(v)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(verdicts) == ["ok"] + ["used"] * 15
    assert len(stores[0].answers()) == 1
    for s in stores:
        s.close()


def test_deleting_a_citizen_blanks_their_survey_rows(db: Path) -> None:
    dlog = DistrictLog.open(db)
    [cid] = add_citizens(dlog, 1)
    store = SurveyStore(db, LIFETIME)
    tok = new_token()
    store.add_offers([offer(tok, citizen=cid)], now=T0)
    assert store.answer(tok, 5, "Chị Lan ở quầy 3 rất nhiệt tình", now=T0 + 5) == "ok"
    dlog.delete_citizen(cid)
    [a] = store.answers()
    assert (a.citizen_id, a.comment, a.rating, a.session_id) == ("", "", 5, "s-1")
    store.close()
    dlog.close()


def test_address_limiter_bounds_each_address_and_memory() -> None:
    now = [0.0]
    lim = AddressLimiter(per_s=0.5, burst=3, max_addresses=4, clock=lambda: now[0])
    assert [lim.admit("203.0.113.7") for _ in range(4)] == [True, True, True, False]
    assert lim.admit("203.0.113.8")  # another address has its own bucket
    # an IPv6 client owns its /64: the whole prefix shares one bucket
    assert [lim.admit(f"2001:db8::{i}") for i in range(4)] == [True, True, True, False]
    now[0] = 2.0  # one more after 2 s at 0.5/s
    assert lim.admit("203.0.113.7") and not lim.admit("203.0.113.7")
    for i in range(10):
        lim.admit(f"198.51.100.{i}")
    assert len(lim._buckets) <= 4


def test_an_answer_from_a_not_me_session_names_no_citizen(db: Path) -> None:
    """The citizen shown pressed "not me" (before or after the phone answered): the
    answer stays, linked to the session, but to no citizen."""
    dlog = DistrictLog.open(db)
    store = SurveyStore(db, LIFETIME)
    tok = new_token()
    store.add_offers([offer(tok, "s-7", citizen="c9")], now=T0)
    assert store.answer(tok, 1, "", now=T0 + 5) == "ok"
    assert [(a.citizen_id, a.disputed) for a in store.answers()] == [("c9", False)]
    dlog.add_report(terminal_id="t1", session_id="s-7", kind="not_me",
                    time="2027-01-15T08:00:03+00:00", citizen_id="c9", rating=0, score=0.6)
    [a] = store.answers()
    assert (a.session_id, a.citizen_id, a.disputed, a.rating) == ("s-7", "", True, 1)
    store.close()
    dlog.close()
