#!/usr/bin/env python3
"""motcua-device: provision, identify, update and roll back a Một Cửa terminal.

Runs as root on the device with the system's python3 and the standard library only (it
runs before the project's virtual environment exists). Subcommands:

    provision     install everything and enable the services (idempotent)
    csr           print the device's certificate request (makes the key on first use)
    install-cert  install the certificate the district signed for this device
    update        install a new release beside the current one; roll back if unhealthy
    rollback      switch back to the previous release
    status        print the installed releases and which one is current

``--root DIR`` works on a system image mounted at DIR instead of ``/`` (commands that
need the target's own tools run through ``chroot DIR``); the tests use it on a Debian
bookworm root made by debootstrap. Every argument is checked before anything changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNITS_SRC = HERE / "systemd"

# Layout on the device (absolute paths inside the target root).
OPT = Path("/opt/motcua")
RELEASES = OPT / "releases"
CURRENT = OPT / "current"
PREVIOUS = OPT / "previous"
ETC = Path("/etc/motcua")
CONFIG = ETC / "terminal.toml"
TLS = ETC / "tls"
SECRETS = ETC / "secrets"
DISTRICT_KEY = ETC / "district.pub"
RECORD = ETC / "provisioned.json"
STATE = Path("/var/lib/motcua")
MODELS = STATE / "models"
KIOSK_STATE = Path("/var/lib/motcua-kiosk")
UNIT_DIR = Path("/etc/systemd/system")
TOOL = Path("/usr/local/sbin/motcua-device")
MOTCUA_LINK = Path("/usr/local/bin/motcua")
WHEEL_CACHE = Path("/var/cache/motcua")

SERVICE_USER = "motcua"
KIOSK_USER = "motcua-kiosk"
#: groups the kiosk browser needs for the screen (DRM), GPU and keyboard/touch; the ones
#: missing on an image are skipped
KIOSK_GROUPS = ("video", "render", "input")
UNITS = ("motcua-terminal.service", "motcua-display.service", "motcua-kiosk.service")
#: restarted on update, in this order (the kiosk follows the display on its own)
RESTART_UNITS = ("motcua-terminal.service", "motcua-display.service")

#: Debian packages the device needs: Python for the venv, cage + chromium for the kiosk,
#: openssl for the device key, fonts with Vietnamese diacritics, v4l-utils for `v4l2-ctl`
#: when a technician checks the camera, build tools for hnswlib when no wheelhouse is given
SYSTEM_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-dev",
    "build-essential",
    "openssl",
    "ca-certificates",
    "cage",
    "chromium",
    "fonts-noto-core",
    "v4l-utils",
    "systemd-timesyncd",
)
#: releases kept on disk besides current and previous (an SD card is small)
KEEP_RELEASES = 3
#: seconds an updated terminal has to report healthy: loading the models and the index
#: on a Pi 4 takes ~30 s, three times that is a clear failure
DEFAULT_HEALTH_TIMEOUT = 120.0

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:]+\]$")
#: DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQ, SEQ{OID 1.3.101.112}, BIT STR
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class ProvisionError(Exception):
    """A bad argument or a failed step; the message is for the technician."""


def log(msg: str) -> None:
    print(f"motcua-device: {msg}", flush=True)


# --------------------------------------------------------------------------- target


class Target:
    """The system being provisioned: ``/`` on the device, or an image root in tests."""

    def __init__(self, root: Path, dry_run: bool = False) -> None:
        self.root = root.resolve()
        self.dry_run = dry_run
        self.changes: list[str] = []

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    def path(self, p: Path | str) -> Path:
        return self.root / str(p).lstrip("/")

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.is_host else ["chroot", str(self.root), *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, capture: bool = False,
            input_text: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        full = self.cmd(argv)
        run_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(full, check=False, text=True, input=input_text,
                                  capture_output=True, env=run_env)
        except FileNotFoundError as exc:
            raise ProvisionError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ProvisionError(
                f"{' '.join(argv[:3])} failed (exit {proc.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        if not capture and proc.stdout.strip():
            for line in proc.stdout.strip().splitlines()[-3:]:
                log(f"  {line}")
        return proc

    def changed(self, what: str) -> None:
        self.changes.append(what)
        log(f"changed: {what}")

    # ---- users and ids, read from the target's own files
    def _db(self, name: str) -> dict[str, list[str]]:
        try:
            text = self.path(f"/etc/{name}").read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return {ln.split(":")[0]: ln.split(":") for ln in text.splitlines() if ":" in ln}

    def uid(self, user: str) -> int:
        entry = self._db("passwd").get(user)
        if entry is None:
            raise ProvisionError(f"user {user} does not exist on the target")
        return int(entry[2])

    def gid(self, group: str) -> int:
        entry = self._db("group").get(group)
        if entry is None:
            raise ProvisionError(f"group {group} does not exist on the target")
        return int(entry[2])

    def has_user(self, user: str) -> bool:
        return user in self._db("passwd")

    def has_group(self, group: str) -> bool:
        return group in self._db("group")

    def group_members(self, group: str) -> set[str]:
        entry = self._db("group").get(group)
        return set(filter(None, entry[3].split(","))) if entry and len(entry) > 3 else set()

    # ---- files, changed only when they differ
    def ensure_dir(self, p: Path, mode: int, user: str = "root", group: str = "root") -> None:
        full = self.path(p)
        if not full.is_dir():
            full.mkdir(parents=True)
            self.changed(f"created {p}")
        self._ensure_meta(p, mode, user, group)

    def _ensure_meta(self, p: Path, mode: int, user: str, group: str) -> None:
        full = self.path(p)
        st = full.lstat()
        uid, gid = self.uid(user), self.gid(group)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(full, uid, gid, follow_symlinks=False)
            self.changed(f"owner of {p} -> {user}:{group}")
        if st.st_mode & 0o7777 != mode:
            full.chmod(mode)
            self.changed(f"mode of {p} -> {mode:04o}")

    def ensure_file(self, p: Path, content: bytes, mode: int, user: str = "root",
                    group: str = "root") -> bool:
        """Write ``content`` atomically when it differs; fix owner and mode. True if written."""
        full = self.path(p)
        written = False
        try:
            same = full.read_bytes() == content
        except FileNotFoundError:
            same = False
        if not same:
            full.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=full.parent, prefix=f".{full.name}.")
            try:
                os.fchmod(fd, mode)
                os.fchown(fd, self.uid(user), self.gid(group))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, full)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.changed(f"wrote {p}")
            written = True
        self._ensure_meta(p, mode, user, group)
        return written

    def ensure_symlink(self, link: Path, dest: str) -> bool:
        """Point ``link`` at ``dest`` atomically (rename over the old link)."""
        full = self.path(link)
        if full.is_symlink() and os.readlink(full) == dest:
            return False
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp = full.with_name(f".{full.name}.new")
        tmp.unlink(missing_ok=True)
        os.symlink(dest, tmp)
        os.replace(tmp, full)
        self.changed(f"{link} -> {dest}")
        return True

    def readlink(self, link: Path) -> str | None:
        full = self.path(link)
        return os.readlink(full) if full.is_symlink() else None


# --------------------------------------------------------------------------- checks


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _readable_file(path: Path | None, what: str, problems: list[str]) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        problems.append(f"{what}: {path} is not a file")
        return None
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        problems.append(f"{what}: cannot read {path}: {exc.strerror}")
        return None
    return path


def pem_blocks(text: str, label: str) -> list[bytes]:
    """The base64-decoded bodies of the ``-----BEGIN label-----`` blocks in ``text``."""
    import base64
    import binascii

    out = []
    pattern = rf"-----BEGIN {label}-----\s+([A-Za-z0-9+/=\s]+?)-----END {label}-----"
    for m in re.finditer(pattern, text):
        try:
            out.append(base64.b64decode("".join(m.group(1).split()), validate=True))
        except binascii.Error:
            continue
    return out


def check_district_key(path: Path) -> bytes:
    """The Ed25519 public key in ``path`` (PEM SubjectPublicKeyInfo, or 64 hex chars)."""
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    for der in pem_blocks(text, "PUBLIC KEY"):
        if len(der) == 44 and der.startswith(ED25519_SPKI_PREFIX):
            return der[12:]
    raise ProvisionError(
        f"--district-key: {path} is not an Ed25519 public key (PEM 'PUBLIC KEY' or 64 hex "
        "characters); ask the district for the file printed by its key command"
    )


@dataclasses.dataclass
class Release:
    wheel: Path
    version: str
    sha256: str

    @property
    def id(self) -> str:
        return f"{self.version}-{self.sha256[:12]}"


def check_wheel(path: Path) -> Release:
    m = re.fullmatch(r"motcua-([0-9][0-9A-Za-z.+!]*)-py3-none-any\.whl", path.name)
    if not m:
        raise ProvisionError(
            f"--release: {path.name} is not a motcua wheel (motcua-VERSION-py3-none-any.whl)"
        )
    check_wheel_member(path, "motcua/cli.py", "--release", "motcua")
    return Release(path, m.group(1), sha256_file(path))


def check_wheel_member(path: Path, member: str, option: str, package: str) -> None:
    """``path`` is a readable, uncorrupted wheel holding ``member`` (else ProvisionError
    naming ``option``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProvisionError(f"{option}: {path} is not a readable wheel: {exc}") from None
    if bad is not None:
        raise ProvisionError(f"{option}: {path}: member {bad} is corrupt")
    if member not in names:
        raise ProvisionError(f"{option}: {path} does not contain the {package} package")


def check_model_pack(path: Path, expected: str | None) -> tuple[str, str]:
    """Verify the archive against the district's sha256; return (digest, pack name)."""
    if expected is None:
        side = path.with_name(path.name + ".sha256")
        if not side.is_file():
            raise ProvisionError(
                f"--model-pack-sha256 missing and no {side.name} beside the archive: the "
                "district publishes the pack's sha256 with it"
            )
        expected = side.read_text(encoding="ascii", errors="replace").split()[0]
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ProvisionError(f"--model-pack-sha256: {expected!r} is not a sha256 (64 hex)")
    actual = sha256_file(path)
    if actual != expected:
        raise ProvisionError(
            f"--model-pack: {path.name} has sha256 {actual[:16]}..., the district published "
            f"{expected[:16]}...: the copy is damaged or not the district's pack"
        )
    try:
        with tarfile.open(path) as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError) as exc:
        raise ProvisionError(f"--model-pack: {path} is not a tar archive: {exc}") from None
    for mem in members:
        name = mem.name
        if name.startswith("/") or ".." in Path(name).parts or not (mem.isfile() or mem.isdir()):
            raise ProvisionError(f"--model-pack: unsafe member {name!r} in {path.name}")
    tops = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
    if len(tops) != 1:
        raise ProvisionError(f"--model-pack: {path.name} must hold one pack folder, "
                             f"found {sorted(tops)}")
    name = tops.pop()
    if not any(m.name == f"{name}/manifest.toml" for m in members):
        raise ProvisionError(f"--model-pack: {path.name} has no {name}/manifest.toml "
                             "(make it with `motcua models export`)")
    return actual, name


