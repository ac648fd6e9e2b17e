"""The pipeline behind the session's ports (BGR camera frames, the session's own
Detections type) gives the same faces and embeddings as the RGB pipeline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.session.ports import Detections as SessionDetections
from faces.imagefiles import read_image
from faces.pipeline import BgrPorts, FacePipeline


def test_bgr_ports_match_the_rgb_pipeline(face_pipeline: FacePipeline, media_dir: Path) -> None:
    path = media_dir / "scenes" / "two_people.jpg"
    rgb = read_image(path)
    bgr = cv2.imread(str(path))
    ports = BgrPorts(face_pipeline)
    found = ports.detect(bgr)
    want = face_pipeline.detect(rgb)
    assert len(found) == 2 and np.array_equal(found.boxes, want.boxes)
    # the session hands back its own Detections (a tracked box, maybe no landmarks)
    theirs = SessionDetections(found.boxes, found.scores, found.landmarks)
    emb = ports.embed(bgr, theirs)
    assert emb.shape == (2, face_pipeline.embedder.dim)
    assert np.allclose(emb, face_pipeline.embed(rgb, want), atol=1e-6)
