"""Face detection on the real sample photos, and safe image reading of bad files.

Expected faces in scenes/ were established by looking at each picture: the centre of
every visible face, in image pixels (x, y), read off the image by eye. A detection must
contain exactly one expected centre and every expected centre exactly one detection.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import ConfigError, ImageError, ModelError
from edge.config import (
    DEFAULT_MODEL_DIR,
    DEFAULT_PACK,
    Config,
    DetectorConfig,
    RuntimeConfig,
    config_from_dict,
)
from faces.imagefiles import MAX_PIXELS, decode_image, read_image
from faces.mtcnn import MtcnnDetector, build_detector
from faces.pipeline import FacePipeline
from faces.types import Detections
from models.pack import load_pack

#: (x, y) centres of the faces in each scene, read off the pictures by eye
SCENE_FACES: dict[str, list[tuple[int, int]]] = {
    # Friends cast on the stairs: six faces
    "multiface.jpg": [(266, 294), (460, 174), (588, 90), (658, 240), (762, 516), (906, 498)],
    # Obama and Biden side by side (two photos joined)
    "two_people.jpg": [(306, 141), (861, 158)],
    # Rose Leslie and Kit Harington on a red carpet
    "kit_with_rose.jpg": [(118, 160), (305, 140)],
    # Biden, Obama and, lower right, a girl looking down (face partly visible); the
    # person cut by the right edge shows no face
    "obama_and_biden.jpg": [(860, 510), (1230, 480), (1710, 1100)],
}


@pytest.fixture(scope="module")
def detector(face_pipeline: FacePipeline) -> MtcnnDetector:
    """The pack's detector with its thresholds, at the default minimum face (40 px)."""
    det = face_pipeline.detector
    assert isinstance(det, MtcnnDetector) and det.min_face == 40
    return det


def _check_shapes(d: Detections) -> None:
    n = len(d)
    assert d.boxes.shape == (n, 4) and d.boxes.dtype == np.float32
    assert d.scores.shape == (n,) and d.scores.dtype == np.float32
    assert d.landmarks.shape == (n, 5, 2) and d.landmarks.dtype == np.float32


@pytest.mark.parametrize("scene", sorted(SCENE_FACES))
def test_scene_face_count_and_boxes(detector: MtcnnDetector, media_dir: Path, scene: str) -> None:
    image = read_image(media_dir / "scenes" / scene)
    found = detector.detect(image)
    _check_shapes(found)
    expected = np.array(SCENE_FACES[scene], np.float32)
    assert len(found) == len(expected), f"{scene}: {len(found)} faces, boxes {found.boxes}"
    x1, y1, x2, y2 = (found.boxes[:, i : i + 1] for i in range(4))
    inside = (
        (expected[:, 0] >= x1)
        & (expected[:, 0] <= x2)
        & (expected[:, 1] >= y1)
        & (expected[:, 1] <= y2)
    )  # [detection, expected face]
    assert (inside.sum(axis=1) == 1).all(), f"{scene}: a box is on no face or on two"
    assert (inside.sum(axis=0) == 1).all(), f"{scene}: a face has no box or two"
    assert (found.scores >= detector.settings.onet_threshold).all()
    assert (np.diff(found.scores) <= 0).all(), "sorted by score"


def test_landmarks_sit_on_the_face_in_order(detector: MtcnnDetector, media_dir: Path) -> None:
    found = detector.detect(read_image(media_dir / "scenes" / "multiface.jpg"))
    for box, pts in zip(found.boxes, found.landmarks, strict=True):
        x1, y1, x2, y2 = box
        assert ((pts[:, 0] >= x1) & (pts[:, 0] <= x2)).all()
        assert ((pts[:, 1] >= y1) & (pts[:, 1] <= y2)).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = pts
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_one_face_per_portrait(detector: MtcnnDetector, media_dir: Path) -> None:
    for path in sorted((media_dir / "faces").glob("*/*")):
        found = detector.detect(read_image(path))
        assert len(found) == 1, f"{path}: {len(found)} faces, scores {found.scores}"


def test_min_face_filters_small_faces(detector: MtcnnDetector, media_dir: Path) -> None:
    image = read_image(media_dir / "scenes" / "multiface.jpg")  # faces about 80-120 px
    assert len(detector.detect(image, min_face=40)) == 6
    assert len(detector.detect(image, min_face=300)) == 0


def test_no_face_gives_empty_arrays(detector: MtcnnDetector, media_dir: Path) -> None:
    # the lower half of kit_with_rose.jpg: dresses, hands and a carpet, no face
    dresses = np.ascontiguousarray(read_image(media_dir / "scenes" / "kit_with_rose.jpg")[320:])
    grey = np.full((480, 640, 3), 128, np.uint8)
    tiny = np.zeros((8, 8, 3), np.uint8)
    nothing = np.zeros((0, 0, 3), np.uint8)
    for image in (dresses, grey, tiny, nothing):
        found = detector.detect(image)
        assert len(found) == 0
        _check_shapes(found)


def test_detector_refuses_non_rgb(detector: MtcnnDetector) -> None:
    with pytest.raises(ImageError, match="RGB"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.float32))  # type: ignore[arg-type]