def check_wheelhouse(path: Path) -> None:
    """A wheelhouse folder; when it has build-wheelhouse.sh's SHA256SUMS, every wheel in
    it must be listed there with that digest (a damaged or swapped copy stops here)."""
    if not path.is_dir():
        raise ProvisionError(f"--wheelhouse: {path} is not a directory")
    wheels = sorted(p.name for p in path.glob("*.whl"))
    if not wheels:
        raise ProvisionError(f"--wheelhouse: {path} holds no wheels")
    sums = path / "SHA256SUMS"
    if not sums.is_file():
        return
    listed: dict[str, str] = {}
    for line in sums.read_text(encoding="ascii", errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ProvisionError(f"--wheelhouse: {sums} has a bad line: {line[:80]!r}")
        listed[parts[1].lstrip("*")] = parts[0]
    unlisted = [w for w in wheels if w not in listed]
    if unlisted:
        raise ProvisionError(f"--wheelhouse: {', '.join(unlisted[:5])} not in SHA256SUMS")
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise ProvisionError(f"--wheelhouse: {name} (in SHA256SUMS) is missing")
        if sha256_file(f) != digest:
            raise ProvisionError(f"--wheelhouse: {name} does not match SHA256SUMS: the copy "
                                 "is damaged or not the district's")


def parse_broker(value: str) -> tuple[str, int, bool]:
    """``[mqtt://|mqtts://]host[:port]`` -> (host, port, tls)."""
    tls = False
    rest = value
    if "://" in value:
        scheme, rest = value.split("://", 1)
        if scheme not in ("mqtt", "mqtts"):
            raise ProvisionError(f"--broker: unknown scheme {scheme!r} (mqtt:// or mqtts://)")
        tls = scheme == "mqtts"
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, ("8883" if tls else "1883")
    if not host or not HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProvisionError(f"--broker: expected host:port or mqtts://host:port, got {value!r}")
    return host.strip("[]"), int(port), tls


@dataclasses.dataclass
class Plan:
    """Everything provisioning will do, checked before any change."""

    terminal_id: str
    district_id: str
    broker_host: str
    broker_port: int
    tls: bool
    username: str | None
    password: bytes | None
    broker_ca: bytes | None
    client_cert: bytes | None
    district_key_pem: bytes
    pack: Path
    pack_sha256: str
    pack_name: str
    release: Release
    wheelhouse: Path | None


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every argument; raise ProvisionError listing all problems at once."""
    problems: list[str] = []

    def need(value: object, flag: str) -> None:
        if value in (None, ""):
            problems.append(f"{flag} is required")

    for value, flag in ((args.terminal_id, "--terminal-id"), (args.district_id, "--district-id"),
                        (args.broker, "--broker"), (args.district_key, "--district-key"),
                        (args.model_pack, "--model-pack"), (args.release, "--release")):
        need(value, flag)
    for value, flag in ((args.terminal_id, "--terminal-id"), (args.district_id, "--district-id")):
        if value and not ID_RE.match(value):
            problems.append(f"{flag}: {value!r} must be lower-case letters, digits, - or _ "
                            "(at most 63)")
    broker: tuple[str, int, bool] = ("", 0, False)
    if args.broker:
        try:
            broker = parse_broker(args.broker)
        except ProvisionError as exc:
            problems.append(str(exc))
    tls = bool(broker[2] or args.broker_ca)
    if args.username and not args.password_file:
        problems.append("--username needs --password-file (the password never goes on the "
                        "command line)")
    if args.password_file and not args.username:
        problems.append("--password-file needs --username")
    if not args.username and not tls:
        problems.append("no broker credentials: give --username/--password-file, or use "
                        "mqtts:// with --broker-ca (the device certificate is the credential)")
    if tls and not args.broker_ca:
        problems.append("mqtts:// needs --broker-ca (the CA that signed the broker's "
                        "certificate)")
    pw = _readable_file(args.password_file, "--password-file", problems)
    ca = _readable_file(args.broker_ca, "--broker-ca", problems)
    cert = _readable_file(args.client_cert, "--client-cert", problems)
    dkey = _readable_file(args.district_key, "--district-key", problems)
    pack = _readable_file(args.model_pack, "--model-pack", problems)
    wheel = _readable_file(args.release, "--release", problems)
    password = None
    if pw is not None:
        password = pw.read_bytes().strip()
        if not password:
            problems.append(f"--password-file: {pw} is empty")
        password += b"\n"
    for f, flag, label in ((ca, "--broker-ca", "CERTIFICATE"),
                           (cert, "--client-cert", "CERTIFICATE")):
        if f is not None and not pem_blocks(f.read_text(errors="replace"), label):
            problems.append(f"{flag}: {f} holds no PEM certificate")
    if args.client_cert and not tls:
        problems.append("--client-cert needs mqtts:// and --broker-ca")
    district_pem = b""
    if dkey is not None:
        try:
            raw = check_district_key(dkey)
            district_pem = _ed25519_pem(raw)
        except ProvisionError as exc:
            problems.append(str(exc))
    pack_sha, pack_name = "", ""
    if pack is not None:
        try:
            pack_sha, pack_name = check_model_pack(pack, args.model_pack_sha256)
        except ProvisionError as exc:
            problems.append(str(exc))
    release = None
    if wheel is not None:
        try:
            release = check_wheel(wheel)
        except ProvisionError as exc:
            problems.append(str(exc))
    if args.wheelhouse is not None:
        try:
            check_wheelhouse(args.wheelhouse)
        except ProvisionError as exc:
            problems.append(str(exc))
    root = Path(args.root)
    if not root.is_dir():
        problems.append(f"--root: {root} is not a directory")
    elif not (root / "etc" / "passwd").is_file() or not (root / "usr" / "bin").is_dir():
        problems.append(f"--root: {root} does not look like a system root (no etc/passwd)")
    if os.geteuid() != 0:
        problems.append("run as root (sudo): it creates users and installs services")
    if problems:
        raise ProvisionError(
            "nothing was changed:\n  " + "\n  ".join(problems)
        )
    assert release is not None and pack is not None
    return Plan(
        terminal_id=args.terminal_id, district_id=args.district_id,
        broker_host=str(broker[0]), broker_port=int(broker[1] or 0), tls=tls,
        username=args.username, password=password,
        broker_ca=ca.read_bytes() if ca else None,
        client_cert=cert.read_bytes() if cert else None,
        district_key_pem=district_pem, pack=pack, pack_sha256=pack_sha, pack_name=pack_name,
        release=release, wheelhouse=args.wheelhouse,
    )


def _ed25519_pem(raw: bytes) -> bytes:
    import base64

    b64 = base64.b64encode(ED25519_SPKI_PREFIX + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n".encode()


# --------------------------------------------------------------------------- steps


def step_packages(t: Target, skip: bool) -> None:
    missing = []
    for pkg in SYSTEM_PACKAGES:
        proc = t.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False, capture=True)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    if not missing:
        return
    if skip:
        log(f"skipping Debian packages (--skip-packages); missing: {' '.join(missing)}")
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    t.run(["apt-get", "update", "-qq"], env=env)
    t.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
    t.changed(f"installed {' '.join(missing)}")


def step_users(t: Target) -> None:
    if not t.has_group(SERVICE_USER):
        t.run(["groupadd", "--system", SERVICE_USER])
        t.changed(f"group {SERVICE_USER}")
    if not t.has_user(SERVICE_USER):
        t.run(["useradd", "--system", "--gid", SERVICE_USER, "--home-dir", str(STATE),
               "--no-create-home", "--shell", "/usr/sbin/nologin",
               "--comment", "Mot Cua terminal service", SERVICE_USER])
        t.changed(f"user {SERVICE_USER}")
    # the camera and nothing else: video owns /dev/video* (udev rule 50-udev-default)
    if SERVICE_USER not in t.group_members("video"):
        t.run(["usermod", "--append", "--groups", "video", SERVICE_USER])
        t.changed(f"{SERVICE_USER} in group video")
    if not t.has_user(KIOSK_USER):
        t.run(["useradd", "--system", "--user-group", "--home-dir", str(KIOSK_STATE),
               "--no-create-home", "--shell", "/usr/sbin/nologin",
               "--comment", "Mot Cua kiosk screen", KIOSK_USER])
        t.changed(f"user {KIOSK_USER}")
    for group in KIOSK_GROUPS:
        if t.has_group(group) and KIOSK_USER not in t.group_members(group):
            t.run(["usermod", "--append", "--groups", group, KIOSK_USER])
            t.changed(f"{KIOSK_USER} in group {group}")


def step_dirs(t: Target) -> None:
    t.ensure_dir(OPT, 0o755)
    t.ensure_dir(RELEASES, 0o755)
    t.ensure_dir(ETC, 0o750, "root", SERVICE_USER)
    t.ensure_dir(TLS, 0o750, "root", SERVICE_USER)
    t.ensure_dir(SECRETS, 0o750, "root", SERVICE_USER)
    t.ensure_dir(STATE, 0o750, SERVICE_USER, SERVICE_USER)
    # models: written by root when provisioning, read-only for the service
    t.ensure_dir(MODELS, 0o755, "root", "root")
    t.ensure_dir(KIOSK_STATE, 0o700, KIOSK_USER, KIOSK_USER)
    t.ensure_dir(WHEEL_CACHE, 0o755)


def install_release(t: Target, rel: Release, wheelhouse: Path | None) -> Path:
    """Install ``rel`` into its own venv under /opt/motcua/releases; idempotent."""
    dest = RELEASES / rel.id
    marker = dest / "release.json"
    full = t.path(dest)
    if t.path(marker).is_file():
        log(f"release {rel.id} already installed")
        return dest
    if full.exists():
        log(f"removing the unfinished install {dest}")
        shutil.rmtree(full)
    cached = WHEEL_CACHE / rel.wheel.name
    t.ensure_file(cached, rel.wheel.read_bytes(), 0o644)
    log(f"installing release {rel.id} (a few minutes on a Pi)")
    # built in place (a venv's scripts name their own path); release.json, written last,
    # marks it complete, so an interrupted install is removed and redone next time
    t.run(["python3", "-m", "venv", str(dest)])
    pip = [str(dest / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check", "--no-cache-dir"]
    house = WHEEL_CACHE / "wheelhouse"
    if wheelhouse is not None:
        shutil.rmtree(t.path(house), ignore_errors=True)
        shutil.copytree(wheelhouse, t.path(house))
        pip += ["--no-index", "--find-links", str(house)]
    try:
        # hnswlib has no aarch64 wheel on PyPI; when pip compiles it here, build for any
        # arm64 core (its setup.py adds -march=native otherwise: a Pi 5 build stops a Pi 4)
        t.run([*pip, str(cached)], env={"HNSWLIB_NO_NATIVE": "1"})
    finally:
        shutil.rmtree(t.path(house), ignore_errors=True)
    record = {"id": rel.id, "version": rel.version, "wheel": rel.wheel.name,
              "wheel_sha256": rel.sha256}
    t.ensure_file(marker, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    t.changed(f"installed release {rel.id}")
    return dest


def switch_release(t: Target, dest: Path) -> str | None:
    """Make ``dest`` current (previous = the old current); return the old current."""
    rel = os.path.relpath(dest, CURRENT.parent)
    old = t.readlink(CURRENT)
    if old == rel:
        return old
    if old is not None:
        t.ensure_symlink(PREVIOUS, old)
    t.ensure_symlink(CURRENT, rel)
    return old


def prune_releases(t: Target) -> None:
    keep = {t.readlink(CURRENT), t.readlink(PREVIOUS)}
    keep = {Path(k).name for k in keep if k}
    rels = sorted((p for p in t.path(RELEASES).iterdir() if p.is_dir()
                   and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    extra = [p for p in rels if p.name not in keep]
    for p in extra[:-KEEP_RELEASES] if len(extra) > KEEP_RELEASES else []:
        shutil.rmtree(p)
        t.changed(f"removed old release {p.name}")


def step_model_pack(t: Target, plan: Plan) -> None:
    """Install the pack with the release's own `motcua models install` (which checks every
    file against the manifest this software ships), readable by the service."""
    record = _read_record(t)
    name = plan.pack_name
    pack_dir = MODELS / name
    if record.get("model_pack_sha256") == plan.pack_sha256 and t.path(pack_dir).is_dir():
        log(f"model pack {name} already installed")
        return
    cached = WHEEL_CACHE / f".{plan.pack.name}.installing"
    shutil.copyfile(plan.pack, t.path(cached))
    try:
        t.run([str(CURRENT / "bin" / "motcua"), "models", "install", str(cached),
               "--model-dir", str(MODELS), "--pack", name])
    finally:
        t.path(cached).unlink(missing_ok=True)
    # root installs it, the service only reads it
    for p in [t.path(pack_dir), *sorted(t.path(pack_dir).rglob("*"))]:
        os.chown(p, 0, 0, follow_symlinks=False)
        p.chmod(0o755 if p.is_dir() else 0o644)
    t.changed(f"installed model pack {name} (archive sha256 {plan.pack_sha256[:12]}...)")


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string is JSON-compatible


def config_sections(plan: Plan) -> dict[str, dict[str, object]]:
    """The configuration's sections, without the device certificate (see render_config)."""
    return {
        "terminal": {"id": plan.terminal_id, "district": plan.district_id,
                     "state_dir": str(STATE)},
        "models": {"dir": str(MODELS), "pack": plan.pack_name},
        # the [sync] keys of edge/config.py's SyncConfig
        "sync": {
            "broker": f"{plan.broker_host}:{plan.broker_port}",
            "tls": plan.tls,
            "ca_file": str(TLS / "broker-ca.crt") if plan.broker_ca else None,
            "username": plan.username,
            "password_file": str(SECRETS / "broker-password") if plan.password else None,
            "district_key_file": str(DISTRICT_KEY),
        },
        "ops": {"metrics_listen": "127.0.0.1:9464", "log_format": "json"},
    }


