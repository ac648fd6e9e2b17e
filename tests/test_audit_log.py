"""The audit log is rotated by size and keeps a bounded number of old files."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


def test_removed_citizens_are_redacted_everywhere_and_no_line_is_lost(tmp_path: Path) -> None:
    """Right to be forgotten on the terminal: after a citizen leaves the gallery, their id
    is blanked in every audit file (rotated ones too) and in the outbox, while appends
    go on; other citizens' lines are untouched."""
    from edge.session.audit import OutboxReporter
    from edge.syncclient.outbox import OutboxSender

    def redact(state: Path, keep: Callable[[str], bool]) -> int:  # as the service does
        sender = OutboxSender(state / "outbox", terminal_id="t", district_id="d")
        return (AuditLog.in_state_dir(state).redact_citizens(keep)
                + sender.redact_citizens(keep))

    log = AuditLog.in_state_dir(tmp_path, max_bytes=1500, keep=1000)  # none dropped
    outbox = OutboxReporter.in_state_dir(tmp_path)
    for i in range(40):
        log.session(terminal="t", session_id=f"s-{i}", outcome="matched",
                    citizen_id="079123456789" if i % 2 else "c-stays", score=0.8)
    outbox.report("not_me", {"session": "s-1", "citizen_id": "079123456789"})
    renamed = tmp_path / "outbox" / "reports-000001.jsonl"
    renamed.write_text(json.dumps({"kind": "not_me", "session": "s-0",
                                   "citizen_id": "079123456789"}) + "\n")
    assert len(log.files()) > 3  # rotated files exist

    stop = threading.Event()
    extra: list[str] = []

    def keep_appending() -> None:
        while not stop.is_set():
            sid = f"x-{len(extra)}"
            log.session(terminal="t", session_id=sid, outcome="left")
            extra.append(sid)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        changed = redact(tmp_path, keep=lambda cid: cid == "c-stays")
    finally:
        stop.set()
        writer.join()
    assert changed == 20 + 1 + 1
    everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*.jsonl"))
    assert b"079123456789" not in everything
    lines = _lines(log.files())
    assert sorted(e["session"] for e in lines if e.get("redacted")) == sorted(
        f"s-{i}" for i in range(1, 40, 2))
    assert sum(e["citizen_id"] == "c-stays" for e in lines) == 20
    assert {e["session"] for e in lines} >= {f"s-{i}" for i in range(40)} | set(extra)
    assert redact(tmp_path, keep=lambda cid: cid == "c-stays") == 0


def test_terminal_service_wires_the_redaction_to_its_sync(tmp_path: Path) -> None:
    """The service hands the sync engine its redaction, which asks the real store who is
    still there."""
    import types

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.config import ApiConfig, Config, TerminalConfig
    from edge.service import SyncLink, TerminalService
    from edge.store import CitizenUpsert, GalleryStore
    from sync.changes import CitizenDelete
    from sync.mqtt import BrokerSettings

    state = tmp_path / "state"
    cfg = Config(terminal=TerminalConfig(id="t1", district="d", state_dir=state),
                 api=ApiConfig(listen="127.0.0.1:0"))
    link = SyncLink(broker=BrokerSettings(host="127.0.0.1", port=1, reconnect_min_s=0.0,
                                          reconnect_max_s=0.0),
                    public_key=Ed25519PrivateKey.generate().public_key())
    vision = types.SimpleNamespace(pack="test-pack")
    service = TerminalService(cfg, vision, sync=link)  # type: ignore[arg-type]
    store = GalleryStore.open(state / "store", embedder_id="e", dim=4)
    vec = np.eye(4, dtype=np.float32)[:1]
    store.apply([CitizenUpsert(1, "gone", "A", b"", b"", vec),
                 CitizenUpsert(2, "stays", "B", b"", b"", vec)], epoch=1)
    store.apply([CitizenDelete(3, "gone")], epoch=1)
    service.store = store
    for cid in ("gone", "stays"):
        service.audit_log().session(terminal="t1", session_id=f"s-{cid}", outcome="matched",
                                    citizen_id=cid)
    try:
        service._start_sync()  # noqa: SLF001 - the wiring is the point
        assert service.subscriber is not None
        hook = service.subscriber.engine.on_citizens_removed
        assert hook is not None and hook() == 1
        ids = {e["session"]: e["citizen_id"] for e in _lines(service.audit_log().files())}
        assert ids == {"s-gone": "", "s-stays": "stays"}
    finally:
        service.stop()
