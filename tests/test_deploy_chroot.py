"""Provisioning in a real Debian bookworm root made by debootstrap (slow; CI runs it).

The root is made once with ``debootstrap --variant=minbase`` (plus python3, venv,
systemd, openssl: what Raspberry Pi OS Lite has) and cached as a tarball under
``~/.cache/motcua/debootstrap`` (``$MOTCUA_DEBOOTSTRAP_CACHE``); a cold run downloads
~40 MB from deb.debian.org and takes about a minute here. Provisioning runs from the
host with ``--root`` (commands run in the root through ``chroot``), installing the
project and its dependencies from a wheelhouse built from this checkout, with
``--skip-packages --no-start`` (no network for apt, no running systemd in a chroot).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib  # novermin (guarded)
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from edge.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "deploy" / "raspberrypi" / "motcua_device.py"
PROVISION = REPO / "deploy" / "raspberrypi" / "provision.sh"
SUITE = "bookworm"
MIRROR = os.environ.get("MOTCUA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
INCLUDE = "python3,python3-venv,systemd,openssl"
CACHE = Path(os.environ.get("MOTCUA_DEBOOTSTRAP_CACHE",
                            Path.home() / ".cache" / "motcua" / "debootstrap"))

pytestmark = pytest.mark.slow


def log(msg: str) -> None:
    print(f"[chroot test] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def bookworm_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tarball of a minimal bookworm root; made by debootstrap on first use, then cached."""
    key = hashlib.sha256(f"{SUITE} minbase {INCLUDE} {MIRROR}".encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-minbase-{key}.tar"
    if tarball.is_file():
        log(f"using cached root {tarball}")
        return tarball
    assert shutil.which("debootstrap"), "debootstrap is missing (scripts/debian-packages.txt)"
    assert os.geteuid() == 0, "debootstrap and chroot need root (CI runs as root)"
    root = tmp_path_factory.mktemp("debootstrap") / "root"
    start = time.monotonic()
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE,
                           str(root), MIRROR], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log(f"debootstrap took {time.monotonic() - start:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_suffix(".tar.partial")
    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tmp), "."],
                   check=True)
    tmp.rename(tarball)
    shutil.rmtree(root)
    return tarball


@pytest.fixture(scope="session")
def pack_dir() -> Path:
    """The built default model pack (scripts/install.sh builds it); absence fails."""
    from edge.config import DEFAULT_MODEL_DIR, DEFAULT_PACK

    path = DEFAULT_MODEL_DIR / DEFAULT_PACK
    if not path.is_dir():
        pytest.fail(f"model pack not built at {path} (run `motcua models build`)")
    return path


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(dest)],
                   check=True)
    return dest


def build_wheel(tmp: Path, out: Path, version: str | None = None) -> Path:
    """The project's wheel from a copy of this checkout (optionally another version)."""
    src = tmp / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    if version is not None:
        text = (src / "pyproject.toml").read_text()
        (src / "pyproject.toml").write_text(text.replace('version = "0.1.0"',
                                                         f'version = "{version}"', 1))
    for pkg in ("core", "faces", "sync", "edge", "district", "motcua", "proto", "models"):
        shutil.copytree(REPO / pkg, src / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet",
                    "--disable-pip-version-check", "--no-deps", "-w", str(out), str(src)],
                   check=True, capture_output=True)
    (wheel,) = out.glob(f"motcua-{version or ''}*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel plus its dependencies (what the district hands technicians)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    wheel = build_wheel(tmp_path_factory.mktemp("build"), house)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet",
                    "--disable-pip-version-check", "-w", str(house), str(wheel)],
                   check=True, capture_output=True)
    return house


def manifest(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, sha256 or link target) for every path of the root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                what = "-> " + os.readlink(p)
            elif p.is_file():
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)][:20]


