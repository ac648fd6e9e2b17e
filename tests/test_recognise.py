"""``motcua recognise`` (the pipeline-only demo) on the real sample media: the gallery is
the first photo of each person in faces/; who it names in the other photos, the scenes
and the hamilton clip is checked against what the pictures show."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from faces.pipeline import FacePipeline
from motcua.cli import main
from motcua.recognise import enrol, recognise

#: photos below the pack's threshold against their person's first photo (the gallery
#: `recognise` builds): the pair tests/test_identity.py pins (0.495 at margin 24)
KNOWN_MISSES = {"alex_lacamoire/2.png"}


def test_who_is_where_on_the_sample_media(face_pipeline: FacePipeline, media_dir: Path) -> None:
    out = io.StringIO()
    gallery = enrol(face_pipeline, media_dir / "faces", out)
    assert len(gallery.names) == 10
    report = recognise(
        face_pipeline,
        gallery,
        [media_dir / "faces", media_dir / "scenes", media_dir / "video" / "hamilton_clip.mp4"],
        out,
        video_step=5,
    )
    text = out.getvalue()
    assert report.errors == 0 and report.images == 11 + 4

    by_input: dict[str, list[str | None]] = {}
    for src, _frame, _box, name, _sim in report.sightings:
        by_input.setdefault(
            Path(src).name if "scenes" in src or "video" in src else src, []
        ).append(name)
    # the other photos of each person: the main face is that person (the hard cases
    # 5_small and 6_partial may go unrecognised, never named as someone else)
    for src, names in by_input.items():
        if "/faces/" in src:
            person = Path(src).parent.name
            assert set(names) <= {person, None}, f"{src}: {names}"
            if not Path(src).name.startswith(("5_small", "6_partial")) and \
                    f"{person}/{Path(src).name}" not in KNOWN_MISSES:
                assert person in names, f"{src}: {names}"
    assert sorted(by_input["two_people.jpg"], key=str) == ["barack_obama", "joe_biden"]
    assert sorted(by_input["kit_with_rose.jpg"], key=str) == ["kit_harington", "rose_leslie"]
    # Biden, Obama and the girl at the lower right, who is not enrolled
    assert sorted(map(str, by_input["obama_and_biden.jpg"])) == [
        "None",
        "barack_obama",
        "joe_biden",
    ]
    assert by_input["multiface.jpg"] == [None] * 6  # the Friends cast is not enrolled
    video = by_input["hamilton_clip.mp4"]
    assert set(video) == {"lin_manuel_miranda", None}
    assert video.count("lin_manuel_miranda") >= 20
    assert "lin_manuel_miranda in" in text
    disagree = [ln for ln in text.splitlines() if "[folder says" in ln]
    assert all(any(m in ln for m in KNOWN_MISSES) for ln in disagree), disagree


def test_bad_inputs(capsys: pytest.CaptureFixture[str], media_dir: Path, tmp_path: Path) -> None:
    """What was tried: a missing photo among good ones, a missing gallery, --every 0."""
    rc = main(
        [
            "recognise",
            "--gallery",
            str(media_dir / "faces"),
            str(tmp_path / "gone.jpg"),
            str(media_dir / "scenes" / "two_people.jpg"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and err.strip().splitlines() == [
        f"motcua: error: {tmp_path / 'gone.jpg'}: no such file"
    ]
    assert "barack_obama" in out and "joe_biden" in out
    rc = main(["recognise", "--gallery", str(tmp_path / "nobody")])
    out, err = capsys.readouterr()
    assert rc == 1 and err.strip().splitlines() == [
        f"motcua: error: gallery folder not found: {tmp_path / 'nobody'} (give --gallery DIR)"
    ]
    rc = main(["recognise", "--gallery", str(media_dir / "faces"), "--every", "0"])
    assert rc == 1 and "--every" in capsys.readouterr().err
