"""The mtcnn-facenet-dlib pack: FaceNet fused with centred dlib as one 640-d embedding.

Real parts: the pack built by ``motcua models build --pack mtcnn-facenet-dlib``
(scripts/install.sh does) in $MOTCUA_MODEL_DIR, the cached registry sdist, the sample
photos of ../shared/media, the real gallery store, sync engine and district log.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from core.errors import DistrictError, EmbedderMismatchError, ModelError
from district.enrol import Record, enrol, pipeline_embedder
from district.log import DistrictLog
from edge.config import DEFAULT_MODEL_DIR, Config
from edge.store.gallery import GalleryStore
from edge.syncclient.engine import SyncEngine
from faces import facenet_dlib
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline, build_pipeline
from models import build
from models.pack import ModelPack, data_file, load_manifest, load_pack, sha256_file
from proto import sync_pb2 as pb
from tests.sync_helpers import add_citizens, craft_batch, log_changes, new_key

REPO = Path(__file__).resolve().parents[1]
PACK = "mtcnn-facenet-dlib"
FACENET_PACK = "mtcnn-facenet"
DISTRICT = "d-fused"


def _load(name: str) -> ModelPack:
    try:
        return load_pack(DEFAULT_MODEL_DIR, name)
    except ModelError as exc:
        pytest.fail(f"{exc} -- build it first: motcua models build --pack {name} "
                    "(scripts/install.sh does)")


def _config(pack: str) -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, pack=pack))


@pytest.fixture(scope="module")
def fused() -> FacePipeline:
    return build_pipeline(_load(PACK), _config(PACK))


@pytest.fixture(scope="module")
def facenet() -> FacePipeline:
    return build_pipeline(_load(FACENET_PACK), _config(FACENET_PACK))


def _photos(media_dir: Path) -> list[Path]:
    return sorted(p for d in sorted((media_dir / "faces").iterdir()) for p in d.iterdir())


def _main_face(pipe: FacePipeline, path: Path) -> np.ndarray:
    faces = pipe.analyse(read_image(path))
    assert len(faces), path
    return faces.embeddings[faces.detections.largest()]


# --------------------------------------------------------------------------- the pack


def test_manifest_pins_the_fifth_file_the_centre_and_the_weight() -> None:
    m = load_manifest(PACK)
    assert set(m.files) == {"pnet.onnx", "rnet.onnx", "onet.onnx", "facenet.onnx",
                            "dlib_resnet_v1.onnx"}
    d = m.files["dlib_resnet_v1.onnx"]
    assert d.build == "dlib2onnx" and d.source == "face-recognition-models"
    assert d.sha256.startswith("a951ade7") and d.member_sha256.startswith("55533b28")
    src = m.sources["face-recognition-models"]
    assert (src.registry, src.version, src.licence) == ("pypi", "0.3.0", "CC0-1.0")
    assert src.sha256.startswith("b79bd200")
    # the four files it shares with the FaceNet pack are the same bytes
    other = load_manifest(FACENET_PACK)
    for name in other.files:
        assert m.files[name].sha256 == other.files[name].sha256
    e = m.embedder
    assert e["kind"] == "facenet_dlib" and e["dim"] == 640 and e["fusion_weight"] == 0.5
    assert e["id"] != other.embedder["id"]
    centre = data_file(e["centre"], e["centre_sha256"])
    vec = facenet_dlib.read_centre(centre, 128)
    # dlib's unit descriptors lie in a narrow cone: their mean is long (measured 0.91)
    assert 0.85 < float(np.linalg.norm(vec)) < 0.95


def test_altered_centre_file_or_bad_content_is_refused(tmp_path: Path) -> None:
    e = load_manifest(PACK).embedder
    with pytest.raises(ModelError, match="fails its sha256 check"):
        data_file(e["centre"], "0" * 64)
    with pytest.raises(ModelError, match="not a plain data file name"):
        data_file("../pyproject.toml", e["centre_sha256"])
    short = tmp_path / "c.txt"
    short.write_text(facenet_dlib.format_centre(np.ones(127, np.float32), "test"))
    with pytest.raises(ModelError, match="expected 128 finite floats, got 127"):
        facenet_dlib.read_centre(short, 128)
    nan = tmp_path / "n.txt"
    nan.write_text(facenet_dlib.format_centre(np.full(128, np.nan, np.float32), "test"))
    with pytest.raises(ModelError, match="finite"):
        facenet_dlib.read_centre(nan, 128)


def test_format_centre_round_trips_exactly() -> None:
    e = load_manifest(PACK).embedder
    path = data_file(e["centre"], e["centre_sha256"])
    vec = facenet_dlib.read_centre(path, 128)
    text = path.read_text()
    source = text.splitlines()[1].split(": ", 1)[1]
    assert facenet_dlib.format_centre(vec, source) == text


def test_build_takes_shared_files_from_the_other_pack_and_converts_dlib(
        tmp_path: Path) -> None:
    """The build (as `motcua models build --pack mtcnn-facenet-dlib`): the FaceNet pack's
    four files are copied (sha256 checked), dlib's file converted from the cached sdist;
    a second build only checks hashes; a damaged file is named, then rebuilt alone."""
    shutil.copytree(_load(FACENET_PACK).dir, tmp_path / FACENET_PACK)
    lines: list[str] = []
    made = build.build_pack(PACK, tmp_path, build.default_cache_dir(), lines.append)
    assert sorted(made) == ["dlib_resnet_v1.onnx", "facenet.onnx", "onet.onnx", "pnet.onnx",
                            "rnet.onnx"]
    text = "\n".join(lines)
    assert "facenet.onnx: copied from pack mtcnn-facenet, sha256 ok" in text
    assert "face_recognition_models-0.3.0.tar.gz" in text and "sha256 ok" in text
    assert "dlib_resnet_v1.onnx: onnxruntime batch of 4 equals 4 single runs" in text
    assert "dlib_resnet_v1.onnx: sha256 ok" in text
    pack = load_pack(tmp_path, PACK)
    assert pack.embedder.params["second_file"] == pack.files["dlib_resnet_v1.onnx"]
    assert build.build_pack(PACK, tmp_path, build.default_cache_dir(), lines.append) == []
    target = pack.dir / "dlib_resnet_v1.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="dlib_resnet_v1.onnx fails its sha256 check"):
        load_pack(tmp_path, PACK)
    shutil.rmtree(tmp_path / FACENET_PACK)  # nothing to copy from: converted again
    lines.clear()
    assert build.build_pack(PACK, tmp_path, build.default_cache_dir(), lines.append) == [
        "dlib_resnet_v1.onnx"]
    assert sha256_file(target) == load_manifest(PACK).files["dlib_resnet_v1.onnx"].sha256


# --------------------------------------------------------------------------- the embedder


def test_fused_embeddings_separate_the_sample_people(fused: FacePipeline,
                                                     media_dir: Path) -> None:
    """On the 21 sample photos: unit 640-d vectors; every photo of a person with several
    photos is nearest to another photo of the same person."""
    assert fused.embedder.dim == 640 and fused.embedder_id.endswith("-w0.5")
    names, rows = [], []
    for p in _photos(media_dir):
        names.append(p.parent.name)
        rows.append(_main_face(fused, p))
    m = np.stack(rows)
    assert m.shape == (len(names), 640)
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    sims = m @ m.T
    np.fill_diagonal(sims, -2.0)
    same = np.array([[a == b for b in names] for a in names])
    np.fill_diagonal(same, False)
    for i, who in enumerate(names):
        if same[i].any():
            assert names[int(np.argmax(sims[i]))] == who, (who, sims[i])
    assert sims[same].mean() - sims[~same & (sims > -2)].mean() > 0.5


def test_fused_cosine_is_the_weighted_sum_of_the_two(fused: FacePipeline,
                                                     media_dir: Path) -> None:
    emb = fused.embedder
    assert isinstance(emb, facenet_dlib.FacenetDlibEmbedder)
    a, b = (media_dir / "faces" / "barack_obama" / "1.jpg",
            media_dir / "faces" / "joe_biden" / "1.jpg")
    sheets = []
    for p in (a, b):
        image = read_image(p)
        found = fused.detect(image)
        sheets.append(fused.aligner.crops(image, found.take([found.largest()]))[0])
    crops = np.stack(sheets)
    assert crops.shape == (2, 160, 310, 3)
    f = emb.facenet.embed(np.ascontiguousarray(crops[:, :160, :160]))
    d = emb.centred(emb.dlib.embed(np.ascontiguousarray(crops[:, :150, 160:])))
    out = emb.embed(crops)
    assert np.isclose(float(out[0] @ out[1]),
                      0.5 * float(f[0] @ f[1]) + 0.5 * float(d[0] @ d[1]), atol=1e-5)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_recognition",
                                                  REPO / "bench" / "recognition.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class _Rows:
    """Fixed rows behind the bench's Embeddings interface (matrix by path)."""

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.rows, self.nfaces, self.emb_path = rows, {}, "rows"

    def matrix(self, paths: list[str]) -> np.ndarray:
        return np.stack([self.rows[p] for p in paths]).astype(np.float32)


