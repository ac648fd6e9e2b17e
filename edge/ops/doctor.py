"""``motcua doctor``: checks a terminal on site and explains each finding in one line.

Each check is a small function ``check_x(ctx) -> Finding`` (ok / warn / fail plus an
explanation a technician can act on). The command prints one line per check and exits
non-zero when any check fails. ``--only NAME`` runs some of them (the update rollback
uses ``--only grpc`` as its health probe).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import datetime
import enum
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from core.errors import MotcuaError
from edge.camera.factory import make_source
from edge.config import Config, load_config
from edge.syncclient import persist
from edge.syncclient.outbox import OutboxSender
from models.pack import load_pack
from proto import display_pb2, display_pb2_grpc
from sync.mqtt import (
    BrokerSettings,
    broker_settings,
    connect_properties,
    make_client,
    session_client_id,
    stop_client,
)


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclasses.dataclass(frozen=True)
class Finding:
    status: Status
    explanation: str


def ok(text: str) -> Finding:
    return Finding(Status.OK, text)


def warn(text: str) -> Finding:
    return Finding(Status.WARN, text)


def fail(text: str) -> Finding:
    return Finding(Status.FAIL, text)


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a system tool with a short timeout; a missing tool gives exit code 127."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=10,
                              check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: timed out")


#: free space below which the store cannot take a snapshot and checkpoints (fail): a
#: 100k-citizen gallery with its index checkpoints needs ~500 MB
MIN_FREE_FAIL = 500 * 1024 * 1024
#: ... and below which a technician should act soon (warn)
MIN_FREE_WARN = 2 * 1024 * 1024 * 1024
#: certificates expiring within this many days are reported (rotation takes a district
#: signature, so a month leaves time to get one)
CERT_WARN_DAYS = 30
#: frames the camera check reads: enough to see a stream, not just a cached first frame
CAMERA_FRAMES = 10
#: the store's SQLite file (edge/store/gallery.py DB_NAME), found under the state dir
STORE_DB = "gallery.db"
#: seconds the network checks wait (broker CONNACK, gRPC health, display page)
NET_TIMEOUT = 5.0
#: a "not me" report or rating still undelivered after this long means the district is
#: not hearing from this terminal (the sync sends within seconds while connected)
OUTBOX_WARN_AGE = datetime.timedelta(hours=24)


@dataclasses.dataclass
class Context:
    """What the checks look at; tests replace the parts they inject faults into."""

    cfg: Config
    config_path: Path | None = None
    run: Runner = run_command
    min_free_fail: int = MIN_FREE_FAIL
    min_free_warn: int = MIN_FREE_WARN
    cert_warn_days: int = CERT_WARN_DAYS
    timeout: float = NET_TIMEOUT
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)


# --------------------------------------------------------------------------- checks


def check_camera(ctx: Context) -> Finding:
    """The camera opens and gives frames."""

    cam = ctx.cfg.camera
    try:
        src = make_source(dataclasses.replace(cam, realtime=False, loop=False))
        src.open()
    except MotcuaError as exc:
        lister = "rpicam-hello --list-cameras" if cam.kind == "libcamera" else \
            "v4l2-ctl --list-devices"
        return fail(f"cannot open {cam.source}: {exc} (cable, `{lister}`)")
    try:
        start = time.monotonic()
        frames = []
        for _ in range(CAMERA_FRAMES):
            fr = src.read()
            if fr is None:
                break
            frames.append(fr)
        elapsed = time.monotonic() - start
    except MotcuaError as exc:
        return fail(f"{src.name} opened but gives no frames: {exc}")
    finally:
        src.close()
    if not frames:
        return fail(f"{src.name} opened but gave no frame (covered? unplugged? busy with "
                    "another program?)")
    h, w = frames[0].image.shape[:2]
    if float(frames[0].image.std()) < 1.0:
        return warn(f"{src.name} gives {w}x{h} frames but they are uniform (lens cap? "
                    "dark room?)")
    rate = f" at {len(frames) / elapsed:.1f} fps" if elapsed > 0 else ""
    return ok(f"{src.name} gives {w}x{h} frames{rate}")


def check_models(ctx: Context) -> Finding:
    """The model files match the hashes of their manifest (models.pack.load_pack)."""

    mcfg = ctx.cfg.models
    start = time.monotonic()
    try:
        pack = load_pack(mcfg.dir, mcfg.pack)
    except MotcuaError as exc:
        return fail(f"{exc} (reinstall: motcua models install PACK.tar)")
    emb = getattr(pack.embedder, "embedder_id", "") or getattr(pack.embedder, "id", "")
    return ok(f"pack {pack.name} in {pack.dir.parent}: {len(pack.files)} files match their "
              f"sha256 ({time.monotonic() - start:.1f} s)" + (f", embedder {emb}" if emb else ""))


def check_store(ctx: Context) -> Finding:
    """The store opens (read-only, never changed by doctor); its change number and size."""
    import sqlite3

    state = Path(ctx.cfg.terminal.state_dir)
    dbs = sorted(state.rglob(STORE_DB)) if state.is_dir() else []
    if not dbs:
        return warn(f"no store in {state} yet (a new terminal fills it from the district's "
                    "snapshot once sync connects)")
    db = dbs[0]
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            citizens = con.execute("SELECT count(*) FROM citizens").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        return fail(f"{db} does not open: {exc} (a damaged store is rebuilt from the "
                    "district's snapshot: see the guide, 'Swapping or resetting')")
    if check is None or check[0] != "ok":
        return fail(f"{db} is damaged: {check[0] if check else 'no answer'}")
    seq, epoch = meta.get("last_seq", "?"), meta.get("epoch", "?")
    return ok(f"{db} opens: change number {seq} (epoch {epoch}), {citizens} citizens, "
              f"embedder {meta.get('embedder_id', '?')}")


def check_broker(ctx: Context) -> Finding:
    """The district broker is reachable and accepts our credentials, over exactly the
    connection the service makes (``sync.mqtt.broker_settings`` and ``make_client``:
    same address, credentials and TLS, which is on only when ``tls = true``); with
    ``fallback_brokers`` each node of the list in turn, each reported.

    The broker binds the client id to the login (one login = one connection), so while the
    terminal service runs the doctor asks it (``GetStatus``) instead of logging in beside
    it, which would take its connection over. With the service stopped it logs in as the
    terminal does (same client id, persistent session kept: ``clean_start`` off, the
    service's session expiry) and acknowledges nothing, so batches queued for the terminal
    stay queued for it. One node at a time, each connection closed before the next.

    Several nodes: OK when all accept; FAIL when none is usable or one refuses the
    credentials (the terminal stops syncing when a node it fails over to refuses it);
    WARN when some are unreachable (the terminal syncs, with less to fall back on)."""
    sync = ctx.cfg.sync
    if not sync.broker:
        return warn("no broker in [sync]: this terminal runs on its local store only")
    try:
        settings = broker_settings(sync, "sync")
    except MotcuaError as exc:
        return fail(f"credentials unusable: {exc}")
    tls = " (TLS)" if settings.tls else ""
    running = _running_terminal_status(ctx)
    if running is not None:
        where = f"{settings.host}:{settings.port}{tls}"
        nodes = ", ".join(f"{h}:{p}" for h, p in settings.fallbacks)
        others = (f"; fallback brokers not probed while it runs (a login beside it would "
                  f"take its session over): {nodes}" if settings.fallbacks else "")
        if running.sync_connected:
            return ok(f"{where}: the running terminal is connected (asked it; the doctor does "
                      f"not log in beside it){others}")
        return fail(f"{where}: the running terminal is not connected to its broker (see "
                    "`journalctl -u motcua-terminal`; stop the service and run the doctor "
                    f"again to test the login itself){others}")
    found = [_probe_broker(ctx, settings, host, port)
             for host, port in settings.addresses]
    if len(found) == 1:
        return found[0]
    text = "; ".join(f.explanation for f in found)
    if any(f.explanation.endswith(REFUSED_HINT) for f in found):
        return fail(text)
    if all(f.status is not Status.OK for f in found):
        return fail(text)
    if any(f.status is not Status.OK for f in found):
        return warn(text)
    return ok(text)


def _probe_broker(ctx: Context, settings: BrokerSettings, host: str, port: int) -> Finding:
    """Log in to one broker node as the terminal does and log out (see check_broker)."""
    where = f"{host}:{port}" + (" (TLS)" if settings.tls else "")
    node = dataclasses.replace(settings, host=host, port=port, fallbacks=())
    try:
        client = make_client(session_client_id(node, f"motcua-{ctx.cfg.terminal.id}"), node)
    except MotcuaError as exc:
        return fail(f"credentials unusable: {exc}")
    client.manual_ack_set(True)  # never acknowledge: queued batches stay the terminal's
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        result["reason"] = reason
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=node.keepalive_s,
                       clean_start=False, properties=connect_properties(node))
    except (OSError, ValueError) as exc:
        hint = "certificate or clock problem" if "certificate" in str(exc).lower() else (
            "network, firewall or broker down")
        return fail(f"{where} unreachable: {exc} ({hint})")
    client.loop_start()
    try:
        if not done.wait(ctx.timeout):
            return fail(f"{where} did not answer the MQTT connect within "
                        f"{ctx.timeout:.0f} s")
    finally:
        client.disconnect()
        stop_client(client)
    reason = result["reason"]
    if reason.is_failure:
        return fail(f"{where} refused the connection: {reason} {REFUSED_HINT}")
    return ok(f"{where} accepted our credentials")


#: ends the explanation of a broker that refused our login (check_broker looks for it)
REFUSED_HINT = "(check the user name and password, or the device certificate)"


def _running_terminal_status(ctx: Context) -> Any:
    """The running terminal's ``GetStatus`` answer, or None when it does not answer on
    ``api.listen`` (not running, or TLS-only: the doctor checks plain loopback only)."""
    api = ctx.cfg.api
    if api.tls_cert is not None:
        return None
    try:
        with grpc.insecure_channel(api.listen) as channel:
            stub = display_pb2_grpc.DisplayStub(channel)
            return stub.GetStatus(display_pb2.GetStatusRequest(), timeout=min(ctx.timeout, 3.0))
    except grpc.RpcError:
        return None


def check_certificate(ctx: Context) -> Finding:
    """The device certificate is valid now and how many days remain."""
    sync = getattr(ctx.cfg, "sync", None)
    cert_path = getattr(sync, "cert_file", None) if sync is not None else None
    if not cert_path:
        return ok("no device certificate configured (the broker uses a password)")
    cert_path = Path(cert_path)
    if not cert_path.is_file():
        return fail(f"{cert_path} is missing: send `motcua-device csr` to the district and "
                    "install its answer with `motcua-device install-cert FILE`")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        return fail(f"{cert_path} is not a PEM certificate: {exc}")
    now = ctx.now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    key_path = getattr(sync, "key_file", None)
    if key_path and Path(key_path).is_file():
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        except (ValueError, TypeError) as exc:
            return fail(f"device key {key_path} unreadable: {exc}")
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
            return fail(f"{cert_path} was not issued for this device's key {key_path}")
    elif key_path:
        return fail(f"device key {key_path} is missing or unreadable")
    if now < start:
        return fail(f"{cert_path} is not valid before {start:%Y-%m-%d %H:%M} UTC: is the "
                    "clock wrong?")
    if now >= end:
        return fail(f"{cert_path} expired on {end:%Y-%m-%d}: rotate it (see the guide)")
    days = (end - now).days
    subject = cert.subject.rfc4514_string()
    if days < ctx.cert_warn_days:
        return warn(f"{subject} expires in {days} days ({end:%Y-%m-%d}): rotate it soon")
    return ok(f"{subject} valid, {days} days to expiry ({end:%Y-%m-%d})")


def check_clock(ctx: Context) -> Finding:
    """The clock is synchronised (TLS certificates and the audit log depend on it)."""
    proc = ctx.run(["timedatectl", "show", "-p", "NTPSynchronized", "-p", "NTP", "--value"])
    if proc.returncode == 0 and proc.stdout.strip():
        values = proc.stdout.split()
        synced = values[0] == "yes"
        ntp = values[1] == "yes" if len(values) > 1 else None
        if synced:
            return ok("synchronised by NTP (timedatectl)")
        if ntp is False:
            return fail("NTP is switched off: `timedatectl set-ntp true`; TLS refuses "
                        "certificates when the clock is wrong")
        return fail("not synchronised yet (timedatectl): no NTP server reachable? The Pi "
                    "has no battery clock, so until then the time is wrong and TLS fails")
    state = adjtimex_state()
    if state is None:
        return warn("cannot tell: no timedatectl and no adjtimex here")
    synced, maxerror_us = state
    if synced:
        return ok(f"kernel clock synchronised (adjtimex, max error {maxerror_us / 1000:.0f} ms)")
    return fail("kernel clock not synchronised (adjtimex): start systemd-timesyncd; TLS "
                "needs the right time")


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: the fields read here, then padding to its full size
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


#: adjtimex() returns TIME_ERROR when the clock is not synchronised; STA_UNSYNC in status
TIME_ERROR = 5
STA_UNSYNC = 0x0040


def adjtimex_state() -> tuple[bool, int] | None:
    """(synchronised, max error in µs) from the kernel, or None when unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    tx = _Timex()  # modes = 0: read only
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return state != TIME_ERROR and not (tx.status & STA_UNSYNC), int(tx.maxerror)


def check_disk(ctx: Context) -> Finding:
    """Free space where the store and the logs live."""
    state = Path(ctx.cfg.terminal.state_dir)
    where = state if state.exists() else Path("/")
    usage = shutil.disk_usage(where)
    free_mb = usage.free / 2**20
    pct = 100 * usage.free / usage.total if usage.total else 0
    text = f"{free_mb:,.0f} MB free on the filesystem of {where} ({pct:.0f}%)"
    if usage.free < ctx.min_free_fail:
        return fail(f"{text}: the store cannot write checkpoints; free space "
                    "(`journalctl --vacuum-size=100M`, old releases)")
    if usage.free < ctx.min_free_warn:
        return warn(f"{text}: getting low")
    return ok(text)


def check_outbox(ctx: Context) -> Finding:
    """Reports ("not me", ratings) waiting for the district, and how old the oldest is."""

    terminal = ctx.cfg.terminal
    outbox_dir = Path(terminal.state_dir) / "outbox"
    if not outbox_dir.exists():
        return ok("no reports written yet")
    sender = OutboxSender(outbox_dir, terminal_id=terminal.id, district_id=terminal.district)
    pending = sender.pending()
    bad = f"; {sender.bad_lines} line(s) that are not reports kept in {outbox_dir}" \
        if sender.bad_lines else ""
    if not pending:
        return ok(f"every report delivered to the district{bad}")
    oldest = min((p.time for _, p in pending if p.time), default="")
    try:
        age = ctx.now() - datetime.datetime.fromisoformat(oldest)
    except ValueError:
        age = datetime.timedelta(0)
    text = f"{len(pending)} report(s) waiting for the district, oldest from {oldest or '?'}"
    if age > OUTBOX_WARN_AGE:
        return warn(f"{text}: the sync has not delivered them for "
                    f"{age.total_seconds() / 3600:.0f} h (broker reachable? see `broker`){bad}")
    return ok(text + bad)


def check_sync(ctx: Context) -> Finding:
    """The sync's persisted state: failed snapshots (and why), the epoch it holds."""

    terminal = ctx.cfg.terminal
    path = persist.state_file(Path(terminal.state_dir) / "sync-spool", terminal.id)
    if not path.exists():
        return ok("no sync state yet (written at the first epoch or snapshot)")
    st = persist.load(path)
    if st.snapshot_failures:
        when = datetime.datetime.fromtimestamp(st.snapshot_retry_at, datetime.timezone.utc)
        what = "paused until a new district change, a restart or" if st.snapshot_paused \
            else "next try at"
        return fail(f"the last {st.snapshot_failures} snapshot(s) from the district failed: "
                    f"{st.snapshot_error}; {what} {when:%Y-%m-%d %H:%M} UTC (free disk "
                    "space, see `disk`, then `systemctl restart motcua-terminal`)")
    return ok(f"gallery at epoch {st.floor_epoch}; never taken back below it")


def check_grpc(ctx: Context) -> Finding:
    """The terminal answers gRPC health checks with SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    api = getattr(ctx.cfg, "api", None)
    target = getattr(api, "listen", "127.0.0.1:50051")
    if getattr(api, "tls_cert", None) is not None:
        return warn(f"{target} uses TLS with client certificates; doctor checks plain "
                    "loopback only")
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=ctx.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return fail(f"{target} does not answer ({code}): is motcua-terminal running? "
                        "`systemctl status motcua-terminal`")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return fail(f"{target} says {status}: the terminal is up but not ready (still "
                    "loading the gallery, or its store/models failed: see the journal)")
    return ok(f"{target} SERVING")


def check_display(ctx: Context) -> Finding:
    """The display client runs and serves the kiosk page."""
    disp = getattr(ctx.cfg, "display", None)
    listen = getattr(disp, "http_listen", "127.0.0.1:8080")
    unit = ""
    if Path("/run/systemd/system").is_dir():
        proc = ctx.run(["systemctl", "is-active", "motcua-display.service"])
        state = proc.stdout.strip() or "unknown"
        if state != "active":
            return fail(f"motcua-display.service is {state}: `journalctl -u motcua-display`")
        unit = "motcua-display.service active, "
    try:
        with urllib.request.urlopen(f"http://{listen}/", timeout=ctx.timeout) as resp:
            code = resp.status
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return fail(f"{unit}kiosk page http://{listen}/ unreachable: {reason}")
    if code != 200:
        return fail(f"{unit}kiosk page http://{listen}/ answered {code}")
    return ok(f"{unit}kiosk page http://{listen}/ served")


#: name -> check, in the order printed
CHECKS: dict[str, Callable[[Context], Finding]] = {
    "camera": check_camera,
    "models": check_models,
    "store": check_store,
    "broker": check_broker,
    "certificate": check_certificate,
    "clock": check_clock,
    "disk": check_disk,
    "outbox": check_outbox,
    "sync": check_sync,
    "grpc": check_grpc,
    "display": check_display,
}


def run_checks(ctx: Context, names: Sequence[str] | None = None) -> list[tuple[str, Finding]]:
    """Run the named checks (all by default); an unexpected crash is a failed check."""
    out = []
    for name in names or list(CHECKS):
        try:
            finding = CHECKS[name](ctx)
        except MotcuaError as exc:
            finding = fail(str(exc))
        except Exception as exc:  # a doctor must report, never crash on the broken thing
            finding = fail(f"check crashed: {type(exc).__name__}: {exc}")
        out.append((name, finding))
    return out


def format_line(name: str, finding: Finding) -> str:
    return f"{finding.status.value.upper():4s}  {name:11s}  {finding.explanation}"


def cmd_doctor(args: argparse.Namespace) -> int:
    cfg_path = Path(args.config) if args.config else None
    cfg = load_config(cfg_path)
    ctx = Context(cfg, cfg_path)
    names = args.only or None
    results = run_checks(ctx, names)
    if args.json:
        print(json.dumps([{"check": n, "status": f.status.value, "explanation": f.explanation}
                          for n, f in results], ensure_ascii=False))
    else:
        for name, finding in results:
            print(format_line(name, finding), flush=True)
    failed = [n for n, f in results if f.status is Status.FAIL]
    if failed and not args.json:
        print(f"doctor: {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this terminal and explain what is wrong",
                       description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=list(CHECKS), metavar="CHECK",
                   help=f"run only this check (repeatable): {', '.join(CHECKS)}")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)


__all__ = ["CHECKS", "Context", "Finding", "Status", "run_checks", "register"]
