"""MTCNN face detector (Zhang et al. 2016) over the three ONNX networks of a model pack.

Stages:

1. P-Net, fully convolutional, over an image pyramid: one 12x12 window every 2 pixels of
   every scale says "face?" and regresses a box. The pyramid starts at the scale where a
   face of ``min_face`` pixels becomes 12 pixels and shrinks by ``scale_factor`` until
   the image is smaller than 12 pixels. One onnxruntime call per scale: a call costs
   ~10 us here, so packing the scales into one canvas would only add padding work.
2. R-Net refines the surviving windows, all in one batch of 24x24 crops.
3. O-Net refines again (one batch of 48x48 crops) and gives five landmarks.

Conventions the weights expect (they were converted from the original Caffe/Matlab
models): pixels scaled to [-1, 1] as ``(v - 127.5) / 128``, RGB, and every image
*transposed* (width first: NWHC instead of NHWC). Only the small network inputs are
transposed (each pyramid level, each batch of crops), in the same pass that converts
them to float32; transposing the full frame would cost more than all of them. A halving
pyramid of the frame (1, 1/2, 1/4, ...) feeds the first P-Net level and every crop, and
each further P-Net level is resized from the previous one, so the full frame is read
once. Box regressions are offsets relative to the window's width/height;
landmarks are relative to the O-Net input window, five x values then five y values.
Coordinates here are continuous pixels (a box is [x1, x2) x [y1, y2)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from core.errors import ImageError, ModelError
from faces.runtime import OnnxModel
from faces.settings import PipelineSettings, RuntimeConfig
from faces.types import Detections, FloatArray, Image

if TYPE_CHECKING:
    from models.pack import DetectorSpec

#: smallest min_face accepted: P-Net's window is 12 px, below that we would upsample
MIN_FACE_FLOOR = 12
#: at most this many P-Net windows per pyramid level go into NMS (by score); a noisy
#: frame can give tens of thousands at the first level, and NMS is quadratic in the
#: worst case. A real face yields a few dozen windows per level.
MAX_WINDOWS_PER_SCALE = 2000
#: at most this many candidates go to R-Net (by score), bounding its batch
MAX_RNET_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class MtcnnSettings:
    """Thresholds of the three stages and of their non-maximum suppressions."""

    #: P-Net face probability for a window to survive. 0.6 is the published value: low,
    #: because P-Net only proposes, and a face missed here is lost for good.
    pnet_threshold: float = 0.6
    #: R-Net probability. 0.7 (published) removes most background windows cheaply.
    rnet_threshold: float = 0.7
    #: O-Net probability, the final face score. The published 0.7 let a patch of hair in
    #: faces/lin_manuel_miranda/1.png through at 0.71; every face in the sample photos
    #: scores >= 0.99, and what 0.9 drops in the sample video (0.7-0.9) is blurred
    #: audience heads and profiles, useless for recognition anyway.
    onet_threshold: float = 0.9
    #: IoU above which windows of one pyramid level are duplicates (published 0.5)
    nms_per_scale: float = 0.5
    #: IoU above which windows across levels and after R-Net are duplicates (0.7)
    nms_stage: float = 0.7
    #: pyramid step between scales; 0.709 = sqrt(0.5) halves the area per level, the value
    #: P-Net was trained for (a face must land within its 12x12 window's tolerance at
    #: some level). A larger step (0.8) adds levels and time for little recall here.
    scale_factor: float = 0.709
    #: final suppression uses intersection over the *smaller* box: a box inside another
    #: (a face part found as a face) goes; 0.7 as published
    nms_final_min: float = 0.7


def build_detector(spec: DetectorSpec, config: PipelineSettings) -> MtcnnDetector:
    """The detector of a model pack (``[detector]`` of its manifest) with the config's
    overrides: thresholds from ``detector.thresholds`` when set, else the pack's."""
    files: Mapping[str, Path] = spec.files
    params: Mapping[str, Any] = spec.params
    for role in ("pnet", "rnet", "onet"):
        if role not in files:
            raise ModelError(f"model pack: detector.{role}: no such file in the pack")
    thresholds = config.detector.thresholds or tuple(params.get("thresholds", ()))
    settings = MtcnnSettings()
    if thresholds:
        if len(thresholds) != 3:
            raise ModelError(f"detector thresholds: expected 3 values, got {list(thresholds)}")
        p, r, o = (float(t) for t in thresholds)
        settings = dataclasses.replace(
            settings, pnet_threshold=p, rnet_threshold=r, onet_threshold=o
        )
    if "scale_factor" in params:
        settings = dataclasses.replace(settings, scale_factor=float(params["scale_factor"]))
    runtime = config.runtime
    if runtime.detector_threads:
        runtime = dataclasses.replace(runtime, intra_op_threads=runtime.detector_threads)
    return MtcnnDetector(
        files["pnet"],
        files["rnet"],
        files["onet"],
        runtime,
        min_face=config.detector.min_face,
        settings=settings,
    )


