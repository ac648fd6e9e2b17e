"""deploy/district: the unit verifies, provision.sh passes shellcheck, checks its arguments
before changing anything, writes a configuration the service loads, and a second run
changes nothing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
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
    # a district on FaceNet alone (not the default pack) gets FaceNet's confirmation floor
    assert cfg.models.pack == "mtcnn-facenet" and cfg.calibration.floor == 0.46
    assert cfg.ingest.token_file == Path("/var/lib/motcua-district/ingest.token")
    # the console and the survey are written off, ready to be turned on
    assert not cfg.console.enabled and not cfg.survey.enabled
    assert cfg.console.users_file == Path("/var/lib/motcua-district/console-users")
    _enable_console_and_survey(root, exe, tmp_path)
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


def _enable_console_and_survey(root: Path, exe: Path, tmp: Path) -> None:
    """Turn on the written [console] and [survey] as the comments above them say, in a
    copy of the config (paths moved under ``root``): each refuses to start until the
    keys it names are there."""
    state = root / "var/lib/motcua-district"
    text = (root / "etc/motcua/district.toml").read_text().replace(
        "/var/lib/motcua-district/", f"{state}/")
    conf = tmp / "enabled.toml"

    def load_with(console: str, survey: str) -> None:
        conf.write_text(text.replace("[console]\nenabled = false", console)
                        .replace("[survey]\nenabled = false", survey))
        load_district_config(conf)

    on = "[console]\nenabled = true"
    with pytest.raises(ConfigError, match=r"console\.tls_cert_file: .* is not a file"):
        load_with(on, "[survey]\nenabled = false")
    for cmd, stdin in ((["district", "console-cert", "--host", "district.local"], ""),
                       (["district", "console-user", "add", "admin"], "mật-khẩu-đủ-dài\n")):
        proc = subprocess.run([str(exe), "--config", str(conf), *cmd], input=stdin,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    load_with(on, "[survey]\nenabled = false")
    survey_on = "[survey]\nenabled = true"
    with pytest.raises(ConfigError, match=r"survey\.base_url: required"):
        load_with(on, survey_on)
    text = text.replace("# base_url = ", "base_url = ")
    load_with(on, survey_on)
    cfg = load_district_config(conf)
    assert cfg.console.enabled and cfg.survey.enabled
    assert cfg.survey.base_url == "https://khaosat.example.vn"
    for f in ("console.crt", "console.key", "console-users"):
        (state / f).unlink()  # the rerun below must find the tree as provisioned


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


def _guide_section() -> str:
    text = (REPO / "docs" / "technician-guide.md").read_text()
    return text.split("## Provisioning the district server\n", 1)[1].split("\n## ", 1)[0]


def _guide_command() -> list[str]:
    """The provision.sh command of the technician guide, as its words."""
    section = _guide_section()
    start = section.index("    deploy/district/provision.sh ")
    lines = []
    for line in section[start:].splitlines():
        lines.append(line.strip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(lines))


def test_the_technician_guide_options_are_provision_options() -> None:
    usage = (DEPLOY / "provision.sh").read_text()
    words = _guide_command()
    assert words[0] == "deploy/district/provision.sh"
    table = re.findall(r"^\| `(--[a-z-]+)", _guide_section(), re.M)
    for option in [w for w in words if w.startswith("--")] + table:
        assert f"        {option})" in usage, option  # the script's case arm
    # every option of the script is in the guide's table
    assert set(re.findall(r"^        (--[a-z-]+)\)", usage, re.M)) == set(table)


@pytest.mark.skipif(os.geteuid() != 0, reason="provision.sh runs as root")
def test_the_technician_guide_command_creates_what_the_guide_lists(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    words = _guide_command()[1:]
    # --source would pip-install the sources into the image: the test's motcua instead
    i = words.index("--source")
    del words[i:i + 2]
    proc = _provision(root, _motcua(tmp_path), *words)
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^\| `(/[^`]+)`", _guide_section(), re.M)
    assert len(listed) >= 8, listed
    for path in listed:
        if path.startswith("/opt/"):
            continue  # made by --source, left out above
        assert (root / path.lstrip("/")).exists(), path
    state = root / "var/lib/motcua-district"
    assert state.stat().st_mode & 0o777 == 0o700
    for secret in ("ingest.token", "keys/district.key"):
        assert (state / secret).stat().st_mode & 0o777 == 0o600, secret
    cfg = load_district_config(root / "etc/motcua/district.toml")
    assert cfg.district.id == words[words.index("--district") + 1]
    assert cfg.broker.broker == words[words.index("--broker") + 1]
    assert cfg.models.pack == words[words.index("--pack") + 1]
    assert cfg.ingest.listen == "127.0.0.1:8470"  # the address the guide's checks use
    assert "curl -fsS http://127.0.0.1:8470/readyz" in _guide_section()
    # the broker lines the guide tells the technician to add load as a [broker] table
    toml = _guide_section().split("    [broker]\n", 1)[1].split("\n\n", 1)[0]
    conf = root / "etc/motcua/district.toml"
    text = conf.read_text()
    head, _, rest = text.partition("[broker]\n")
    rest = rest.split("\n", 1)[1]  # drop the written broker line: the guide gives it
    added = "\n".join(line.strip() for line in toml.splitlines())
    conf.write_text(head + "[broker]\n" + added + "\n" + rest)
    cfg = load_district_config(conf)
    assert cfg.broker.tls and cfg.broker.username == "district-hcm-q1"
