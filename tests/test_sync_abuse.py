"""What one terminal's credentials can make the district do (real Mosquitto, real log).

docs/security.md, "A terminal's credentials": request floods are bounded in bytes per
terminal and cannot delay other terminals; report floods are rate-limited, validated
and written off paho's network thread.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from district.publisher import Publisher
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from proto import sync_pb2 as pb
from sync.mqtt import BrokerSettings, connect_properties, make_client
from tests.broker import MosquittoBroker
from tests.sync_helpers import DISTRICT, EMBEDDER, add_citizens, new_district, new_key, wait_for

FAST = dict(reconnect_min_s=0.0, reconnect_max_s=0.5, keepalive_s=5)
#: small budgets so that the flood's effect shows in a second: 256 KiB burst, 64 KiB/s,
#: a replay answer cut after 64 KiB; batches of 20 upserts (~45 KB at 512-d)
LIMITS = dict(request_burst_bytes=256 << 10, request_bytes_per_s=64 << 10,
              replay_max_bytes=64 << 10, batch_max_changes=20)
ONE_BATCH = 64 << 10  # the batch that crosses a limit is still sent whole


def settings(b: MosquittoBroker) -> BrokerSettings:
    return BrokerSettings(host=b.host, port=b.port, **FAST)  # type: ignore[arg-type]


class Counter:
    """A client that counts the bytes arriving on some topics (the broker lets it: no ACL)."""

    def __init__(self, b: MosquittoBroker, topics: list[str]) -> None:
        self.bytes: dict[str, int] = dict.fromkeys(topics, 0)
        self.lock = threading.Lock()
        self.c = make_client("counter", settings(b))
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_a: subscribed.set()
        self.c.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.c.on_message = self._on_message
        self.c.connect(b.host, b.port)
        self.c.loop_start()
        wait_for(subscribed.is_set, 10, "counter subscribed")

    def _on_message(self, _c: object, _u: object, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.bytes[msg.topic] += len(msg.payload)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_replay_flood_is_bounded_per_terminal_and_others_are_served(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=512)
    add_citizens(dlog, 300)  # 600 changes, ~1.3 MB: one replay from 1 is 5x the burst
    key = new_key()
    pub = Publisher(dlog, key, settings(broker), **LIMITS).start()  # type: ignore[arg-type]
    topics = pub.topics
    counter = Counter(broker, [topics.direct("t-evil"), topics.direct("t-good")])
    # t-evil's persistent session waits for the answers; the flood comes from a second
    # connection with the same (stolen) credentials
    evil = make_client("motcua-t-evil", settings(broker))
    evil.connect(broker.host, broker.port, clean_start=False,
                 properties=connect_properties(settings(broker)))
    evil.loop_start()
    evil.subscribe(topics.direct("t-evil"), qos=1)[1]
    flood = make_client("flood", settings(broker))
    flood.connect(broker.host, broker.port)
    flood.loop_start()
    store = GalleryStore.open(tmp_path / "good", embedder_id=EMBEDDER, dim=512)
    good = None
    try:
        assert pub.wait_connected(10)
        wait_for(lambda: pub.log.published_seq == dlog.head_seq, 30, "published")
        req = pb.SyncRequest(protocol_version=1, terminal_id="t-evil", district_id=DISTRICT,
                             kind=pb.SyncRequest.KIND_REPLAY, epoch=dlog.epoch, from_seq=1)
        t0 = time.monotonic()
        for info in [flood.publish(topics.request("t-evil"), req.SerializeToString(), qos=1)
                     for _ in range(150)]:
            info.wait_for_publish(10)
        # a fresh terminal joins during the flood and needs a snapshot
        good = TerminalSubscriber(store, settings(broker), district_id=DISTRICT,
                                  terminal_id="t-good", public_key=key.public_key(),
                                  spool_dir=tmp_path).start()

        def allowed() -> float:
            """What t-evil's budget allows by now, plus the one batch that crosses it."""
            elapsed = time.monotonic() - t0
            return LIMITS["request_burst_bytes"] + LIMITS["request_bytes_per_s"] * elapsed + \
                ONE_BATCH

        def settled() -> bool:
            got = counter.bytes[topics.direct("t-evil")]
            assert got <= allowed(), f"t-evil was sent {got} bytes, budget {allowed():.0f}"
            return (pub.stats.requests.get("t-evil", 0) == 150 and pub.requests.idle()
                    and got == pub.stats.direct_bytes.get("t-evil", 0))

        wait_for(settled, 30, "the flood answered")
        # the other terminal got its snapshot without waiting behind the flood
        wait_for(lambda: store.last_seq == dlog.head_seq, 15, "t-good synced")
        # the publisher counts a snapshot after its last chunk is sent: t-good may be first
        wait_for(lambda: pub.stats.snapshots >= 1, 10, "the snapshot counted")
        assert counter.bytes[topics.direct("t-good")] > 0
        # 150 requests became at most a couple of answers: the rest were coalesced
        assert pub.stats.coalesced_requests >= 140
        assert pub.stats.replays_truncated >= 1
        # t-evil's budget refills: asking again later gets the next part, not everything
        sent = counter.bytes[topics.direct("t-evil")]
        t1 = time.monotonic()
        flood.publish(topics.request("t-evil"), req.SerializeToString(), qos=1).wait_for_publish(5)
        wait_for(lambda: counter.bytes[topics.direct("t-evil")] > sent, 15, "t-evil served again")
        wait_for(pub.requests.idle, 15, "served")
        more = counter.bytes[topics.direct("t-evil")] - sent
        assert more <= LIMITS["replay_max_bytes"] + ONE_BATCH
        assert time.monotonic() - t1 < 15
    finally:
        if good is not None:
            good.stop()
        store.close()
        for c in (evil, flood):
            c.disconnect()
            c.loop_stop()
        counter.close()
        pub.stop()


