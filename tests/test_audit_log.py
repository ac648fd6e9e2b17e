"""The audit log is rotated by size and keeps a bounded number of old files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edge.config import ConfigError, config_from_dict
from edge.session.audit import AuditLog


def _lines(paths: list[Path]) -> list[dict[str, object]]:
    out = []
    for p in paths:
        if p.exists():
            out.extend(json.loads(line) for line in p.read_text().splitlines())
    return out


def test_rotation_keeps_the_newest_lines_within_the_bound(tmp_path: Path) -> None:
    log = AuditLog.in_state_dir(tmp_path, max_bytes=2000, keep=2)
    for i in range(100):
        assert log.session(terminal="t", session_id=f"s-{i:03d}", outcome="matched",
                           citizen_id=f"c-{i}", score=0.7)
    files = sorted(p.name for p in tmp_path.glob("audit*.jsonl"))
    assert files == ["audit.1.jsonl", "audit.2.jsonl", "audit.jsonl"]
    for p in tmp_path.glob("audit*.jsonl"):
        assert p.stat().st_size < 2000 + 300  # rotated before a line crosses the size
    kept = _lines([log.rotated(2), log.rotated(1), log.path])
    ids = [e["session"] for e in kept]
    assert ids == sorted(ids) and ids[-1] == "s-099"  # in order, newest kept
    assert "s-000" not in ids  # the oldest were dropped with the oldest file


def test_fewer_files_kept_after_a_smaller_setting_and_none_at_zero(tmp_path: Path) -> None:
    big = AuditLog.in_state_dir(tmp_path, max_bytes=500, keep=5)
    for i in range(40):
        big.session(terminal="t", session_id=f"a-{i}", outcome="left")
    assert big.rotated(5).exists()
    small = AuditLog.in_state_dir(tmp_path, max_bytes=500, keep=0)
    for i in range(10):
        small.session(terminal="t", session_id=f"b-{i}", outcome="left")
    assert sorted(p.name for p in tmp_path.glob("audit*.jsonl")) == ["audit.jsonl"]


def test_two_writers_lose_no_line(tmp_path: Path) -> None:
    """The session machine and the LookupImage handler each hold an AuditLog."""
    logs = [AuditLog.in_state_dir(tmp_path, max_bytes=3000, keep=100) for _ in range(2)]

    def write(n: int) -> None:
        for i in range(150):
            logs[n].session(terminal="t", session_id=f"w{n}-{i}", outcome="left")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [logs[0].rotated(n) for n in range(100, 0, -1)] + [logs[0].path]
    got = [e["session"] for e in _lines(paths)]
    assert sorted(got) == sorted(f"w{n}-{i}" for n in range(2) for i in range(150))


def test_audit_settings_are_validated() -> None:
    cfg = config_from_dict({"terminal": {"audit_max_mb": 1, "audit_files": 0}})
    assert cfg.terminal.audit_files == 0
    with pytest.raises(ConfigError, match="terminal.audit_max_mb"):
        config_from_dict({"terminal": {"audit_max_mb": 0}})
    with pytest.raises(ConfigError, match="terminal.audit_files"):
        config_from_dict({"terminal": {"audit_files": -1}})
