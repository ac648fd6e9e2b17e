"""motcua doctor: every check reports its fault when the fault is injected.

Real parts: the sample video as the camera, a real Mosquitto with a password file, a
real gRPC health server, a real HTTP page, real certificates; the clock check's
``timedatectl`` output is injected at the subprocess boundary (a container's clock
cannot be unsynchronised on demand).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import json
import subprocess
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2

from edge.config import DEFAULT_PACK, config_from_dict
from edge.ops import doctor
from edge.ops.doctor import Context, Status

UTC = datetime.timezone.utc


def ctx_for(tmp_path: Path, extra: dict | None = None, **sections: object) -> Context:
    data = {"terminal": {"state_dir": str(tmp_path / "state")},
            "models": {"dir": str(tmp_path / "models"), "pack": DEFAULT_PACK}}
    data.update(extra or {})
    cfg = config_from_dict(data)
    if sections:  # sections replaced by plain objects (fields edge.config would refuse)
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        cfg = types.SimpleNamespace(**{**fields, **sections})
    return Context(cfg, timeout=3.0)  # type: ignore[arg-type]


def status(ctx: Context, name: str) -> tuple[Status, str]:
    ((_, finding),) = doctor.run_checks(ctx, [name])
    return finding.status, finding.explanation


# ---------------------------------------------------------------- camera


def test_camera_ok_on_video_and_fails_on_missing_or_corrupt(tmp_path, media_dir) -> None:
    video = media_dir / "video" / "hamilton_clip.mp4"
    st, text = status(ctx_for(tmp_path, {"camera": {"source": str(video)}}), "camera")
    assert st is Status.OK and "frames" in text, text
    st, text = status(ctx_for(tmp_path, {"camera": {"source": "/dev/video97",
                                                    "kind": "v4l2"}}), "camera")
    assert st is Status.FAIL, text
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    st, text = status(ctx_for(tmp_path, {"camera": {"source": str(bad), "kind": "file"}}),
                      "camera")
    assert st is Status.FAIL, text


# ---------------------------------------------------------------- models


def make_pack(models: Path) -> Path:
    """A copy of the real built default pack (scripts/install.sh builds it)."""
    import shutil

    from edge.config import DEFAULT_MODEL_DIR

    src = DEFAULT_MODEL_DIR / DEFAULT_PACK
    if not src.is_dir():
        pytest.fail(f"model pack not built at {src} (run `motcua models build`)")
    return Path(shutil.copytree(src, models / DEFAULT_PACK))


def test_models_hashes(tmp_path) -> None:
    ctx = ctx_for(tmp_path)
    st, text = status(ctx, "models")
    assert st is Status.FAIL and "not found" in text, text
    d = make_pack(tmp_path / "models")
    st, text = status(ctx, "models")
    from models.pack import load_manifest

    assert st is Status.OK and load_manifest(DEFAULT_PACK).embedder["id"] in text, text
    data = bytearray((d / "pnet.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01   # one flipped bit
    (d / "pnet.onnx").write_bytes(bytes(data))
    st, text = status(ctx, "models")
    assert st is Status.FAIL and "pnet.onnx fails its sha256" in text, text


# ---------------------------------------------------------------- store


def test_store_missing_ok_and_corrupt(tmp_path) -> None:
    from edge.store import CitizenUpsert, GalleryStore

    ctx = ctx_for(tmp_path)
    gallery = tmp_path / "state" / "gallery"
    gallery.mkdir(parents=True)
    assert status(ctx, "store")[0] is Status.WARN          # new terminal, no store yet
    store = GalleryStore.open(gallery, embedder_id="test-emb", dim=4)
    emb = np.eye(4, dtype=np.float32)[:1]
    store.apply([CitizenUpsert(seq=1, citizen_id="c1", masked_name="Nguyễn T. T***",
                               pin_hash=b"", pin_salt=b"", embeddings=emb)], epoch=1)
    store.close()
    st, text = status(ctx, "store")
    assert st is Status.OK and "change number 1" in text and "1 citizens" in text, text
    db = gallery / "gallery.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)   # a torn first page, as after a bad SD card
    db.write_bytes(bytes(data))
    st, text = status(ctx, "store")
    assert st is Status.FAIL, text


# ---------------------------------------------------------------- broker


def sync_section(broker: object, user: str | None, pw_file: Path | None) -> object:
    """A real [sync] section as provisioning writes it."""
    return config_from_dict({"sync": {
        "broker": f"{broker.host}:{broker.port}",  # type: ignore[attr-defined]
        "username": user, "password_file": str(pw_file)}}).sync


def test_broker_credentials(tmp_path) -> None:
    from tests.broker import MosquittoBroker, PortReservation

    pw = tmp_path / "pw"
    pw.write_text("right-password\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-password\n")
    with MosquittoBroker(tmp_path / "b", users={"q1-hall-01": "right-password"}) as b:
        st, text = status(ctx_for(tmp_path, sync=sync_section(b, "q1-hall-01", pw)), "broker")
        assert st is Status.OK, text
        st, text = status(ctx_for(tmp_path, sync=sync_section(b, "q1-hall-01", wrong)),
                          "broker")
        assert st is Status.FAIL and "refused" in text, text
    with PortReservation() as dead:  # held, never listening: nothing can answer there
        down = types.SimpleNamespace(host="127.0.0.1", port=dead.port)
        st, text = status(ctx_for(tmp_path, sync=sync_section(down, "q1-hall-01", pw)),
                          "broker")
    assert st is Status.FAIL and "unreachable" in text, text
    st, text = status(ctx_for(tmp_path), "broker")
    assert st is Status.WARN and "local store only" in text, text   # [sync] broker = ""


def broker_config(tmp_path: Path, broker: object, **sync: object):  # type: ignore[no-untyped-def]
    """A real terminal Config whose [sync] points at ``broker`` (plus ``sync`` keys)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_file = tmp_path / "district.pub"
    key_file.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return config_from_dict({
        "terminal": {"id": "q1-hall-01", "state_dir": str(tmp_path / "state")},
        "sync": {"broker": f"{broker.host}:{broker.port}",  # type: ignore[attr-defined]
                 "district_key_file": str(key_file),
                 **{k: str(v) if isinstance(v, Path) else v for k, v in sync.items()}}})


