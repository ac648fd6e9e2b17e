#!/usr/bin/env python3
"""motcua-device for a Jetson Orin (JetPack 6: L4T r36, Ubuntu 22.04, Python 3.10).

The Raspberry Pi tool (``deploy/raspberrypi/motcua_device.py``: users, folders, the model
pack, certificates, units, updates with roll-back) does the work; this file changes what
differs on a Jetson:

- onnxruntime is NVIDIA's ``onnxruntime-gpu`` wheel for JetPack 6 (PyPI has no aarch64
  GPU wheel), given with ``--ort-wheel FILE``. It is installed first; the release is then
  installed with ``--no-deps`` and its dependencies *without* ``onnxruntime``, so pip never
  fetches the CPU wheel, which would overwrite the GPU one (both install the package
  ``onnxruntime``). Afterwards the venv's onnxruntime must offer CUDA or TensorRT, or
  provisioning (and ``update``) fails loudly: ``check-ort`` runs the same check any time.
- the terminal's ``[runtime]`` section asks for TensorRT, then CUDA, then the CPU, with an
  engine cache under the state folder;
- a drop-in for ``motcua-terminal.service`` opens the GPU's device nodes and gives the first
  TensorRT engine build time; Ubuntu's package names replace Debian's.

Runs as root with the system's python3 and the standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
import zipfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_pi_tool() -> types.ModuleType:
    """A private copy of the Pi tool (beside this file on the device, ../raspberrypi in the
    source tree): the changes below patch this copy only, never an imported
    ``motcua_device`` that other code uses."""
    for where in (HERE, HERE.parent / "raspberrypi"):
        path = where / "motcua_device.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("_motcua_device_for_jetson", path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            # dataclasses look their module up in sys.modules while the class is made
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            return mod
    raise SystemExit("motcua-device: motcua_device.py (the Raspberry Pi tool) is missing "
                     f"beside {__file__}")


base = _load_pi_tool()
ProvisionError = base.ProvisionError
log = base.log

#: the Pi tool's module is installed beside this one; this one is the command
base.TOOL = Path("/usr/local/sbin/motcua_device.py")
TOOL = Path("/usr/local/sbin/motcua-device")
#: the GPU wheel kept for `update` (a new release is installed against the same wheel)
ORT_CACHE = base.WHEEL_CACHE / "onnxruntime-gpu"
DROPIN = base.UNIT_DIR / "motcua-terminal.service.d" / "jetson.conf"
DROPIN_SRC = HERE / "systemd" / "motcua-terminal.service.d" / "jetson.conf"
#: TensorRT's engines (minutes to build on an Orin; kept across restarts and releases)
TRT_CACHE = base.STATE / "trt-engines"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

#: Ubuntu 22.04 (JetPack 6) package names. No chromium: Ubuntu 22.04 has it only as a
#: snap, which the technician installs (docs/technician-guide.md); v4l-utils for
#: `v4l2-ctl` when checking a USB camera
base.SYSTEM_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-dev",
    "build-essential",
    "openssl",
    "ca-certificates",
    "cage",
    "fonts-noto-core",
    "v4l-utils",
    "systemd-timesyncd",
)

#: onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl (NVIDIA's Jetson builds)
ORT_WHEEL_RE = re.compile(
    r"onnxruntime_gpu-([0-9][0-9A-Za-z.+!]*)-(cp3\d+)-(cp3\d+)-(linux|manylinux\w*)_aarch64\.whl")
#: what the guard runs in the venv's python: the providers this onnxruntime build offers
_PROBE = ("import json, onnxruntime; "
          "print(json.dumps([onnxruntime.__version__, onnxruntime.get_available_providers()]))")


def check_ort_wheel(path: Path) -> Path:
    """``path`` must be NVIDIA's onnxruntime-gpu wheel for aarch64 (checked before any change)."""
    m = ORT_WHEEL_RE.fullmatch(path.name)
    if not m:
        raise ProvisionError(
            f"--ort-wheel: {path.name} is not an onnxruntime-gpu wheel for the Jetson "
            "(onnxruntime_gpu-VERSION-cp310-cp310-linux_aarch64.whl from NVIDIA's Jetson "
            "index for JetPack 6); the CPU onnxruntime would run the models on the CPU only")
    base.check_wheel_member(path, "onnxruntime/__init__.py", "--ort-wheel", "onnxruntime")
    return path


