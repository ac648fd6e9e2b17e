"""``motcua faces`` on real photos, and its error paths (one line on stderr, non-zero exit).

Most cases call ``motcua.cli.main`` in-process; one runs the real console entry point in a
subprocess to show that no traceback reaches the user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.pack import load_manifest
from models.settings import DEFAULT_PACK
from motcua.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    try:
        rc = main(["faces", *args])
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def test_one_json_line_per_face(capsys: pytest.CaptureFixture[str], media_dir: Path) -> None:
    scene = str(media_dir / "scenes" / "multiface.jpg")
    rc, out, err = _run(capsys, scene)
    assert rc == 0 and not err
    records = [json.loads(line) for line in out]
    assert len(records) == 6 and [r["face"] for r in records] == list(range(6))
    for r in records:
        assert r["image"] == scene and len(r["box"]) == 4 and 0.9 <= r["score"] <= 1.0
        assert set(r["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
        assert "embedding" not in r


def test_embed_adds_embedding_and_embedder_id(
    capsys: pytest.CaptureFixture[str], media_dir: Path
) -> None:
    rc, out, _ = _run(capsys, "--embed", str(media_dir / "faces" / "kit_harington" / "2.jpg"))
    assert rc == 0 and len(out) == 1
    r = json.loads(out[0])
    # the default pack's embedding space (the fused FaceNet + dlib pack, 640-d)
    default = load_manifest(DEFAULT_PACK).embedder
    assert r["embedder_id"] == default["id"] and len(r["embedding"]) == default["dim"]
    assert abs(sum(v * v for v in r["embedding"]) - 1.0) < 1e-3


def test_min_face_option(capsys: pytest.CaptureFixture[str], media_dir: Path) -> None:
    scene = str(media_dir / "scenes" / "multiface.jpg")  # faces of about 80-120 px
    rc, out, err = _run(capsys, "--min-face", "300", scene)
    assert rc == 0 and out == [] and err == [f"motcua: {scene}: no face found"]
    rc, _, err = _run(capsys, "--min-face", "5", scene)
    assert rc == 2 and "--min-face" in err[-1]


def test_compare_same_and_different(capsys: pytest.CaptureFixture[str], media_dir: Path) -> None:
    faces = media_dir / "faces"
    rc, out, _ = _run(
        capsys,
        "--compare",
        str(faces / "barack_obama" / "1.jpg"),
        str(faces / "barack_obama" / "2.jpg"),
    )
    same = json.loads(out[0])
    assert rc == 0 and same["same_person"] is True and same["similarity"] >= same["threshold"]
    rc, out, _ = _run(
        capsys,
        "--compare",
        str(faces / "barack_obama" / "1.jpg"),
        str(faces / "joe_biden" / "1.jpg"),
    )
    diff = json.loads(out[0])
    assert rc == 0 and diff["same_person"] is False and diff["similarity"] < diff["threshold"]


def test_bad_files_one_line_each_and_others_still_done(
    capsys: pytest.CaptureFixture[str], media_dir: Path, tmp_path: Path
) -> None:
    """What was tried: a missing path, a directory, an empty file, a text file, a
    truncated JPEG and a video, mixed with one good photo."""
    good = str(media_dir / "scenes" / "two_people.jpg")
    jpeg = (media_dir / "faces" / "joe_biden" / "2.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    bad = [
        str(tmp_path / "missing.jpg"),
        str(tmp_path),
        str(tmp_path / "empty.jpg"),
        str(tmp_path / "notes.jpg"),
        str(tmp_path / "cut.jpg"),
        str(media_dir / "video" / "hamilton_clip.mp4"),
    ]
    rc, out, err = _run(capsys, bad[0], good, *bad[1:])
    assert rc == 1
    assert len(out) == 2 and all(json.loads(line)["image"] == good for line in out)
    assert len(err) == len(bad)
    for path, line in zip(bad, err, strict=True):
        assert line.startswith(f"motcua: error: {path}: "), line


def test_compare_errors(
    capsys: pytest.CaptureFixture[str], media_dir: Path, tmp_path: Path
) -> None:
    photo = str(media_dir / "faces" / "barack_obama" / "1.jpg")
    rc, out, err = _run(capsys, "--compare", photo)
    assert (
        rc == 1
        and out == []
        and err == ["motcua: error: --compare takes exactly two images, got 1"]
    )
    rc, out, err = _run(capsys, "--compare", photo, str(tmp_path / "nope.png"))
    assert rc == 1 and out == [] and len(err) == 1 and "no such file" in err[0]
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((200, 200, 3), 128, np.uint8))
    rc, out, err = _run(capsys, "--compare", photo, str(grey))
    assert rc == 1 and err == [f"motcua: error: {grey}: no face found"]


def test_real_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    bad_config = tmp_path / "terminal.toml"
    bad_config.write_text("[detector]\nmin_face = 3\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, code, words in (
        (["faces", str(tmp_path / "missing.png")], 1, "no such file"),
        (["--config", str(bad_config), "faces", "x.png"], 2, "detector.min_face"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "motcua", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
