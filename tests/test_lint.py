"""The code is clean for ruff and mypy (both pinned in pyproject.toml, so a new release
of either cannot turn CI red on its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
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
