"""Face crops for the embedder: a margin crop around the box, or a landmark alignment.

:class:`MarginCrop` reproduces how FaceNet's training data was cut (davidsandberg/facenet
``align_dataset_mtcnn``): the detector box grown by a margin, clipped to the image and
resized to a square without keeping the aspect ratio. The margin is given in pixels *of
the output crop* (44 at 160 px: the face box fills 116 of the 160 pixels), so it scales
with the face instead of being a fixed number of source pixels.

:class:`SimilarityAlign` instead maps the five landmarks onto a fixed template with a
similarity transform (rotation, scale, shift). docs/pipeline.md says which one the
default pack uses and why (measured on the sample faces).
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from faces.types import Detections, Image

#: where the five landmarks of an upright frontal face sit in a 112x112 crop; the widely
#: used ArcFace/InsightFace reference layout (eyes at 46% of the height)
_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


class MarginCrop:
    """Detector box plus a margin, clipped to the image, resized to size x size."""

    def __init__(self, size: int = 160, margin: int = 44) -> None:
        if not 0 <= margin < size:
            raise ValueError(f"margin {margin} must be in [0, {size})")
        self.size = size
        self.margin = margin

    def crops(self, image: Image, faces: Detections) -> npt.NDArray[np.uint8]:
        """One RGB crop per face, uint8 (n, size, size, 3)."""
        out = np.empty((len(faces), self.size, self.size, 3), np.uint8)
        h, w = image.shape[:2]
        # the box covers (size - margin) of the size output pixels, on each axis
        grow = self.margin / (self.size - self.margin) / 2
        for k, (x1, y1, x2, y2) in enumerate(faces.boxes.astype(np.float64).tolist()):
            mx, my = (x2 - x1) * grow, (y2 - y1) * grow
            cx1, cy1 = max(int(np.floor(x1 - mx)), 0), max(int(np.floor(y1 - my)), 0)
            cx2, cy2 = min(int(np.ceil(x2 + mx)), w), min(int(np.ceil(y2 + my)), h)
            if cx2 <= cx1 or cy2 <= cy1:  # box entirely outside the image
                out[k] = 0
                continue
            cv2.resize(
                image[cy1:cy2, cx1:cx2],
                (self.size, self.size),
                dst=out[k],
                interpolation=cv2.INTER_AREA if cx2 - cx1 > self.size else cv2.INTER_LINEAR,
            )
        return out


class SimilarityAlign:
    """Warp each face so its five landmarks best fit a template (least squares)."""

    def __init__(self, size: int = 160, margin: int = 44) -> None:
        self.size = size
        self.margin = margin
        # the 112 px template scaled so its face area spans (size - margin) pixels
        inner = size - margin
        self.template = _TEMPLATE_112 * (inner / 112.0) + margin / 2

    def crops(self, image: Image, faces: Detections) -> npt.NDArray[np.uint8]:
        """One RGB crop per face, uint8 (n, size, size, 3)."""
        out = np.empty((len(faces), self.size, self.size, 3), np.uint8)
        for k, pts in enumerate(faces.landmarks):
            m, _ = cv2.estimateAffinePartial2D(pts.astype(np.float32), self.template)
            if m is None:  # degenerate landmarks (all on one point)
                out[k] = 0
                continue
            cv2.warpAffine(
                image,
                m,
                (self.size, self.size),
                dst=out[k],
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return out