class MtcnnDetector:
    """The three MTCNN networks behind the :class:`~faces.types.Detector` interface."""

    detector_id = "mtcnn"

    def __init__(
        self,
        pnet: Path,
        rnet: Path,
        onet: Path,
        runtime: RuntimeConfig,
        min_face: int = 40,
        settings: MtcnnSettings | None = None,
    ) -> None:
        self.pnet = OnnxModel(pnet, runtime)
        self.rnet = OnnxModel(rnet, runtime)
        self.onet = OnnxModel(onet, runtime)
        self._check_outputs()
        self.min_face = int(min_face)
        self.settings = settings or MtcnnSettings()

    def _check_outputs(self) -> None:
        """Find each output by its last dimension (4: box regression, 2: background/face
        probabilities, 10: landmarks), so the order the converter wrote them in does not
        matter; a network without exactly those outputs is refused."""
        self._order: dict[str, list[int]] = {}
        for name, model, sizes in (
            ("pnet", self.pnet, (4, 2)),
            ("rnet", self.rnet, (4, 2)),
            ("onet", self.onet, (4, 10, 2)),
        ):
            last = [o.shape[-1] for o in model.session.get_outputs()]
            if sorted(last, key=str) != sorted(sizes, key=str):
                raise ModelError(
                    f"{model.path.name}: outputs end in {last}, expected {list(sizes)} "
                    "(box regression, probabilities[, landmarks])"
                )
            self._order[name] = [last.index(n) for n in sizes]

    def _run(self, name: str, model: OnnxModel, x: FloatArray) -> list[np.ndarray]:
        out = model.run(x)
        return [out[i] for i in self._order[name]]

    # -- public ---------------------------------------------------------------------------

    def detect(self, image: Image, min_face: int | None = None) -> Detections:
        """Faces of at least ``min_face`` px (default: the configured size), best first."""
        _check_image(image)
        h, w = image.shape[:2]
        mf = max(MIN_FACE_FLOOR, int(min_face if min_face is not None else self.min_face))
        if min(h, w) < mf:
            return Detections.empty()
        halves = _HalvingPyramid(image)
        boxes, scores = self._stage_pnet(halves, mf)
        if len(boxes):
            boxes, scores = self._stage_rnet(halves, boxes)
        if not len(boxes):
            return Detections.empty()
        boxes, scores, marks = self._stage_onet(halves, boxes)
        if not len(boxes):
            return Detections.empty()
        order = np.argsort(-scores, kind="stable")
        return Detections(
            boxes=boxes[order].astype(np.float32),
            scores=scores[order].astype(np.float32),
            landmarks=marks[order].astype(np.float32),
        )

    def scales(self, width: int, height: int, min_face: int) -> list[float]:
        """The pyramid: scale of each level, largest first."""
        scale = 12.0 / max(MIN_FACE_FLOOR, min_face)
        out = []
        while min(width, height) * scale >= 12:
            out.append(scale)
            scale *= self.settings.scale_factor
        return out

    # -- stages ---------------------------------------------------------------------------

    def _stage_pnet(self, halves: _HalvingPyramid, min_face: int) -> tuple[FloatArray, FloatArray]:
        h, w = halves.levels[0].shape[:2]
        s = self.settings
        all_boxes: list[np.ndarray] = []
        all_scores: list[np.ndarray] = []
        all_regs: list[np.ndarray] = []
        level: npt.NDArray[np.uint8] | None = None
        for scale in self.scales(w, h, min_face):
            ws, hs = math.ceil(w * scale), math.ceil(h * scale)
            # INTER_AREA averages every source pixel, at ~6x the cost for non-integer
            # factors: the first level comes from the finest power-of-two level above it
            # (OpenCV halves fast), every next level from the previous one
            if level is None:
                level = halves.level(max(0, int(math.floor(math.log2(1.0 / scale)))))
            level = np.asarray(cv2.resize(level, (ws, hs), interpolation=cv2.INTER_AREA), np.uint8)
            reg, prob = self._run("pnet", self.pnet, _network_input(level[None]))
            face = prob[0, :, :, 1]
            ix, iy = np.nonzero(face >= s.pnet_threshold)
            if ix.size == 0:
                continue
            sc = face[ix, iy]
            if sc.size > MAX_WINDOWS_PER_SCALE:
                top = np.argpartition(-sc, MAX_WINDOWS_PER_SCALE)[:MAX_WINDOWS_PER_SCALE]
                ix, iy, sc = ix[top], iy[top], sc[top]
            # a window at output cell (i, j) covers level pixels [2i, 2i+12) x [2j, 2j+12);
            # the level's true scale differs per axis by the rounding of its size
            sx, sy = ws / w, hs / h
            b = np.stack([2 * ix / sx, 2 * iy / sy, (2 * ix + 12) / sx, (2 * iy + 12) / sy], axis=1)
            keep = nms(b, sc, s.nms_per_scale)
            all_boxes.append(b[keep])
            all_scores.append(sc[keep])
            all_regs.append(reg[0, ix[keep], iy[keep], :])
        if not all_boxes:
            return _no_boxes()
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        # duplicates across levels are judged on the windows, then the kept ones regressed
        keep = nms(boxes, scores, s.nms_stage)[:MAX_RNET_BATCH]
        boxes = _regress(boxes[keep], np.concatenate(all_regs)[keep])
        return _square(boxes), scores[keep]

    def _stage_rnet(
        self, image: _HalvingPyramid, boxes: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        s = self.settings
        reg, prob = self._run("rnet", self.rnet, _network_input(_crops(image, boxes, 24)))
        score = prob[:, 1]
        ok = np.flatnonzero(score > s.rnet_threshold)
        if ok.size == 0:
            return _no_boxes()
        boxes, score, reg = boxes[ok], score[ok], reg[ok]
        keep = nms(boxes, score, s.nms_stage)
        return _square(_regress(boxes[keep], reg[keep])), score[keep]

    def _stage_onet(
        self, image: _HalvingPyramid, boxes: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        s = self.settings
        boxes = _integer_boxes(boxes)
        reg, marks, prob = self._run("onet", self.onet, _network_input(_crops(image, boxes, 48)))
        score = prob[:, 1]
        ok = np.flatnonzero(score > s.onet_threshold)
        if ok.size == 0:
            return _no_boxes() + (np.zeros((0, 5, 2), np.float32),)
        boxes, score, reg, marks = boxes[ok], score[ok], reg[ok], marks[ok]
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        points = np.stack(
            [boxes[:, 0:1] + bw * marks[:, 0:5], boxes[:, 1:2] + bh * marks[:, 5:10]], axis=2
        )
        boxes = _regress(boxes, reg)
        keep = nms(boxes, score, s.nms_final_min, mode="min")
        return boxes[keep], score[keep], points[keep]


# -- helpers ------------------------------------------------------------------------------


def _check_image(image: Image) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError("detector input must be a uint8 numpy array")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"detector input must be RGB (h, w, 3), got shape {image.shape}")


def _no_boxes() -> tuple[FloatArray, FloatArray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def _network_input(pixels: npt.NDArray[np.uint8]) -> FloatArray:
    """(n, h, w, 3) uint8 -> (n, w, h, 3) float32 in [-1, 1), the layout and scale the
    networks were trained with: (v - 127.5) / 128, width first (one copy)."""
    x = pixels.transpose(0, 2, 1, 3).astype(np.float32, order="C")
    x -= 127.5
    x *= 0.0078125
    return x


def _regress(boxes: FloatArray, reg: FloatArray) -> FloatArray:
    """Apply regression offsets (fractions of the box width/height) to x1, y1, x2, y2."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    size = np.concatenate([wh, wh], axis=1)
    return (boxes + reg[:, :4] * size).astype(np.float32)


def _square(boxes: FloatArray) -> FloatArray:
    """Grow each box to a square around its centre (the next net's input is square)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = np.max(wh, axis=1, keepdims=True)
    centre = boxes[:, 0:2] + wh / 2
    return np.concatenate([centre - side / 2, centre + side / 2], axis=1).astype(np.float32)


def _integer_boxes(boxes: FloatArray) -> FloatArray:
    """Round to whole pixels (crops are cut on the pixel grid), at least 1 px wide."""
    b = np.round(boxes)
    b[:, 2:4] = np.maximum(b[:, 2:4], b[:, 0:2] + 1)
    return b.astype(np.float32)


class _HalvingPyramid:
    """The image at 1, 1/2, 1/4, ... (built on demand), to cut small crops from.

    A 24 px R-Net crop of a 200 px box read from the full frame averages 40000 pixels,
    and the boxes of one face overlap many times; read from the level where the box is
    24-48 px it averages at most 4 pixels per output pixel. INTER_AREA halving then
    INTER_AREA again is the same box filter as one INTER_AREA, up to rounding.
    """

    def __init__(self, image: npt.NDArray[np.uint8]) -> None:
        self.levels = [image]

    def level(self, k: int) -> npt.NDArray[np.uint8]:
        while len(self.levels) <= k:
            prev = self.levels[-1]
            h, w = prev.shape[:2]
            if h < 2 or w < 2:
                return prev
            half = cv2.resize(prev, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
            self.levels.append(np.asarray(half, np.uint8))
        return self.levels[k]


def _crops(pyramid: _HalvingPyramid, boxes: FloatArray, size: int) -> npt.NDArray[np.uint8]:
    """Cut each box out of the image (zeros outside it), resized to size x size, from the
    coarsest pyramid level at which the box still spans ``size`` pixels."""
    full_h, full_w = pyramid.levels[0].shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    # the coarsest level at which the box still spans at least `size` pixels
    ks = np.floor(np.log2(np.maximum(side, 1.0) / size)).clip(0, 16).astype(int)
    for k, (box, lvl) in enumerate(zip(boxes.tolist(), ks.tolist(), strict=True)):
        image = pyramid.level(lvl)
        h, w = image.shape[:2]
        fx, fy = w / full_w, h / full_h
        x1, y1 = round(box[0] * fx), round(box[1] * fy)
        x2, y2 = max(round(box[2] * fx), x1 + 1), max(round(box[3] * fy), y1 + 1)
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if cx1 >= cx2 or cy1 >= cy2:  # entirely outside: nothing to see
            out[k] = 0
            continue
        src = image[cy1:cy2, cx1:cx2]
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            padded = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
            padded[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1] = src
            src = padded
        cv2.resize(src, (size, size), dst=out[k], interpolation=cv2.INTER_AREA)
    return out


def nms(boxes: FloatArray, scores: FloatArray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    ``mode="union"`` compares intersection over union (OpenCV's C++ NMS, identical
    result, several times faster on the hundreds of P-Net windows of a face),
    ``"min"`` intersection over the smaller area (suppresses boxes nested inside a
    better one).
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    if mode == "union":
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxes(
            xywh.astype(np.float64).tolist(), scores.astype(np.float64).tolist(), 0.0, threshold
        )
        return np.asarray(keep, np.int64).reshape(-1)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        overlap = iw * ih / np.maximum(np.minimum(area[i], area[rest]), 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(kept, np.int64)
