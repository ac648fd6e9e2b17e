"""Recognition over the real clip video/hamilton_clip.mp4 (275 frames, 640x360).

Who is where was established by looking at the frames; the cuts are where consecutive
frames differ most (frames 20, 82 and 211):

- 0-19: Lin-Manuel Miranda sings on the right (small, far), Alex Lacamoire at the piano
  on the left;
- 20-81: Alex Lacamoire in close profile, then the dark audience;
- 82-210: Lin-Manuel Miranda alone, close;
- 211-274: the audience (the Obamas and others).

Lin-Manuel Miranda's reference is faces/lin_manuel_miranda/1.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.camera.file import VideoFileSource
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline

#: consecutive frames (1 s at 29.97 fps) in which he must be recognised without a break
MIN_RUN = 30


def _is_him(frame: int, box: np.ndarray) -> bool:
    """Whether a face at ``box`` in ``frame`` is Lin-Manuel Miranda (see the module doc)."""
    centre_x = (box[0] + box[2]) / 2
    return (frame < 20 and centre_x > 320) or 82 <= frame <= 210


def test_lin_manuel_miranda_recognised_and_nobody_else(
    face_pipeline: FacePipeline, media_dir: Path
) -> None:
    ref_image = read_image(media_dir / "faces" / "lin_manuel_miranda" / "1.png")
    ref_faces = face_pipeline.detect(ref_image)
    reference = face_pipeline.embed(ref_image, ref_faces.take([ref_faces.largest()]))[0]

    source = VideoFileSource(media_dir / "video" / "hamilton_clip.mp4", realtime=False)
    source.open()
    matched_frames: list[int] = []
    wrong: list[tuple[int, list[float], float]] = []
    his_faces = other_faces = 0
    try:
        while (frame := source.read()) is not None:
            rgb = np.ascontiguousarray(frame.image[:, :, ::-1])
            faces = face_pipeline.analyse(rgb)
            for box, emb in zip(faces.detections.boxes, faces.embeddings, strict=True):
                sim = face_pipeline.similarity(emb, reference)
                if _is_him(frame.index, box):
                    his_faces += 1
                    if face_pipeline.same_person(sim):
                        matched_frames.append(frame.index)
                else:
                    other_faces += 1
                    if face_pipeline.same_person(sim):
                        wrong.append((frame.index, box.round().tolist(), sim))
    finally:
        source.close()

    assert other_faces > 100, "the audience and the pianist must have been seen"
    assert not wrong, f"faces matched to him that are not him: {wrong[:5]}"
    runs, run, prev = [], 0, -2
    for f in sorted(set(matched_frames)):
        run = run + 1 if f == prev + 1 else 1
        runs.append(run)
        prev = f
    longest = max(runs, default=0)
    close_up = [f for f in matched_frames if 82 <= f <= 210]
    print(
        f"\nvideo: his faces {his_faces}, recognised {len(matched_frames)}; other faces "
        f"{other_faces}, matched to him 0; longest run {longest} frames"
    )
    assert longest >= MIN_RUN, f"longest run of recognised frames is {longest}"
    assert len(close_up) >= 0.6 * (210 - 82 + 1), f"recognised in {len(close_up)} close-up frames"
