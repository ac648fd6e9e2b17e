"""Check the converted dlib ResNet against dlib itself, and fit the MTCNN chip template.

    PYTHONPATH=. python bench/dlib_check.py REF.npz RAW.onnx UNIT.onnx

REF.npz from bench/dlib_reference.py (dlib's chips and descriptors); RAW.onnx built by
``models/dlib_convert.py --no-normalise``, UNIT.onnx without it. Prints the largest
absolute difference of the descriptors on the same chips, and the mean and spread of
MTCNN's landmarks detected on dlib's chips (the template of bench/recognition.py's
``DLIB_TEMPLATE_150``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import load_config  # noqa: E402
from faces.pipeline import load_pipeline  # noqa: E402

#: MTCNN's smallest face on a 150 px chip (the face fills ~100 px of it)
CHIP_MIN_FACE = 20


def main() -> None:
    ref = np.load(sys.argv[1])
    chips = ref["chips"].astype(np.float32)
    raw = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
    unit = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
    out = np.concatenate([raw.run(None, {"chip": chips[i:i + 16]})[0]
                          for i in range(0, len(chips), 16)])
    diff = np.abs(out - ref["descs"]).max()
    norms = np.linalg.norm(ref["descs"], axis=1)
    print(f"{len(chips)} chips: raw descriptors max |onnx - dlib| = {diff:.3g} "
          f"(dlib's norms {norms.min():.3f}..{norms.max():.3f})")
    u = np.concatenate([unit.run(None, {"chip": chips[i:i + 16]})[0]
                        for i in range(0, len(chips), 16)])
    cos = (u * (ref["descs"] / norms[:, None])).sum(1)
    print(f"unit descriptors: min cosine to dlib's {cos.min():.7f}")
    pipe = load_pipeline(load_config(None))
    marks = []
    for chip in ref["chips"]:
        d = pipe.detect(np.ascontiguousarray(chip), CHIP_MIN_FACE)
        if len(d):
            b = d.boxes
            c = ((b[:, 0] + b[:, 2]) / 2 - 75) ** 2 + ((b[:, 1] + b[:, 3]) / 2 - 75) ** 2
            marks.append(d.landmarks[int(np.argmin(c))])
    m = np.array(marks)
    print(f"MTCNN landmarks on {len(m)} of {len(chips)} chips, mean (x, y):")
    print(np.array2string(m.mean(0), precision=2))
    print("std:")
    print(np.array2string(m.std(0), precision=2))


if __name__ == "__main__":
    main()
