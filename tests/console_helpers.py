"""The operator console tests' rig: a real DistrictService with the console on (TLS on a
free port), a real Mosquitto, a seeded log and three terminals' retained states."""

from __future__ import annotations

import datetime
import http.client
import re
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from district.config import load_district_config
from district.console.auth import add_user
from district.console.tlscert import make_self_signed
from district.log import DistrictLog
from district.service import DistrictService
from district.survey import Offer, SurveyStore
from proto import sync_pb2 as pb
from sync.changes import Dossier, DossierStatus
from sync.mqtt import BrokerSettings, make_client
from sync.survey import new_token, token_sha256
from sync.topics import Topics
from tests.broker import MosquittoBroker
from tests.district_helpers import write_district_config
from tests.sync_helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
DISTRICT = "q9"
USER, PASSWORD = "chi.lan", "mật-khẩu-đủ-dài-1"
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
#: a survey comment (shown to staff on the ratings page, escaped)
SURVEY_COMMENT = "Chị hướng dẫn rất kỹ " + XSS
DIM = 4


def emb(i: int) -> np.ndarray:
    v = np.zeros((1, DIM), np.float32)
    v[0, i % DIM] = 1.0
    return v


def dossier(code: str, cid: str, status: DossierStatus = DossierStatus.PROCESSING,
            counter: str = "Quầy 1") -> Dossier:
    return Dossier(code=code, citizen_id=cid, procedure="Cấp giấy phép", status=status,
                   stage="", received_on="2026-11-02", appointment_on="", counter=counter)


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


@dataclass
class Rig:
    """A district service with the console on, seeded, and three terminals' states."""

    svc: DistrictService
    tmp: Path
    cert: Path
    dlog: DistrictLog  # a second connection to the service's log, for the test's checks
    deleted_seq: int
    broker: MosquittoBroker

    @property
    def port(self) -> int:
        return self.svc.port


def write_console_config(tmp: Path, broker: MosquittoBroker, db: Path, *,
                         console: str) -> Path:
    """The district's config (tests/district_helpers.py) with ``console`` as its
    ``[console]`` table."""
    return write_district_config(tmp, broker, district=DISTRICT, db=db,
                                 sections=f"[console]\n{console}")


def tls_console_config(tmp: Path, broker: MosquittoBroker, db: Path, extra: str = ""
                       ) -> tuple[Path, Path]:
    """The district's config with the console on over TLS (:func:`console_files`), and
    the certificate a client trusts; ``extra``: more lines of ``[console]``."""
    users, cert, key = console_files(tmp)
    return write_console_config(tmp, broker, db, console=f"""
enabled = true
users_file = "{users}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"
{extra}"""), cert


def console_files(tmp: Path) -> tuple[Path, Path, Path]:
    users, cert, key = tmp / "console-users", tmp / "tls" / "console.crt", tmp / "tls" / "k.pem"
    if not users.exists():
        add_user(users, USER, PASSWORD)
        make_self_signed(cert, key, ["127.0.0.1", "localhost"])
    return users, cert, key


def publish_states(broker: MosquittoBroker, states: dict[str, tuple[pb.TerminalState, bytes]]
                   ) -> None:
    """Retained state + status messages, as terminals publish them."""
    topics = Topics("motcua/v1", DISTRICT)
    c = make_client("test-terminals", BrokerSettings(host=broker.host, port=broker.port))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = []
        for tid, (st, status) in states.items():
            infos.append(c.publish(topics.state(tid), st.SerializeToString(), qos=1,
                                   retain=True))
            infos.append(c.publish(topics.status(tid), status, qos=1, retain=True))
        # t-1 asks for a snapshot: the fleet page shows when it was sent
        infos.append(c.publish(topics.request("t-1"), pb.SyncRequest(
            protocol_version=1, terminal_id="t-1", district_id=DISTRICT,
            kind=pb.SyncRequest.KIND_SNAPSHOT, request_id="r-1").SerializeToString(), qos=1))
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def seed(dlog: DistrictLog) -> int:
    """Citizens, dossiers with officers, a deletion, reports; returns the deletion's seq.
    The dossiers are an hour old, the reports a minute."""
    dlog.clock = lambda: time.time() - 3600
    for i, cid in enumerate(("c1", "c2", "c3")):
        dlog.upsert_citizen(cid, masked_name=f"N*** V** {i}", embeddings=emb(i))
    dlog.upsert_dossier(dossier("HS-1", "c1"), officer="Trần Thị Bình")
    dlog.upsert_dossier(dossier("HS-2", "c2", counter="Quầy 2"), officer="Lê Văn Cường")
    dlog.upsert_dossier(dossier("HS-3", "c3"), officer="Trần Thị Bình")
    deleted = dlog.delete_citizen("c3")
    now = time.time()
    dlog.add_reports([
        ("t-1", "s-1", "not_me", iso(now - 60), "c1", 0, 0.71),
        (XSS, "s-2", "not_me", iso(now - 50), "c2", 0, 0.66),
        ("t-1", "s-3", "rating", iso(now - 40), "c1", 5, 0.0),
        ("t-2", "s-4", "rating", iso(now - 30), "c1", 3, 0.0),
        ("t-2", "s-5", "rating", iso(now - 20), "c2", 4, 0.0),
        ("t-2", "s-6", "rating", iso(now - 10), "", 1, 0.0),  # an old terminal: no citizen
    ])
    # survey answers from phones: one counted (Cường, Quầy 2), one of a session also rated
    # at the kiosk (not counted again), one of a session reported "not me" (not counted)
    store = SurveyStore(dlog.path, lifetime_s=600)
    try:
        for terminal, session, cid, stars, comment in (
                ("t-2", "s-7", "c2", 2, SURVEY_COMMENT),
                ("t-1", "s-3", "c1", 1, "trùng phiên"),
                ("t-1", "s-1", "c1", 1, "không phải tôi")):
            tok = new_token()
            store.add_offers([Offer(token_sha256(tok), terminal, session, cid, now - 30)],
                             now=now - 30)
            assert store.answer(tok, stars, comment, now=now - 5) == "ok"
    finally:
        store.close()
    return deleted