def test_pack_embeddings_equal_the_benchs_fused_embeddings(
        fused: FacePipeline, facenet: FacePipeline, media_dir: Path) -> None:
    """The product's fused embedder gives what the bench measured (its own copy of the
    chip, dlib graph, centring and FusedEmbeddings), on real photos: cosine > 0.9999."""
    bench = _bench()
    chip = bench.DlibChip(bench.DLIB_POINTS["dlib5"])
    second = bench.OnnxChipEmbedder(_load(PACK).files["dlib_resnet_v1.onnx"])
    e = load_manifest(PACK).embedder
    mean = facenet_dlib.read_centre(data_file(e["centre"], e["centre_sha256"]), 128)
    paths = [media_dir / "faces" / n for n in (
        "barack_obama/1.jpg", "joe_biden/2.jpg", "rose_leslie/1.jpg", "alex_lacamoire/2.png",
        "kit_harington/3.jpg")]
    product, first_rows, second_rows = [], {}, {}
    for p in paths:
        image = read_image(p)
        found = fused.detect(image)
        one = found.take([found.largest()])
        product.append(fused.embed(image, one)[0])
        first_rows[str(p)] = facenet.embed(image, one)[0]
        second_rows[str(p)] = second.embed(chip.crops(image, one))[0]
    centred: Any = bench.CentredEmbeddings.__new__(bench.CentredEmbeddings)
    centred.inner, centred.mean, centred.emb_path = _Rows(second_rows), mean, "rows"
    ref = bench.FusedEmbeddings(_Rows(first_rows), centred, 0.5).matrix(
        [str(p) for p in paths])
    got = np.stack(product)
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert (cos > 0.9999).all(), cos