def service_connects(cfg) -> str:  # type: ignore[no-untyped-def]
    """'ok' or why not: the service's own broker link (terminal_cli.sync_link) and
    client (sync.mqtt), connected as the service connects."""
    from edge.terminal_cli import sync_link
    from sync.mqtt import make_client, start_client

    link = sync_link(cfg)
    assert link is not None
    client = make_client("svc-probe", link.broker)
    done, result = threading.Event(), []

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object = None) -> None:
        result.append("refused" if getattr(rc, "is_failure", True) else "ok")
        done.set()

    client.on_connect = on_connect
    start_client(client, link.broker)
    try:
        done.wait(5.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0] if result else "no CONNACK"


def test_doctor_connects_like_the_service_when_ca_file_is_set_but_tls_is_off(
        tmp_path, broker) -> None:
    """``ca_file`` set with ``tls = false``: the service connects in the clear
    (broker_settings turns TLS on only for ``tls = true``), so the doctor must too. It
    used to switch TLS on for any ``ca_file`` and fail a broker the service reaches."""
    from tests.certs import CA

    ca = CA(tmp_path / "pki", "district-ca")
    cfg = broker_config(tmp_path, broker, tls=False, ca_file=ca.cert_path)
    assert service_connects(cfg) == "ok"
    st, text = status(Context(cfg, timeout=3.0), "broker")
    assert st is Status.OK, text
    assert "TLS" not in text, text


def test_doctor_uses_tls_exactly_when_the_service_does(tmp_path) -> None:
    """Against a TLS listener (client certificates required): ``tls = true`` works for
    both; the same files with ``tls = false`` fail for both."""
    from tests.broker import MosquittoBroker, TlsFiles
    from tests.certs import CA

    ca = CA(tmp_path / "pki", "district-ca")
    server_cert, server_key = ca.issue("broker", server=True)
    cert, key = ca.issue("q1-hall-01")
    with MosquittoBroker(tmp_path / "b", tls=TlsFiles(ca.cert_path, server_cert,
                                                      server_key)) as b:
        files = {"ca_file": ca.cert_path, "cert_file": cert, "key_file": key}
        on = broker_config(tmp_path, b, tls=True, **files)
        assert service_connects(on) == "ok"
        st, text = status(Context(on, timeout=3.0), "broker")
        assert st is Status.OK and "(TLS)" in text, text
        off = broker_config(tmp_path, b, tls=False, **files)
        assert service_connects(off) != "ok"
        st, text = status(Context(off, timeout=3.0), "broker")
        assert st is Status.FAIL, text


