#!/usr/bin/env python3
"""Build the wheelhouse a district installs its Raspberry Pis from, offline.

One folder of aarch64 wheels for Raspberry Pi OS bookworm (Python 3.11) that works on
both the Pi 4 (Cortex-A72, ARMv8.0-A) and the Pi 5 (Cortex-A76, ARMv8.2-A):

- every dependency of the release that PyPI ships as a manylinux aarch64 wheel is
  downloaded with pip (``pip download --platform ... --only-binary=:all:``): this works
  from any machine, an x86 workstation included;
- hnswlib has no aarch64 wheel, and its setup.py compiles with ``-march=native`` unless
  ``HNSWLIB_NO_NATIVE`` is set, so a wheel built on a Pi 5 may stop a Pi 4 with "Illegal
  instruction". It is built here once with ``HNSWLIB_NO_NATIVE=1`` (the compiler's
  default target, ``armv8-a`` on Debian arm64): natively when this machine is aarch64,
  otherwise inside ``--arm64-root`` (a Debian bookworm arm64 root with python3-venv,
  python3-dev and build-essential, run through ``chroot`` and qemu-user-static). The build
  log is checked for native flags and the library is disassembled and checked for
  instructions beyond ARMv8.0-A;
- ``SHA256SUMS`` and ``wheelhouse.json`` (what was built, how) are written beside the
  wheels; ``provision.sh --wheelhouse DIR`` checks the sums before it changes anything.

Uses the standard library and pip only. See docs/technician-guide.md.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib  # novermin (guarded: Python 3.10 takes the tomli branch below)
except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

#: Raspberry Pi OS bookworm's Python
DEFAULT_PYTHON = "3.11"
#: bookworm ships glibc 2.36: every manylinux tag up to 2_36 runs there; 2_17 is
#: manylinux2014, the oldest aarch64 tag PyPI projects use
GLIBC_MAX = 36
#: where the hnswlib build happens inside --arm64-root (removed afterwards)
ROOT_WORKDIR = "/var/tmp/motcua-wheelhouse"
#: mnemonics a plain ARMv8.0-A core (the Pi 4's Cortex-A72) does not have: LSE atomics
#: (v8.1), RCpc loads (v8.3), dot product (v8.2/v8.4), int8 matrix multiply and bf16
#: (v8.6), SVE. A library with any of them outside a runtime-dispatched helper may stop
#: a Pi 4 with SIGILL.
BEYOND_V8_0 = re.compile(
    r"^(?:cas|casp|swp|ld(?:add|clr|eor|set|smax|smin|umax|umin)"
    r"|st(?:add|clr|eor|set|smax|smin|umax|umin))(?:a|l|al)?(?:b|h)?$"
    r"|^(?:ldapr\w*|ldapur\w*|sdot|udot|usdot|sudot|smmla|ummla|usmmla|bfmmla|bfdot"
    r"|bfcvt\w*|ld1[bhwd]|st1[bhwd]|ptrue|whilelo)$"
)
#: libgcc's outline-atomics helpers (linked into every aarch64 .so gcc builds) hold LSE
#: instructions but choose them at run time from the CPU's hwcaps: safe on a Pi 4
RUNTIME_DISPATCHED = re.compile(r"^__aarch64_(?:cas|swp|ldadd|ldclr|ldeor|ldset)\w*$")


class WheelhouseError(Exception):
    """A bad argument or a failed step; the message says what to do."""


def log(msg: str) -> None:
    print(f"build-wheelhouse: {msg}", file=sys.stderr, flush=True)


def platform_args() -> list[str]:
    """pip's --platform list for a bookworm aarch64 device (plus locally built wheels)."""
    tags = ["manylinux2014_aarch64"]
    tags += [f"manylinux_2_{minor}_aarch64" for minor in range(17, GLIBC_MAX + 1)]
    tags.append("linux_aarch64")  # the hnswlib wheel built here
    return [arg for tag in tags for arg in ("--platform", tag)]


