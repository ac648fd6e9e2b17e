"""The fleet view (district/fleet.py ``collect``) on a slow broker or a loaded machine."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from district.fleet import QUIET_S, collect
from proto import sync_pb2 as pb
from sync.mqtt import BrokerSettings, make_client
from sync.topics import DEFAULT_PREFIX, Topics
from tests.broker import MosquittoBroker
from tests.sync_helpers import DISTRICT

TOPICS = Topics(DEFAULT_PREFIX, DISTRICT)


class SlowAnswerProxy:
    """A TCP proxy (a network boundary fake) that holds the broker's first answer on each
    connection for ``delay_s``: a broker, link or machine slow to answer CONNECT."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target, self.delay_s = target, delay_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst, delay in ((client, upstream, 0.0), (upstream, client, self.delay_s)):
                threading.Thread(target=self._pipe, args=(src, dst, delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while data := src.recv(65536):
                if delay_s:
                    time.sleep(delay_s)  # the slow answer itself, not a synchronisation
                    delay_s = 0.0
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


def test_collect_waits_for_the_subscription_not_a_fixed_time_after_connecting(
    broker: MosquittoBroker,
) -> None:
    """The quiet period that ends ``collect`` counts from the SUBACK: a CONNACK later than
    QUIET_S (a loaded machine) used to end it before any retained message: an empty fleet."""
    s = BrokerSettings(host=broker.host, port=broker.port, keepalive_s=5)
    c = make_client("a-terminal", s)
    c.connect(broker.host, broker.port)
    c.loop_start()
    proxy = SlowAnswerProxy((broker.host, broker.port), delay_s=3 * QUIET_S)
    try:
        st = pb.TerminalState(protocol_version=1, terminal_id="t-x", district_id=DISTRICT,
                              applied_seq=4, gallery_size=2)
        c.publish(TOPICS.state("t-x"), st.SerializeToString(), qos=1,
                  retain=True).wait_for_publish(5)
        c.publish(TOPICS.status("t-x"), b"online", qos=1, retain=True).wait_for_publish(5)
        slow = BrokerSettings(host="127.0.0.1", port=proxy.port, keepalive_s=5)
        _head, rows = collect(slow, TOPICS, timeout_s=10)
        assert [(r.terminal_id, r.online, r.applied_seq) for r in rows] == [("t-x", True, 4)]
    finally:
        proxy.close()
        c.disconnect()
        c.loop_stop()