def _report(i: int, **kw: object) -> bytes:
    fields: dict[str, object] = dict(
        protocol_version=1, terminal_id="t-evil", district_id=DISTRICT,
        kind=pb.TerminalReport.KIND_NOT_ME, session_id=f"s-{i}",
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        citizen_id=f"c{i:07d}", score=0.5)
    fields.update(kw)
    return pb.TerminalReport(**fields).SerializeToString()  # type: ignore[arg-type]


def test_report_flood_is_limited_checked_and_never_stalls_the_network_thread(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    import sqlite3

    from district.reports import ReportGate

    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 30)
    pub = Publisher(dlog, new_key(), settings(broker))
    pub.report_gate = ReportGate(per_s=1.0, burst=20)  # small, to see the limit at once
    pub.start()
    topics = pub.topics
    counter = Counter(broker, [topics.direct("t-good")])
    evil = make_client("evil", settings(broker))
    evil.connect(broker.host, broker.port)
    evil.loop_start()
    # another process holds the log's write lock (a long district command, a slow disk):
    # storing reports must wait, answering another terminal must not
    other = sqlite3.connect(tmp_path / "d.sqlite", isolation_level=None)
    try:
        assert pub.wait_connected(10)
        wait_for(lambda: pub.log.published_seq == dlog.head_seq, 30, "published")
        other.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        infos = [evil.publish(topics.report("t-evil"), _report(900 + i), qos=1) for i in range(3)]
        time.sleep(0)  # (no wait: the reports are in flight while t-good asks)
        good = pb.SyncRequest(protocol_version=1, terminal_id="t-good", district_id=DISTRICT,
                              kind=pb.SyncRequest.KIND_REPLAY, epoch=dlog.epoch, from_seq=1)
        evil.publish(topics.request("t-good"), good.SerializeToString(), qos=1)
        # the lock is held until the ROLLBACK below, so the replay arriving at all shows
        # it did not wait for the lock (no wall-clock bound: a loaded machine is slow)
        wait_for(lambda: counter.bytes[topics.direct("t-good")] > 0, 30,
                 "t-good's replay while reports wait for the log")
        assert pub.report_writer.stored == 0  # the reports did wait
        other.execute("ROLLBACK")
        for info in infos:
            info.wait_for_publish(15)  # PUBACKs follow the store
        wait_for(lambda: len(dlog.reports()) == 3, 15, "the 3 reports stored")

        # a flood: 300 reports about different citizens, 50 about one citizen, and
        # every kind of bad field
        before_bad = pub.stats.bad_reports
        bad = [
            _report(1000, score=1e308),  # inf as float32
            _report(1001, score=float("nan")),
            _report(1002, score=-7.0),
            _report(1003, time="yesterday"),
            _report(1004, time="2001-01-01T00:00:00Z"),
            _report(1005, time="2099-01-01T00:00:00+00:00"),
            _report(1006, time="2026-01-01T00:00:00"),  # no time zone
            _report(1007, session_id="\x1b[2J" + "x" * 10),
            _report(1008, session_id="s" * 129),
            _report(1009, citizen_id="c\u202e1"),
            _report(1010, citizen_id=""),
            _report(1011, kind=pb.TerminalReport.KIND_RATING, rating=9, citizen_id="",
                    score=0.0),
            _report(1012, kind=pb.TerminalReport.KIND_RATING, rating=3, score=0.9),
            _report(1013, kind=7),
            _report(1014, protocol_version=99),
            _report(1015, rating=2),  # a not_me with stars
        ]
        for payload in bad:
            evil.publish(topics.report("t-evil"), payload, qos=1)
        wait_for(lambda: pub.stats.bad_reports == before_bad + len(bad), 15, "bad reports")
        t1 = time.monotonic()
        last = None
        for i in range(50):
            last = evil.publish(topics.report("t-evil"),
                                _report(2000 + i, citizen_id="c0000001"), qos=1)
        for i in range(300):
            last = evil.publish(topics.report("t-evil"), _report(3000 + i), qos=1)
        assert last is not None
        last.wait_for_publish(30)
        st, w = pub.stats, pub.report_writer
        wait_for(lambda: st.limited_reports + st.citizen_dup_reports + w.stored - 3 == 350,
                 15, "the flood handled")
        now = time.monotonic()
        rows = [r for r in dlog.reports(10_000) if r[0] == "t-evil"]
        flood = [r for r in rows if int(r[1][2:]) >= 2000]
        # the budget: 20 - 3 = 17 left after the 3 reports (admitted after t0), refilled at
        # 1/s by wall-clock time up to 20 while this test waited (seconds under load)
        assert 17 <= len(flood) <= min(20 + (now - t1), 17 + (now - t0))
        assert pub.stats.limited_reports >= 300 - len(flood)
        assert sum(1 for r in flood if r[4] == "c0000001") == 1
        assert pub.stats.citizen_dup_reports >= 49 - 1
        assert all(-1.01 <= r[6] <= 1.01 for r in rows)  # no inf, no nan
    finally:
        other.close()
        evil.disconnect()
        evil.loop_stop()
        counter.close()
        pub.stop()