def terminal_states(dlog: DistrictLog, deleted_seq: int) -> dict[str, tuple[pb.TerminalState,
                                                                              bytes]]:
    now_ms = int(time.time() * 1000)

    def st(tid: str, epoch: int, applied: int, error: str = "") -> pb.TerminalState:
        return pb.TerminalState(protocol_version=1, terminal_id=tid, district_id=DISTRICT,
                                epoch=epoch, applied_seq=applied, gallery_size=2,
                                embedder_id="test-emb", model="pack-2026.11",
                                version="1.4.0", last_error=error, updated_at_ms=now_ms)

    e = dlog.epoch
    return {
        "t-1": (st("t-1", e, dlog.head_seq), b"online"),  # has applied everything
        "t-2": (st("t-2", e, deleted_seq - 1, XSS), b"offline"),  # one change short
        "t-3": (st("t-3", e + 1, dlog.head_seq + 50), b"online"),  # another epoch
    }


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    db = tmp_path / "district.sqlite"
    DistrictLog.create(db, district_id=DISTRICT, embedder_id="test-emb", dim=DIM).close()
    dlog = DistrictLog.open(db)
    deleted = seed(dlog)
    path, cert = tls_console_config(tmp_path, broker, db, "max_failures = 3\nlockout_minutes = 1")
    cfg = load_district_config(path)
    svc = DistrictService(cfg).start()
    try:
        wait_for(lambda: dlog.published_seq == dlog.head_seq, 20, "the log published")
        publish_states(broker, terminal_states(dlog, deleted))
        wait_for(lambda: len(svc.publisher.fleet.rows(0)) == 3, 20, "three terminals seen")
        wait_for(lambda: svc.publisher.fleet.last_snapshot("t-1") is not None, 20,
                 "t-1's snapshot sent")
        yield Rig(svc, tmp_path, cert, dlog, deleted, broker)
    finally:
        svc.stop()
        dlog.close()


class Browser:
    """A minimal HTTPS client with a cookie jar; trusts only the console's certificate."""

    def __init__(self, rig: Rig) -> None:
        self.ctx = ssl.create_default_context(cafile=str(rig.cert))
        self.port = rig.port
        self.cookies: dict[str, str] = {}

    @classmethod
    def at(cls, cert: Path, port: int) -> Browser:
        """A client of a console not run by a :class:`Rig` (e.g. a subprocess)."""
        b = cls.__new__(cls)
        b.ctx = ssl.create_default_context(cafile=str(cert))
        b.port = port
        b.cookies = {}
        return b

    def request(self, method: str, path: str, form: dict[str, str] | None = None, *,
                body: bytes | None = None, ctype: str = "application/x-www-form-urlencoded",
                ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                           timeout=30)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
        if body is not None:
            headers["Content-Type"] = ctype
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            for raw in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = raw.partition("=")
                value = rest.split(";", 1)[0]
                attrs = rest.lower()
                if "max-age=0" in attrs or not value.strip('"'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, text
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form)

    def login(self, user: str = USER, password: str = PASSWORD) -> tuple[int, str]:
        status, _h, page = self.get("/console/login")
        assert status == 200
        token = csrf_of(page)
        status, headers, page = self.post("/console/login", {
            "csrf": token, "lang": "vi", "user": user, "password": password})
        return status, page if status != 303 else headers["location"]


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:500]
    return m.group(1)