# --------------------------------------------------------------------------- refusals


def test_terminal_refuses_a_gallery_of_the_other_embedder(
        fused: FacePipeline, facenet: FacePipeline, tmp_path: Path) -> None:
    GalleryStore.open(tmp_path / "g", embedder_id=facenet.embedder_id,
                      dim=facenet.embedder.dim).close()
    with pytest.raises(EmbedderMismatchError, match="belongs to embedder"):
        GalleryStore.open(tmp_path / "g", embedder_id=fused.embedder_id,
                          dim=fused.embedder.dim)
    GalleryStore.open(tmp_path / "h", embedder_id=fused.embedder_id,
                      dim=fused.embedder.dim).close()
    with pytest.raises(EmbedderMismatchError, match="belongs to embedder"):
        GalleryStore.open(tmp_path / "h", embedder_id=facenet.embedder_id,
                          dim=facenet.embedder.dim)


def test_terminal_refuses_batches_and_snapshots_of_the_other_embedder(
        fused: FacePipeline, facenet: FacePipeline, tmp_path: Path) -> None:
    """A fused-pack terminal and a district still on FaceNet (512-d): every batch and
    snapshot is rejected as 'embedder' and the gallery stays empty."""
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id=DISTRICT,
                              embedder_id=facenet.embedder_id, dim=512)
    add_citizens(dlog, 3)
    key = new_key()
    store = GalleryStore.open(tmp_path / "store", embedder_id=fused.embedder_id, dim=640)
    try:
        eng = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                         public_key=key.public_key(), spool_dir=tmp_path / "spool")
        changes = log_changes(dlog, 1, dlog.head_seq)
        eng.handle("batch", craft_batch(key, changes, district=DISTRICT,
                                        embedder=facenet.embedder_id, dim=512))
        assert eng.rejections["embedder"] == 1
        from sync.wire import seal

        chunk = pb.SnapshotChunk(district_id=DISTRICT, epoch=1,
                                 embedder_id=facenet.embedder_id, dim=512,
                                 snapshot_id="s1", last_seq=len(changes), index=0, last=True,
                                 citizen_count=3, dossier_count=0)
        for c in changes:
            if c.HasField("citizen_upsert"):
                chunk.changes.append(c)
        eng.handle("direct", seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_CHUNK,
                                  chunk.SerializeToString()))
        assert eng.rejections["embedder"] == 2
        assert store.citizen_count == 0 and store.last_seq == 0
    finally:
        store.close()