def render_config(sections: dict[str, dict[str, object]], has_cert: bool) -> bytes:
    """The terminal's /etc/motcua/terminal.toml (secrets are paths, never values). The
    device certificate is named only once installed: a terminal given a certificate path
    that does not exist yet would fail to start instead of waiting for install-cert."""
    sections = {k: dict(v) for k, v in sections.items()}
    if has_cert:
        sections["sync"]["cert_file"] = str(CERT)
        sections["sync"]["key_file"] = str(KEY)
    lines = ["# Written by motcua-device (provision, install-cert); re-provisioning",
             "# rewrites it. Secrets live in /etc/motcua/secrets and /etc/motcua/tls.", ""]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines).encode("utf-8")


KEY, CSR, CERT = TLS / "terminal.key", TLS / "terminal.csr", TLS / "terminal.crt"
#: a replacement key and its request, while a rotation waits for the district's signature
NEXT_KEY, NEXT_CSR = TLS / "terminal.key.next", TLS / "terminal.csr.next"


def make_key(t: Target, key: Path) -> None:
    """A new ECDSA P-256 private key at ``key``, readable by root and the service only."""
    # P-256: every broker's TLS 1.2 and 1.3 accepts it (an Ed25519 certificate needs 1.3)
    tmp = key.with_name(f".{key.name}.new")
    t.run(["sh", "-c", f"umask 077 && openssl genpkey -algorithm EC -pkeyopt "
           f"ec_paramgen_curve:P-256 -out {tmp}"])
    os.replace(t.path(tmp), t.path(key))
    t._ensure_meta(key, 0o640, "root", SERVICE_USER)
    t.changed(f"made the device key {key}")


