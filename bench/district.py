"""Benchmark of the district service: case system POST -> status on a terminal's display.

Runs ``motcua district serve`` in its own process (as on the district server) against a
local Mosquitto, and in this process a real terminal: the GalleryStore, its sync client
(TerminalSubscriber) and the display state (edge.api.state.DisplayState) with one watcher
standing in for the kiosk's stream. The district starts with ``--citizens`` synthetic
citizens of one dossier each; the terminal is brought in sync first. Then:

1. status -> display: status changes are POSTed to /v1/events (one keep-alive HTTP
   connection, one event per request) at ``--rate`` events/s for ``--duration`` s,
   round-robin over the dossiers, each one a new status. For each, the time from just
   before the POST to the watcher receiving a MATCHED screen that shows the new status:
   a "looker" thread watches the store's applied change number (every 2 ms) and, once a
   change is applied, makes the display look the citizen up as the session does after a
   match (edge.session.events.Matched), so the face pipeline's time is not in it;
   p50/p95/p99 (``status_to_display_ms_*``) and the POST's own round trip (``post_ms_*``);
2. ingest throughput: ``--ingest`` status changes POSTed to /v1/events/batch in batches
   of ``--batch`` (``ingest_events_per_s``: events / wall time of the requests; a batch
   is one transaction of the log), then until the terminal has them all
   (``ingest_to_terminal_s``);
3. baseline, same run: the change log's own ``update_dossier``, one transaction (one
   disk sync) each, on a fresh log in this process (``log_updates_per_s``;
   ``ingest_ratio`` = 2 / 3, > 1 because a batch syncs the disk once).

The last line is one JSON object.

    PYTHONPATH=. python bench/district.py [--quick] [--duration S] [--rate N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from district.log import DistrictLog  # noqa: E402
from district.synthetic import add_citizens  # noqa: E402
from edge.api.state import DisplayState, status_pb  # noqa: E402
from edge.session import events as ev  # noqa: E402
from edge.store.gallery import GalleryStore  # noqa: E402
from edge.syncclient.subscriber import TerminalSubscriber  # noqa: E402
from proto import display_pb2 as dpb  # noqa: E402
from sync.changes import DossierStatus  # noqa: E402
from sync.keys import generate_keypair, load_public_key  # noqa: E402
from sync.localbroker import MosquittoBroker, free_port  # noqa: E402
from sync.mqtt import BrokerSettings  # noqa: E402

DISTRICT = "bench"
EMBEDDER = "bench-synthetic-128"
#: 128-d: status changes carry no embeddings; the dimension only sizes the seed snapshot
DIM = 128
TOKEN = "b" * 64
#: the looker's poll of the store's applied change number; adds at most this to a figure
LOOK_EVERY_S = 0.002
STATUSES = list(DossierStatus)


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else float("nan")


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.005)


class Client:
    """One keep-alive HTTP connection to the ingest API."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: object) -> dict:  # type: ignore[type-arg]
        data = json.dumps(body).encode()
        self.conn.request("POST", path, body=data, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = self.conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise SystemExit(f"bench: {path} answered {resp.status}: {text[:300]!r}")
        return json.loads(text)  # type: ignore[no-any-return]

    def get_status(self, path: str) -> int:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        resp.read()
        return resp.status


def status_event(code: str, status: DossierStatus, version: int, eid: str) -> dict:  # type: ignore[type-arg]
    return {"event_id": eid, "kind": "dossier.status_changed", "version": version,
            "data": {"code": code, "status": status.value}}


class Looker(threading.Thread):
    """Shows each changed citizen on the display once their change is applied, and
    records when the watcher got the screen with the expected status."""

    def __init__(self, store: GalleryStore, display: DisplayState) -> None:
        super().__init__(name="bench-looker", daemon=True)
        self.store, self.display = store, display
        self.watcher = display.watch("bench")
        self.pending: list[tuple[int, str, DossierStatus, float]] = []  # seq, cid, status, t0
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.wrong = 0
        self.stop = threading.Event()
        self._n = 0

    def expect(self, seq: int, cid: str, status: DossierStatus, t0: float) -> None:
        with self.lock:
            self.pending.append((seq, cid, status, t0))

    def run(self) -> None:
        while not self.stop.is_set():
            applied = self.store.last_seq
            with self.lock:
                due = [p for p in self.pending if p[0] <= applied]
                self.pending = [p for p in self.pending if p[0] > applied]
            for _seq, cid, status, t0 in due:
                self._n += 1
                self.display.on_event(ev.Matched(f"s{self._n}", citizen_id=cid, score=0.9,
                                                 margin=0.3))
                while True:
                    msg = self.watcher.get(timeout=5)
                    if msg is None:
                        raise SystemExit("bench: the display stream went quiet")
                    if msg.state == dpb.SESSION_STATE_MATCHED:
                        break
                t1 = time.perf_counter()
                if [d.status for d in msg.match.dossiers] == [status_pb(status)]:
                    self.latencies_ms.append((t1 - t0) * 1000)
                else:
                    self.wrong += 1
                self.display.on_event(ev.Ended(f"s{self._n}", outcome=ev.Outcome.MATCHED))
            if not due:
                time.sleep(LOOK_EVERY_S)

    def idle(self) -> bool:
        with self.lock:
            return not self.pending


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s, 2,000 ingested (the tests)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of status changes")
    ap.add_argument("--rate", type=float, default=50.0, help="status changes per second")
    ap.add_argument("--citizens", type=int, default=500, help="citizens (one dossier each)")
    ap.add_argument("--ingest", type=int, default=20_000, help="events for the throughput")
    ap.add_argument("--batch", type=int, default=500, help="events per batch request")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.ingest = 5.0, 2000
    with tempfile.TemporaryDirectory(prefix="bench-district-") as tmp:
        return run(Path(tmp), args)


def run(work: Path, args: argparse.Namespace) -> int:
    broker = MosquittoBroker(work / "broker").start()
    db = work / "district.sqlite"
    dlog = DistrictLog.create(db, district_id=DISTRICT, embedder_id=EMBEDDER, dim=DIM)
    citizens = add_citizens(dlog, args.citizens)
    dlog.close()
    generate_keypair(work / "keys" / "district.key", work / "keys" / "district.pub")
    (work / "token").write_text(TOKEN + "\n")
    port = free_port()
    (work / "district.toml").write_text(f"""
[district]
id = "{DISTRICT}"
db = "{db}"
key_file = "{work / 'keys' / 'district.key'}"
[broker]
broker = "{broker.host}:{broker.port}"
reconnect_min_s = 0.1
[ingest]
listen = "127.0.0.1:{port}"
token_file = "{work / 'token'}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    errlog = open(work / "service.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "motcua", "--config",
                             str(work / "district.toml"), "district", "serve"],
                            env=env, stdout=subprocess.DEVNULL, stderr=errlog)
    store = GalleryStore.open(work / "terminal", embedder_id=EMBEDDER, dim=DIM)
    sub = TerminalSubscriber(
        store, BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                              reconnect_max_s=1.0),
        district_id=DISTRICT, terminal_id="t1",
        public_key=load_public_key(work / "keys" / "district.pub"), spool_dir=work,
    ).start()
    display = DisplayState(store)
    looker = Looker(store, display)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                tail = (work / "service.log").read_text()[-2000:]
                raise SystemExit(f"bench: the service exited: {tail}")
            try:
                return Client(port).get_status("/readyz") == 200
            except OSError:
                return False

        wait(ready, 60, "the service ready")
        head = 2 * args.citizens
        wait(lambda: store.last_seq == head, 120, "the terminal in sync")
        progress(f"terminal in sync at change {head}; status changes at {args.rate}/s "
                 f"for {args.duration:.0f} s")
        looker.start()
        client = Client(port)
        version = 1
        n = int(args.duration * args.rate)
        post_ms: list[float] = []
        t_start = time.perf_counter()
        for i in range(n):
            due = t_start + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not waiting for a result
            k = i % len(citizens)
            version += 1
            status = STATUSES[(i // len(citizens) + 1) % len(STATUSES)]
            t0 = time.perf_counter()
            r = client.post("/v1/events", status_event(f"HS-{k:07d}", status, version,
                                                       f"live-{i}"))
            post_ms.append((time.perf_counter() - t0) * 1000)
            looker.expect(int(r["seq"]), citizens[k], status, t0)
        wait(looker.idle, 60, "the last status on the display")
        looker.stop.set()
        looker.join(10)
        achieved = n / (time.perf_counter() - t_start)
        progress(f"{len(looker.latencies_ms)} statuses shown, p50 "
                 f"{pct(looker.latencies_ms, 50)} ms; ingest {args.ingest} in batches")
        # ---- 2. ingest throughput through the batch endpoint
        done = 0
        t0 = time.perf_counter()
        while done < args.ingest:
            batch = []
            for _ in range(min(args.batch, args.ingest - done)):
                k = done % len(citizens)
                version += 1
                batch.append(status_event(f"HS-{k:07d}", STATUSES[done % len(STATUSES)],
                                          version, f"bulk-{done}"))
                done += 1
            r = client.post("/v1/events/batch", {"events": batch})
            if r["applied"] != len(batch):
                raise SystemExit(f"bench: batch not wholly applied: {r['rejected']} rejected")
        ingest_s = time.perf_counter() - t0
        ingest_per_s = args.ingest / ingest_s
        final = dlog_head(db)
        wait(lambda: store.last_seq == final, 120, "the terminal caught up")
        caught_up_s = time.perf_counter() - t0
    finally:
        looker.stop.set()
        sub.stop()
        store.close()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        errlog.close()
        broker.close()
    # ---- 3. baseline: the log's own update rate, same machine, same run
    base = DistrictLog.create(work / "baseline.sqlite", district_id="b", embedder_id="x",
                              dim=8)
    add_citizens(base, 50)
    m = min(args.ingest, 2000)
    t0 = time.perf_counter()
    for i in range(m):
        base.update_dossier(f"HS-{i % 50:07d}", status=STATUSES[i % len(STATUSES)])
    log_per_s = m / (time.perf_counter() - t0)
    base.close()
    lat = looker.latencies_ms
    result = {
        "events": n, "rate_per_s": args.rate, "achieved_rate_per_s": round(achieved, 1),
        "duration_s": args.duration, "citizens": args.citizens,
        "shown": len(lat), "wrong_status_shown": looker.wrong,
        "status_to_display_ms_p50": pct(lat, 50), "status_to_display_ms_p95": pct(lat, 95),
        "status_to_display_ms_p99": pct(lat, 99),
        "status_to_display_ms_max": round(max(lat), 2) if lat else float("nan"),
        "post_ms_p50": pct(post_ms, 50), "post_ms_p99": pct(post_ms, 99),
        "ingest_events": args.ingest, "batch": args.batch,
        "ingest_events_per_s": round(ingest_per_s, 1),
        "ingest_to_terminal_s": round(caught_up_s, 2),
        "log_updates_per_s": round(log_per_s, 1),
        "ingest_ratio": round(ingest_per_s / log_per_s, 3),
        "service_exit_code": rc,
        "targets": {"status_to_display_ms_p50": 1000, "status_to_display_ms_p99": 3000,
                    "ingest_events_per_s": 500},
    }
    print(json.dumps(result))
    return 0 if len(lat) == n and looker.wrong == 0 and rc == 0 else 1


def dlog_head(db: Path) -> int:
    d = DistrictLog.open(db)
    try:
        return d.head_seq
    finally:
        d.close()


if __name__ == "__main__":
    sys.exit(main())