def make_inputs(d: Path, pack_dir: Path) -> dict[str, Path]:
    """District-side material: signing key, broker CA, password, model pack."""
    files = {}
    district = ed25519.Ed25519PrivateKey.generate()
    files["district_key"] = d / "district.pub"
    files["district_key"].write_bytes(district.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcm-q1 terminals CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files["ca"] = d / "ca.crt"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["ca_key"] = d / "ca.key"
    files["ca_key"].write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    files["pw"] = d / "broker-password"
    files["pw"].write_text("s3cret-for-q1-hall-01\n")
    files["pack"] = make_pack(d, pack_dir)
    return files


def make_pack(d: Path, pack_dir: Path) -> Path:
    """The real default pack exported as the district does, with its sha256 beside it."""
    from models.archive import export_pack

    archive = d / f"{pack_dir.name}.tar"
    export_pack(pack_dir.parent, pack_dir.name, archive)
    (d / f"{archive.name}.sha256").write_text(
        f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    return archive


def sign_csr(csr_pem: bytes, files: dict[str, Path], days: int = 365) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem)
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    ca_key = serialization.load_pem_private_key(files["ca_key"].read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def ids(root: Path, db: str) -> dict[str, list[str]]:
    return {ln.split(":")[0]: ln.split(":") for ln in (root / "etc" / db).read_text()
            .splitlines()}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_provisioned_terminal(root: Path, media_dir: Path) -> None:
    """Start the provisioned terminal inside the root the way its unit does: as user
    motcua, with the provisioned config and a NOTIFY_SOCKET; it must send READY=1 and
    answer doctor's gRPC health check. (The camera is the sample clip copied in.)"""
    import socket

    port = free_port()
    conf = root / "etc/motcua/terminal.toml"
    conf.write_text(conf.read_text() + f'\n[api]\nlisten = "127.0.0.1:{port}"\n\n'
                    '[camera]\nsource = "/var/lib/motcua/clip.mp4"\nloop = true\n')
    shutil.copy(media_dir / "video" / "hamilton_clip.mp4", root / "var/lib/motcua/clip.mp4")
    (root / "run").mkdir(exist_ok=True)
    sock_path = root / "run/motcua-notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    os.chmod(sock_path, 0o777)  # the service user sends to it, as to systemd's socket
    sock.settimeout(0.5)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": "/run/motcua-notify.sock",
           "WATCHDOG_USEC": "30000000", "MOTCUA_MODEL_DIR": "/var/lib/motcua/models",
           "HOME": "/var/lib/motcua"}
    proc = subprocess.Popen(["chroot", "--userspec=motcua:motcua", "--groups=video",
                             str(root), "/opt/motcua/current/bin/motcua", "--config",
                             "/etc/motcua/terminal.toml", "terminal", "run", "--no-sync"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        got: list[str] = []
        end = time.monotonic() + 120
        while time.monotonic() < end and proc.poll() is None:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            if any(m.startswith("READY=1") for m in got):
                break
        assert any(m.startswith("READY=1") for m in got), (got, proc.poll())
        doc = subprocess.run(["chroot", str(root), "/usr/local/bin/motcua", "--config",
                              "/etc/motcua/terminal.toml", "doctor", "--only", "grpc",
                              "--only", "store", "--only", "camera"],
                             capture_output=True, text=True, check=False)
        assert doc.returncode == 0, doc.stdout + doc.stderr[-2000:]
        assert "SERVING" in doc.stdout and "change number 0" in doc.stdout, doc.stdout
        # the store was created by the service user inside its state dir
        store_db = root / "var/lib/motcua/store/gallery.db"
        assert store_db.stat().st_uid == int(ids(root, "passwd")["motcua"][2])
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0


@pytest.fixture
def root(bookworm_tarball: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh copy of the bookworm root; removed afterwards (about 1 GB once provisioned)."""
    path = unpack(bookworm_tarball, tmp_path / "root")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_provision_bookworm_root(root, wheelhouse, pack_dir, media_dir, tmp_path) -> None:
    files = make_inputs(tmp_path, pack_dir)
    (wheel,) = wheelhouse.glob("motcua-*.whl")
    args = ["--terminal-id", "q1-hall-01", "--district-id", "hcm-q1",
            "--broker", "mqtts://broker.hcm-q1.example:8883",
            "--broker-ca", str(files["ca"]), "--username", "q1-hall-01",
            "--password-file", str(files["pw"]), "--district-key", str(files["district_key"]),
            "--model-pack", str(files["pack"]), "--release", str(wheel),
            "--wheelhouse", str(wheelhouse), "--skip-packages", "--no-start"]

    # ---- bad arguments first, on the pristine root: nothing changes
    pristine = manifest(root)
    for bad in (["--terminal-id", "Hall 01"], ["--model-pack-sha256", "ab" * 32],
                ["--district-key", str(files["pw"])], ["--broker", "ftp://x:1"]):
        proc = subprocess.run([str(PROVISION), "--root", str(root), *args, *bad],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and "nothing was changed" in proc.stderr, proc.stderr
    assert diff(pristine, manifest(root)) == []

    # ---- first run
    start = time.monotonic()
    proc = subprocess.run([str(PROVISION), "--root", str(root), *args], capture_output=True,
                          text=True, check=False)
    log(f"first provisioning run took {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "-----BEGIN CERTIFICATE REQUEST-----" in proc.stdout   # printed for the district

    passwd, group = ids(root, "passwd"), ids(root, "group")
    uid, gid = int(passwd["motcua"][2]), int(group["motcua"][2])
    assert passwd["motcua"][6] == "/usr/sbin/nologin"
    assert "motcua" in group["video"][3].split(",")                # the camera ...
    member_of = [g for g, e in group.items() if "motcua" in e[3].split(",")]
    assert member_of == ["video"]                                 # ... and nothing else
    assert "motcua-kiosk" in passwd

    def meta(p: str) -> tuple[int, int, int]:
        st = (root / p.lstrip("/")).lstat()
        return st.st_mode & 0o7777, st.st_uid, st.st_gid

    assert meta("/etc/motcua") == (0o750, 0, gid)
    assert meta("/etc/motcua/terminal.toml") == (0o640, 0, gid)
    assert meta("/etc/motcua/secrets/broker-password") == (0o640, 0, gid)
    assert meta("/etc/motcua/tls/terminal.key") == (0o640, 0, gid)
    assert meta("/var/lib/motcua") == (0o750, uid, gid)
    assert (root / "etc/motcua/secrets/broker-password").read_text() == "s3cret-for-q1-hall-01\n"
    conf_text = (root / "etc/motcua/terminal.toml").read_text()
    assert "s3cret" not in conf_text                              # secrets only by path
    conf = tomllib.loads(conf_text)
    assert conf["terminal"] == {"id": "q1-hall-01", "district": "hcm-q1",
                                "state_dir": "/var/lib/motcua"}
    cfg = config_from_dict(conf)                                   # valid for edge.config
    # TLS, but no certificate named until the district signed one (the terminal would not
    # start with a path to a missing certificate)
    assert cfg.sync.tls and cfg.sync.cert_file is None and cfg.sync.key_file is None
    assert conf["sync"]["broker"] == "broker.hcm-q1.example:8883"

    # releases: versioned venv + current link; the project runs inside the root
    current = os.readlink(root / "opt/motcua/current")
    assert current.startswith("releases/0.") and (root / "opt/motcua" / current).is_dir()
    out = subprocess.run(["chroot", str(root), "/usr/local/bin/motcua", "--version"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("motcua "), out.stderr[-2000:]
    # the model pack was verified and installed, readable (not writable) by the service
    installed = f"/var/lib/motcua/models/{pack_dir.name}"
    assert conf["models"] == {"dir": "/var/lib/motcua/models", "pack": pack_dir.name}
    assert meta(installed) == (0o755, 0, 0)
    for f in pack_dir.iterdir():
        assert meta(f"{installed}/{f.name}") == (0o644, 0, 0)
        if f.suffix == ".onnx":  # manifest.toml is rewritten from the one the release ships
            assert (root / installed.lstrip("/") / f.name).read_bytes() == f.read_bytes()
    assert not list((root / "var/cache/motcua").glob("*.tar*"))   # no 100 MB left behind
    # doctor, run inside the root against the provisioned config
    out = subprocess.run(["chroot", str(root), "/usr/local/bin/motcua", "--config",
                          "/etc/motcua/terminal.toml", "doctor", "--only", "models",
                          "--only", "disk"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "OK    models" in out.stdout and "OK    disk" in out.stdout

    # units installed and enabled (the wants symlinks systemctl made in the root)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("motcua-terminal.service", "motcua-display.service", "motcua-kiosk.service"):
        assert (root / "etc/systemd/system" / unit).is_file()
        assert os.readlink(wants / unit) == f"/etc/systemd/system/{unit}"

    # ---- device identity: sign the CSR, install it with one command
    csr = (root / "etc/motcua/tls/terminal.csr").read_bytes()
    subject = x509.load_pem_x509_csr(csr).subject.rfc4514_string()
    assert subject == "CN=q1-hall-01,O=hcm-q1"
    foreign = sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])).sign(
        ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM), files)
    (tmp_path / "foreign.crt").write_bytes(foreign)
    before = manifest(root)
    bad = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "install-cert",
                          str(tmp_path / "foreign.crt"), "--no-start"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "not for this device's key" in bad.stderr, bad.stderr
    assert diff(before, manifest(root)) == []
    (tmp_path / "signed.crt").write_bytes(sign_csr(csr, files))
    good = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "install-cert",
                           str(tmp_path / "signed.crt"), "--no-start"],
                          capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert (root / "etc/motcua/tls/terminal.crt").read_bytes() == (
        tmp_path / "signed.crt").read_bytes()
    cfg = config_from_dict(tomllib.loads((root / "etc/motcua/terminal.toml").read_text()))
    assert cfg.sync.cert_file == Path("/etc/motcua/tls/terminal.crt")
    assert cfg.sync.key_file == Path("/etc/motcua/tls/terminal.key")

    # ---- rotation: a new key and request while the old pair stays in use
    old_key = (root / "etc/motcua/tls/terminal.key").read_bytes()
    rot = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "csr", "--new-key"],
                         capture_output=True, text=True, check=False)
    assert rot.returncode == 0, rot.stderr
    assert (root / "etc/motcua/tls/terminal.key").read_bytes() == old_key
    assert meta("/etc/motcua/tls/terminal.key.next") == (0o640, 0, gid)
    new_csr = rot.stdout[rot.stdout.index("-----BEGIN"):].encode()
    (tmp_path / "rotated.crt").write_bytes(sign_csr(new_csr, files))
    done = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "install-cert",
                           str(tmp_path / "rotated.crt"), "--no-start"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/motcua/tls/terminal.key").read_bytes() != old_key
    assert not (root / "etc/motcua/tls/terminal.key.next").exists()
    assert meta("/etc/motcua/tls/terminal.key") == (0o640, 0, gid)
    new_cert = x509.load_pem_x509_certificate((root / "etc/motcua/tls/terminal.crt").read_bytes())
    new_key = serialization.load_pem_private_key(
        (root / "etc/motcua/tls/terminal.key").read_bytes(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert new_cert.public_key().public_bytes(*spki) == new_key.public_key().public_bytes(*spki)

    # ---- second run: nothing changes (paths, modes, owners, contents)
    first = manifest(root)
    proc = subprocess.run([str(PROVISION), "--root", str(root), *args], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing changed" in proc.stdout
    assert diff(first, manifest(root)) == []

    # ---- an update installs beside the current release and switches; rollback returns
    newer = build_wheel(tmp_path / "b2", tmp_path / "dist2", version="0.1.1")
    up = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "update", str(newer),
                         "--wheelhouse", str(wheelhouse), "--no-start"],
                        capture_output=True, text=True, check=False)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    now = os.readlink(root / "opt/motcua/current")
    assert now.startswith("releases/0.1.1-") and os.readlink(root / "opt/motcua/previous") \
        == current
    out = subprocess.run(["chroot", str(root), "/usr/local/bin/motcua", "--version"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and (root / "opt/motcua" / current / "bin/motcua").is_file()
    back = subprocess.run([sys.executable, str(TOOL), "--root", str(root), "rollback",
                           "--no-start"], capture_output=True, text=True, check=False)
    assert back.returncode == 0, back.stderr
    assert os.readlink(root / "opt/motcua/current") == current

    # ---- the provisioned terminal starts as its service user and reports ready
    run_provisioned_terminal(root, media_dir)
