"""Carry a built pack to a terminal: export it as one tar, install a tar with hashes checked.

The archive is a plain (uncompressed: ONNX weights barely compress) tar holding
``<name>/manifest.toml`` and ``<name>/<file>`` for every file of the pack, with fixed
owners and times so the same pack always gives the same bytes.

Installing trusts only the manifests shipped with this software: the archive's pack must
be one this software knows, its manifest must list exactly the files and hashes of the
shipped one, and every file is hashed while it is unpacked into a staging directory. Only
when all of that holds does the staging directory replace ``<model_dir>/<name>`` (renames);
anything else (unknown or wrong pack, extra, missing or tampered files, links, devices,
sparse files, absolute or ``..`` paths, too many or too large members, a compression
ratio no honest pack has) is refused with nothing installed. The size bounds are checked
on each header as it is read, before that member's data is decompressed or written.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from core.errors import ModelError
from models.build import clean_leftovers, pack_lock, swap_in
from models.pack import (
    _CHUNK,
    MANIFEST_NAME,
    ModelPack,
    load_manifest,
    load_pack,
    parse_manifest,
)

#: a manifest is a few kB; refuse absurd ones before reading them into memory
_MAX_MANIFEST = 1 << 20
#: the largest single file a pack may hold: the biggest today is facenet.onnx (~90 MB);
#: 512 MiB leaves room for a larger embedder (an ArcFace R100 is ~250 MB) and still
#: fits the terminal's 16-32 GB card many times over
MAX_MEMBER_BYTES = 512 << 20
#: all files of a pack together (detector + embedder + manifest), same reasoning
MAX_TOTAL_BYTES = 1 << 30
#: unpacked bytes per archive byte: exports are plain tars (ratio ~1) and ONNX weights
#: barely compress (gzip: ~1.1-1.3); 10 is generous for any honest archive, while a
#: bomb (zeros: ~1000 with gzip) is refused from its headers before anything is written
MAX_RATIO = 10
#: members in one archive: a pack has ~5 files; bounds the header list in memory
MAX_MEMBERS = 64


def export_pack(model_dir: Path, name: str, out: Path) -> ModelPack:
    """Verify pack ``name`` and write it with its manifest to the tar ``out`` (atomically)."""
    pack = load_pack(model_dir, name)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            _add(tf, f"{name}/{MANIFEST_NAME}", io.BytesIO(pack.manifest.text.encode()),
                 len(pack.manifest.text.encode()))
            for fname in sorted(pack.files):
                path = pack.files[fname]
                with open(path, "rb") as fh:
                    _add(tf, f"{name}/{fname}", fh, path.stat().st_size)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return pack


def _add(tf: tarfile.TarFile, arcname: str, fh: io.BufferedIOBase | io.BytesIO,
         size: int) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, fh)


def _refuse(archive: Path, why: str) -> ModelError:
    why = " ".join(why.split())  # library messages may span lines; ours are one line
    return ModelError(f"refusing {archive.name}: {why}; nothing was installed")


def install_pack(archive: Path, model_dir: Path, expect: str | None = None) -> ModelPack:
    """Install a pack archive into ``model_dir`` after checking every member and hash.

    ``expect`` names the pack the caller wants; an archive of another pack is refused.
    """
    archive = Path(archive)
    model_dir = Path(model_dir).expanduser().resolve()
    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by `with tf:` below
    except FileNotFoundError:
        raise ModelError(f"pack archive not found: {archive}") from None
    except (OSError, tarfile.TarError):
        raise _refuse(archive, "not a readable tar archive") from None
    with tf:
        members = _read_headers(archive, tf)
        name, by_file = _check_members(archive, members)
        if expect is not None and name != expect:
            raise _refuse(archive, f"it holds pack {name!r}, not {expect!r}")
        try:
            shipped = load_manifest(name)
        except ModelError as exc:
            raise _refuse(archive, str(exc)) from None
        man_info = by_file.pop(MANIFEST_NAME, None)
        if man_info is None:
            raise _refuse(archive, f"no {name}/{MANIFEST_NAME}")
        if man_info.size > _MAX_MANIFEST:
            raise _refuse(archive, "its manifest is too large")
        try:
            text = _read(tf, man_info).decode("utf-8")
            theirs = parse_manifest(text, f"{archive.name}:{name}/{MANIFEST_NAME}")
        except (UnicodeDecodeError, ModelError) as exc:
            raise _refuse(archive, f"bad manifest ({exc})") from None
        if theirs.name != name:
            raise _refuse(archive, f"its manifest names pack {theirs.name!r}, not {name!r}")
        want = {f.name: f.sha256 for f in shipped.files.values()}
        if {f.name: f.sha256 for f in theirs.files.values()} != want:
            raise _refuse(archive, f"its manifest lists other files or hashes than the "
                                   f"{name!r} pack this software knows")
        if set(by_file) != set(want):
            extra = sorted(set(by_file) - set(want))
            missing = sorted(set(want) - set(by_file))
            raise _refuse(archive, f"extra files {extra}" if extra else f"missing {missing}")
        with pack_lock(model_dir, name):
            clean_leftovers(model_dir, name)
            staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{name}.install-"))
            try:
                for fname in sorted(by_file):
                    digest = _extract_hashing(tf, by_file[fname], staging / fname)
                    if digest != want[fname]:
                        raise _refuse(archive, f"{fname} fails its sha256 check "
                                               f"(got {digest[:16]}…, expected "
                                               f"{want[fname][:16]}…)")
                (staging / MANIFEST_NAME).write_text(shipped.text, encoding="utf-8")
                swap_in(staging, model_dir / name)
            except (OSError, tarfile.TarError, EOFError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise _refuse(archive, f"cannot unpack ({exc})") from None
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return load_pack(model_dir, name)


def _read_headers(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members' headers, refusing as soon as their count, one member's size, the
    total size or the total/archive ratio is over its bound: a header is read before
    its data, so a bomb is refused without decompressing or writing its payload."""
    try:
        packed = max(archive.stat().st_size, 1)
    except OSError as exc:
        raise _refuse(archive, f"cannot read it ({exc.strerror})") from None
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        while (m := tf.next()) is not None:
            members.append(m)
            if len(members) > MAX_MEMBERS:
                raise _refuse(archive, f"more than {MAX_MEMBERS} members")
            if m.issparse():
                raise _refuse(archive, f"member {m.name!r} is a sparse file")
            if m.size > MAX_MEMBER_BYTES:
                raise _refuse(archive, f"member {m.name!r} is {m.size:,} bytes, over the "
                                       f"{MAX_MEMBER_BYTES:,}-byte limit")
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise _refuse(archive, f"its members add up to more than "
                                       f"{MAX_TOTAL_BYTES:,} bytes")
            if total > MAX_RATIO * packed:
                raise _refuse(archive, f"its members unpack to over {MAX_RATIO}x its "
                                       f"{packed:,} bytes (a compression bomb?)")
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _refuse(archive, f"damaged tar archive ({exc})") from None
    return members


