"""The doctor's broker check never costs the terminal its connection or its queued batches.

The shipped broker config binds the client id to the login (one login = one connection),
so a doctor logging in with the terminal's credentials beside the running service would
take the service's connection over, and a clean start would wipe its persistent session.
Real parts: Mosquitto with the shipped config and ACL, the real publisher and terminal
subscriber, a real gRPC server answering GetStatus as the terminal does.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

from district.publisher import Publisher
from edge.config import config_from_dict
from edge.ops import doctor
from edge.ops.doctor import Context, Status
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from proto import display_pb2 as dpb
from proto import display_pb2_grpc as dpb_grpc
from sync.mqtt import BrokerSettings
from tests.broker import MosquittoBroker, PortReservation
from tests.conftest import REPO
from tests.sync_helpers import DISTRICT, EMBEDDER, add_citizens, new_district, new_key, wait_for

SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "motcua-sync.conf"
ACL = REPO / "deploy" / "mosquitto" / "motcua-sync.acl"
FAST = dict(reconnect_min_s=0.0, reconnect_max_s=0.2, keepalive_s=5)
USERS = {"district-q1": "d", "t2": "p2"}


class StatusOf(dpb_grpc.DisplayServicer):
    """GetStatus as the terminal answers it, from a live subscriber."""

    def __init__(self, sub: TerminalSubscriber) -> None:
        self.sub = sub

    def GetStatus(self, request: dpb.GetStatusRequest,  # noqa: N802
                  context: grpc.ServicerContext) -> dpb.TerminalStatus:
        return dpb.TerminalStatus(terminal_id="t2", sync_connected=self.sub.connected.is_set())


def _ctx(tmp_path: Path, broker: MosquittoBroker, api_port: int) -> Context:
    pw = tmp_path / "t2.pw"
    pw.write_text(USERS["t2"])
    cfg = config_from_dict({
        "terminal": {"id": "t2", "district": DISTRICT, "state_dir": str(tmp_path / "state")},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "sync": {"broker": f"{broker.host}:{broker.port}", "username": "t2",
                 "password_file": str(pw)},
    })
    return Context(cfg, timeout=5.0)


def _check(ctx: Context) -> tuple[Status, str]:
    ((_, finding),) = doctor.run_checks(ctx, ["broker"])
    return finding.status, finding.explanation


def test_doctor_asks_the_running_terminal_and_keeps_its_session(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", users=USERS, acl=ACL.read_text(),
                             include=SHIPPED_CONF).start()

    def login(user: str) -> BrokerSettings:
        return BrokerSettings(host=broker.host, port=broker.port, username=user,
                              password=USERS[user], **FAST)  # type: ignore[arg-type]

    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 5)
    key = new_key()
    pub = Publisher(dlog, key, login("district-q1")).start()
    store = GalleryStore.open(tmp_path / "t2", embedder_id=EMBEDDER, dim=16)

    def subscriber() -> TerminalSubscriber:
        return TerminalSubscriber(store, login("t2"), district_id=DISTRICT, terminal_id="t2",
                                  public_key=key.public_key(), spool_dir=tmp_path,
                                  state_interval_s=0.1).start()

    t2 = subscriber()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    dpb_grpc.add_DisplayServicer_to_server(StatusOf(t2), server)
    api_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        wait_for(lambda: store.last_seq == dlog.head_seq, what="t2 synced")
        assert t2.connects == 1
        # 1. the service runs: the doctor asks it and does not log in beside it
        st, text = _check(_ctx(tmp_path, broker, api_port))
        assert st is Status.OK and "running terminal is connected" in text, text
        add_citizens(dlog, 1, start=100)  # a live batch still reaches the same connection
        wait_for(lambda: store.last_seq == dlog.head_seq, what="live batch after the check")
        assert t2.connects == 1, "the doctor took the terminal's connection over"
        # 2. the service is stopped; a batch is queued in its persistent session
        server.stop(0).wait()
        t2.stop()
        add_citizens(dlog, 1, start=200)
        head = dlog.head_seq
        with PortReservation() as dead:  # no terminal API answers: the doctor logs in
            st, text = _check(_ctx(tmp_path, broker, dead.port))
        assert st is Status.OK and "accepted our credentials" in text, text
        # the terminal comes back: the queued batch is still there for it (no replay)
        t2 = subscriber()
        wait_for(lambda: store.last_seq == head, what="queued batch after the doctor")
        # a fresh engine: any count here is a replay/snapshot the drained queue forced.
        # Known weakness: this second half also passed with the old doctor (checked by
        # hand), so it shows the login works with the service stopped, not that the
        # queue survives it; the first half is what failed before the fix.
        assert dict(t2.engine.requests) == {}, (
            f"the terminal had to ask for a replay: {dict(t2.engine.requests)}")
    finally:
        server.stop(0)
        t2.stop()
        pub.stop()
        store.close()
        broker.close()