# -- safe image reading ---------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header claiming width x height (no pixel data)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is patched to claim width x height."""
    data = bytearray(cv2.imencode(".jpg", np.full((64, 48, 3), 90, np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_sample_images_read_as_rgb(media_dir: Path) -> None:
    image = read_image(media_dir / "faces" / "lin_manuel_miranda" / "1.png")
    bgr = cv2.imread(str(media_dir / "faces" / "lin_manuel_miranda" / "1.png"))
    assert image.dtype == np.uint8 and image.shape == bgr.shape
    assert np.array_equal(image, bgr[:, :, ::-1])


def _bad_files(media_dir: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """What was tried: each bad file and the words its error must contain."""
    jpeg = (media_dir / "faces" / "barack_obama" / "1.jpg").read_bytes()
    png = (media_dir / "faces" / "lin_manuel_miranda" / "1.png").read_bytes()
    rng = np.random.default_rng(7)
    sos = jpeg.find(b"\xff\xda")
    cases = {
        "missing": (None, "no such file"),
        "empty": (b"", "empty"),
        "text": (b"name,code\nNguyen Van A,123\n", "not an image"),
        "video": ((media_dir / "video" / "hamilton_clip.mp4").read_bytes()[:4096], "not an image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_png": (png[: len(png) // 2], "truncated"),
        "header_only_jpeg": (jpeg[:300], "JPEG"),
        "garbage_in_jpeg_data": (
            jpeg[: sos + 2000] + rng.bytes(len(jpeg) - sos - 4000) + jpeg[-2000:],
            "corrupt JPEG",
        ),
        "garbage_in_png_data": (png[:200] + rng.bytes(len(png) - 400) + png[-200:], "corrupt"),
        "huge_png_header": (_png_header(20000, 20000), "too large"),
        "huge_jpeg_header": (_jpeg_claiming(20000, 20000), "too large"),
        "strip_png_header": (_png_header(100000, 10), "too large"),
        "zero_size_png": (_png_header(0, 10), "empty picture"),
    }
    out = {}
    for name, (data, words) in cases.items():
        path = tmp / f"{name}.img"
        if data is not None:
            path.write_bytes(data)
        out[name] = (path, words)
    return out


def test_bad_files_give_image_error(media_dir: Path, tmp_path: Path) -> None:
    for name, (path, words) in _bad_files(media_dir, tmp_path).items():
        with pytest.raises(ImageError) as err:
            read_image(path)
        message = str(err.value)
        assert words in message, f"{name}: {message}"
        assert str(path) in message and "\n" not in message, f"{name}: {message}"


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path)


def test_pixel_cap_is_checked_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 1  # just over the cap, within the per-side limit
    with pytest.raises(ImageError, match="too large"):
        decode_image(_png_header(side, side), "cap.png")


def test_detector_settings_come_from_pack_and_config(face_pipeline: FacePipeline) -> None:
    """The pack's thresholds (O-Net 0.9), overridden by [detector] thresholds; bad values
    are refused by the config with the key named."""
    det = face_pipeline.detector
    assert isinstance(det, MtcnnDetector)
    assert (det.settings.pnet_threshold, det.settings.rnet_threshold) == (0.6, 0.7)
    assert det.settings.onet_threshold == 0.9
    pack = load_pack(DEFAULT_MODEL_DIR, DEFAULT_PACK)
    cfg = dataclasses.replace(
        Config(), detector=DetectorConfig(min_face=60, thresholds=(0.5, 0.6, 0.8))
    )
    other = build_detector(pack.detector, cfg)
    assert other.min_face == 60 and other.settings.onet_threshold == 0.8
    one = dataclasses.replace(cfg, runtime=RuntimeConfig(intra_op_threads=2, detector_threads=1))
    assert (
        build_detector(pack.detector, one).pnet.session.get_session_options().intra_op_num_threads
        == 1
    )
    for doc, key in (
        ({"detector": {"min_face": 8}}, "detector.min_face"),
        ({"detector": {"thresholds": [0.6, 0.7]}}, "detector.thresholds"),
        ({"detector": {"thresholds": [0.6, 0.7, 1.5]}}, "detector.thresholds"),
        ({"runtime": {"detector_threads": -1}}, "runtime.detector_threads"),
    ):
        with pytest.raises(ConfigError, match=key):
            config_from_dict(doc)


def test_grey_alpha_and_16_bit_images_read_as_rgb(media_dir: Path, tmp_path: Path) -> None:
    """A grey JPEG, an RGBA PNG and a 16-bit PNG of a real face still give RGB uint8."""
    bgr = cv2.imread(str(media_dir / "faces" / "kit_harington" / "2.jpg"))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    deep = bgr.astype(np.uint16) * 257
    for name, img in (("grey.jpg", grey), ("alpha.png", rgba), ("deep.png", deep)):
        cv2.imwrite(str(tmp_path / name), img)
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (*bgr.shape[:2], 3), name


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        (".bmp", []),
        (".png", []),
    ],
)
def test_other_formats_read_and_their_truncation_is_refused(
    media_dir: Path, ext: str, params: list[int]
) -> None:
    """WebP (lossy VP8, lossless VP8L), BMP and PNG: header sizes read right, whole files
    decode, the first half of each is refused as truncated."""
    bgr = cv2.imread(str(media_dir / "faces" / "kit_harington" / "2.jpg"))
    data = cv2.imencode(ext, bgr, params)[1].tobytes()
    assert decode_image(data, "x").shape == bgr.shape
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2], "x")


def test_wrong_network_for_a_stage_is_refused(face_pipeline: FacePipeline) -> None:
    """R-Net given as O-Net (no landmark output): a ModelError naming the file."""
    det = face_pipeline.detector
    assert isinstance(det, MtcnnDetector)
    with pytest.raises(ModelError, match="rnet.onnx: outputs end in"):
        MtcnnDetector(det.pnet.path, det.rnet.path, det.rnet.path, RuntimeConfig())


def test_exif_orientation_is_applied() -> None:
    """A JPEG whose EXIF says "rotate 90 degrees" (orientation 6) comes out upright."""
    image = np.zeros((40, 80, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + bytes(4)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    tagged = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    assert decode_image(jpeg).shape == (40, 80, 3)
    assert decode_image(tagged).shape == (80, 40, 3)
