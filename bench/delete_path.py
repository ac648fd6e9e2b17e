"""Delete path benchmark: where the time from "citizen.deleted" to "unmatchable" goes.

All real, on loopback, each part its own process (as bench/fleet.py, whose broker,
district worker and gallery helpers it uses): Mosquitto with the shipped settings and
ACL, ``motcua district serve`` (ingest API + publisher), ``--terminals`` terminal
processes each with the real sync client (TerminalSubscriber + SyncEngine) and the real
GalleryStore, started from a copy of one store of the district's state (a fleet in
sync). Each delete is a ``citizen.deleted`` event POSTed to the district's ingest API,
one at a time (the next after the previous is unmatchable everywhere, plus ``--gap``).

Timestamps are wall-clock ``time.time()`` of one machine (all processes share it):

| hop | from -> to |
|---|---|
| ``ingest`` | bench sends the POST -> the log's ``created_at`` of the change (in its transaction) |
| ``commit_answer`` | ``created_at`` -> the POST answered (the commit, fsync, the HTTP answer) |
| ``pickup`` | ``created_at`` -> the batch built by the publisher (its signed ``published_at_ms``) |
| ``broker`` | batch built -> the terminal's paho thread has it (signing, QoS 1 publish, fan-out) |
| ``queue`` | paho thread -> the terminal's apply thread takes it (inbox) |
| ``verify`` | apply thread -> ``store.apply`` called (signature, checks, decode) |
| ``lock`` | ``store.apply`` called -> its writer lock held (waits for a checkpoint save) |
| ``sqlite`` | lock held -> SQLite committed (write + fsync) |
| ``index`` | committed -> the index marks the citizen deleted (write side of the index lock) |
| ``after`` | index marked -> ``store.apply`` returns (WAL truncation, checkpoint policy) |
| ``visible`` | send -> index marked on this terminal (from then no lookup can return them) |
| ``shown_never`` | send -> SQLite commit on this terminal (from then the kiosk shows nobody) |
| ``e2e`` | send -> index marked on the slowest terminal (the issue's figure) |
| ``e2e_applied`` | send -> ``store.apply`` returned on the slowest terminal (bench/fleet.py's) |
| ``e2e_sqlite`` | send -> SQLite commit on the slowest terminal (the kiosk shows nobody) |

Each terminal also checks, right after ``store.apply`` returned, that the citizen is
unmatchable: not among the 10 best for their own embedding, and no record.
The last line is one JSON object (p50/p95/p99/max in ms of each hop over all
deletes x terminals, and of ``e2e`` over the deletes).

    PYTHONPATH=. python bench/delete_path.py [--terminals 10] [--citizens 10000]
        [--deletes 50] [--gap S] [--code DIR ...]

``--code DIR`` (repeatable) runs the same measurement with the district and the
terminals importing the product from DIR (e.g. an export of another commit), round
robin over the trees, ``--rounds`` times, so a before/after pair sees the same machine
load; the JSON then has one entry per tree.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: k of the unmatchable check (as bench/fleet.py: the session looks at fewer)
SEARCH_K = 10
#: hops in path order (the JSON's keys; see the module docstring)
HOPS = ("ingest", "commit_answer", "pickup", "broker", "queue", "verify", "lock", "sqlite",
        "index", "after", "visible", "shown_never")


def _terminal_main(argv: list[str]) -> None:
    """One terminal process: the real sync client and store, instrumented by wrapping
    (nothing in the product changes): one JSON line on stdout per applied batch."""
    import logging

    from edge.store import upkeep
    from edge.store.gallery import GalleryStore
    from edge.syncclient.subscriber import TerminalSubscriber
    from sync.keys import load_public_key
    from sync.mqtt import BrokerSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--pub", type=Path, required=True)
    ap.add_argument("--district", required=True)
    ap.add_argument("--embedder", required=True)
    ap.add_argument("--dim", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.broker.rsplit(":", 1)
    store = GalleryStore.open(args.dir / "store", embedder_id=args.embedder, dim=args.dim)
    sub = TerminalSubscriber(
        store, BrokerSettings(host=host, port=int(port), username=args.id,
                              password=args.password),
        district_id=args.district, terminal_id=args.id, public_key=load_public_key(args.pub),
        model=args.embedder, spool_dir=args.dir, outbox_dir=args.dir / "outbox")
    out_lock = threading.Lock()

    def emit(**ev: object) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()

    # --- instrumentation: wrappers around the instance's own methods -----------------
    recv_times: collections.deque[float] = collections.deque()
    cur: dict[str, Any] = {}
    orig_on_message: Any = sub.client.on_message

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic in sub._channels and len(msg.payload) <= sub.max_message_bytes:
            recv_times.append(time.time())
        orig_on_message(client, userdata, msg)

    sub.client.on_message = on_message
    eng = sub.engine
    orig_handle, orig_on_batch = eng.handle, eng._on_batch

    def handle(channel: str, payload: bytes) -> None:
        cur.clear()
        cur["recv"] = recv_times.popleft() if recv_times else float("nan")
        cur["handle"] = time.time()
        orig_handle(channel, payload)

    def on_batch(b: Any) -> None:
        cur["first"], cur["last"] = b.first_seq, b.last_seq
        orig_on_batch(b)

    eng.handle, eng._on_batch = handle, on_batch  # type: ignore[method-assign]
    orig_apply = store.apply

    class TimedLock:
        """The store's writer lock, noting when the apply thread got it."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def acquire(self, *a: Any, **k: Any) -> bool:
            got = bool(self.inner.acquire(*a, **k))
            if threading.current_thread().name == "sync-apply" and "locked" not in cur:
                cur["locked"] = time.time()
            return got

        def release(self) -> None:
            self.inner.release()

        def __enter__(self) -> bool:
            return self.acquire()

        def __exit__(self, *exc: object) -> None:
            self.release()

    store._apply_lock = TimedLock(store._apply_lock)  # type: ignore[assignment]
    rw = store._rw
    orig_write = rw.write

    @contextlib.contextmanager
    def write() -> Iterator[None]:
        mine = threading.current_thread().name == "sync-apply" and "committed" not in cur
        if mine:
            cur["committed"] = time.time()
        with orig_write():
            yield
        if mine:
            cur["indexed"] = time.time()

    rw.write = write  # type: ignore[method-assign]
    orig_trunc = store._truncate_wal

    def truncate() -> bool:
        t = time.time()
        try:
            return orig_trunc()
        finally:
            cur["truncate_s"] = cur.get("truncate_s", 0.0) + time.time() - t

    store._truncate_wal = truncate  # type: ignore[method-assign]
    orig_staged = upkeep.apply_staged

    def staged(*a: Any, **k: Any) -> None:
        t = time.time()
        orig_staged(*a, **k)
        if threading.current_thread().name == "sync-apply":
            cur["index_s"] = time.time() - t

    upkeep.apply_staged = staged  # type: ignore[assignment]
    watches: dict[int, tuple[str, Any]] = {}  # seq -> (citizen, embedding)
    watch_lock = threading.Lock()

    def apply(changes: Any, *, epoch: int, **k: Any) -> None:
        cur["apply"] = time.time()
        orig_apply(changes, epoch=epoch, **k)
        cur["applied"] = time.time()
        first, last = cur.get("first", 0), cur.get("last", 0)
        with watch_lock:
            mine = [(s, w) for s, w in watches.items() if first <= s <= last]
            for s, _w in mine:
                del watches[s]
        checks = {}
        for s, (cid, vec) in mine:
            hits = [m.citizen_id for m in store.search(vec, SEARCH_K)]
            checks[str(s)] = cid not in hits and store.citizen(cid) is None
        emit(ev="batch", **{k2: v for k2, v in cur.items()}, checked=time.time(), ok=checks)

    store.apply = apply  # type: ignore[method-assign]

    def read_stdin() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "watch":
                vec = np.frombuffer(base64.b64decode(cmd["emb"]), dtype="<f4")
                with watch_lock:
                    watches[int(cmd["seq"])] = (cmd["cid"], vec)
                emit(ev="ack", tag=cmd["tag"])
            elif cmd["cmd"] == "status":
                emit(ev="status", tag=cmd["tag"], last_seq=store.last_seq,
                     rejections=dict(eng.rejections))
            else:
                break
        stop.set()

    stop = threading.Event()
    threading.Thread(target=read_stdin, name="bench-stdin", daemon=True).start()
    sub.start()
    emit(ev="started", pid=os.getpid())
    try:
        stop.wait()
    finally:
        sub.stop()
        store.close()


