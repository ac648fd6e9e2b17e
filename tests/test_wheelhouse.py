"""The Pi wheelhouse and dependency pins, without emulation (fast).

The emulated install and run are tests/test_arm64.py (slow). Here: the pins keep the
releases that crash a Pi 4 out, build-wheelhouse.sh refuses bad arguments before it
writes anything, its instruction check flags what a Cortex-A72 lacks, and provisioning
refuses a wheelhouse that does not match its SHA256SUMS, changing nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib  # novermin (guarded: Python 3.10 takes the tomli branch below)
except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
    import tomli as tomllib
from packaging.requirements import Requirement

from tests.conftest import REPO

BUILD = REPO / "deploy" / "raspberrypi" / "build-wheelhouse.sh"
PROVISION = REPO / "deploy" / "raspberrypi" / "provision.sh"


def load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "build_wheelhouse", REPO / "deploy" / "raspberrypi" / "build_wheelhouse.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dependency(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    return req


def test_onnxruntime_pin_excludes_the_releases_that_crash_a_pi4() -> None:
    spec = dependency("onnxruntime").specifier
    # microsoft/onnxruntime#23957, #24112: "Illegal instruction" on import on a Pi 4;
    # tests/test_arm64.py shows it on qemu's Cortex-A72 model (and 1.21.1 importing)
    assert "1.21.0" not in spec
    for good in ("1.17.0", "1.20.1", "1.21.1", "1.22.0", "1.32.0"):
        assert good in spec, good


def test_every_dependency_has_a_floor() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        req = Requirement(d)
        assert any(s.operator in (">=", "==") for s in req.specifier), d


def test_instruction_check() -> None:
    mod = load_builder()
    dis = "\n".join([
        "0000000000001000 <_ZN7hnswlib9HierarchicalNSW8addPointEPKvm>:",
        "    1000:\tadd\tx0, x1, x2",
        "    1004:\tfmla\tv0.4s, v1.4s, v2.4s",
        "    1008:\tldaxr\tw1, [x0]",
        "0000000000002000 <__aarch64_ldadd4_acq_rel>:",
        "    2000:\tldaddal\tw0, w1, [x2]",   # libgcc's helper: chosen at run time
        "    2004:\tcasal\tw0, w1, [x2]",
    ])
    assert mod.beyond_v8_0(dis) == (2, {})
    bad = dis + "\n".join(["", "0000000000003000 <_Z4hotv>:",
                           "    3000:\tldaddal\tw0, w1, [x2]",
                           "    3004:\tsdot\tv0.4s, v1.16b, v2.16b",
                           "    3008:\tcas\tw0, w1, [x2]"])
    functions, found = mod.beyond_v8_0(bad)
    assert functions == 3
    assert found == {"ldaddal in _Z4hotv": 1, "sdot in _Z4hotv": 1, "cas in _Z4hotv": 1}


def fake_wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return fake_wheel(tmp_path / "motcua-0.1.0-py3-none-any.whl", {
        "motcua/__init__.py": "",
        "motcua-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: motcua\n"
        "Version: 0.1.0\nRequires-Dist: numpy>=1.26\nRequires-Dist: hnswlib>=0.8.0\n"
        "Requires-Dist: pytest>=8; extra == \"dev\"\n"})


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILD), *args], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})


def test_build_wheelhouse_refuses_bad_arguments_before_writing(tmp_path: Path,
                                                               release: Path) -> None:
    out = tmp_path / "out"
    # no arm64 machine to compile hnswlib on (this host is x86)
    proc = run_build(str(out), "--release", str(release))
    assert proc.returncode == 2 and "--arm64-root" in proc.stderr, proc.stderr
    # a wheel that is not hnswlib for cp311 aarch64
    x86 = fake_wheel(tmp_path / "hnswlib-0.8.0-cp311-cp311-linux_x86_64.whl", {"a": ""})
    proc = run_build(str(out), "--release", str(release), "--hnswlib-wheel", str(x86))
    assert proc.returncode == 2 and "not an hnswlib cp311 aarch64 wheel" in proc.stderr
    # not a motcua wheel
    proc = run_build(str(out), "--release", str(x86), "--arm64-root", str(tmp_path))
    assert proc.returncode == 2 and "not a motcua wheel" in proc.stderr
    # a root without Python
    proc = run_build(str(out), "--release", str(release), "--arm64-root", str(tmp_path))
    assert proc.returncode == 2 and "no usr/bin/python3" in proc.stderr
    assert not out.exists()
    # an existing wheelhouse is never mixed into
    out.mkdir()
    (out / "keep.whl").write_text("x")
    proc = run_build(str(out), "--release", str(release), "--arm64-root", str(tmp_path))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.whl"]


def test_requirements_read_from_the_release(release: Path) -> None:
    assert load_builder().requirements(release) == ["numpy>=1.26", "hnswlib>=0.8.0"]


def test_provision_refuses_a_damaged_wheelhouse(tmp_path: Path) -> None:
    """A wheel that differs from SHA256SUMS (or is not listed) stops provisioning before
    anything changes; the error names the wheel."""
    sys.path.insert(0, str(REPO / "deploy" / "raspberrypi"))
    try:
        import motcua_device
    finally:
        sys.path.pop(0)
    house = tmp_path / "wh"
    house.mkdir()
    a = house / "numpy-2.0.0-cp311-cp311-manylinux_2_17_aarch64.whl"
    a.write_bytes(b"wheel bytes")
    (house / "SHA256SUMS").write_text(f"{hashlib.sha256(b'wheel bytes').hexdigest()}  {a.name}\n")
    motcua_device.check_wheelhouse(house)  # intact
    a.write_bytes(b"wheel bytez")
    with pytest.raises(motcua_device.ProvisionError, match="does not match SHA256SUMS"):
        motcua_device.check_wheelhouse(house)
    a.write_bytes(b"wheel bytes")
    (house / "evil-1.0-py3-none-any.whl").write_bytes(b"x")
    with pytest.raises(motcua_device.ProvisionError, match="not in SHA256SUMS"):
        motcua_device.check_wheelhouse(house)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(motcua_device.ProvisionError, match="holds no wheels"):
        motcua_device.check_wheelhouse(empty)
