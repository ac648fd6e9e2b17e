"""The code is clean for ruff, mypy and vermin (all pinned in pyproject.toml, so a new release
of either cannot turn CI red on its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    _run_cmd([sys.executable, "-m", *args])


def _run_cmd(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff() -> None:
    _run("ruff", "check", ".")


@pytest.mark.parametrize("targets", [
    ("core", "faces", "sync", "edge", "district", "motcua", "models", "proto"),
    # one by one: bench/sync.py would clash with the sync package in one run
    *((str(p.relative_to(ROOT)),) for p in sorted((ROOT / "bench").glob("*.py"))),
], ids=lambda t: "+".join(t))
def test_mypy(targets: tuple[str, ...]) -> None:
    _run("mypy", "--no-incremental", *targets)


def test_runs_on_python_310() -> None:
    """JetPack 6 (the Jetson Orin) ships Python 3.10 and NVIDIA's onnxruntime-gpu wheels are
    built for it: nothing in the packages, the bench or the tests may need 3.11+ (vermin
    reads the stdlib names and syntax each file uses; guarded imports carry ``# novermin``)."""
    _run_cmd([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
              "--target=3.10-", "--no-tips", "--violations", "--no-config-file",
              "core", "faces", "sync", "edge", "district", "motcua", "models", "proto",
              "bench", "tests", "deploy"])