def pip(*args: str, cwd: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise WheelhouseError(f"pip {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def requirements(release: Path) -> list[str]:
    """The release wheel's own (non-extra) Requires-Dist lines."""
    try:
        with zipfile.ZipFile(release) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = email.parser.Parser().parsestr(zf.read(name).decode())
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise WheelhouseError(f"--release: {release} is not a readable wheel ({exc})") from None
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Builder:
    """Runs the hnswlib build natively (aarch64 host) or inside an arm64 root."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        if root is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="motcua-wheelhouse-"))
            self.host_dir, self.inside = self._tmp, str(self._tmp)
        else:
            self.host_dir = root / ROOT_WORKDIR.lstrip("/")
            self.inside = ROOT_WORKDIR
            shutil.rmtree(self.host_dir, ignore_errors=True)
            self.host_dir.mkdir(parents=True)

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        full = list(argv) if self.root is None else ["chroot", str(self.root), *argv]
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "LANG": "C.UTF-8"}
        return subprocess.run(full, env={**base, **(env or {})}, capture_output=True,
                              text=True, check=False)

    def cleanup(self) -> None:
        shutil.rmtree(self.host_dir, ignore_errors=True)


def build_hnswlib(spec: str, builder: Builder, python_version: str, out: Path
                  ) -> dict[str, object]:
    """Build a portable hnswlib wheel for aarch64 into ``out``; returns what was checked."""
    src = builder.host_dir / "src"
    src.mkdir()
    log(f"downloading the {spec} source and its build requirements")
    pip("download", "--quiet", "--no-deps", "--no-binary=hnswlib", "-d", str(src), spec)
    (sdist,) = src.glob("hnswlib-*.tar.gz")
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.count("/") == 1
                      and m.name.endswith("/pyproject.toml"))
        fh = tf.extractfile(member)
        assert fh is not None
        build_requires = tomllib.loads(fh.read().decode())["build-system"]["requires"]
    # the build's own requirements, as aarch64 wheels, so the (emulated) build is offline
    pip("download", "--quiet", "--only-binary=:all:", *platform_args(), "--python-version",
        python_version, "--implementation", "cp", "-d", str(src), *build_requires)
    inside = builder.inside
    proc = builder.run(["python3", "-m", "venv", f"{inside}/venv"])
    if proc.returncode != 0:
        raise WheelhouseError(f"python3 -m venv failed on the build system (python3-venv "
                              f"installed?): {proc.stderr[-1000:]}")
    log("compiling hnswlib with HNSWLIB_NO_NATIVE=1 (minutes under emulation)")
    start = time.monotonic()
    proc = builder.run([f"{inside}/venv/bin/python", "-m", "pip", "wheel", "-v",
                        "--disable-pip-version-check", "--no-index", "--find-links",
                        f"{inside}/src", "--no-deps", "-w", f"{inside}/out",
                        f"{inside}/src/{sdist.name}"], env={"HNSWLIB_NO_NATIVE": "1"})
    build_s = time.monotonic() - start
    build_log = proc.stdout + proc.stderr  # pip -v puts the compiler lines on stderr
    (out / "hnswlib-build.log").write_text(build_log)
    if proc.returncode != 0:
        raise WheelhouseError("the hnswlib build failed (python3-dev and build-essential "
                              f"installed?); see {out / 'hnswlib-build.log'}")
    compiles = [ln for ln in build_log.splitlines()
                if re.search(r"(?:^|\s)\S*(?:g\+\+|gcc|c\+\+)\s.*\s-c\s", ln)]
    if not compiles:
        raise WheelhouseError("no compiler command in the hnswlib build log; cannot check "
                              "its flags")
    native = [ln for ln in compiles if re.search(r"-m(?:arch|cpu|tune)=native", ln)]
    if native:
        raise WheelhouseError(f"hnswlib was compiled for this CPU only: {native[0][:300]}")
    (wheel,) = (builder.host_dir / "out").glob("hnswlib-*.whl")
    if not wheel.name.endswith("_aarch64.whl"):
        raise WheelhouseError(f"built {wheel.name}, not an aarch64 wheel")
    scan = scan_wheel(wheel, builder)
    shutil.copy2(wheel, out / wheel.name)
    flags = sorted({f for ln in compiles for f in ln.split() if f.startswith(("-O", "-m"))})
    # with no -march/-mcpu flag the compiler's default target applies: armv8-a on Debian
    target = builder.run(["gcc", "-Q", "--help=target"])
    march = re.search(r"^\s*-march=\s*(\S+)", target.stdout, re.M)
    default_march = march.group(1) if march else "unknown"
    if default_march not in ("armv8-a", "unknown"):
        raise WheelhouseError(f"the compiler's default target is {default_march}, not armv8-a")
    return {"wheel": wheel.name, "env": "HNSWLIB_NO_NATIVE=1", "compile_flags": flags,
            "default_march": default_march, "build_seconds": round(build_s),
            "instruction_check": scan}


def scan_wheel(wheel: Path, builder: Builder) -> str:
    """Disassemble the wheel's shared libraries; fail on instructions beyond ARMv8.0-A."""
    lib_dir = builder.host_dir / "scan"
    with zipfile.ZipFile(wheel) as zf:
        libs = [n for n in zf.namelist() if n.endswith(".so")]
        for n in libs:
            zf.extract(n, lib_dir)
    found: dict[str, int] = {}
    functions = 0
    for n in libs:
        proc = builder.run(["objdump", "-d", "--no-show-raw-insn", f"{builder.inside}/scan/{n}"])
        if proc.returncode != 0:
            raise WheelhouseError(f"objdump failed (binutils installed?): {proc.stderr[-500:]}")
        count, bad = beyond_v8_0(proc.stdout)
        functions += count
        for k, v in bad.items():
            found[k] = found.get(k, 0) + v
    if found:
        raise WheelhouseError("hnswlib uses instructions a Pi 4 lacks: "
                              + ", ".join(sorted(found)[:10]))
    return f"{functions} functions disassembled, none beyond ARMv8.0-A"


def beyond_v8_0(disassembly: str) -> tuple[int, dict[str, int]]:
    """(functions seen, {"mnemonic in function": count}) of ``objdump -d`` output: the
    instructions a plain ARMv8.0-A core lacks, outside libgcc's run-time dispatched
    atomics helpers."""
    found: dict[str, int] = {}
    func, functions = "", 0
    for line in disassembly.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            func, functions = m.group(1), functions + 1
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and BEYOND_V8_0.match(parts[1].strip()) and \
                not RUNTIME_DISPATCHED.match(func):
            key = f"{parts[1].strip()} in {func}"
            found[key] = found.get(key, 0) + 1
    return functions, found


def check_given_wheel(path: Path, python_version: str) -> None:
    tag = "cp" + python_version.replace(".", "")
    if not re.match(rf"^hnswlib-[^-]+-{tag}-{tag}-\w*aarch64\.whl$", path.name):
        raise WheelhouseError(f"--hnswlib-wheel: {path.name} is not an hnswlib {tag} "
                              "aarch64 wheel")
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:
                raise WheelhouseError(f"--hnswlib-wheel: {path} is corrupt")
    except zipfile.BadZipFile:
        raise WheelhouseError(f"--hnswlib-wheel: {path} is not a wheel") from None


def build(args: argparse.Namespace) -> int:
    out: Path = args.out
    release: Path = args.release
    if not release.is_file() or not re.match(r"^motcua-[^-]+-py3-none-any\.whl$", release.name):
        raise WheelhouseError(f"--release: {release} is not a motcua wheel")
    if out.exists() and any(out.iterdir()):
        raise WheelhouseError(f"{out} is not empty; give a new folder")
    if args.hnswlib_wheel is not None:
        check_given_wheel(args.hnswlib_wheel, args.python_version)
    elif platform.machine() not in ("aarch64", "arm64") and args.arm64_root is None:
        raise WheelhouseError("hnswlib must be compiled on arm64: run this on a Pi, or give "
                              "--arm64-root (a Debian bookworm arm64 root with python3-venv, "
                              "python3-dev, build-essential; qemu-user-static runs it)")
    for c in args.constraint:
        if not c.is_file():
            raise WheelhouseError(f"--constraint: {c} is not a file")
    if args.arm64_root is not None and not (args.arm64_root / "usr/bin/python3").exists():
        raise WheelhouseError(f"--arm64-root: {args.arm64_root} has no usr/bin/python3")
    reqs = requirements(release)
    hnsw = [r for r in reqs if re.match(r"^hnswlib\b", r, re.I)]
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"release": release.name, "python": args.python_version,
                                 "constraints": [c.read_text() for c in args.constraint],
                                 "platform": "aarch64 (Raspberry Pi 4 and 5, bookworm)"}
    if args.hnswlib_wheel is not None:
        shutil.copy2(args.hnswlib_wheel, out / args.hnswlib_wheel.name)
        record["hnswlib"] = {"wheel": args.hnswlib_wheel.name, "given": True}
    elif hnsw:
        builder = Builder(args.arm64_root)
        try:
            record["hnswlib"] = build_hnswlib(hnsw[0].replace(" ", ""), builder,
                                              args.python_version, out)
        finally:
            builder.cleanup()
    log("downloading the release's dependencies as aarch64 wheels")
    constraints = [a for c in args.constraint for a in ("-c", str(c))]
    pip("download", "--quiet", "--only-binary=:all:", *platform_args(), "--python-version",
        args.python_version, "--implementation", "cp", "--find-links", str(out), *constraints,
        "-d", str(out), str(release))
    if not (out / release.name).is_file():
        shutil.copy2(release, out / release.name)
    wheels = sorted(p for p in out.glob("*.whl"))
    bad = [p.name for p in wheels if not re.search(r"(?:-none-any|aarch64)\.whl$", p.name)]
    if bad:
        raise WheelhouseError(f"not for aarch64: {', '.join(bad)}")
    record["wheels"] = [p.name for p in wheels]
    (out / "wheelhouse.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in wheels))
    log(f"{len(wheels)} wheels in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build-wheelhouse.sh", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="new folder for the wheels")
    p.add_argument("--release", type=Path, required=True, help="the motcua wheel to install")
    p.add_argument("--python-version", default=DEFAULT_PYTHON,
                   help=f"the devices' Python (default {DEFAULT_PYTHON}, bookworm)")
    p.add_argument("--arm64-root", type=Path,
                   help="Debian arm64 root to compile hnswlib in (needed on a non-arm64 host)")
    p.add_argument("--hnswlib-wheel", type=Path,
                   help="an hnswlib wheel this script built before (skips the compile)")
    p.add_argument("--constraint", type=Path, action="append", default=[],
                   help="pip constraints file for the downloads (e.g. hold a release back)")
    args = p.parse_args(argv)
    try:
        return build(args)
    except WheelhouseError as exc:
        print(f"build-wheelhouse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