def test_doctor_checks_every_broker_of_the_list(tmp_path, broker) -> None:
    """With ``fallback_brokers`` each node is logged in to and reported, not only the
    first: a dead node (a reserved port nothing listens on) is named as unreachable
    beside the live Mosquitto; WARN while one node works, FAIL when none does."""
    from tests.broker import PortReservation

    live = f"{broker.host}:{broker.port}"
    with PortReservation() as dead_a, PortReservation() as dead_b:
        dead = f"127.0.0.1:{dead_a.port}"
        for first, others in ((broker, [dead]),
                              (types.SimpleNamespace(host="127.0.0.1", port=dead_a.port),
                               [live])):
            cfg = broker_config(tmp_path, first, fallback_brokers=others)
            st, text = status(Context(cfg, timeout=3.0), "broker")
            assert st is Status.WARN, text
            assert f"{live} accepted our credentials" in text, text
            assert f"{dead} unreachable" in text, text
            # in list order: the configured broker first
            assert text.index(live) < text.index(dead) if first is broker else \
                text.index(dead) < text.index(live), text
        both_dead = broker_config(
            tmp_path, types.SimpleNamespace(host="127.0.0.1", port=dead_a.port),
            fallback_brokers=[f"127.0.0.1:{dead_b.port}"])
        st, text = status(Context(both_dead, timeout=3.0), "broker")
        assert st is Status.FAIL, text
        assert text.count("unreachable") == 2, text
    # the same broker under two names: both probed, both accept
    cfg = broker_config(tmp_path, broker, fallback_brokers=[f"localhost:{broker.port}"])
    st, text = status(Context(cfg, timeout=3.0), "broker")
    assert st is Status.OK, text
    assert text.count("accepted our credentials") == 2, text


def test_doctor_fails_when_one_broker_of_the_list_refuses_the_login(tmp_path, broker) -> None:
    """A node that refuses the credentials would stop the terminal's sync when it fails
    over to it (an authentication refusal is not retried): FAIL, even though the first
    node accepts."""
    from tests.broker import MosquittoBroker

    pw = tmp_path / "pw"
    pw.write_text("right-password\n")
    with MosquittoBroker(tmp_path / "strict", users={"someone-else": "x"}) as strict:
        cfg = broker_config(tmp_path, broker, username="q1-hall-01", password_file=pw,
                            fallback_brokers=[f"{strict.host}:{strict.port}"])
        st, text = status(Context(cfg, timeout=3.0), "broker")
    assert st is Status.FAIL, text
    assert f"{broker.host}:{broker.port} accepted our credentials" in text, text
    assert f"{strict.host}:{strict.port} refused the connection" in text, text


# ---------------------------------------------------------------- certificate


def write_cert(path: Path, key: ec.EllipticCurvePrivateKey, start: datetime.datetime,
               end: datetime.datetime) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "q1-hall-01")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_certificate_validity_expiry_and_key(tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path = tmp_path / "terminal.key", tmp_path / "terminal.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    sync = config_from_dict({"sync": {"cert_file": str(cert_path),
                                      "key_file": str(key_path)}}).sync
    ctx = ctx_for(tmp_path, sync=sync)
    now = datetime.datetime.now(UTC)
    day = datetime.timedelta(days=1)
    st, text = status(ctx, "certificate")
    assert st is Status.FAIL and "install-cert" in text, text          # not installed
    write_cert(cert_path, key, now - day, now + 365 * day)
    st, text = status(ctx, "certificate")
    assert st is Status.OK and "364 days" in text, text
    write_cert(cert_path, key, now - day, now + 10 * day)
    st, text = status(ctx, "certificate")
    assert st is Status.WARN and "9 days" in text, text
    write_cert(cert_path, key, now - 30 * day, now - day)
    st, text = status(ctx, "certificate")
    assert st is Status.FAIL and "expired" in text, text
    write_cert(cert_path, key, now + day, now + 30 * day)
    st, text = status(ctx, "certificate")
    assert st is Status.FAIL and "clock" in text, text
    other = ec.generate_private_key(ec.SECP256R1())
    write_cert(cert_path, other, now - day, now + 365 * day)
    st, text = status(ctx, "certificate")
    assert st is Status.FAIL and "not issued for this device" in text, text


# ---------------------------------------------------------------- clock


def fake_timedatectl(stdout: str, rc: int = 0):  # type: ignore[no-untyped-def]
    def run(argv):  # type: ignore[no-untyped-def]
        if argv[0] == "timedatectl":
            return subprocess.CompletedProcess(argv, rc, stdout, "")
        return doctor.run_command(argv)
    return run


def test_clock_states(tmp_path) -> None:
    ctx = ctx_for(tmp_path)
    ctx.run = fake_timedatectl("yes\nyes\n")
    assert status(ctx, "clock")[0] is Status.OK
    ctx.run = fake_timedatectl("no\nyes\n")
    st, text = status(ctx, "clock")
    assert st is Status.FAIL and "not synchronised" in text, text
    ctx.run = fake_timedatectl("no\nno\n")
    st, text = status(ctx, "clock")
    assert st is Status.FAIL and "set-ntp" in text, text
    # no timedatectl (a container): falls back to the kernel's adjtimex state
    ctx.run = fake_timedatectl("", rc=127)
    st, text = status(ctx, "clock")
    assert "adjtimex" in text and st in (Status.OK, Status.FAIL), text
    assert doctor.adjtimex_state() is not None