def test_two_workers_share_one_report_budget_per_terminal(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Two district workers (shared subscription, round robin) each with the same gate:
    a terminal's flood is stored within ONE budget, not one per worker, and a "not me"
    about one citizen from many sessions is stored once (the limits are counted in the
    log file both workers write, docs/scale.md)."""
    from district.log import DistrictLog
    from district.reports import ReportGate

    dlog = new_district(tmp_path / "d.sqlite", dim=16)
    add_citizens(dlog, 3)
    key = new_key()
    pubs = []
    for name in ("a", "b"):
        log_ = dlog if name == "a" else DistrictLog.open(tmp_path / "d.sqlite")
        pub = Publisher(log_, key, settings(broker), worker=name)
        # 10 reports, then one per 1,000 s: the test's few seconds add nothing
        pub.report_gate = ReportGate(per_s=0.001, burst=10)
        pubs.append(pub.start())
    evil = make_client("evil", settings(broker))
    evil.connect(broker.host, broker.port)
    evil.loop_start()
    # these reports do not ask for receipts (an older terminal): none must be sent
    counter = Counter(broker, [pubs[0].topics.direct("t-evil"), pubs[0].topics.direct("t-other")])
    try:
        for pub in pubs:
            assert pub.wait_connected(10)
        last = None
        for i in range(40):  # different citizens: only the budget limits them
            last = evil.publish(pubs[0].topics.report("t-evil"), _report(5000 + i), qos=1)
        for i in range(20):  # one citizen, 20 sessions
            last = evil.publish(pubs[0].topics.report("t-other"),
                                _report(6000 + i, citizen_id="c0000042",
                                        terminal_id="t-other"), qos=1)
        assert last is not None
        last.wait_for_publish(30)

        def handled() -> int:
            return sum(p.stats.limited_reports + p.stats.citizen_dup_reports
                       + p.report_writer.stored for p in pubs)

        wait_for(lambda: handled() == 60, 30, "the flood handled by both workers")
        got = [p.report_writer.stored + p.stats.limited_reports + p.stats.citizen_dup_reports
               for p in pubs]
        assert min(got) > 0, f"one worker got nothing: {got} (no round robin?)"
        rows = dlog.reports(10_000)
        assert sum(1 for r in rows if r[0] == "t-evil") == 10  # one budget, not two
        assert sum(1 for r in rows if r[0] == "t-other") == 1  # one citizen, once
        assert sum(p.stats.receipts for p in pubs) == 0 and sum(counter.bytes.values()) == 0
    finally:
        evil.disconnect()
        evil.loop_stop()
        counter.close()
        for pub in pubs:
            pub.stop()


def test_two_workers_share_one_request_byte_budget_per_terminal(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Two district workers answering one terminal's replay flood (each gets half of the
    requests, round robin) send it what ONE byte budget allows, not two (the budget is
    counted in the log file both write)."""
    from district.log import DistrictLog

    limits = dict(request_burst_bytes=256 << 10, request_bytes_per_s=4 << 10,
                  replay_max_bytes=4 << 20, batch_max_changes=20)
    dlog = new_district(tmp_path / "d.sqlite", dim=512)
    add_citizens(dlog, 300)  # 600 changes, ~1.3 MB: one replay from 1 is 5x the burst
    key = new_key()
    pubs = []
    for name in ("a", "b"):
        log_ = dlog if name == "a" else DistrictLog.open(tmp_path / "d.sqlite")
        pubs.append(Publisher(log_, key, settings(broker), worker=name,
                              **limits).start())  # type: ignore[arg-type]
    topics = pubs[0].topics
    counter = Counter(broker, [topics.direct("t-evil")])
    flood = make_client("flood", settings(broker))
    flood.connect(broker.host, broker.port)
    flood.loop_start()
    try:
        for pub in pubs:
            assert pub.wait_connected(10)
        wait_for(lambda: dlog.published_seq == dlog.head_seq, 30, "published")
        req = pb.SyncRequest(protocol_version=1, terminal_id="t-evil", district_id=DISTRICT,
                             kind=pb.SyncRequest.KIND_REPLAY, epoch=dlog.epoch, from_seq=1)
        t0 = time.monotonic()
        for _ in range(60):  # 3 s of requests: both workers always have one pending
            flood.publish(topics.request("t-evil"), req.SerializeToString(), qos=1)
            time.sleep(0.05)  # pacing the flood, not waiting for anything
        wait_for(lambda: all(p.stats.requests.get("t-evil", 0) > 0 for p in pubs)
                 and sum(p.stats.requests.get("t-evil", 0) for p in pubs) == 60
                 and all(p.requests.idle() for p in pubs), 30, "the flood answered")
        elapsed = time.monotonic() - t0
        got = counter.bytes[topics.direct("t-evil")]
        sent = sum(p.stats.direct_bytes.get("t-evil", 0) for p in pubs)
        wait_for(lambda: counter.bytes[topics.direct("t-evil")] == sent, 10, "all counted")
        # one budget, plus the batch each worker may have had on its way when it ran out
        allowed = limits["request_burst_bytes"] + limits["request_bytes_per_s"] * elapsed \
            + 2 * ONE_BATCH
        print(f"\ntwo workers, one terminal's replay flood: {got} bytes sent in {elapsed:.1f} s"
              f" (bound {allowed:.0f}: one budget + 2 batches)")
        assert got <= allowed, f"t-evil was sent {got} bytes, one budget {allowed:.0f}"
        assert got >= limits["request_burst_bytes"]  # the flood did spend the budget
    finally:
        flood.disconnect()
        flood.loop_stop()
        counter.close()
        for pub in pubs:
            pub.stop()