def make_csr(t: Target, key: Path, csr: Path, terminal_id: str, district_id: str) -> None:
    """Write the request for ``key`` (subject O=district, CN=terminal) unless it is there."""
    subject = f"/O={district_id}/CN={terminal_id}"
    current = ""
    if t.path(csr).is_file():
        current = t.run(["openssl", "req", "-in", str(csr), "-noout", "-subject",
                         "-nameopt", "compat"], capture=True, check=False).stdout
    if current.strip() != f"subject={subject}":
        out = t.run(["openssl", "req", "-new", "-key", str(key), "-subj", subject,
                     "-sha256"], capture=True).stdout
        t.ensure_file(csr, out.encode(), 0o644)


def step_identity(t: Target, terminal_id: str, district_id: str) -> bool:
    """Make the device key and CSR once; True when a signed certificate is installed."""
    if not t.path(KEY).is_file():
        make_key(t, KEY)
    t._ensure_meta(KEY, 0o640, "root", SERVICE_USER)
    make_csr(t, KEY, CSR, terminal_id, district_id)
    return t.path(CERT).is_file()


def step_units(t: Target, start: bool) -> None:
    for unit in UNITS:
        t.ensure_file(UNIT_DIR / unit, (UNITS_SRC / unit).read_bytes(), 0o644)
    enabled_before = _wants_links(t)
    t.run(["systemctl", "enable", *UNITS], check=True, capture=True)
    if _wants_links(t) != enabled_before:
        t.changed("enabled " + " ".join(UNITS))
    if start:
        t.run(["systemctl", "daemon-reload"])
        t.run(["systemctl", "restart", *RESTART_UNITS])
        t.run(["systemctl", "start", "motcua-kiosk.service"])


