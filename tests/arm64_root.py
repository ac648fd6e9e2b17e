"""A Debian bookworm arm64 root run under qemu-user (binfmt_misc), cached between runs.

Used by tests/test_arm64.py. The root is made by ``debootstrap --arch=arm64`` (its second
stage runs under qemu-aarch64 through binfmt_misc) and cached as a tarball under
``~/.cache/motcua/arm64`` (``$MOTCUA_ARM64_CACHE``), keyed by a hash of suite, mirror,
variant and package list; the portable hnswlib wheel built inside it is cached beside it,
keyed by the root's key and hnswlib's sdist hash. ``python -m tests.arm64_root`` builds
both (what a CI cache-warming step would run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
ARCH = "arm64"
#: what the emulated root needs: Python 3.11 with venv, systemd and openssl (as Raspberry
#: Pi OS Lite has; provision.sh enables units and makes the device key with them) and a
#: compiler plus Python headers for hnswlib, the one dependency without an aarch64 wheel
INCLUDE = "python3,python3-venv,python3-dev,build-essential,systemd,openssl"
CACHE = Path(os.environ.get("MOTCUA_ARM64_CACHE", Path.home() / ".cache" / "motcua" / "arm64"))
#: the binfmt_misc entry qemu-user-static registers (update-binfmts --enable qemu-aarch64)
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def log(msg: str) -> None:
    print(f"[arm64] {msg}", file=sys.stderr, flush=True)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses ($MOTCUA_DEBIAN_MIRROR overrides)."""
    if env := os.environ.get("MOTCUA_DEBIAN_MIRROR"):
        return env
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file() or not f.name.endswith((".list", ".sources")):
            continue
        text = f.read_text(errors="replace")
        # deb822 (.sources): "URIs: http://.../debian" in a stanza naming the suite
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and \
                    not uris.group(1).rstrip("/").endswith("-security"):
                return uris.group(1).rstrip("/")
        # one-line format: "deb [opts] http://.../debian bookworm main"
        for line in text.splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m and m.group(2) == SUITE:
                return m.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def ensure_binfmt() -> None:
    """Make the kernel run aarch64 ELF files through qemu (needs root and qemu-user-static)."""
    if (BINFMT / "qemu-aarch64").is_file():
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").is_file():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
    if not (BINFMT / "qemu-aarch64").is_file():
        raise RuntimeError("no binfmt_misc entry for aarch64 (install qemu-user-static and "
                           "binfmt-support: scripts/debian-packages.txt)")


def root_key() -> str:
    mirror = debian_mirror()
    return hashlib.sha256(f"{SUITE} {ARCH} minbase {INCLUDE} {mirror}".encode()).hexdigest()[:12]


def root_tarball() -> Path:
    """The cached arm64 root tarball; made by debootstrap when absent."""
    tarball = CACHE / f"{SUITE}-{ARCH}-{root_key()}.tar"
    if tarball.is_file():
        log(f"using cached root {tarball}")
        return tarball
    ensure_binfmt()
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap and chroot need root (CI runs as root)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="arm64-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        start = time.monotonic()
        proc = subprocess.run(["debootstrap", f"--arch={ARCH}", "--variant=minbase",
                               f"--include={INCLUDE}", SUITE, str(root), mirror],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError("debootstrap failed:\n" + proc.stdout[-3000:]
                               + proc.stderr[-3000:])
        log(f"debootstrap --arch={ARCH} from {mirror} took {time.monotonic() - start:.0f} s")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        part = tarball.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."],
                       check=True)
        part.rename(tarball)
    return tarball


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(dest)],
                   check=True)
    return dest


@contextlib.contextmanager
def system_mounts(root: Path) -> Iterator[None]:
    """Read-only /proc and /sys in ``root`` (onnxruntime's cpuinfo reads both and aborts
    without them, as on a real Pi where they are always there)."""
    mounted: list[Path] = []
    try:
        for fstype, target in (("proc", root / "proc"), ("sysfs", root / "sys")):
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", fstype, "-o", "ro,nosuid,nodev,noexec", fstype,
                            str(target)], check=True)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=False)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    with open("/proc/mounts") as fh:
        points = [line.split()[1].replace("\\040", " ") for line in fh]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def remove_root(root: Path) -> None:
    """Delete an unpacked root, never while something is still mounted inside it."""
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"still mounted inside {root}: {left}; not deleting it")
    shutil.rmtree(root, ignore_errors=True)


def chroot(root: Path, *cmd: str, env: dict[str, str] | None = None,
           timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside ``root`` (aarch64 binaries run under qemu transparently)."""
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run(["chroot", str(root), *cmd], env={**base, **(env or {})},
                          capture_output=True, text=True, check=False, timeout=timeout)


if __name__ == "__main__":
    print(root_tarball())
