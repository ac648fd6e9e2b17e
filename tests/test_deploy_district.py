"""deploy/district: the unit verifies, provision.sh passes shellcheck, checks its arguments
before changing anything, writes a configuration the service loads, and a second run
changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from district.config import load_district_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "district"
UNIT = DEPLOY / "motcua-district.service"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = tmp_path / "motcua"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    assert "/opt/motcua/current/bin/motcua" in text
    unit = tmp_path / "motcua-district.service"
    unit.write_text(text.replace("/opt/motcua/current/bin/motcua", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    # verify exits 0 on unknown keys too; any message at all is a finding
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr


def test_unit_hardening_and_shutdown() -> None:
    text = UNIT.read_text()
    for line in ("User=motcua-district", "Restart=on-failure", "KillSignal=SIGTERM",
                 "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "StateDirectory=motcua-district", "district serve", "UMask=0077"):
        assert line in text, line


def test_provision_passes_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(DEPLOY / "provision.sh")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def _motcua(tmp_path: Path) -> Path:
    """A motcua command that runs this worktree's code (the venv's python)."""
    exe = tmp_path / "motcua"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m motcua \"$@\"\n")
    exe.chmod(0o755)
    return exe


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns,
                                       p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


def _provision(root: Path, exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(DEPLOY / "provision.sh"), "--root", str(root),
                           "--motcua", str(exe), *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="provision.sh runs as root")
def test_provision_is_idempotent_and_writes_a_loadable_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    exe = _motcua(tmp_path)
    args = ("--district", "q7", "--broker", "mqtt.district.lan:8883", "--pack",
            "mtcnn-facenet")
    first = _provision(root, exe, *args)
    assert first.returncode == 0, first.stderr
    state = root / "var/lib/motcua-district"
    assert (state / "ingest.token").stat().st_mode & 0o777 == 0o600
    assert len((state / "ingest.token").read_text().strip()) == 64
    assert (state / "keys/district.key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/systemd/system/motcua-district.service").read_bytes() == \
        UNIT.read_bytes()
    cfg = load_district_config(root / "etc/motcua/district.toml")
    assert cfg.district.id == "q7" and cfg.broker.broker == "mqtt.district.lan:8883"
    assert cfg.ingest.token_file == Path("/var/lib/motcua-district/ingest.token")
    before = _tree(root)
    second = _provision(root, exe, *args)
    assert second.returncode == 0, second.stderr
    assert _tree(root) == before  # nothing rewritten: not even a timestamp
    # an operator's edit is kept; the arguments' version goes beside it
    conf = root / "etc/motcua/district.toml"
    conf.write_text(conf.read_text() + "\n# edited\n")
    assert _provision(root, exe, *args).returncode == 0
    assert conf.read_text().endswith("# edited\n")
    assert (root / "etc/motcua/district.toml.new").exists()


@pytest.mark.parametrize("bad", [
    ["--district", "Quận 1", "--broker", "b:1883"],
    ["--district", "q7", "--broker", "b"],
    ["--district", "q7", "--broker", "b:99999"],
    ["--district", "q7", "--broker", "b:1883", "--listen", ":80"],
    ["--district", "q7", "--broker", "b:1883", "--source", "/nonexistent"],
    ["--district", "q7", "--broker", "b:1883", "--frobnicate"],
])
def test_bad_arguments_change_nothing(tmp_path: Path, bad: list[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = _provision(root, _motcua(tmp_path), *bad)
    assert proc.returncode == 2 and "nothing was changed" in proc.stderr, proc.stderr
    assert list(root.iterdir()) == []