def test_district_refuses_to_enrol_into_a_log_of_the_other_embedder(
        fused: FacePipeline, facenet: FacePipeline, media_dir: Path, tmp_path: Path) -> None:
    dlog = DistrictLog.create(tmp_path / "d.sqlite", district_id=DISTRICT,
                              embedder_id=facenet.embedder_id, dim=512)
    rec = Record(citizen_id="c1", full_name="Nguyễn Văn A", phone="0900000000",
                 photos=["faces/paul_rudd/1.jpg"])
    with pytest.raises(DistrictError, match="the log is for embedder"):
        enrol(dlog, [rec], media_dir, pipeline_embedder(fused))
    assert not dlog.head_seq


# --------------------------------------------------------------------------- the demo


def test_demo_on_the_fused_pack_matches(tmp_path: Path) -> None:
    """`motcua --config (models.pack = mtcnn-facenet-dlib) demo`, without sample media:
    district enrolment, sync, terminal and kiosk on the fused pack; the astronaut is
    matched, nobody else."""
    from motcua.demo import run_demo

    out = io.StringIO()
    result = run_demo(media=None, workdir=tmp_path / "demo", http_listen="127.0.0.1:0",
                      out=out, base_config=_config(PACK))
    text = out.getvalue()
    assert f"{PACK}: embedder {load_manifest(PACK).embedder['id']}, dim 640" in text, text
    assert result.matched and set(result.matched) == {"astronaut (scikit-image)"}, text
    assert result.wrong_matches == []
    assert result.status_change is not None and result.status_change.ok, text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("second_file", "dlib_resnet_v1.onnx", "second_file must name a file of"),
    ("fusion_weight", 1.0, "strictly between 0 and 1"),
    ("chip_template", [[1.0, 2.0]], "chip_template must be 5"),
    ("centre_sha256", "0" * 64, "fails its sha256 check"),
])
def test_bad_fused_settings_are_refused(key: str, value: object, message: str) -> None:
    from types import MappingProxyType

    spec = _load(PACK).embedder
    bad = dataclasses.replace(spec, params=MappingProxyType({**spec.params, key: value}))
    with pytest.raises(ModelError, match=message):
        facenet_dlib.build_aligner(bad, _config(PACK))
        facenet_dlib.build_embedder(bad, _config(PACK))


def test_recognition_bench_runs_through_the_fused_pack(tmp_path: Path) -> None:
    """bench/recognition.py --pack mtcnn-facenet-dlib: the pack's own aligner and
    embedder (--crop pack), on a tiny LFW subset from a cold cache."""
    import json
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "recognition.py"), "--pack", PACK, "--quick",
         "--people", "40", "--pairs-per-fold", "5", "--splits", "1",
         "--cache-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["embedder_id"] == load_manifest(PACK).embedder["id"]
    assert "crop=pack" in r["prep"]
    # 100 pairs at chance would give ~0.5
    assert 0.85 <= r["lfw_10fold_acc"] <= 1.0
    (emb,) = tmp_path.glob("embeddings-*.npz")
    with np.load(emb) as z:
        assert z["embeddings"].shape[1] == 640
