"""Real-pipeline helpers for the session tests: the built model pack, a real GalleryStore
with the sample faces enrolled, and a runner that plays frames through the terminal loop.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge.camera.base import Frame
from edge.config import Config, SessionConfig
from edge.session.events import EventBus, Matched, SessionEvent
from edge.session.loop import FrameLoop
from edge.session.machine import SessionMachine
from edge.session.tracker import Tracker
from edge.store import CitizenUpsert, GalleryStore
from faces.imagefiles import read_image
from faces.pipeline import BgrPorts, FacePipeline, load_pipeline

#: who is enrolled, from ../shared/media/faces (folder: images); everyone but the two
#: hard-case images, which the pipeline may reject for quality
ENROLLED = {
    "lin_manuel_miranda": ["1.png"],
    "barack_obama": ["1.jpg", "2.jpg", "3.jpg", "4.jpg"],
    "joe_biden": ["1.jpg", "2.jpg"],
    "kit_harington": ["1.jpg", "2.jpg", "3.jpg"],
    "rose_leslie": ["1.jpg", "2.jpg"],
    "alex_lacamoire": ["1.jpg", "2.png", "3.jpg"],
    "angelina_jolie": ["1.jpg"],
    "kate_siegel": ["1.jpg"],
    "paul_rudd": ["1.jpg"],
    "shea_whigham": ["1.jpg"],
}


def pipeline() -> FacePipeline:
    return load_pipeline(Config())


def enrol_gallery(pipe: FacePipeline, media: Path, path: Path,
                  people: dict[str, list[str]] = ENROLLED) -> GalleryStore:
    """A real store with one citizen per person (citizen id = folder name)."""
    store = GalleryStore.open(path, embedder_id=pipe.embedder_id, dim=pipe.embedder.dim)
    changes = []
    for seq, (person, files) in enumerate(sorted(people.items()), 1):
        embs = []
        for name in files:
            img = read_image(media / "faces" / person / name)
            faces = pipe.analyse(img)
            assert len(faces), f"no face in {person}/{name}"
            embs.append(faces.embeddings[faces.detections.largest()])
        changes.append(CitizenUpsert(seq, person, f"{person[:3]}***", b"", b"",
                                     np.stack(embs).astype(np.float32)))
    store.apply(changes, epoch=1)
    return store


class CachedDetector:
    """The real detector, memoised per frame index (several sessions over one sequence)."""

    def __init__(self, ports: BgrPorts) -> None:
        self.ports = ports
        self.cache: dict[int, object] = {}
        self.key = -1

    def detect(self, image: np.ndarray):  # noqa: ANN201
        if self.key not in self.cache:
            self.cache[self.key] = self.ports.detect(image)
        return self.cache[self.key]


@dataclasses.dataclass
class Run:
    events: list[SessionEvent]
    machine: SessionMachine

    def matched(self) -> list[str]:
        return [e.citizen_id for e in self.events if isinstance(e, Matched)]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def run_frames(frames: Iterable[Frame], ports: BgrPorts, gallery: GalleryStore,
               cfg: SessionConfig, threshold: float, *, seed: int = 0,
               detector: CachedDetector | None = None) -> Run:
    """Play ``frames`` through a fresh terminal loop (tracker + session machine)."""
    bus = EventBus()
    events: list[SessionEvent] = []
    bus.add_listener(events.append)
    machine = SessionMachine(cfg, embedder=ports, gallery=gallery, threshold=threshold,
                             bus=bus, rng=random.Random(seed), terminal_id="test")
    term = FrameLoop(detector=detector or ports, machine=machine,
                    tracker=Tracker(iou_min=cfg.track_iou, centre_max=cfg.track_centre,
                                    lost_s=cfg.lost_s), bus=bus)
    for f in frames:
        if detector is not None:
            detector.key = f.index
        term.step(f)
    return Run(events, machine)
