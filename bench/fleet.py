"""Fleet benchmark: N real terminal processes against one district on a real broker.

Everything runs on loopback, each part in its own process as in a district:
- one Mosquitto (sync.localbroker) with the shipped settings (deploy/mosquitto/
  motcua-sync.conf), a password per login and the shipped ACL (motcua-sync.acl), and
  ``sys_interval`` set so that ``$SYS/broker/bytes/*`` is fresh every ~2 s;
- the district: ``motcua district serve`` (publisher, requests, ingest API and, with
  ``--snapshots file``, the default, the snapshot file server: ``[snapshots] listen`` on
  loopback, plain HTTP as the config allows there) on a change log of ``--citizens``
  synthetic citizens (clustered face-like 512-d embeddings from edge.store.synthetic,
  one dossier each), written by this process; ``--snapshots mqtt`` runs it without the
  file server, so every terminal gets its snapshot as MQTT chunks (the fallback path);
- ``--terminals`` terminal processes (this file, ``_terminal`` mode): each the real sync
  client (edge.syncclient TerminalSubscriber + SyncEngine) and the real GalleryStore in
  its own directory, logging in with its own user name (its terminal id, which the
  broker also uses as its client id) and password, as provisioned terminals do. A
  terminal answers commands on stdin and reports on stdout (one JSON object a line):
  when its store reached an epoch and change number (with its content hash), and when a
  citizen became unmatchable (its own embedding no longer finds them), with the
  machine-wide monotonic clock, so the figures do not include the pipe.

Steps:
1. initial sync: every terminal converges (content hash == the district's);
2. ``new-epoch`` (the log's ``new_epoch()``, what ``motcua district new-epoch`` does):
   seconds until every terminal has converged again (``epoch_converged_s``), the
   broker's bytes sent meanwhile ($SYS/broker/bytes/sent) and their ratio to one
   snapshot's bytes (``resnapshot_bytes_ratio``; one snapshot = the file's signed size,
   or with MQTT chunks the fewest bytes one terminal received during the step: what a
   single terminal needs), the HTTP bytes the district's snapshot server sent (its
   /metrics counter, ``resnapshot_http_bytes``), those the terminals downloaded, and
   the terminals' CPU seconds in the step;
3. ``--deletes`` citizens deleted one at a time: seconds from the district's commit until
   the citizen is unmatchable on every terminal (p50/p99 over the deletes);
4. takeover: when ``motcua district serve`` can run as two workers with a lease
   (capability check: :func:`takeover_support`), a second worker is started, the
   leader is SIGKILLed, and ``takeover_s`` is the time from the SIGKILL until every
   terminal applied a change committed just after it; changes committed across the kill
   must all arrive (hashes equal) and none may be applied twice. Today: null, with why.
Peak RSS (VmHWM) of the broker, the district worker(s) and the terminals.

The last line is one JSON object with the figures and each target with pass/fail.

    PYTHONPATH=. python bench/fleet.py [--quick] [--terminals N] [--citizens N]
                                       [--snapshots file|mqtt]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.client
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the shipped ACL names district "q1" and publisher login "district-q1": used as they are
DISTRICT = "q1"
EMBEDDER = "bench-fleet-512"
#: the embedding size of the shipped face packs (ArcFace-style 512-d)
DIM = 512
#: the issue's targets (bench/fleet.py with 50 terminals and a 10,000-citizen gallery)
TARGETS = {
    "epoch_converged_s": 60.0,
    "resnapshot_bytes_ratio": 1.5,
    "delete_unmatchable_s_p99": 2.0,
    "takeover_s": 10.0,
}
#: $SYS update period: 1 s, the smallest (Mosquitto 2.0.11 then publishes every ~2 s),
#: brackets a step's bytes to within a round of idle traffic (a few manifests, state and
#: $SYS messages: hundreds of bytes)
SYS_INTERVAL_S = 1
#: a terminal checks its watches when its engine applied something (and on commands);
#: this fallback look only guards against a missed wake-up, so it may be slow
FALLBACK_POLL_S = 0.5
#: k of the unmatchable check: the session looks at the few best candidates; 10 is more
SEARCH_K = 10
#: Mosquitto persistence: the tests' 1 s autosave rewrites the whole database (queued
#: snapshot chunks included) every second; a district broker saves far less often
AUTOSAVE_S = 60


def progress(msg: str) -> None:
    print(f"  .. [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 4) if values else None


def vm_kb(pid: int, field: str) -> int:
    """VmHWM (peak RSS) / VmRSS of a process in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# ---- the terminal process ---------------------------------------------------------------


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def terminal_main(argv: list[str]) -> None:
    """One terminal: the real sync client and store; commands on stdin, events on stdout."""
    import logging

    from edge.store.gallery import GalleryStore
    from edge.syncclient.subscriber import TerminalSubscriber
    from sync.keys import load_public_key
    from sync.mqtt import BrokerSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--password-file", type=Path, required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--pub", type=Path, required=True)
    ap.add_argument("--dim", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.broker.rsplit(":", 1)
    store = GalleryStore.open(args.dir / "store", embedder_id=EMBEDDER, dim=args.dim)
    sub = TerminalSubscriber(
        store,
        BrokerSettings(host=host, port=int(port), username=args.id,
                       password=args.password_file.read_text().strip()),
        district_id=DISTRICT, terminal_id=args.id, public_key=load_public_key(args.pub),
        model=EMBEDDER, spool_dir=args.dir, outbox_dir=args.dir / "outbox",
    )
    out_lock = threading.Lock()

    def emit(**ev: object) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()

    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    # woken by a command or by the engine after each applied batch or snapshot, so a
    # watch is checked at once, without polling (50 terminals polling every few ms
    # would slow the very terminals being measured)
    wake = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(json.loads(line))
            wake.set()
        commands.put(None)  # the parent went away
        wake.set()

    sub.engine.on_applied = lambda _batch: wake.set()
    sub.engine.on_citizens_removed = wake.set  # also called after a snapshot is installed
    threading.Thread(target=read_stdin, name="bench-stdin", daemon=True).start()
    sub.start()
    emit(ev="started", pid=os.getpid())
    converge: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    def handle(cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "converge":
            converge.append(cmd)
            emit(ev="ack", tag=cmd["tag"])
        elif cmd["cmd"] == "gone":
            cmd["vec"] = np.frombuffer(base64.b64decode(cmd["emb"]), dtype="<f4")
            gone.append(cmd)
            emit(ev="ack", tag=cmd["tag"])
        elif cmd["cmd"] == "status":
            eng = sub.engine
            emit(ev="status", tag=cmd["tag"], last_seq=store.last_seq, epoch=store.epoch,
                 citizens=store.citizen_count, bytes_received=sub.bytes_received,
                 snapshots_applied=eng.snapshots_applied,
                 snapshot_files_applied=eng.snapshot_files_applied,
                 http_bytes=sub.downloader.bytes_received if sub.downloader else 0,
                 cpu_s=_cpu_s(), duplicates=eng.duplicates,
                 rejections=sum(eng.rejections.values()) - eng.rejections["duplicate"],
                 requests=dict(eng.requests),
                 hash=store.content_hash() if cmd.get("hash") else None,
                 peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    try:
        running = True
        while running:
            wake.wait(FALLBACK_POLL_S)
            wake.clear()  # before looking: a wake-up from now on means another look
            while True:
                try:
                    cmd = commands.get_nowait()
                except queue.Empty:
                    break
                if cmd is None or cmd["cmd"] == "stop":
                    running = False
                    break
                handle(cmd)
            for w in list(gone):
                if store.last_seq >= w["seq"]:
                    t = time.monotonic()
                    hits = [m.citizen_id for m in store.search(w["vec"], SEARCH_K)]
                    ok = w["cid"] not in hits and store.citizen(w["cid"]) is None
                    emit(ev="gone", tag=w["tag"], t=t, ok=ok)
                    gone.remove(w)
            for w in list(converge):
                if store.epoch == w["epoch"] and store.last_seq >= w["seq"]:
                    t = time.monotonic()
                    emit(ev="reached", tag=w["tag"], t=t, epoch=store.epoch,
                         last_seq=store.last_seq, hash=store.content_hash(),
                         bytes_received=sub.bytes_received)
                    converge.remove(w)
    finally:
        sub.stop()
        store.close()


# ---- the bench's side ---------------------------------------------------------------


class StepTimeout(Exception):
    """A step did not finish within --timeout: the figures so far are still printed."""

    def __init__(self, message: str, converged: int) -> None:
        super().__init__(message)
        self.converged = converged


class Terminal:
    """One terminal process and its events (read by a thread of ours)."""

    def __init__(self, work: Path, tid: str, password: str, broker: str, pub: Path) -> None:
        self.id = tid
        self.dir = work / "terminals" / tid
        self.dir.mkdir(parents=True, exist_ok=True)  # --preseed: the store is there
        pw = self.dir / "password"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        self.err = open(self.dir / "terminal.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_terminal", "--dir", str(self.dir), "--id", tid,
             "--password-file", str(pw), "--broker", broker, "--pub", str(pub),
             "--dim", str(DIM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        )
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, name=f"bench-{tid}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            with self.cv:
                self.events[(ev["ev"], str(ev.get("tag", "")))] = ev
                self.cv.notify_all()
        with self.cv:
            self.events[("exit", "")] = {}
            self.cv.notify_all()

    def send(self, **cmd: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def wait(self, ev: str, tag: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cv:
            while (ev, tag) not in self.events:
                if ("exit", "") in self.events:
                    raise SystemExit(f"bench: terminal {self.id} exited: {self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench: terminal {self.id}: no {ev} {tag!r} in "
                                     f"{timeout:.0f} s; {self.log_tail()}")
                self.cv.wait(left)
            return self.events.pop((ev, tag))

    def has(self, ev: str, tag: str) -> bool:
        with self.cv:
            return (ev, tag) in self.events

    def status(self, tag: str, *, with_hash: bool = False) -> dict[str, Any]:
        self.send(cmd="status", tag=tag, hash=with_hash)
        return self.wait("status", tag, 120)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "terminal.log").read_text(errors="replace")[-1500:]
        return ""

    def request_stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send(cmd="stop")
                assert self.proc.stdin is not None
                self.proc.stdin.close()

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the exit until ``deadline`` (monotonic), then SIGKILL."""
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class SysMonitor:
    """The broker's own byte counters ($SYS/broker/bytes/sent|received), with the
    monotonic time each value arrived."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        from sync.mqtt import BrokerSettings, make_client, start_client

        settings = BrokerSettings(host=host, port=port, username=user, password=password,
                                  reconnect_min_s=0.1, reconnect_max_s=1.0,
                                  session_expiry_s=0)
        self.values: dict[str, tuple[float, int]] = {}
        self.cv = threading.Condition()
        self.client = make_client(user, settings)
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [("$SYS/broker/bytes/sent", 0), ("$SYS/broker/bytes/received", 0)])
        self.client.on_message = self._on_message
        start_client(self.client, settings)

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        with self.cv:
            self.values[msg.topic.rsplit("/", 1)[1]] = (time.monotonic(), int(msg.payload))
            self.cv.notify_all()

    def fresh(self) -> tuple[int, int]:
        """(bytes sent, bytes received) as published after now. Mosquitto publishes a
        counter only when it changed; "sent" changes every round (the previous round's
        messages to us), so its next arrival marks a fresh round, and "received", from
        the same round or unchanged since, holds too."""
        now = time.monotonic()
        # Mosquitto 2.0.11 publishes every ~2 s at sys_interval 1 (measured): 3 rounds
        deadline = now + 6 * SYS_INTERVAL_S
        with self.cv:
            while True:
                got = self.values.get("sent")
                if got is not None and got[0] > now:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("bench: no fresh $SYS/broker/bytes/sent from the broker")
                self.cv.wait(0.1)
            return got[1], self.values.get("received", (0.0, 0))[1]

    def stop(self) -> None:
        from sync.mqtt import stop_client

        self.client.disconnect()
        stop_client(self.client)


def takeover_support() -> tuple[bool, str]:
    """Can ``motcua district serve`` run as two workers with a lease (one publishes, the
    other takes over)? Looked up in the code, not assumed: a ``district.lease`` module or
    a lease setting in the district's configuration."""
    import district
    from district.config import DistrictConfig

    fields = [f.name for f in dataclasses.fields(DistrictConfig)]
    # the file beside the district package this bench (and the workers it starts, with
    # the same PYTHONPATH) imports: not importlib's find_spec, which an editable install's
    # finder answers from the installed tree (another checkout's district/lease.py)
    here = Path(district.__file__).resolve().parent
    if (here / "lease.py").is_file() or any("lease" in f for f in fields):
        return True, ""
    return False, ("not supported: `motcua district serve` has no lease yet (no "
                   "district.lease module, no lease setting in district.config."
                   f"DistrictConfig: {', '.join(fields)}), so a second worker would "
                   "publish beside the first instead of standing by")


class Worker:
    """One ``motcua district serve`` process with its own config, login and HTTP port."""

    def __init__(self, work: Path, name: str, user: str, password: str, broker: str,
                 db: Path, key: Path, token: Path, *, snapshot_files: bool) -> None:
        from sync.localbroker import free_port

        self.name = name
        self.port = free_port()
        pw = work / f"{name}.password"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        self.conf = work / f"{name}.toml"
        # the worker's name, where the district configuration has one (several workers)
        from district.config import DistrictSection

        named = any(f.name == "worker" for f in dataclasses.fields(DistrictSection))
        worker_line = f'worker = "{name}"\n' if named else ""
        # file mode: the district serves one snapshot file over HTTP (docs/scale.md "One
        # snapshot for many terminals"); plain HTTP is allowed on loopback only (the
        # config refuses it elsewhere), so no TLS here, as for the broker. The terminals
        # get the URL in the signed descriptor, as real terminals do. A second worker
        # uses the default folder beside the log, as a second real worker would.
        self.snap_port = free_port() if snapshot_files else 0
        snap_section = (f'[snapshots]\nlisten = "127.0.0.1:{self.snap_port}"\n'
                        if snapshot_files else "")
        self.conf.write_text(f"""[district]
id = "{DISTRICT}"
db = "{db}"
key_file = "{key}"
{worker_line}[broker]
broker = "{broker}"
username = "{user}"
password_file = "{pw}"
reconnect_min_s = 0.1
reconnect_max_s = 2.0
[ingest]
listen = "127.0.0.1:{self.port}"
token_file = "{token}"
{snap_section}""")
        self.log = work / f"{name}.log"
        self.err = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "motcua", "--config", str(self.conf), "district", "serve"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=self.err)
        self.peak_kb = 0

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def wait_up(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: {self.name} exited: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError):
                if self.get(path)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {self.name}: {path} not 200 in {timeout:.0f} s")
            time.sleep(0.05)

    def leads(self) -> bool | None:
        """True/False when the worker's /metrics has a lease-held/leader gauge, else
        None."""
        with contextlib.suppress(OSError):
            _st, text = self.get("/metrics")
            for line in text.splitlines():
                # "held"/"leader" gauges, not e.g. a lease generation number
                m = re.match(r"motcua_district_(?:\w*lease\w*held|\w*leader)\w*"
                             r"(?:\{[^}]*\})?\s+(\S+)", line)
                if m:
                    return float(m.group(1)) > 0
        return None

    def http_bytes_served(self) -> int:
        """The snapshot server's body bytes sent so far (its /metrics counter), 0 without
        one."""
        _st, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith("motcua_district_snapshot_http_bytes_total "):
                return int(float(line.split()[1]))
        return 0

    def sample(self) -> None:
        if self.proc.poll() is None:
            self.peak_kb = max(self.peak_kb, vm_kb(self.proc.pid, "VmHWM"))

    def kill(self) -> None:
        self.sample()
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.sample()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def fill(dlog: Any, n: int, seed: int) -> None:
    """``n`` citizens (one clustered face-like embedding, one dossier each)."""
    from edge.store.synthetic import ClusteredFaces
    from sync.changes import Dossier, DossierStatus

    faces = ClusteredFaces(DIM, seed=seed)
    rng = np.random.default_rng(seed)
    step = 2000  # one transaction per 2,000 citizens: progress, bounded memory
    for start in range(0, n, step):
        with dlog.transaction():
            for i in range(start, min(n, start + step)):
                cid = f"c{i:07d}"
                dlog.upsert_citizen(cid, masked_name=f"Nguyễn V. A*** {i}",
                                    embeddings=faces.samples(i, [0]),
                                    pin_hash=rng.bytes(32), pin_salt=rng.bytes(16))
                dlog.upsert_dossier(Dossier(
                    code=f"HS-{i:07d}", citizen_id=cid,
                    procedure="Cấp giấy chứng nhận quyền sử dụng đất",
                    status=DossierStatus.RECEIVED, stage="Bộ phận một cửa",
                    received_on="2026-11-02"))
        progress(f"district gallery: {min(n, start + step)}/{n} citizens")


def district_hash(dlog: Any) -> tuple[int, int, str, int]:
    """(epoch, head, content hash a converged terminal has, bytes of the snapshot's
    changes) of the district's current state (edge.store.hashing.gallery_hash)."""
    from edge.store.hashing import gallery_hash
    from proto import sync_pb2 as pb
    from sync.changes import CitizenUpsert, DossierUpsert
    from sync.wire import change_from_pb

    citizens, dossiers = [], []
    size = 0
    with dlog.snapshot() as (last, _nc, _nd, rows):
        for blob in rows:
            size += len(blob)
            ch = change_from_pb(pb.Change.FromString(blob), dlog.dim)
            if isinstance(ch, CitizenUpsert):
                citizens.append((ch.citizen_id, ch.masked_name, ch.pin_hash, ch.pin_salt,
                                 ch.embeddings))
            elif isinstance(ch, DossierUpsert):
                dossiers.append(ch.dossier)
    epoch = dlog.epoch
    return epoch, last, gallery_hash(embedder_id=dlog.embedder_id, epoch=epoch,
                                     last_seq=last, citizens=citizens,
                                     dossiers=dossiers), size


class Fleet:
    """The run: broker, district worker(s), terminals; each step is a method."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.terminals: list[Terminal] = []
        self.workers: list[Worker] = []
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self._tag = 0

    def tag(self, what: str) -> str:
        self._tag += 1
        return f"{what}-{self._tag}"

    # -- set-up --

    def start(self) -> None:
        from district.log import DistrictLog
        from sync.keys import generate_keypair
        from sync.localbroker import MosquittoBroker

        args, work = self.args, self.work
        n = args.terminals
        rng = np.random.default_rng()
        self.passwords = {f"t-{i:03d}": rng.bytes(12).hex() for i in range(n)}
        logins = {"district-q1": rng.bytes(12).hex(), "district-q1-b": rng.bytes(12).hex(),
                  "bench-sys": rng.bytes(12).hex()}
        acl = (REPO / "deploy" / "mosquitto" / "motcua-sync.acl").read_text()
        # a second district login with the publisher's rights (a standby worker needs its
        # own client id: the shipped config makes the login the client id), and the
        # bench's $SYS reader
        if "user district-q1-b" not in acl:  # the shipped ACL may have it
            acl += ("\nuser district-q1-b\ntopic write motcua/v1/q1/gallery/#\n"
                    "topic read motcua/v1/q1/terminal/#\n")
        acl += "\nuser bench-sys\ntopic read $SYS/#\n"
        # (Mosquitto's "pattern" lines apply to every login wherever they stand, "topic"
        # lines to the "user" above them)
        conf = work / "broker-extra.conf"
        conf.write_text(f"sys_interval {SYS_INTERVAL_S}\n"
                        + (REPO / "deploy" / "mosquitto" / "motcua-sync.conf").read_text())
        progress(f"broker: {n} terminal logins + district + $SYS reader")
        self.broker = MosquittoBroker(work / "broker", users={**self.passwords, **logins},
                                      acl=acl, include=conf,
                                      autosave_interval=AUTOSAVE_S).start()
        self.logins = logins
        self.broker_addr = f"{self.broker.host}:{self.broker.port}"
        self.sys = SysMonitor(self.broker.host, self.broker.port, "bench-sys",
                              logins["bench-sys"])
        self.db = work / "district.sqlite"
        self.dlog = DistrictLog.create(self.db, district_id=DISTRICT, embedder_id=EMBEDDER,
                                       dim=DIM)
        t0 = time.perf_counter()
        fill(self.dlog, args.citizens, args.seed)
        self.dlog.mark_published(self.dlog.head_seq)  # nobody listened to live batches
        progress(f"district log of {args.citizens} citizens written in "
                 f"{time.perf_counter() - t0:.0f} s")
        self.key, self.pub = work / "district.key", work / "district.pub"
        generate_keypair(self.key, self.pub)
        self.token = work / "token"
        self.token.write_text(rng.bytes(32).hex() + "\n")
        self.token.chmod(0o600)
        self.workers.append(self.worker("worker-a", "district-q1"))
        self.workers[0].wait_up("/readyz", 60)
        progress("district worker-a ready (motcua district serve)")

    def worker(self, name: str, user: str) -> Worker:
        return Worker(self.work, name, user, self.logins[user], self.broker_addr, self.db,
                      self.key, self.token, snapshot_files=self.args.snapshots == "file")

    def seed_store(self) -> Path:
        """One store built from the district's state (the install a snapshot does),
        copied to every terminal by ``--preseed``: a fleet already in sync."""
        from edge.store.gallery import GalleryStore
        from proto import sync_pb2 as pb
        from sync.wire import change_from_pb

        t0, c0 = time.perf_counter(), time.process_time()
        path = self.work / "seed-store"
        store = GalleryStore.open(path, embedder_id=EMBEDDER, dim=DIM)
        with self.dlog.snapshot() as (last, _nc, _nd, rows):
            changes = [change_from_pb(pb.Change.FromString(b), DIM) for b in rows]
        store.replace_all(changes, epoch=self.dlog.epoch, last_seq=last)
        store.close()
        # one install's cost (decode + replace_all: SQLite and the HNSW index), all threads
        self.figures["preseed_install_s"] = round(time.perf_counter() - t0, 2)
        self.figures["preseed_install_cpu_s"] = round(time.process_time() - c0, 2)
        progress(f"--preseed: one store of the district's state built in "
                 f"{time.perf_counter() - t0:.0f} s ({time.process_time() - c0:.1f} s CPU), "
                 f"copied to every terminal")
        return path

    def start_terminals(self) -> None:
        seed = self.seed_store() if self.args.preseed else None
        t0 = time.perf_counter()
        for tid, pw in self.passwords.items():
            if seed is not None:
                shutil.copytree(seed, self.work / "terminals" / tid / "store")
            self.terminals.append(Terminal(self.work, tid, pw, self.broker_addr, self.pub))
        for t in self.terminals:
            t.wait("started", "", 300)
        progress(f"{len(self.terminals)} terminal processes up in "
                 f"{time.perf_counter() - t0:.0f} s")

    # -- measurements --

    def sample_rss(self) -> None:
        self.broker_peak_kb = max(getattr(self, "broker_peak_kb", 0),
                                  vm_kb(self.broker.proc.pid, "VmHWM") if self.broker.proc else 0)
        for w in self.workers:
            w.sample()

    def converge(self, what: str, change: Callable[[], object] | None, timeout: float, *,
                 new_epoch: bool = False, adds: int = 0
                 ) -> tuple[float, list[dict[str, Any]], str]:
        """Tell every terminal what to wait for, make the change (a new epoch, or ``adds``
        new changes), and wait until every terminal reached the district's epoch and head;
        returns (seconds from the change to the last terminal, their reports, the
        district's hash). Hashes are compared by the caller."""
        epoch = self.dlog.epoch + new_epoch
        head = self.dlog.head_seq + adds
        tag = self.tag(what)
        for t in self.terminals:
            t.send(cmd="converge", tag=tag, epoch=epoch, seq=head)
        for t in self.terminals:
            t.wait("ack", tag, 60)
        t0 = time.monotonic()
        if change is not None:
            change()
        done: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        last_note = time.monotonic()
        pending = list(self.terminals)
        while pending:
            for t in list(pending):
                if t.has("reached", tag):
                    done.append({"id": t.id, **t.wait("reached", tag, 0)})
                    pending.remove(t)
            self.sample_rss()
            if time.monotonic() > deadline:
                raise StepTimeout(f"{what}: {len(done)}/{len(self.terminals)} terminals "
                                  f"converged in {timeout:.0f} s (--timeout); not: "
                                  f"{', '.join(t.id for t in pending[:10])}", len(done))
            if time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                progress(f"{what}: {len(done)}/{len(self.terminals)} terminals converged "
                         f"after {time.monotonic() - t0:.0f} s")
            time.sleep(0.2)
        e, h, expected, _size = district_hash(self.dlog)
        assert (e, h) == (epoch, head), "the district changed during the step"
        return max(d["t"] for d in done) - t0, done, expected

    def initial(self) -> None:
        t0 = time.monotonic()
        self.start_terminals()
        secs, done, expected = self.converge("initial", None, self.args.timeout)
        secs = max(d["t"] for d in done) - t0
        bad = [d["id"] for d in done if d["hash"] != expected]
        self.figures["initial_converged_s"] = round(secs, 2)
        self.figures["initial_preseeded"] = bool(self.args.preseed)
        self.figures["initial_hash_mismatches"] = len(bad)
        progress(f"initial sync: all {len(done)} terminals converged {secs:.1f} s after "
                 f"their start; hash mismatches: {len(bad)}")

    def new_epoch(self) -> None:
        before = [t.status(self.tag("pre")) for t in self.terminals]
        served0 = sum(w.http_bytes_served() for w in self.workers)
        sent0, recv0 = self.sys.fresh()
        try:
            secs, done, expected = self.converge("epoch", self.dlog.new_epoch,
                                                self.args.timeout, new_epoch=True)
        except StepTimeout as exc:  # what the step did until then
            sent1, recv1 = self.sys.fresh()
            self.figures.update({
                "epoch_converged_s": None,
                "epoch_converged_terminals_by_timeout": exc.converged,
                "resnapshot_broker_bytes_sent_by_timeout": sent1 - sent0,
            })
            raise
        sent1, recv1 = self.sys.fresh()
        served = sum(w.http_bytes_served() for w in self.workers) - served0
        after = [t.status(self.tag("post")) for t in self.terminals]
        pairs = list(zip(after, before, strict=True))
        got = [a["bytes_received"] - b["bytes_received"] for a, b in pairs]
        http = [a["http_bytes"] - b["http_bytes"] for a, b in pairs]
        cpu = [a["cpu_s"] - b["cpu_s"] for a, b in pairs]
        snaps = [a["snapshots_applied"] - b["snapshots_applied"] for a, b in pairs]
        files = [a["snapshot_files_applied"] - b["snapshot_files_applied"] for a, b in pairs]
        file_size = self.snapshot_file_size()
        # one snapshot: by file, the file's signed size (what each terminal downloads; the
        # terminals' MQTT bytes carry only descriptors, manifests and batches); by MQTT,
        # the fewest payload bytes a terminal received in the step (chunks + signatures
        # + a manifest): what a single terminal needs
        one = (file_size or min(http)) if self.args.snapshots == "file" else min(got)
        bad = [d["id"] for d in done if d["hash"] != expected]
        _e, _h, _x, content = district_hash(self.dlog)
        times = sorted(d["t"] for d in done)
        t_first = times[0] - (times[-1] - secs)
        self.figures.update({
            "epoch_converged_s": round(secs, 2),
            "epoch_first_converged_s": round(t_first, 2),
            "epoch_hash_mismatches": len(bad),
            "snapshot_bytes": one,
            "snapshot_content_bytes": content,
            "resnapshot_broker_bytes_sent": sent1 - sent0,
            "resnapshot_broker_bytes_received": recv1 - recv0,
            "resnapshot_terminal_bytes": sum(got),
            "resnapshot_bytes_ratio": round((sent1 - sent0) / one, 4),
            "resnapshot_http_bytes": served,
            "resnapshot_http_bytes_downloaded": sum(http),
            "snapshot_file_bytes": file_size,
            "snapshots_per_terminal_max": max(snaps),
            "snapshots_per_terminal_min": min(snaps),
            "snapshot_files_per_terminal_min": min(files),
            "epoch_terminal_cpu_s_median": round(float(np.median(cpu)), 2),
            "epoch_terminal_cpu_s_max": round(max(cpu), 2),
            "epoch_terminal_cpu_s_sum": round(sum(cpu), 1),
        })
        progress(f"new-epoch: all converged in {secs:.1f} s (first after {t_first:.1f} s); "
                 f"broker sent {(sent1 - sent0) / 1e6:.1f} MB = "
                 f"{(sent1 - sent0) / one:.4f} x one snapshot ({one / 1e6:.2f} MB); "
                 f"HTTP {served / 1e6:.1f} MB served; terminal CPU {sum(cpu):.0f} s in all; "
                 f"hash mismatches: {len(bad)}")

    def snapshot_file_size(self) -> int | None:
        """The signed size of the district's newest snapshot file (its descriptor), None
        without files."""
        from proto import sync_pb2 as pb

        folder = self.db.with_name(self.db.name + ".snapshots")
        descs = []
        for p in folder.glob("*.desc"):
            d = pb.SnapshotFile.FromString(pb.Envelope.FromString(p.read_bytes()).body)
            descs.append(d)
        if not descs:
            return None
        return max(descs, key=lambda d: (d.created_at_ms, d.last_seq)).size

    def deletes(self) -> None:
        n = self.args.deletes
        rng = np.random.default_rng(self.args.seed + 1)
        victims = [f"c{i:07d}" for i in rng.choice(self.args.citizens, n, replace=False)]
        lat: list[float] = []
        worst_terminal: dict[str, int] = {}
        failed = 0
        for k, cid in enumerate(victims):
            up = self.dlog.citizen(cid)
            assert up is not None
            emb = base64.b64encode(np.asarray(up.embeddings[0], dtype="<f4").tobytes()).decode()
            seq = self.dlog.head_seq + 1  # this process is the log's only writer
            tag = self.tag("del")
            for t in self.terminals:
                t.send(cmd="gone", tag=tag, cid=cid, seq=seq, emb=emb)
            for t in self.terminals:
                t.wait("ack", tag, 60)
            t0 = time.monotonic()
            got = self.dlog.delete_citizen(cid)
            assert got == seq, (got, seq)
            evs = [(t.id, t.wait("gone", tag, 120)) for t in self.terminals]
            failed += sum(not e["ok"] for _i, e in evs)
            tid, worst = max(evs, key=lambda x: x[1]["t"])
            worst_terminal[tid] = worst_terminal.get(tid, 0) + 1
            lat.append(worst["t"] - t0)
            if (k + 1) % max(1, n // 5) == 0:
                progress(f"delete {k + 1}/{n}: unmatchable everywhere after "
                         f"{lat[-1] * 1000:.0f} ms")
        self.figures.update({
            "deletes": n,
            "delete_unmatchable_s_p50": pct(lat, 50),
            "delete_unmatchable_s_p99": pct(lat, 99),
            "delete_unmatchable_s_max": round(max(lat), 4),
            "delete_still_matchable": failed,
        })
        progress(f"delete -> unmatchable on all terminals: p50 {pct(lat, 50)} s, "
                 f"p99 {pct(lat, 99)} s; still matchable after applying: {failed}")

    def takeover(self) -> None:
        ok, why = takeover_support()
        if not ok and not self.args.takeover_anyway:
            self.figures["takeover_s"] = None
            self.figures["takeover_note"] = why
            progress(f"takeover: {why}")
            return
        if not ok:
            self.notes.append("takeover measured without a lease (--takeover-anyway): both "
                              "workers published; the figure only exercises the bench")
        b = self.worker("worker-b", "district-q1-b")
        self.workers.append(b)
        b.wait_up("/healthz", 60)
        a = self.workers[0]
        leads = (a.leads(), b.leads())
        victim = b if leads == (False, True) else a  # the gauge, else the first started
        dups0 = sum(t.status(self.tag("pre"))["duplicates"] for t in self.terminals)
        # a change while both run: the leader publishes it
        self.converge("both", lambda: self.dlog.update_dossier("HS-0000000", stage="A"), 120,
                      adds=1)
        stages = iter(range(10**6))
        writing = threading.Event()
        writing.set()

        def writer() -> None:
            # changes keep coming across the kill: every one must reach every terminal
            while writing.is_set():
                self.dlog.update_dossier("HS-0000001", stage=f"w{next(stages)}")
                time.sleep(0.05)

        tag = self.tag("takeover")
        head = self.dlog.head_seq
        for t in self.terminals:
            t.send(cmd="converge", tag=tag, epoch=self.dlog.epoch, seq=head + 1)
        for t in self.terminals:
            t.wait("ack", tag, 60)
        t_kill = time.monotonic()
        victim.kill()
        progress(f"takeover: SIGKILLed {victim.name}")
        self.dlog.update_dossier("HS-0000002", stage="after the kill")  # head + 1
        th = threading.Thread(target=writer, name="bench-writer", daemon=True)
        th.start()
        evs = [t.wait("reached", tag, self.args.timeout) for t in self.terminals]
        secs = max(e["t"] for e in evs) - t_kill
        time.sleep(1.0)  # changes across the kill and after it, for a second more
        writing.clear()
        th.join()
        _s, done, expected = self.converge("after-takeover", None, 120)
        bad = [d["id"] for d in done if d["hash"] != expected]
        post = [t.status(self.tag("post")) for t in self.terminals]
        self.figures.update({
            "takeover_s": round(secs, 2),
            "takeover_killed": victim.name,
            "takeover_leader_gauge": list(leads),
            "takeover_hash_mismatches": len(bad),
            "takeover_rejections": sum(p["rejections"] for p in post),
            "takeover_duplicates_ignored": sum(p["duplicates"] for p in post) - dups0,
        })
        progress(f"takeover: every terminal had the first change after the kill "
                 f"{secs:.2f} s after it; hash mismatches {len(bad)}")

    def memory(self) -> None:
        self.sample_rss()
        self.figures.update({
            "broker_peak_rss_mb": round(self.broker_peak_kb / 1024, 1),
            "district_peak_rss_mb": round(max(w.peak_kb for w in self.workers) / 1024, 1),
        })

    def finish(self) -> None:
        self.memory()
        sts = [t.status(self.tag("end")) for t in self.terminals]
        rss = [s["peak_rss_kb"] / 1024 for s in sts]
        self.figures.update({
            "terminal_peak_rss_mb_median": round(float(np.median(rss)), 1),
            "terminal_peak_rss_mb_max": round(max(rss), 1),
            "terminal_rejections": sum(s["rejections"] for s in sts),
            "snapshot_requests": sum(s["requests"].get("snapshot", 0) for s in sts),
            "replay_requests": sum(s["requests"].get("replay", 0) for s in sts),
        })

    def close(self) -> None:
        # all at once: a terminal installing a snapshot finishes it first (up to 30 s)
        for t in self.terminals:
            t.request_stop()
        deadline = time.monotonic() + 60
        for t in self.terminals:
            t.wait_stopped(deadline)
        for w in self.workers:
            w.stop()
        with contextlib.suppress(AttributeError):
            self.sys.stop()
        with contextlib.suppress(AttributeError):
            self.dlog.close()
        with contextlib.suppress(AttributeError):
            self.broker.close()


def targets(fig: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, limit in TARGETS.items():
        v = fig.get(name)
        out[name] = {"target": f"<= {limit:g}", "value": v,
                     "pass": None if v is None else bool(v <= limit)}
    return out


@contextlib.contextmanager
def workdir(keep: bool, prefix: str = "motcua-bench-fleet-") -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="10 terminals, 1,000 citizens, 10 deletes (CI)")
    ap.add_argument("--terminals", type=int, help="terminal processes (default 50)")
    ap.add_argument("--citizens", type=int, help="gallery size (default 10,000)")
    ap.add_argument("--deletes", type=int, help="citizens deleted one by one (default 50)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds a sync step may take before the bench gives up")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--preseed", action="store_true",
                    help="start the terminals with a copy of one store built from the "
                         "district (in sync): skips the initial N snapshots")
    ap.add_argument("--snapshots", choices=("file", "mqtt"), default="file",
                    help="file: the district serves one snapshot file over HTTP ([snapshots] "
                         "listen); mqtt: no snapshot server, each terminal gets MQTT chunks "
                         "(the path before it, kept as fallback; for comparison)")
    ap.add_argument("--takeover-anyway", action="store_true",
                    help="run the takeover step without a lease (exercises the bench only)")
    args = ap.parse_args()
    args.terminals = args.terminals or (10 if args.quick else 50)
    args.citizens = args.citizens or (1000 if args.quick else 10_000)
    args.deletes = args.deletes or (10 if args.quick else 50)
    if not (1 <= args.terminals <= 999 and args.deletes <= args.citizens):
        raise SystemExit("bench: --terminals 1..999 and --deletes <= --citizens")
    load = os.getloadavg()
    print(f"fleet bench: {args.terminals} terminal processes, {args.citizens} citizens "
          f"({DIM}-d), {args.deletes} deletes, snapshots by {args.snapshots}; "
          f"load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    # stop cleanly (terminals, worker, broker) on SIGTERM and on SIGINT, also when the
    # shell started us in the background with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    failed = ""
    with workdir(args.keep) as work:
        fleet = Fleet(args, work)
        try:
            fleet.start()
            fleet.initial()
            fleet.new_epoch()
            fleet.deletes()
            fleet.takeover()
            fleet.finish()
        except StepTimeout as exc:
            failed = str(exc)
            progress(f"FAILED: {failed}")
            with contextlib.suppress(Exception):
                fleet.memory()
        finally:
            fleet.close()
    fig = {"terminals": args.terminals, "citizens": args.citizens, "quick": args.quick,
           "snapshots": args.snapshots, **fleet.figures}
    fig["targets"] = targets(fig)
    if fleet.notes:
        fig["notes"] = fleet.notes
    fig["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if failed:
        fig["failed"] = failed
    print(f"{'figure':34s} value")
    for k, v in fig.items():
        if k != "targets":
            print(f"{k:34s} {v}")
    for k, t in fig["targets"].items():
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["pass"]]
        print(f"target {k:27s} {t['target']:>8s}  {t['value']}  {verdict}")
    print(json.dumps(fig), flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_terminal":
        terminal_main(sys.argv[2:])
    else:
        main()