class Term:
    """One terminal process and its events."""

    def __init__(self, work: Path, tid: str, password: str, broker: str, pub: Path,
                 code: Path, fleet: Any) -> None:
        self.id = tid
        self.dir = work / "terminals" / tid
        self.err = open(self.dir / "terminal.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_terminal", str(code), "--dir", str(self.dir),
             "--id", tid, "--password", password, "--broker", broker, "--pub", str(pub),
             "--district", fleet.DISTRICT, "--embedder", fleet.EMBEDDER,
             "--dim", str(fleet.DIM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
        self.events: dict[str, dict[str, Any]] = {}
        self.batches: list[dict[str, Any]] = []
        self.cv = threading.Condition()
        self.acks: set[str] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            with self.cv:
                if ev["ev"] == "batch":
                    self.batches.append(ev)
                elif ev["ev"] == "ack":
                    self.acks.add(ev["tag"])
                else:
                    self.events[ev["ev"]] = ev
                self.cv.notify_all()
        with self.cv:
            self.acks.add("exit")
            self.cv.notify_all()

    def send(self, **cmd: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def wait_for(self, pred: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                got = pred()
                if got:
                    return got
                if "exit" in self.acks:
                    raise SystemExit(f"bench: terminal {self.id} exited: "
                                     f"{(self.dir / 'terminal.log').read_text()[-1500:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench: terminal {self.id}: no {what} in {timeout} s")
                self.cv.wait(left)

    def batch_with(self, seq: int) -> dict[str, Any] | None:
        for b in self.batches:
            if b.get("first", 0) <= seq <= b.get("last", -1) and str(seq) in b["ok"]:
                return b
        return None

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send(cmd="stop")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class BatchWatch:
    """A bench MQTT client on the batch topic: the district's signed build time of each
    batch (its ``published_at_ms``) by change number."""

    def __init__(self, host: str, port: int, user: str, password: str, pub: Path,
                 district: str) -> None:
        from sync.keys import load_public_key
        from sync.mqtt import BrokerSettings, make_client, start_client
        from sync.topics import DEFAULT_PREFIX, Topics

        self.key = load_public_key(pub)
        self.district = district
        self.built: dict[int, float] = {}
        self.cv = threading.Condition()
        topic = Topics(DEFAULT_PREFIX, district).batch
        s = BrokerSettings(host=host, port=port, username=user, password=password,
                           session_expiry_s=0)
        self.client = make_client(f"{user}", s)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, 1)
        self.client.on_message = self._on_message
        start_client(self.client, s)

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        from sync import wire

        env = wire.open_envelope(bytes(msg.payload), district_id=self.district,
                                 public_key=self.key, max_bytes=8 << 20)
        b = wire.parse_body(env)
        with self.cv:
            for s in range(b.first_seq, b.last_seq + 1):  # type: ignore[union-attr]
                self.built[s] = b.published_at_ms / 1000.0  # type: ignore[union-attr]
            self.cv.notify_all()

    def stop(self) -> None:
        from sync.mqtt import stop_client

        self.client.disconnect()
        stop_client(self.client)


def post_delete(port: int, token: str, cid: str, n: int) -> dict[str, Any]:
    body = json.dumps({"event_id": f"bench-del-{cid}-{n}", "kind": "citizen.deleted",
                       "version": int(time.time() * 1000), "data": {"citizen_id": cid}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/events", body=body,
                     headers={"Authorization": f"Bearer {token}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        out: dict[str, Any] = json.loads(resp.read())
        if resp.status != 200:
            raise SystemExit(f"bench: POST /v1/events {resp.status}: {out}")
        return out
    finally:
        conn.close()


def stats(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in ms."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def run(args: argparse.Namespace, code: Path, fleet: Any, work: Path, seed_dir: Path,
        db: Path, victims: list[str]) -> dict[str, Any]:
    """One measurement with the product from ``code``: a fresh broker, district worker
    and fleet on a copy of the district log and of the preseeded store."""
    from district.log import DistrictLog
    from sync.localbroker import MosquittoBroker

    fleet.REPO = code  # the worker subprocess imports the product from here
    rng = np.random.default_rng()
    n = args.terminals
    pw = {f"t-{i:03d}": rng.bytes(12).hex() for i in range(n)}
    logins = {"district-q1": rng.bytes(12).hex(), "t-watch": rng.bytes(12).hex()}
    acl = (REPO / "deploy" / "mosquitto" / "motcua-sync.acl").read_text()
    broker = MosquittoBroker(work / "broker", users={**pw, **logins}, acl=acl,
                             include=REPO / "deploy" / "mosquitto" / "motcua-sync.conf",
                             autosave_interval=fleet.AUTOSAVE_S).start()
    addr = f"{broker.host}:{broker.port}"
    my_db = work / "district.sqlite"
    shutil.copy(db, my_db)
    token = rng.bytes(32).hex()
    (work / "token").write_text(token + "\n")
    (work / "token").chmod(0o600)
    terms: list[Term] = []
    worker = None
    watch = None
    lat: dict[str, list[float]] = {h: [] for h in HOPS}
    e2e: list[float] = []
    e2e_sqlite: list[float] = []
    e2e_applied: list[float] = []
    not_ok = 0
    trunc: list[float] = []
    dlog = DistrictLog.open(my_db)
    try:
        worker = fleet.Worker(work, "worker-a", "district-q1", logins["district-q1"], addr,
                              my_db, work.parent / "district.key", work / "token",
                              snapshot_files=True)
        worker.wait_up("/readyz", 120)
        watch = BatchWatch(broker.host, broker.port, "t-watch", logins["t-watch"],
                           work.parent / "district.pub", fleet.DISTRICT)
        for tid, p in pw.items():
            (work / "terminals" / tid).mkdir(parents=True)
            shutil.copytree(seed_dir, work / "terminals" / tid / "store")
            terms.append(Term(work, tid, p, addr, work.parent / "district.pub", code, fleet))
        for t in terms:
            t.wait_for(lambda t=t: t.events.pop("started", None), 300, "start")
        time.sleep(1.0)  # let the retained manifest and states settle (not a measurement)
        for k, cid in enumerate(victims):
            up = dlog.citizen(cid)
            assert up is not None
            emb = base64.b64encode(np.asarray(up.embeddings[0], "<f4").tobytes()).decode()
            seq = dlog.head_seq + 1  # the bench's deletes are the only writes
            tag = f"w{k}"
            for t in terms:
                t.send(cmd="watch", tag=tag, cid=cid, seq=seq, emb=emb)
            for t in terms:
                t.wait_for(lambda t=t, tag=tag: tag in t.acks, 60, "ack")
            t_send = time.time()
            res = post_delete(worker.port, token, cid, k)
            t_answer = time.time()
            assert res["seq"] == seq, res
            rows = [(t, t.wait_for(lambda t=t, seq=seq: t.batch_with(seq), 120, f"change {seq}"))
                    for t in terms]
            created = dlog._db.execute("SELECT created_at FROM log WHERE seq = ?",
                                       (seq,)).fetchone()[0]
            with watch.cv:
                until = time.monotonic() + 30
                while seq not in watch.built and time.monotonic() < until:
                    watch.cv.wait(1.0)
                built = watch.built.get(seq, float("nan"))
            lat["ingest"].append(created - t_send)
            lat["commit_answer"].append(t_answer - created)
            lat["pickup"].append(built - created)
            for _t, b in rows:
                lat["broker"].append(b["recv"] - built)
                lat["queue"].append(b["handle"] - b["recv"])
                lat["verify"].append(b["apply"] - b["handle"])
                lat["lock"].append(b["locked"] - b["apply"])
                lat["sqlite"].append(b["committed"] - b["locked"])
                lat["index"].append(b["indexed"] - b["committed"])
                lat["after"].append(b["applied"] - b["indexed"])
                lat["visible"].append(b["indexed"] - t_send)
                lat["shown_never"].append(b["committed"] - t_send)
                trunc.append(b.get("truncate_s", 0.0))
                not_ok += not b["ok"][str(seq)]
            e2e.append(max(b["indexed"] for _t, b in rows) - t_send)
            e2e_sqlite.append(max(b["committed"] for _t, b in rows) - t_send)
            e2e_applied.append(max(b["applied"] for _t, b in rows) - t_send)
            if (k + 1) % 10 == 0:
                fleet.progress(f"{code.name}: delete {k + 1}/{len(victims)}: "
                               f"{e2e[-1] * 1000:.0f} ms")
            if args.gap:
                time.sleep(args.gap)
        rejections = 0
        for t in terms:
            t.send(cmd="status", tag="end")
            st = t.wait_for(lambda t=t: t.events.pop("status", None), 60, "status")
            rejections += sum(v for r, v in st["rejections"].items() if r != "duplicate")
    finally:
        for t in terms:
            t.stop()
        if watch is not None:
            watch.stop()
        if worker is not None:
            worker.stop()
        dlog.close()
        broker.close()
    return {"code": str(code), "deletes": len(victims),
            "hops_ms": {h: stats(v) for h, v in lat.items()},
            "truncate_wal_ms": stats(trunc),
            "e2e_ms": stats(e2e), "e2e_applied_ms": stats(e2e_applied),
            "e2e_sqlite_ms": stats(e2e_sqlite),
            "still_matchable": not_ok, "rejections": rejections}


def main() -> None:
    sys.path.insert(0, str(HERE))
    import fleet  # bench/fleet.py: broker, district worker and gallery helpers

    from district.log import DistrictLog
    from edge.store.gallery import GalleryStore
    from proto import sync_pb2 as pb
    from sync.keys import generate_keypair
    from sync.wire import change_from_pb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--terminals", type=int, default=10)
    ap.add_argument("--citizens", type=int, default=10_000)
    ap.add_argument("--deletes", type=int, default=50)
    ap.add_argument("--gap", type=float, default=0.0,
                    help="seconds between one delete being unmatchable everywhere and the next")
    ap.add_argument("--code", type=Path, action="append",
                    help="product tree to run (repeatable; default: this one)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with several --code: measurements per tree, interleaved")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.terminals <= 10):
        raise SystemExit("bench: 1..10 terminals (the 50-terminal run is bench/fleet.py)")
    codes = [c.resolve() for c in (args.code or [REPO])]
    load = os.getloadavg()
    print(f"delete path bench: {args.terminals} terminals, {args.citizens} citizens, "
          f"{args.deletes} deletes x {args.rounds} round(s) over {len(codes)} tree(s); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {str(c): [] for c in codes}
    with fleet.workdir(args.keep, "motcua-bench-delete-") as work:
        generate_keypair(work / "district.key", work / "district.pub")
        db = work / "district.sqlite"
        dlog = DistrictLog.create(db, district_id=fleet.DISTRICT, embedder_id=fleet.EMBEDDER,
                                  dim=fleet.DIM)
        fleet.fill(dlog, args.citizens, args.seed)
        dlog.mark_published(dlog.head_seq)
        seed_dir = work / "seed-store"
        store = GalleryStore.open(seed_dir, embedder_id=fleet.EMBEDDER, dim=fleet.DIM)
        with dlog.snapshot() as (last, _nc, _nd, rows):
            changes = [change_from_pb(pb.Change.FromString(b), fleet.DIM) for b in rows]
        store.replace_all(changes, epoch=dlog.epoch, last_seq=last)
        store.close()
        dlog.close()
        rng = np.random.default_rng(args.seed + 1)
        pool = [f"c{i:07d}" for i in rng.choice(args.citizens, args.deletes * args.rounds,
                                                   replace=False)]
        for r in range(args.rounds):
            for code in codes:
                victims = pool[r * args.deletes:(r + 1) * args.deletes]
                sub = work / f"run-{r}-{code.name}"
                sub.mkdir()
                fleet.progress(f"round {r + 1}: {code} (load {os.getloadavg()[0]:.1f})")
                res = run(args, code, fleet, sub, seed_dir, db, victims)
                res["load_average"] = [round(x, 2) for x in os.getloadavg()]
                results[str(code)].append(res)
                e, h = res["e2e_ms"], res["hops_ms"]
                print(f"{code.name} round {r + 1}: e2e p50 {e['p50']} p95 {e['p95']} "
                      f"p99 {e['p99']} max {e['max']} ms; per hop p99: "
                      + ", ".join(f"{k} {v['p99']}" for k, v in h.items()), flush=True)
    fig = {"terminals": args.terminals, "citizens": args.citizens, "deletes": args.deletes,
           "rounds": args.rounds, "gap_s": args.gap, "runs": results,
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(fig), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_terminal":
        # the product tree first (not this directory: bench/sync.py is not the sync package)
        sys.path[0] = sys.argv[2]
        _terminal_main(sys.argv[3:])
    else:
        sys.path[0] = str(REPO)
        main()
