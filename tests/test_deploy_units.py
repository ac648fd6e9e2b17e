"""deploy/raspberrypi: unit files verify, scripts pass shellcheck, arguments are checked
before anything changes, and an update that fails its health check is rolled back."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from grpc_health.v1 import health, health_pb2

from edge.config import config_from_dict
from edge.ops import doctor

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "raspberrypi"


def load_device_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("motcua_device", DEPLOY / "motcua_device.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["motcua_device"] = mod
    spec.loader.exec_module(mod)
    return mod


md = load_device_tool()


def test_units_pass_systemd_analyze_verify(tmp_path) -> None:
    """verify needs the ExecStart binaries to exist: rewrite them to stand-ins in tmp."""
    exe = tmp_path / "bin"
    exe.mkdir()
    for name in ("motcua", "cage", "chromium"):
        (exe / name).write_text("#!/bin/sh\n")
        (exe / name).chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for unit in md.UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        assert "/opt/motcua/current/bin/motcua" in text or "/usr/bin/cage" in text
        text = text.replace("/opt/motcua/current/bin/motcua", str(exe / "motcua"))
        text = text.replace("/usr/bin/cage", str(exe / "cage"))
        (out / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, out.iterdir()))],
                          capture_output=True, text=True, check=False)
    # verify exits 0 on unknown keys too; any message at all is a finding
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr


def test_verify_would_catch_a_typo(tmp_path) -> None:
    """The check above can fail: a misspelt key is reported."""
    text = (DEPLOY / "systemd" / "motcua-terminal.service").read_text()
    text = text.replace("WatchdogSec=", "WatchdogSecs=").replace(
        "/opt/motcua/current/bin/motcua", "/bin/true")
    unit = tmp_path / "motcua-terminal.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    assert "WatchdogSecs" in proc.stderr


def test_terminal_unit_hardening() -> None:
    text = (DEPLOY / "systemd" / "motcua-terminal.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "DevicePolicy=closed",
                 "DeviceAllow=char-video4linux rw", "StateDirectory=motcua",
                 "ReadWritePaths=/var/lib/motcua", "User=motcua"):
        assert line in text, line
    kiosk = (DEPLOY / "systemd" / "motcua-kiosk.service").read_text()
    assert "Restart=always" in kiosk and "cage" in kiosk and "--kiosk" in kiosk


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(DEPLOY.rglob("*.sh")) + sorted((REPO / "scripts").glob("*.sh"))
    assert DEPLOY / "provision.sh" in scripts
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout


def tree(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, os.readlink(p) if p.is_symlink() else
                                         (p.read_bytes().hex() if p.is_file() else ""))
    return out


@pytest.mark.parametrize("bad", [
    ["--terminal-id", "Hall 1"],
    ["--broker", "mqtt://:0"],
    ["--broker", "mqtts://b.example:8883", "--username", "", "--password-file", ""],
    ["--model-pack-sha256", "00" * 32],
    ["--district-key", "PWFILE"],
    ["--release", "PWFILE"],
    ["--password-file", "/nonexistent"],
    ["--wheelhouse", "/nonexistent"],
])
def test_bad_arguments_change_nothing(tmp_path, bad, capsys) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    files = make_inputs(tmp_path)
    args = good_args(files) + [a.replace("PWFILE", str(files["pw"])) for a in bad]
    before = tree(root)
    assert md.main(["--root", str(root), "provision", *args]) == 2
    err = capsys.readouterr().err
    assert "nothing was changed" in err
    assert tree(root) == before


def make_inputs(d: Path) -> dict[str, Path]:
    import hashlib
    import io
    import tarfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    files = {"key": d / "district.pub", "pw": d / "pw", "pack": d / "pack.tar",
             "wheel": d / "motcua-0.1.0-py3-none-any.whl"}
    files["key"].write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    files["pw"].write_text("secret\n")
    payload = b"weights" * 10
    manifest = f'name = "testpack"\n[files.det]\nsha256 = "{hashlib.sha256(payload).hexdigest()}"\n'
    with tarfile.open(files["pack"], "w") as tf:
        for name, data in (("testpack/manifest.toml", manifest.encode()),
                           ("testpack/det.onnx", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (d / "pack.tar.sha256").write_text(hashlib.sha256(files["pack"].read_bytes()).hexdigest())
    with zipfile.ZipFile(files["wheel"], "w") as zf:
        zf.writestr("motcua/cli.py", "")
    return files


def good_args(files: dict[str, Path]) -> list[str]:
    return ["--terminal-id", "q1-hall-01", "--district-id", "hcm-q1",
            "--broker", "broker.example:1883", "--username", "q1-hall-01",
            "--password-file", str(files["pw"]), "--district-key", str(files["key"]),
            "--model-pack", str(files["pack"]), "--release", str(files["wheel"]),
            "--skip-packages", "--no-start"]


def test_missing_arguments_listed_together(tmp_path, capsys) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert md.main(["--root", str(root), "provision"]) == 2
    err = capsys.readouterr().err
    for flag in ("--terminal-id", "--district-id", "--broker", "--district-key",
                 "--model-pack", "--release"):
        assert f"{flag} is required" in err
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------- update with rollback


class FakeServiceManager:
    """Stands in for systemd at the `systemctl restart` boundary: starts the release that
    /opt/motcua/current points to; each release's health is what its marker file says."""

    def __init__(self, root: Path, servicer: health.HealthServicer) -> None:
        self.root, self.servicer = root, servicer
        self.started: list[str] = []

    def restart(self) -> None:
        current = (self.root / "opt/motcua/current").resolve()
        self.started.append(current.name)
        healthy = (current / "healthy").read_text().strip() == "yes"
        self.servicer.set("", health_pb2.HealthCheckResponse.SERVING if healthy
                          else health_pb2.HealthCheckResponse.NOT_SERVING)


