"""LookupImage on a real gRPC server (port 0) with a real store: image-bomb guard, per-peer
rate limit, no score for a non-match.

The face detector and embedder are boundary fakes (a detector that finds one face in any
picture, an embedder that maps bright pictures to citizen c1 and others to a near miss);
the image reader, the store, the decision and the gRPC server are the real ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from core.errors import ImageError
from edge.config import ApiConfig, CameraConfig, Config, SessionConfig, TerminalConfig
from edge.service import TerminalService, Vision
from faces.imagefiles import decode_image
from faces.types import Detections
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc
from sync.changes import CitizenUpsert

DIM = 4
C1 = np.array([1, 0, 0, 0], np.float32)
C2 = np.array([0, 1, 0, 0], np.float32)
#: cosine 0.6 to c1: below the threshold (0.7), so not a match, but a telling score
NEAR_MISS = np.array([0.6, 0, 0.8, 0], np.float32)


@dataclasses.dataclass
class FakeFaces:
    """One face in the middle of any picture; bright pictures embed as c1."""

    detected: int = 0

    def detect(self, image: np.ndarray) -> Detections:
        self.detected += 1
        h, w = image.shape[:2]
        lm = np.array([[[w * .4, h * .4], [w * .6, h * .4], [w * .5, h * .5],
                        [w * .4, h * .6], [w * .6, h * .6]]], np.float32)
        return Detections(np.array([[w * .25, h * .25, w * .75, h * .75]], np.float32),
                          np.array([0.99], np.float32), lm)

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        v = C1 if float(image.mean()) > 200 else NEAR_MISS
        return np.repeat(v[None, :], len(faces.scores), axis=0)


def png(width: int, height: int, value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[TerminalService, FakeFaces, grpc.Channel]]:
    faces = FakeFaces()
    vision = Vision(detector=faces, embedder=faces, pack="fake", embedder_id="fake-4",
                    dim=DIM, threshold=0.7)
    cfg = Config(
        terminal=TerminalConfig(id="counter", district="d", state_dir=tmp_path / "state"),
        camera=CameraConfig(source="unused"),
        session=SessionConfig(margin=0.05),
        api=ApiConfig(listen="127.0.0.1:0", lookup_image=True, lookup_per_minute=6,
                      lookup_burst=3),
    )
    service = TerminalService(cfg, vision)
    store, _ = service.open_store()
    store.apply([
        CitizenUpsert(seq=1, citizen_id="c1", masked_name="Nguyễn T. T***", pin_hash=b"",
                      pin_salt=b"", embeddings=C1[None, :]),
        CitizenUpsert(seq=2, citizen_id="c2", masked_name="Trần V. B***", pin_hash=b"",
                      pin_salt=b"", embeddings=C2[None, :]),
    ], epoch=1)
    service.api.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.api.port}")
    yield service, faces, channel
    channel.close()
    service.stop()


def lookup(channel: grpc.Channel, image: bytes) -> pb.LookupImageResponse:
    return pb_grpc.DisplayStub(channel).LookupImage(  # type: ignore[no-any-return]
        pb.LookupImageRequest(image=image), timeout=30)


def test_a_small_png_of_36_megapixels_is_refused_from_its_header(terminal) -> None:  # type: ignore[no-untyped-def]
    _, faces, channel = terminal
    bomb = png(6000, 6000, 255)
    assert len(bomb) < 200_000  # ~105 KB on the wire ...
    with pytest.raises(ImageError, match="too large"):  # ... refused by the shared reader
        decode_image(bomb, "bomb")
    with pytest.raises(grpc.RpcError) as exc:
        lookup(channel, bomb)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "too large" in exc.value.details()  # type: ignore[attr-defined]
    assert faces.detected == 0  # never decoded, never reached the detector
    # a phone-sized photo still goes through
    assert lookup(channel, png(1600, 1200, 255)).matched


def test_a_non_match_carries_no_score(terminal) -> None:  # type: ignore[no-untyped-def]
    _, _, channel = terminal
    hit = lookup(channel, png(320, 240, 255))
    assert hit.matched and hit.match.masked_name == "Nguyễn T. T***"
    assert hit.score == pytest.approx(1.0)
    miss = lookup(channel, png(320, 240, 40))
    assert not miss.matched and not miss.HasField("match")
    assert miss.score == 0.0 and miss.SerializeToString() == b""


def test_lookups_are_rate_limited_per_peer(terminal) -> None:  # type: ignore[no-untyped-def]
    _, faces, channel = terminal
    small = png(64, 64, 40)
    for _ in range(3):  # the burst
        lookup(channel, small)
    with pytest.raises(grpc.RpcError) as exc:
        lookup(channel, small)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "api.lookup_per_minute" in exc.value.details()  # type: ignore[attr-defined]
    assert faces.detected == 3
