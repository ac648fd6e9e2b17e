"""``motcua store`` on a real store directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_helpers import EMBEDDER, fill, open_store

from motcua.cli import main


def test_info_verify_checkpoint_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    with open_store(tmp_path) as s:
        fill(s, 12)
        want = s.content_hash()
    assert main(["store", "info", "--dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["embedder_id"], info["citizens"], info["last_seq"]) == (EMBEDDER, 12, 12)
    assert info["checkpoints"] and info["checkpoints"][0]["seq"] == 12
    assert main(["store", "verify", "--dir", str(tmp_path)]) == 0
    assert want in capsys.readouterr().out
    assert main(["store", "checkpoint", "--dir", str(tmp_path)]) == 0
    assert main(["store", "rebuild", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "index rebuilt" in out
    with open_store(tmp_path) as s:  # still the same gallery, now a new index generation
        s.verify_index()
        assert s.content_hash() == want and s.index_stats()["generation"] >= 2


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "info", "--dir", str(tmp_path / "none")]) == 1
    assert "no gallery store" in capsys.readouterr().err
    with open_store(tmp_path) as s:
        fill(s, 2)
        assert main(["store", "info", "--dir", str(tmp_path)]) == 0  # read-only: allowed
        assert main(["store", "verify", "--dir", str(tmp_path)]) == 1  # in use: refused
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another process" in err[0]