def check_python_tag(t: base.Target, wheel: Path) -> None:
    """The wheel must be built for the target's python3 (3.10 on JetPack 6)."""
    m = ORT_WHEEL_RE.fullmatch(wheel.name)
    assert m is not None
    proc = t.run(["python3", "-c", "import sys; print(f'cp{sys.version_info[0]}"
                  "{sys.version_info[1]}')"], capture=True, check=False)
    tag = proc.stdout.strip()
    if proc.returncode == 0 and tag and tag != m.group(2):
        raise ProvisionError(
            f"--ort-wheel: {wheel.name} is for {m.group(2)}, the device's python3 is {tag}: "
            f"download the {tag} wheel for this JetPack; nothing was changed")


def gpu_providers(python: Sequence[str], env: dict[str, str] | None = None,
                  run: base.Target | None = None) -> tuple[str, list[str]]:
    """(version, providers) of the onnxruntime that ``python`` imports; a clear
    ProvisionError when it cannot import one or the build has no GPU provider."""
    argv = [*python, "-c", _PROBE]
    if run is not None:
        proc = run.run(argv, capture=True, check=False, env=env)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProvisionError(f"{python[0]} cannot import onnxruntime: {last}")
    try:
        version, providers = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProvisionError(f"{python[0]}: unexpected answer {proc.stdout[-200:]!r}") from None
    if not any(p in providers for p in GPU_PROVIDERS):
        raise ProvisionError(
            f"the onnxruntime {version} in {python[0]} offers only {', '.join(providers)}: "
            "this is the CPU build, not NVIDIA's onnxruntime-gpu (something replaced it, or "
            "the wrong wheel was given). The models would run on the CPU. Reinstall with "
            "--ort-wheel and NVIDIA's wheel for this JetPack")
    return str(version), list(providers)


def requirements_without_onnxruntime(wheel: Path) -> list[str]:
    """The release's Requires-Dist lines (markers kept) except onnxruntime and extras."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise ProvisionError(f"{wheel.name} has no METADATA")
        text = zf.read(meta).decode("utf-8", errors="replace")
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower().replace("_", "-")
        if "extra ==" in req or name == "onnxruntime":
            continue
        out.append(req)
    return out


def install_release(t: base.Target, rel: base.Release, wheelhouse: Path | None) -> Path:
    """The Pi's install, with NVIDIA's onnxruntime-gpu in place of the CPU onnxruntime."""
    dest = base.RELEASES / rel.id
    marker = dest / "release.json"
    if t.path(marker).is_file():
        log(f"release {rel.id} already installed")
        return dest
    ort = sorted(t.path(ORT_CACHE).glob("onnxruntime_gpu-*.whl"))
    if len(ort) != 1:
        raise ProvisionError(f"no onnxruntime-gpu wheel in {ORT_CACHE}: provision with "
                             "--ort-wheel first")
    if t.path(dest).exists():
        log(f"removing the unfinished install {dest}")
        shutil.rmtree(t.path(dest))
    cached = base.WHEEL_CACHE / rel.wheel.name
    t.ensure_file(cached, rel.wheel.read_bytes(), 0o644)
    log(f"installing release {rel.id} with {ort[0].name}")
    t.run(["python3", "-m", "venv", str(dest)])
    python = str(dest / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-cache-dir"]
    house = base.WHEEL_CACHE / "wheelhouse"
    if wheelhouse is not None:
        shutil.rmtree(t.path(house), ignore_errors=True)
        shutil.copytree(wheelhouse, t.path(house))
        pip += ["--no-index", "--find-links", str(house)]
    try:
        t.run([*pip, str(ORT_CACHE / ort[0].name)])
        # the release without dependencies, then its dependencies minus onnxruntime: pip
        # cannot know that onnxruntime-gpu provides "onnxruntime" and would add the CPU wheel
        t.run([*pip, "--no-deps", str(cached)])
        reqs = requirements_without_onnxruntime(rel.wheel)
        if reqs:
            t.run([*pip, *reqs])
    finally:
        shutil.rmtree(t.path(house), ignore_errors=True)
    version, providers = gpu_providers([python], run=t)
    log(f"onnxruntime {version}: {', '.join(providers)}")
    record = {"id": rel.id, "version": rel.version, "wheel": rel.wheel.name,
              "wheel_sha256": rel.sha256, "onnxruntime_gpu": ort[0].name}
    t.ensure_file(marker, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    t.changed(f"installed release {rel.id}")
    return dest


_base_config_sections = base.config_sections


def config_sections(plan: base.Plan) -> dict[str, dict[str, object]]:
    """The Pi's sections plus the GPU providers (config keys of faces/settings.py)."""
    sections = _base_config_sections(plan)
    sections["runtime"] = {
        "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                      "CPUExecutionProvider"],
        "trt_engine_cache_dir": str(TRT_CACHE),
        "device_id": 0,
    }
    return sections


