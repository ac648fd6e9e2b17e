"""deploy/jetson: the unit drop-in verifies, the script passes shellcheck, a wrong
onnxruntime wheel changes nothing, and the CPU onnxruntime can never pass for the GPU one
(a stand-in onnxruntime package offering only the CPU makes install and check-ort fail
with a clear message). What needs a Jetson (the real wheel, CUDA) does not run here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edge.config import config_from_dict
from tests.test_deploy_units import good_args, make_inputs, tree

if sys.version_info >= (3, 11):
    import tomllib  # novermin (guarded)
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "jetson"
GPU_WHEEL = "onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl"


def load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("jetson_device", DEPLOY / "jetson_device.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


jd = load_tool()


def ort_wheel(d: Path, name: str = GPU_WHEEL, with_package: bool = True) -> Path:
    path = d / name
    with zipfile.ZipFile(path, "w") as zf:
        if with_package:
            zf.writestr("onnxruntime/__init__.py", "")
        zf.writestr("onnxruntime_gpu-1.20.0.dist-info/METADATA", "Name: onnxruntime-gpu\n")
    return path


def stub_onnxruntime(d: Path, providers: list[str]) -> Path:
    """A stand-in ``onnxruntime`` package offering ``providers`` (the CPU build offers
    only CPUExecutionProvider); returns the folder to put on PYTHONPATH."""
    pkg = d / "onnxruntime"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"__version__ = '1.20.0'\ndef get_available_providers():\n    return {providers!r}\n")
    return d


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


# ---------------------------------------------------------------- units and scripts


def test_terminal_unit_with_the_jetson_dropin_verifies(tmp_path: Path) -> None:
    exe = tmp_path / "bin"
    exe.mkdir()
    (exe / "motcua").write_text("#!/bin/sh\n")
    (exe / "motcua").chmod(0o755)
    out = tmp_path / "units"
    (out / "motcua-terminal.service.d").mkdir(parents=True)
    unit = (REPO / "deploy/raspberrypi/systemd/motcua-terminal.service").read_text()
    (out / "motcua-terminal.service").write_text(
        unit.replace("/opt/motcua/current/bin/motcua", str(exe / "motcua")))
    dropin = (DEPLOY / "systemd/motcua-terminal.service.d/jetson.conf").read_text()
    assert "DeviceAllow=char-nv* rw" in dropin and "TimeoutStartSec=900" in dropin

    def verify(text: str) -> str:
        (out / "motcua-terminal.service.d" / "jetson.conf").write_text(text)
        proc = subprocess.run(["systemd-analyze", "verify", str(out / "motcua-terminal.service")],
                              capture_output=True, text=True, check=False)
        return proc.stdout + proc.stderr

    assert verify(dropin).strip() == ""
    # the drop-in is really read: a misspelt key in it is reported
    assert "DeviceAlow" in verify(dropin.replace("DeviceAllow=/dev/nvmap", "DeviceAlow=/dev/nvmap"))


def test_provision_sh_passes_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(DEPLOY / "provision.sh")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------- the onnxruntime wheel


@pytest.mark.parametrize(("name", "with_package", "message"), [
    ("onnxruntime-1.20.0-cp310-cp310-manylinux_2_27_aarch64.whl", True,
     "not an onnxruntime-gpu wheel for the Jetson"),
    ("onnxruntime_gpu-1.20.0-cp310-cp310-manylinux_2_28_x86_64.whl", True,
     "not an onnxruntime-gpu wheel for the Jetson"),
    (GPU_WHEEL, False, "does not contain the onnxruntime package"),
])
def test_a_wrong_ort_wheel_changes_nothing(tmp_path: Path, name: str, with_package: bool,
                                           message: str) -> None:
    root = fake_root(tmp_path)
    wheel = ort_wheel(tmp_path, name, with_package)
    files = make_inputs(tmp_path)
    before = tree(root)
    proc = subprocess.run([str(DEPLOY / "provision.sh"), "--root", str(root),
                           *good_args(files), "--ort-wheel", str(wheel)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "nothing was changed" in proc.stderr and message in proc.stderr
    assert tree(root) == before


def test_ort_wheel_is_required(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    proc = subprocess.run([str(DEPLOY / "provision.sh"), "--root", str(root),
                           *good_args(make_inputs(tmp_path))],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--ort-wheel is required" in proc.stderr


# ---------------------------------------------------------------- the CPU wheel guard


@pytest.mark.parametrize(("providers", "ok"), [
    (["CPUExecutionProvider"], False),
    (["AzureExecutionProvider", "CPUExecutionProvider"], False),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], True),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], True),
])
def test_check_ort_fails_loudly_on_the_cpu_build(tmp_path: Path, providers: list[str],
                                                 ok: bool) -> None:
    path = stub_onnxruntime(tmp_path / "site", providers)
    proc = subprocess.run([sys.executable, str(DEPLOY / "jetson_device.py"), "check-ort",
                           "--python", sys.executable], capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"})
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"onnxruntime 1.20.0: {', '.join(providers)}"
    else:
        assert proc.returncode == 2
        assert "this is the CPU build, not NVIDIA's onnxruntime-gpu" in proc.stderr
        assert "--ort-wheel" in proc.stderr


def test_check_ort_without_onnxruntime(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-I", str(DEPLOY / "jetson_device.py"), "check-ort",
                           "--python", "/usr/bin/python3"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert "cannot import onnxruntime: ModuleNotFoundError" in proc.stderr


class RecordingTarget(jd.base.Target):  # type: ignore[misc,name-defined]
    """The target at its command boundary: commands are recorded instead of run in a
    chroot, except the provider probe, which runs the host's python on the stand-in
    onnxruntime (what the venv would import)."""

    def __init__(self, root: Path, stub: Path) -> None:
        super().__init__(root)
        self.stub = stub
        self.commands: list[list[str]] = []

    def run(self, argv: Any, *, check: bool = True, capture: bool = False,
            input_text: str | None = None, env: dict[str, str] | None = None) -> Any:
        argv = list(argv)
        self.commands.append(argv)
        if argv[1:2] == ["-c"] and "get_available_providers" in argv[2]:
            return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                                  check=False, env={"PYTHONPATH": str(self.stub)})
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.mark.parametrize("gpu", [False, True])
def test_install_never_asks_pip_for_the_cpu_wheel_and_checks_the_result(
        tmp_path: Path, gpu: bool) -> None:
    root = fake_root(tmp_path)
    wheel = tmp_path / "motcua-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("motcua/cli.py", "")
        zf.writestr("motcua-0.1.0.dist-info/METADATA", "\n".join([
            "Name: motcua", "Requires-Dist: numpy>=1.26", "Requires-Dist: onnxruntime>=1.17",
            "Requires-Dist: tomli>=2; python_version < \"3.11\"",
            "Requires-Dist: pytest>=8.0; extra == \"dev\""]))
    rel = jd.base.check_wheel(wheel)
    (root / str(jd.ORT_CACHE).lstrip("/")).mkdir(parents=True)
    ort_wheel(root / str(jd.ORT_CACHE).lstrip("/"))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else \
        ["CPUExecutionProvider"]
    t = RecordingTarget(root, stub_onnxruntime(tmp_path / "site", providers))
    t.uid = t.gid = lambda _name: 0  # type: ignore[method-assign]
    marker = root / "opt/motcua/releases" / rel.id / "release.json"
    if gpu:
        jd.install_release(t, rel, None)
        assert marker.is_file()
    else:
        with pytest.raises(jd.ProvisionError, match="this is the CPU build"):
            jd.install_release(t, rel, None)
        assert not marker.exists()  # not complete: the next run redoes it
    pips = [c for c in t.commands if c[1:4] == ["-m", "pip", "install"]]
    assert pips[0][-1].endswith(GPU_WHEEL)
    assert pips[1][-2:] == ["--no-deps", str(jd.base.WHEEL_CACHE / wheel.name)]
    assert pips[2][-2:] == ["numpy>=1.26", "tomli>=2; python_version < \"3.11\""]
    assert not any("onnxruntime>" in a or a == "onnxruntime" for c in pips for a in c)


def test_terminal_config_asks_for_the_gpu(tmp_path: Path) -> None:
    files = make_inputs(tmp_path)
    args = jd.build_parser().parse_args(
        ["--root", str(fake_root(tmp_path)), "provision", *good_args(files)])
    plan = jd.base.make_plan(args)
    text = jd.base.render_config(jd.config_sections(plan), False).decode()
    cfg = config_from_dict(tomllib.loads(text))
    assert cfg.runtime.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                     "CPUExecutionProvider")
    assert cfg.runtime.trt_engine_cache_dir == Path("/var/lib/motcua/trt-engines")