def fake_release(root: Path, tmp: Path, version: str, healthy: bool):  # type: ignore[no-untyped-def]
    wheel = tmp / f"motcua-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("motcua/cli.py", f"# {version}\n")
    rel = md.check_wheel(wheel)
    d = root / "opt/motcua/releases" / rel.id
    d.mkdir(parents=True)
    (d / "release.json").write_text("{}")
    (d / "healthy").write_text("yes" if healthy else "no")
    return rel


@pytest.mark.parametrize("new_is_healthy", [False, True])
def test_update_rolls_back_when_health_fails(tmp_path, new_is_healthy,
                                            health_server) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    old = fake_release(root, tmp_path, "0.1.0", healthy=True)
    new = fake_release(root, tmp_path, "0.2.0", healthy=new_is_healthy)
    t = md.Target(root)
    md.switch_release(t, md.RELEASES / old.id)
    port, servicer = health_server
    manager = FakeServiceManager(root, servicer)
    manager.restart()
    ctx = doctor.Context(config_from_dict({"api": {"listen": f"127.0.0.1:{port}"}}),
                         timeout=2.0)

    def probe() -> bool:  # the same gRPC health check `doctor --only grpc` runs
        return doctor.check_grpc(ctx).status is doctor.Status.OK

    kept = md.update(t, new, None, restart=manager.restart, probe=probe, timeout=1.5)
    current = os.readlink(root / "opt/motcua/current")
    if new_is_healthy:
        assert kept and current == f"releases/{new.id}"
        assert os.readlink(root / "opt/motcua/previous") == f"releases/{old.id}"
        assert manager.started == [old.id, new.id]
    else:
        assert not kept and current == f"releases/{old.id}"
        assert manager.started == [old.id, new.id, old.id]   # switched back and restarted
        assert (root / "opt/motcua/releases" / new.id).is_dir()  # kept for inspection


def test_wait_healthy_bound() -> None:
    now = [0.0]
    calls = []

    def probe() -> bool:
        calls.append(now[0])
        return False

    def sleep(s: float) -> None:
        now[0] += s

    assert not md.wait_healthy(probe, 10, every=2, clock=lambda: now[0], sleep=sleep)
    assert calls == [0, 2, 4, 6, 8, 10]


def test_rollback_command_and_pruning(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    rels = [fake_release(root, tmp_path, f"0.{i}.0", True) for i in range(1, 7)]
    t = md.Target(root)
    for r in rels:
        md.switch_release(t, md.RELEASES / r.id)
        os.utime(root / "opt/motcua/releases" / r.id)
    md.prune_releases(t)
    left = sorted(p.name for p in (root / "opt/motcua/releases").iterdir())
    assert len(left) == 2 + md.KEEP_RELEASES and rels[0].id not in left
    assert md.main(["--root", str(root), "rollback", "--no-start"]) == 0
    assert os.readlink(root / "opt/motcua/current") == f"releases/{rels[4].id}"
    assert os.readlink(root / "opt/motcua/previous") == f"releases/{rels[5].id}"


def test_provision_sh_refuses_without_arguments(tmp_path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    proc = subprocess.run([str(DEPLOY / "provision.sh"), "--root", str(root)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--terminal-id is required" in proc.stderr
    assert list(root.iterdir()) == []
    assert shutil.which("python3")