# ---------------------------------------------------------------- disk


def test_disk_thresholds(tmp_path) -> None:
    ctx = ctx_for(tmp_path)
    ctx.min_free_fail, ctx.min_free_warn = 0, 0
    assert status(ctx, "disk")[0] is Status.OK
    ctx.min_free_warn = 1 << 62
    assert status(ctx, "disk")[0] is Status.WARN
    ctx.min_free_fail = 1 << 62
    st, text = status(ctx, "disk")
    assert st is Status.FAIL and "MB free" in text, text


# ---------------------------------------------------------------- outbox


def test_outbox_waiting_reports(tmp_path) -> None:
    from edge.session.audit import OutboxReporter
    from edge.syncclient.outbox import OutboxSender

    ctx = ctx_for(tmp_path)
    assert status(ctx, "outbox") == (Status.OK, "no reports written yet")
    state = tmp_path / "state"
    ob = OutboxReporter.in_state_dir(state)
    ob.append({"time": "2026-11-20T08:00:00.000+00:00", "kind": "not_me", "session": "s-1",
               "citizen_id": "c1"})
    ob.append({"time": "2026-11-20T09:00:00.000+00:00", "kind": "rating", "session": "s-2",
               "stars": 0})  # not a valid report
    ctx.now = lambda: datetime.datetime(2026, 11, 20, 10, tzinfo=datetime.timezone.utc)
    st, text = status(ctx, "outbox")
    assert st is Status.OK and "1 report(s) waiting" in text and "not reports" in text, text
    ctx.now = lambda: datetime.datetime(2026, 11, 22, 8, tzinfo=datetime.timezone.utc)
    st, text = status(ctx, "outbox")
    assert st is Status.WARN and "for 48 h" in text, text
    sender = OutboxSender(state / "outbox", terminal_id="terminal-dev",
                          district_id="district-dev")
    sender.pump(lambda _p: 1, 0.0)
    sender.acked(1)
    sender.settle()
    st, text = status(ctx, "outbox")
    assert st is Status.OK and text.startswith("every report delivered"), text


# ---------------------------------------------------------------- grpc


def test_grpc_health(tmp_path, health_server) -> None:
    from tests.broker import PortReservation

    port, servicer = health_server
    ctx = ctx_for(tmp_path, {"api": {"listen": f"127.0.0.1:{port}"}})
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    st, text = status(ctx, "grpc")
    assert st is Status.FAIL and "NOT_SERVING" in text, text
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert status(ctx, "grpc")[0] is Status.OK
    with PortReservation() as p:  # held, never listening: nothing can answer there
        dead = ctx_for(tmp_path, {"api": {"listen": f"127.0.0.1:{p.port}"}})
        st, text = status(dead, "grpc")
    assert st is Status.FAIL and "does not answer" in text, text


# ---------------------------------------------------------------- display


def test_display_page(tmp_path) -> None:
    from tests.broker import PortReservation

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = "<html>Một Cửa</html>".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            return

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=srv.serve_forever, name="page")
    t.start()
    try:
        port = srv.server_address[1]
        ok = ctx_for(tmp_path, {"display": {"http_listen": f"127.0.0.1:{port}"}})
        assert status(ok, "display")[0] is Status.OK
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
    with PortReservation() as p:  # held, never listening: nothing can answer there
        dead = ctx_for(tmp_path, {"display": {"http_listen": f"127.0.0.1:{p.port}"}})
        st, text = status(dead, "display")
    assert st is Status.FAIL and "unreachable" in text, text


# ---------------------------------------------------------------- command


def test_command_exit_status_and_lines(tmp_path, capsys) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    doctor.register(parser.add_subparsers())
    conf = tmp_path / "t.toml"
    conf.write_text(f'[terminal]\nstate_dir = "{tmp_path}"\n[api]\nlisten = "127.0.0.1:1"\n')
    args = parser.parse_args(["--config", str(conf), "doctor", "--only", "disk",
                              "--only", "grpc"])
    assert args.func(args) == 1                   # grpc fails: nothing listens on port 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK    disk") and out[1].startswith("FAIL  grpc"), out
    args = parser.parse_args(["--config", str(conf), "doctor", "--only", "disk", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["check"] == "disk"