def _wants_links(t: Target) -> set[str]:
    return {str(p.relative_to(t.path(UNIT_DIR))) for p in t.path(UNIT_DIR).rglob("motcua-*")
            if p.is_symlink()}


def _read_record(t: Target) -> dict[str, object]:
    try:
        return json.loads(t.path(RECORD).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def systemd_running(t: Target) -> bool:
    return t.is_host and Path("/run/systemd/system").is_dir()


def provision(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    t = Target(Path(args.root))
    log(f"provisioning terminal {plan.terminal_id} of {plan.district_id} on {t.root}")
    step_packages(t, args.skip_packages)
    step_users(t)
    step_dirs(t)
    rel_dir = install_release(t, plan.release, plan.wheelhouse)
    switch_release(t, rel_dir)
    t.ensure_symlink(MOTCUA_LINK, str(CURRENT / "bin" / "motcua"))
    t.ensure_file(TOOL, Path(__file__).read_bytes(), 0o755)
    step_model_pack(t, plan)
    # secrets: files readable by the service user only (root writes them)
    if plan.password is not None:
        t.ensure_file(SECRETS / "broker-password", plan.password, 0o640, "root", SERVICE_USER)
    if plan.broker_ca is not None:
        t.ensure_file(TLS / "broker-ca.crt", plan.broker_ca, 0o644)
    t.ensure_file(DISTRICT_KEY, plan.district_key_pem, 0o644)
    has_cert = False
    if plan.tls:
        has_cert = step_identity(t, plan.terminal_id, plan.district_id)
        if plan.client_cert is not None:
            install_certificate(t, plan.client_cert, restart=False)
            has_cert = True
    sections = config_sections(plan)
    t.ensure_file(CONFIG, render_config(sections, has_cert), 0o640, "root", SERVICE_USER)
    record = {"terminal_id": plan.terminal_id, "district_id": plan.district_id,
              "release": plan.release.id, "model_pack": plan.pack_name,
              "model_pack_sha256": plan.pack_sha256, "config": sections}
    t.ensure_file(RECORD, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    start = not args.no_start and systemd_running(t)
    if not args.no_start and not start:
        log("systemd is not running on the target: services enabled, not started")
    step_units(t, start)
    prune_releases(t)
    if plan.tls and not has_cert:
        log("the device needs its certificate: send this request to the district, then run")
        log(f"  motcua-device install-cert FILE   (request saved in {TLS / 'terminal.csr'})")
        print(t.path(TLS / "terminal.csr").read_text(), end="")
    log("done: " + (f"{len(t.changes)} changes" if t.changes else "nothing changed"))
    return 0


# --------------------------------------------------------------------------- certificates


def _pubkey_of(t: Target, argv: list[str], input_text: str | None = None) -> str:
    return t.run(argv, capture=True, input_text=input_text).stdout.strip()


def install_certificate(t: Target, cert_pem: bytes, restart: bool = True) -> None:
    """Install the district-signed certificate after checking it belongs to the device key
    (or to the rotation key ``terminal.key.next``, which then replaces the old key)."""
    text = cert_pem.decode("ascii", errors="replace")
    if not pem_blocks(text, "CERTIFICATE"):
        raise ProvisionError("the file holds no PEM certificate; nothing was changed")
    if not t.path(KEY).is_file():
        raise ProvisionError(f"no device key at {KEY}: run provisioning first")
    cert_pub = _pubkey_of(t, ["openssl", "x509", "-noout", "-pubkey"], text)
    rotating = False
    if cert_pub != _pubkey_of(t, ["openssl", "pkey", "-in", str(KEY), "-pubout"]):
        rotating = t.path(NEXT_KEY).is_file() and cert_pub == _pubkey_of(
            t, ["openssl", "pkey", "-in", str(NEXT_KEY), "-pubout"])
        if not rotating:
            raise ProvisionError("the certificate is not for this device's key (was it "
                                 "signed from another terminal's request?); nothing was "
                                 "changed")
    expired = t.run(["openssl", "x509", "-noout", "-checkend", "0"], input_text=text,
                    check=False, capture=True)
    if expired.returncode != 0:
        raise ProvisionError("the certificate has expired (or the clock is wrong: check "
                             "`timedatectl`); nothing was changed")
    if rotating:
        # the key first, then the certificate: a power cut in between leaves a pair that
        # doctor reports ("not issued for this device's key") and re-running this fixes
        staged = CERT.with_name(".terminal.crt.next")
        t.ensure_file(staged, cert_pem, 0o644)
        os.replace(t.path(NEXT_KEY), t.path(KEY))
        os.replace(t.path(staged), t.path(CERT))
        os.replace(t.path(NEXT_CSR), t.path(CSR))
        t.changed("rotated the device key and certificate")
    else:
        t.ensure_file(CERT, cert_pem, 0o644)
    sections = _read_record(t).get("config")
    if isinstance(sections, dict):  # name the certificate in the configuration now
        t.ensure_file(CONFIG, render_config(sections, True), 0o640, "root", SERVICE_USER)
    if restart and systemd_running(t):
        t.run(["systemctl", "restart", "motcua-terminal.service"])


def cmd_install_cert(args: argparse.Namespace) -> int:
    t = Target(Path(args.root))
    install_certificate(t, Path(args.certificate).read_bytes(), restart=not args.no_start)
    log(f"certificate installed in {CERT}")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    t = Target(Path(args.root))
    record = _read_record(t)
    if not record:
        raise ProvisionError("this device is not provisioned yet (no /etc/motcua/provisioned.json)")
    tid, did = str(record["terminal_id"]), str(record["district_id"])
    if args.new_key:
        # rotation: a new key beside the current one; the terminal keeps running on the
        # old pair until install-cert gets the district's certificate for the new key
        if not t.path(NEXT_KEY).is_file():
            make_key(t, NEXT_KEY)
        make_csr(t, NEXT_KEY, NEXT_CSR, tid, did)
        print(t.path(NEXT_CSR).read_text(), end="")
        return 0
    step_identity(t, tid, did)
    print(t.path(CSR).read_text(), end="")
    return 0


# --------------------------------------------------------------------------- updates


def wait_healthy(probe: Callable[[], bool], timeout: float, every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> bool:
    """Call ``probe`` until it returns True or ``timeout`` seconds passed."""
    end = clock() + timeout
    while True:
        if probe():
            return True
        if clock() >= end:
            return False
        sleep(min(every, max(0.0, end - clock())))


def default_probe(t: Target) -> Callable[[], bool]:
    """The unit is active (READY=1 was sent) and its gRPC health says SERVING."""

    def probe() -> bool:
        active = t.run(["systemctl", "is-active", "--quiet", "motcua-terminal.service"],
                       check=False, capture=True).returncode == 0
        if not active:
            return False
        return t.run([str(CURRENT / "bin" / "motcua"), "--config", str(CONFIG), "doctor",
                      "--only", "grpc"], check=False, capture=True).returncode == 0

    return probe


def restart_services(t: Target) -> None:
    t.run(["systemctl", "restart", *RESTART_UNITS])


def update(t: Target, rel: Release, wheelhouse: Path | None, *,
           restart: Callable[[], None], probe: Callable[[], bool],
           timeout: float = DEFAULT_HEALTH_TIMEOUT) -> bool:
    """Install ``rel`` beside the current release, switch, restart, and keep it only if
    healthy within ``timeout``; otherwise switch back and restart. True when kept."""
    dest = install_release(t, rel, wheelhouse)
    rel_link = os.path.relpath(dest, CURRENT.parent)
    old = t.readlink(CURRENT)
    if old == rel_link:
        log(f"release {rel.id} is already current")
        return True
    switch_release(t, dest)
    log(f"switched to {rel.id}; waiting up to {timeout:.0f} s for it to report healthy")
    restart()
    if wait_healthy(probe, timeout):
        log(f"release {rel.id} is healthy")
        prune_releases(t)
        return True
    log(f"release {rel.id} did not become healthy: rolling back to {old}")
    if old is None:
        raise ProvisionError("the new release is unhealthy and there is no previous one")
    t.ensure_symlink(CURRENT, old)
    t.ensure_symlink(PREVIOUS, rel_link)
    restart()
    return False


def cmd_update(args: argparse.Namespace) -> int:
    problems: list[str] = []
    wheel = _readable_file(args.release, "release", problems)
    if problems:
        raise ProvisionError("; ".join(problems))
    assert wheel is not None
    rel = check_wheel(wheel)
    t = Target(Path(args.root))
    if t.readlink(CURRENT) is None:
        raise ProvisionError("no current release: provision the device first")
    if args.no_start:
        def restart() -> None:
            log("--no-start: not restarting services")
        probe: Callable[[], bool] = lambda: True  # noqa: E731
    else:
        def restart() -> None:
            restart_services(t)
        probe = default_probe(t)
    kept = update(t, rel, args.wheelhouse, restart=restart, probe=probe, timeout=args.timeout)
    return 0 if kept else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    t = Target(Path(args.root))
    prev, cur = t.readlink(PREVIOUS), t.readlink(CURRENT)
    if prev is None or not t.path(OPT / prev).is_dir():
        raise ProvisionError("there is no previous release to go back to")
    t.ensure_symlink(CURRENT, prev)
    if cur:
        t.ensure_symlink(PREVIOUS, cur)
    if not args.no_start and systemd_running(t):
        restart_services(t)
    log(f"current release is now {Path(prev).name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    t = Target(Path(args.root))
    cur, prev = t.readlink(CURRENT), t.readlink(PREVIOUS)
    rels = t.path(RELEASES)
    for p in sorted(rels.iterdir()) if rels.is_dir() else []:
        if p.name.startswith("."):
            continue
        mark = "current" if cur and Path(cur).name == p.name else (
            "previous" if prev and Path(prev).name == p.name else "")
        print(f"{p.name:40s} {mark}")
    cert = t.path(CERT)
    if cert.is_file():
        end = t.run(["openssl", "x509", "-noout", "-enddate", "-in", str(CERT)],
                    capture=True, check=False).stdout.strip()
        print(f"certificate: {end}")
    return 0


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motcua-device", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="/", help="system root to work on (default /)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = sub.add_parser("provision", help="install and enable a terminal (idempotent)")
    pr.add_argument("--terminal-id", help="this terminal's id, e.g. q1-hall-01")
    pr.add_argument("--district-id", help="the district's id, e.g. hcm-q1")
    pr.add_argument("--broker", help="host:port or mqtts://host:port of the district broker")
    pr.add_argument("--username", help="broker user name (with --password-file)")
    pr.add_argument("--password-file", type=Path, help="file holding the broker password")
    pr.add_argument("--broker-ca", type=Path, help="CA certificate of the broker (TLS)")
    pr.add_argument("--client-cert", type=Path,
                    help="district-signed certificate for this device's key, if already signed")
    pr.add_argument("--district-key", type=Path, help="district's Ed25519 public signing key")
    pr.add_argument("--model-pack", type=Path, help="model pack archive exported by the district")
    pr.add_argument("--model-pack-sha256", help="its sha256 (default: ARCHIVE.sha256 beside it)")
    pr.add_argument("--release", type=Path, help="motcua wheel to install")
    pr.add_argument("--wheelhouse", type=Path,
                    help="install dependencies only from this folder of wheels (no index)")
    pr.add_argument("--skip-packages", action="store_true",
                    help="do not install Debian packages (tests, images without network)")
    pr.add_argument("--no-start", action="store_true",
                    help="enable the services but do not start them (tests, image building)")
    pr.set_defaults(func=provision)

    cs = sub.add_parser("csr", help="print the device's certificate request")
    cs.add_argument("--new-key", action="store_true",
                    help="rotate: make a new key and print its request (the old key stays "
                         "in use until install-cert)")
    cs.set_defaults(func=cmd_csr)

    ic = sub.add_parser("install-cert", help="install the district-signed certificate")
    ic.add_argument("certificate", help="PEM file the district sent back")
    ic.add_argument("--no-start", action="store_true", help="do not restart the terminal")
    ic.set_defaults(func=cmd_install_cert)

    up = sub.add_parser("update", help="install a release; roll back if it is not healthy")
    up.add_argument("release", type=Path, help="motcua wheel")
    up.add_argument("--wheelhouse", type=Path, help="dependencies from this folder only")
    up.add_argument("--timeout", type=float, default=DEFAULT_HEALTH_TIMEOUT,
                    help=f"seconds to wait for health (default {DEFAULT_HEALTH_TIMEOUT:.0f})")
    up.add_argument("--no-start", action="store_true", help="switch without restarting")
    up.set_defaults(func=cmd_update)

    rb = sub.add_parser("rollback", help="switch back to the previous release")
    rb.add_argument("--no-start", action="store_true", help="do not restart services")
    rb.set_defaults(func=cmd_rollback)

    st = sub.add_parser("status", help="installed releases and the certificate's end date")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None,
         parser: Callable[[], argparse.ArgumentParser] | None = None) -> int:
    """Run the command line; ``parser`` builds another command set (deploy/jetson's)."""
    args = (parser or build_parser)().parse_args(argv)
    try:
        return int(args.func(args))
    except ProvisionError as exc:
        print(f"motcua-device: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("motcua-device: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

