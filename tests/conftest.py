"""Shared fixtures. Test media is read in place from ../shared/media (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("MOTCUA_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The labelled sample media; its absence fails the test (CI always has it)."""
    if not (MEDIA / "faces").is_dir():
        pytest.fail(f"sample media not found at {MEDIA} (set MOTCUA_MEDIA)")
    return MEDIA


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh Mosquitto broker (persistence on) on a reserved loopback port, closed after."""
    from tests.broker import MosquittoBroker

    b = MosquittoBroker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def face_pipeline():  # type: ignore[no-untyped-def]
    """The face pipeline of the built default model pack (hashes checked); absence fails."""
    from core.errors import ModelError
    from edge.config import Config
    from faces.pipeline import load_pipeline

    try:
        return load_pipeline(Config())
    except ModelError as exc:
        pytest.fail(f"{exc} -- build it first: motcua models build (scripts/install.sh does)")


@pytest.fixture
def health_server():  # type: ignore[no-untyped-def]
    """A gRPC server with the standard health service alone, on a free loopback port:
    yields (port, servicer); the test sets what the servicer answers."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0).wait()
