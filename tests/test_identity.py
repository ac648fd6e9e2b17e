"""Identity on the real sample faces: every pair of faces/ images, against the pack's
match threshold. Same person >= threshold, different people < threshold, but for the two
pairs named in KNOWN_MISSES and KNOWN_FALSE_MATCHES; the hard cases (5_small, 6_partial)
may fall below for their own person but must never match anyone else. The true/false
match rates are printed and written to tests/artifacts/identity.json.

The pack's crop and threshold are chosen on LFW (thousands of pairs, docs/recognition.md),
not on these 21 photos: at the LFW choice (margin 24, threshold 0.525) the samples no
longer separate perfectly (docs/pipeline.md). This test pins exactly which pairs fall on
the wrong side, so any other pair doing so fails it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from faces.imagefiles import read_image
from faces.pipeline import FacePipeline, build_pipeline

HARD = ("5_small", "6_partial")
#: same-person pairs below the pack's threshold (0.495 at margin 24; 0.565 at the former
#: margin 44): a low-resolution PNG of Alex Lacamoire against a photo of another day
KNOWN_MISSES = {("alex_lacamoire/1.jpg", "alex_lacamoire/2.png")}
#: different-person pairs at or above it: the well-known look-alikes (0.539 at margin 24,
#: 0.524 at margin 44)
KNOWN_FALSE_MATCHES = {("angelina_jolie/1.jpg", "kate_siegel/1.jpg")}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclasses.dataclass(frozen=True)
class Sample:
    person: str
    name: str
    embedding: np.ndarray

    @property
    def hard(self) -> bool:
        return self.name.startswith(HARD)

    @property
    def label(self) -> str:
        return f"{self.person}/{self.name}"


@pytest.fixture(scope="module")
def samples(face_pipeline: FacePipeline, media_dir: Path) -> list[Sample]:
    """The main (largest) face of every image in faces/, embedded."""
    out = []
    for path in sorted((media_dir / "faces").glob("*/*")):
        image = read_image(path)
        found = face_pipeline.detect(image)
        assert len(found) >= 1, f"{path}: no face"
        emb = face_pipeline.embed(image, found.take([found.largest()]))[0]
        out.append(Sample(path.parent.name, path.name, emb))
    return out


def test_every_pair_against_the_pack_threshold(
    face_pipeline: FacePipeline, samples: list[Sample]
) -> None:
    t = face_pipeline.match_threshold
    pairs = []
    for a, b in itertools.combinations(samples, 2):
        sim = face_pipeline.similarity(a.embedding, b.embedding)
        pairs.append((a, b, sim))
    same = [(a, b, s) for a, b, s in pairs if a.person == b.person]
    diff = [(a, b, s) for a, b, s in pairs if a.person != b.person]
    easy_same = [p for p in same if not (p[0].hard or p[1].hard)]
    hard_same = [p for p in same if p[0].hard or p[1].hard]

    tmr = sum(s >= t for _, _, s in same) / len(same)
    fmr = sum(s >= t for _, _, s in diff) / len(diff)
    report = {
        "threshold": t,
        "embedder_id": face_pipeline.embedder_id,
        "images": len(samples),
        "same_pairs": len(same),
        "different_pairs": len(diff),
        "true_match_rate": tmr,
        "false_match_rate": fmr,
        "same_min": min(s for *_, s in same),
        "same_min_without_hard": min(s for *_, s in easy_same),
        "different_max": max(s for *_, s in diff),
        "pairs": sorted(
            (
                {
                    "a": a.label,
                    "b": b.label,
                    "same": a.person == b.person,
                    "similarity": round(s, 4),
                }
                for a, b, s in pairs
            ),
            key=lambda r: -r["similarity"],
        ),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "identity.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nidentity: {len(same)} same-person pairs, TMR {tmr:.3f}; {len(diff)} "
        f"different-person pairs, FMR {fmr:.3f}; threshold {t}; same min "
        f"{report['same_min']:.3f}, different max {report['different_max']:.3f}"
    )

    for a, b, s in easy_same:
        assert s >= t or (a.label, b.label) in KNOWN_MISSES, (
            f"{a.label} vs {b.label}: {s:.3f} < {t} (same person not matched)")
    for a, b, s in diff:
        assert s < t or (a.label, b.label) in KNOWN_FALSE_MATCHES, (
            f"{a.label} vs {b.label}: {s:.3f} >= {t} (different people matched)")
    # hard cases may be rejected for their own person: reported, not required
    print("hard same-person pairs:", [f"{a.label}~{b.label} {s:.3f}" for a, b, s in hard_same])
    assert len(samples) == 21 and len(same) == 23 and len(diff) == 187


def test_hard_cases_never_match_another_person(
    face_pipeline: FacePipeline, samples: list[Sample]
) -> None:
    hard = [s for s in samples if s.hard]
    assert {s.name for s in hard} == {"5_small.jpg", "6_partial.jpg"}
    for h in hard:
        for other in samples:
            if other.person != h.person:
                sim = face_pipeline.similarity(h.embedding, other.embedding)
                assert not face_pipeline.same_person(sim), f"{h.label} matched {other.label}"


def test_batch_embedding_equals_single(face_pipeline: FacePipeline, media_dir: Path) -> None:
    image = read_image(media_dir / "scenes" / "multiface.jpg")
    found = face_pipeline.detect(image)
    batch = face_pipeline.embed(image, found)
    single = np.concatenate(
        [face_pipeline.embed(image, found.take([i])) for i in range(len(found))]
    )
    assert batch.shape == (6, face_pipeline.embedder.dim)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert (np.sum(batch * single, axis=1) >= 0.9999).all()


def test_no_face_embeds_to_empty(face_pipeline: FacePipeline) -> None:
    grey = np.full((240, 320, 3), 128, np.uint8)
    faces = face_pipeline.analyse(grey)
    assert len(faces) == 0 and faces.embeddings.shape == (0, face_pipeline.embedder.dim)


def test_factory_refuses_unknown_stage_kinds(face_pipeline: FacePipeline) -> None:
    from edge.config import DEFAULT_MODEL_DIR, DEFAULT_PACK, Config
    from models.pack import load_pack

    pack = load_pack(DEFAULT_MODEL_DIR, DEFAULT_PACK)
    for field, kind in (("detector", "yunet"), ("embedder", "sface"), ("detector", "../x")):
        spec = dataclasses.replace(getattr(pack, field), kind=kind)
        with pytest.raises(ModelError, match=field):
            build_pipeline(dataclasses.replace(pack, **{field: spec}), Config())