def _check_members(archive: Path, members: list[tarfile.TarInfo]
                   ) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """Every member must be a regular file ``<pack>/<plain name>`` of one pack, once."""
    names: set[str] = set()
    by_file: dict[str, tarfile.TarInfo] = {}
    for m in members:
        path = PurePosixPath(m.name)
        if m.isdir() and len(path.parts) == 1 and ".." not in path.parts:
            continue  # a top-level directory entry is harmless
        if not m.isreg():
            raise _refuse(archive, f"member {m.name!r} is not a regular file")
        if path.is_absolute() or ".." in path.parts or len(path.parts) != 2 or \
                "\\" in m.name or path.parts[1].startswith("."):
            raise _refuse(archive, f"member {m.name!r} is not <pack>/<file>")
        names.add(path.parts[0])
        if len(names) != 1:
            raise _refuse(archive, "it must hold exactly one pack directory")
        if path.parts[1] in by_file:
            raise _refuse(archive, f"member {m.name!r} appears twice")
        by_file[path.parts[1]] = m
    if len(names) != 1:
        raise _refuse(archive, "it holds no pack")
    return names.pop(), by_file


def _read(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(info)
    if fh is None:
        raise tarfile.TarError(f"{info.name}: no data")
    return fh.read()


def _extract_hashing(tf: tarfile.TarFile, info: tarfile.TarInfo, dest: Path) -> str:
    fh = tf.extractfile(info)
    if fh is None:
        raise tarfile.TarError(f"{info.name}: no data")
    h = hashlib.sha256()
    written = 0
    with open(dest, "wb") as out:
        while chunk := fh.read(_CHUNK):
            written += len(chunk)
            if written > info.size:  # the header was checked; its data may not exceed it
                raise tarfile.TarError(f"{info.name}: more data than its header says")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()
