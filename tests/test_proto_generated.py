"""The committed generated protobuf code must match its .proto sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    # regenerate every .proto into a temp root and compare byte for byte with the repo
    subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.name for p in (tmp_path / "proto").iterdir())
    assert fresh, "generator wrote nothing"
    committed = sorted(p.name for p in (REPO / "proto").iterdir() if "_pb2" in p.name)
    assert fresh == committed, "generated file set differs: run python proto/generate.py"
    for name in fresh:
        assert (tmp_path / "proto" / name).read_bytes() == (REPO / "proto" / name).read_bytes(), (
            f"proto/{name} is stale: run python proto/generate.py"
        )


def test_generated_modules_import_as_proto_package() -> None:
    from proto import sync_pb2

    assert sync_pb2.DESCRIPTOR.package == "motcua.sync.v1"
    assert sync_pb2.PROTOCOL_VERSION == 1
