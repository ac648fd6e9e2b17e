"""What one terminal's credentials can make the district do, over a real Mosquitto.

Two floods from the terminal ``t-evil`` against an in-process district publisher:

``replay``: ``t-evil`` leaves a persistent session subscribed to its direct topic and
goes away, then sends 150 REPLAY requests from change 1 (16-40 bytes each) at once. A
fresh terminal ``t-good`` joins at the same moment and needs a snapshot. Figures: bytes
the district sent in the first ``--window`` seconds and in all, the broker's resident
memory (peak and at the end), how long ``t-good`` took to get its snapshot.

``reports``: ``t-evil`` sends ``--rate`` forged "not me" reports per second for
``--flood`` seconds (all naming one citizen, score 1e308), while the district commits
one dossier update every 100 ms and ``t-good`` applies it. Figures: ``t-good``'s apply
latency (commit on the district -> applied on the terminal) p50/p99 before the flood
(baseline, same run) and during it, updates not applied within ``--cap`` seconds, and
how many of the forged reports were stored.

    PYTHONPATH=. python bench/abuse.py replay [--citizens N] [--requests N]
    PYTHONPATH=. python bench/abuse.py reports [--rate R] [--flood S] [--score X]

The last printed line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from district.log import DistrictLog  # noqa: E402
from district.publisher import Publisher  # noqa: E402
from district.synthetic import DISTRICT, EMBEDDER, add_citizens, new_district, new_key  # noqa: E402
from edge.store.gallery import GalleryStore  # noqa: E402
from edge.syncclient.subscriber import TerminalSubscriber  # noqa: E402
from proto import sync_pb2 as pb  # noqa: E402
from sync.localbroker import MosquittoBroker  # noqa: E402
from sync.mqtt import BrokerSettings, connect_properties, make_client  # noqa: E402


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 4) if values else float("nan")


def start_broker(work: Path) -> MosquittoBroker:
    """Default broker settings (anonymous, no queue bounds): the figures show what the
    district itself sends, with or without the shipped broker limits."""
    return MosquittoBroker(work / "broker").start()


def settings(b: MosquittoBroker) -> BrokerSettings:
    return BrokerSettings(host=b.host, port=b.port, reconnect_min_s=0.1, reconnect_max_s=1.0)


def connected_client(b: MosquittoBroker, cid: str, *, persistent: bool = False):  # type: ignore[no-untyped-def]
    c = make_client(cid, settings(b))
    ok = threading.Event()
    c.on_connect = lambda *_a: ok.set()
    if persistent:
        c.connect(b.host, b.port, clean_start=False, properties=connect_properties(settings(b)))
    else:
        c.connect(b.host, b.port)
    c.loop_start()
    if not ok.wait(10):
        raise SystemExit("bench: cannot connect to the broker")
    return c


def replay_flood(work: Path, args: argparse.Namespace) -> dict[str, object]:
    broker = start_broker(work)
    dlog = new_district(work / "d.sqlite", dim=512)
    for start in range(0, args.citizens, 500):
        add_citizens(dlog, min(500, args.citizens - start), start=start)
    key = new_key()
    pub = Publisher(dlog, key, settings(broker)).start()
    assert pub.wait_connected(10)
    topics = pub.topics
    # t-evil's session: subscribed to its direct topic, then gone (the broker queues)
    evil = connected_client(broker, "motcua-t-evil", persistent=True)
    evil.subscribe(topics.direct("t-evil"), qos=1)
    time.sleep(0.2)  # let the SUBACK land before leaving (bench only, not a test)
    evil.disconnect()
    evil.loop_stop()
    deadline = time.monotonic() + 30
    while pub.log.published_seq < dlog.head_seq and time.monotonic() < deadline:
        time.sleep(0.05)
    base_sent = pub.stats.bytes_sent
    rss0 = rss_kib(broker.proc.pid)  # type: ignore[union-attr]
    flood = connected_client(broker, "flooder")
    req = pb.SyncRequest(protocol_version=1, terminal_id="t-evil", district_id=DISTRICT,
                         kind=pb.SyncRequest.KIND_REPLAY, epoch=dlog.epoch, from_seq=1)
    asked = 0
    t0 = time.monotonic()
    infos = []
    for _ in range(args.requests):
        payload = req.SerializeToString()
        asked += len(payload)
        infos.append(flood.publish(topics.request("t-evil"), payload, qos=1))
    for i in infos:
        i.wait_for_publish(10)
    # a fresh terminal joins now and needs a snapshot
    store = GalleryStore.open(work / "good", embedder_id=EMBEDDER, dim=512)
    good = TerminalSubscriber(store, settings(broker), district_id=DISTRICT, terminal_id="t-good",
                              public_key=key.public_key(), spool_dir=work).start()
    peak = rss0
    sent_window = None
    good_s = None
    head = dlog.head_seq
    while time.monotonic() - t0 < args.cap:
        now = time.monotonic() - t0
        peak = max(peak, rss_kib(broker.proc.pid))  # type: ignore[union-attr]
        if sent_window is None and now >= args.window:
            sent_window = pub.stats.bytes_sent - base_sent
        if good_s is None and store.last_seq == head:
            good_s = round(now, 2)
        if sent_window is not None and good_s is not None:
            break
        time.sleep(0.05)
    sent_all = pub.stats.bytes_sent - base_sent
    rss_end = rss_kib(broker.proc.pid)  # type: ignore[union-attr]
    progress(f"{args.requests} requests ({asked} bytes): district sent {sent_window} bytes in "
             f"{args.window:.0f} s ({sent_all} by {time.monotonic() - t0:.1f} s); broker RSS "
             f"{rss0 // 1024} -> peak {peak // 1024} MiB; t-good synced after {good_s} s")
    good.stop()
    store.close()
    flood.disconnect()
    flood.loop_stop()
    pub.stop()
    broker.stop()
    return {
        "mode": "replay",
        "requests": args.requests,
        "request_bytes": asked,
        "district_citizens": args.citizens,
        "window_s": args.window,
        "district_sent_bytes_window": sent_window,
        "district_sent_bytes_total": sent_all,
        "amplification_window": round((sent_window or sent_all) / asked, 1),
        "broker_rss_start_kib": rss0,
        "broker_rss_peak_kib": peak,
        "broker_rss_end_kib": rss_end,
        "victim_snapshot_s": good_s,
        "victim_cap_s": args.cap,
    }


def report_flood(work: Path, args: argparse.Namespace) -> dict[str, object]:
    broker = start_broker(work)
    dlog = new_district(work / "d.sqlite", dim=64)
    add_citizens(dlog, 200)
    key = new_key()
    pub = Publisher(dlog, key, settings(broker)).start()
    store = GalleryStore.open(work / "good", embedder_id=EMBEDDER, dim=64)
    good = TerminalSubscriber(store, settings(broker), district_id=DISTRICT, terminal_id="t-good",
                              public_key=key.public_key(), spool_dir=work).start()
    deadline = time.monotonic() + 60
    while store.last_seq != dlog.head_seq and time.monotonic() < deadline:
        time.sleep(0.01)
    writer = DistrictLog.open(work / "d.sqlite")  # another process's connection, as the CLI
    committed: dict[int, float] = {}
    applied: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        seen = store.last_seq
        while not stop.is_set():
            cur = store.last_seq
            if cur != seen:
                now = time.monotonic()
                for s in range(seen + 1, cur + 1):
                    applied[s] = now
                seen = cur
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def updates(n: int, tag: str) -> list[int]:
        seqs = []
        for i in range(n):
            t = time.monotonic()
            seq = writer.update_dossier(f"HS-{i % 200:07d}", stage=f"{tag} {i}")
            committed[seq] = t
            seqs.append(seq)
            time.sleep(0.1)
        return seqs

    base = updates(20, "baseline")
    evil = connected_client(broker, "flooder")
    sent = [0]

    def flood() -> None:
        t0 = time.monotonic()
        i = 0
        topic = pub.topics.report("t-evil")
        while time.monotonic() - t0 < args.flood:
            due = int((time.monotonic() - t0) * args.rate)
            while i < due:
                rep = pb.TerminalReport(
                    protocol_version=1, terminal_id="t-evil", district_id=DISTRICT,
                    kind=pb.TerminalReport.KIND_NOT_ME, session_id=f"s-{i}",
                    time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    citizen_id="c0000001", score=args.score,
                )
                evil.publish(topic, rep.SerializeToString(), qos=1)
                i += 1
            time.sleep(0.005)
        sent[0] = i

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    t_flood = time.monotonic()
    during = updates(int(args.flood * 10), "flood")
    flooder.join()
    flood_s = time.monotonic() - t_flood
    end = time.monotonic() + args.cap
    while any(s not in applied for s in during) and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    watcher.join()

    def lat(seqs: list[int]) -> list[float]:
        return [applied[s] - committed[s] for s in seqs if s in applied]

    lb, ld = lat(base), lat(during)
    missing = sum(1 for s in during if s not in applied)
    stored = sum(1 for r in dlog.reports(100_000) if r[0] == "t-evil")
    progress(f"flood {sent[0]} reports in {flood_s:.1f} s; t-good apply p50/p99 "
             f"baseline {pct(lb, 50)}/{pct(lb, 99)} s, during {pct(ld, 50)}/{pct(ld, 99)} s, "
             f"{missing} not applied within {args.cap:.0f} s; {stored} forged reports stored")
    good.stop()
    store.close()
    evil.disconnect()
    evil.loop_stop()
    pub.stop()
    writer.close()
    broker.stop()
    return {
        "mode": "reports",
        "flood_reports_sent": sent[0],
        "flood_s": round(flood_s, 2),
        "flood_rate_per_s": round(sent[0] / flood_s, 1),
        "baseline_apply_p50_s": pct(lb, 50),
        "baseline_apply_p99_s": pct(lb, 99),
        "during_apply_p50_s": pct(ld, 50),
        "during_apply_p99_s": pct(ld, 99),
        "during_updates": len(during),
        "during_not_applied_within_cap": missing,
        "cap_s": args.cap,
        "score": args.score,
        "forged_reports_stored": stored,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["replay", "reports"])
    ap.add_argument("--citizens", type=int, default=1500)
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--window", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--flood", type=float, default=10.0)
    ap.add_argument("--score", type=float, default=1e308,
                    help="the forged reports' score (1e308 as in the red-team run; 0.5 passes "
                         "the field checks and meets the rate limit and the writer)")
    ap.add_argument("--cap", type=float, default=60.0,
                    help="stop waiting for the victim terminal after this many seconds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="motcua-abuse-") as tmp:
        fig = (replay_flood if args.mode == "replay" else report_flood)(Path(tmp), args)
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