_base_toml_value = base.toml_value


def toml_value(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_base_toml_value(x) for x in v) + "]"
    return _base_toml_value(v)


base.install_release = install_release
base.config_sections = config_sections
base.toml_value = toml_value
_base_step_units = base.step_units


def step_units(t: base.Target, start: bool) -> None:
    t.ensure_file(DROPIN, DROPIN_SRC.read_bytes(), 0o644)
    t.ensure_file(TOOL, Path(__file__).read_bytes(), 0o755)
    _base_step_units(t, start)


base.step_units = step_units


def provision(args: argparse.Namespace) -> int:
    problems: list[str] = []
    wheel = None
    if args.ort_wheel is None:
        problems.append("--ort-wheel is required: NVIDIA's onnxruntime-gpu wheel for "
                        "JetPack 6 (docs/technician-guide.md says where to get it)")
    else:
        try:
            wheel = check_ort_wheel(args.ort_wheel)
        except ProvisionError as exc:
            problems.append(str(exc))
    try:
        base.make_plan(args)
    except ProvisionError as exc:
        problems += str(exc).split("\n  ")[1:]
    if problems:
        raise ProvisionError("nothing was changed:\n  " + "\n  ".join(problems))
    assert wheel is not None
    t = base.Target(Path(args.root))
    check_python_tag(t, wheel)
    t.ensure_dir(base.WHEEL_CACHE, 0o755)
    t.path(ORT_CACHE).mkdir(exist_ok=True)
    for old in t.path(ORT_CACHE).glob("onnxruntime_gpu-*.whl"):
        if old.name != wheel.name:
            old.unlink()
    t.ensure_file(ORT_CACHE / wheel.name, wheel.read_bytes(), 0o644)
    return base.provision(args)


def cmd_check_ort(args: argparse.Namespace) -> int:
    python = args.python or str(base.CURRENT / "bin" / "python")
    version, providers = gpu_providers([python])
    print(f"onnxruntime {version}: {', '.join(providers)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = base.build_parser()
    p.prog = "motcua-device"
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    pr = sub.choices["provision"]
    pr.add_argument("--ort-wheel", type=Path,
                    help="NVIDIA's onnxruntime-gpu wheel for JetPack 6 (cp310, aarch64)")
    pr.set_defaults(func=provision)
    co = sub.add_parser("check-ort", help="fail unless onnxruntime offers CUDA or TensorRT")
    co.add_argument("--python", help="interpreter to check (default: the current release's)")
    co.set_defaults(func=cmd_check_ort)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return int(base.main(argv, build_parser))


if __name__ == "__main__":
    sys.exit(main())
