"""Metrics registry, text exposition and the loopback exporter; JSON journal logging."""

from __future__ import annotations

import io
import json
import logging
import math
import urllib.request

import pytest

from edge.ops.logging import JsonFormatter, setup_logging
from edge.ops.metrics import MetricsServer, Registry, TerminalMetrics, service_collector


def test_counter_gauge_histogram_render() -> None:
    reg = Registry()
    m = TerminalMetrics(reg)
    m.sessions.inc(outcome="matched")
    m.sessions.inc(outcome="matched")
    m.sessions.inc(outcome="not_recognised")
    m.sync_rejections.inc(reason='bad "signature"')
    m.stage_latency.observe(0.003, stage="detect")
    m.stage_latency.observe(0.2, stage="detect")
    m.store_size.set_function(lambda: 4096)
    text = reg.render()
    assert 'motcua_sessions_total{outcome="matched"} 2' in text
    assert 'motcua_sessions_total{outcome="not_recognised"} 1' in text
    assert 'motcua_sync_rejections_total{reason="bad \\"signature\\""} 1' in text
    assert 'motcua_stage_latency_seconds_bucket{stage="detect",le="0.005"} 1' in text
    assert 'motcua_stage_latency_seconds_bucket{stage="detect",le="+Inf"} 2' in text
    assert 'motcua_stage_latency_seconds_count{stage="detect"} 2' in text
    assert "motcua_store_size_bytes 4096" in text
    assert "# TYPE motcua_frames_total counter" in text
    with pytest.raises(ValueError):
        m.sessions.inc(-1, outcome="matched")
    with pytest.raises(ValueError):
        m.sessions.inc(colour="red")
    with pytest.raises(ValueError):
        reg.counter("motcua_frames_total", "twice")


def test_frames_per_second_window() -> None:
    m = TerminalMetrics(Registry())
    for i in range(31):
        m.frame(now=100 + i / 10)   # 10 fps for 3 s
    assert m.camera_fps.value() == pytest.approx(10.0)
    assert m.frames.value() == 31
    m.frame(now=120.0)              # after a long stall the window holds one frame
    assert m.camera_fps.value() == 0.0


def test_failing_probe_does_not_break_scrape() -> None:
    reg = Registry()
    g = reg.gauge("g", "probe")
    g.set_function(lambda: 1 / 0)
    assert "g NaN" in reg.render()
    assert math.isnan(Registry().gauge("h", "unset").value())


def test_exporter_serves_over_http() -> None:
    reg = Registry()
    TerminalMetrics(reg).sessions.inc(outcome="matched")
    with MetricsServer(reg, "127.0.0.1", 0) as srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
            body = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'motcua_sessions_total{outcome="matched"} 1' in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/nope", timeout=5)


def test_json_log_lines_with_journal_priority() -> None:
    fmt = JsonFormatter(journal_prefix=True)
    rec = logging.LogRecord("edge.sync", logging.WARNING, __file__, 1, "gap %d", (7,), None)
    rec.terminal = "t-01"
    line = fmt.format(rec)
    assert line.startswith("<4>{")
    entry = json.loads(line[3:])
    assert entry["msg"] == "gap 7" and entry["level"] == "warning"
    assert entry["logger"] == "edge.sync" and entry["terminal"] == "t-01"


def test_setup_logging_json_to_stream() -> None:
    buf = io.StringIO()
    handler = setup_logging(logging.INFO, fmt="json", stream=buf)
    try:
        try:
            raise RuntimeError("camera gone")
        except RuntimeError:
            log = logging.getLogger("edge.camera")
            log.exception("read failed", extra={"device": "/dev/video0"})
        entry = json.loads(buf.getvalue().strip())
        assert entry["device"] == "/dev/video0"
        assert "RuntimeError: camera gone" in entry["exc"]
    finally:
        logging.getLogger().removeHandler(handler)


def test_service_collector_mirrors_real_store_and_sync_engine(tmp_path) -> None:
    """The collector over a real GalleryStore and a real SyncEngine fed by the district's
    own signed batches plus a forged one and random bytes (no broker: the engine is the
    part that counts; the broker tests cover delivery)."""
    import os
    import types

    from edge.store import GalleryStore
    from edge.syncclient.engine import SyncEngine
    from tests.sync_helpers import (
        DISTRICT,
        EMBEDDER,
        add_citizens,
        craft_batch,
        log_changes,
        new_district,
        new_key,
    )

    dlog = new_district(tmp_path / "d.sqlite", dim=8)
    add_citizens(dlog, 3)
    key, forger = new_key(), new_key()
    store = GalleryStore.open(tmp_path / "store", embedder_id=EMBEDDER, dim=8)
    try:
        eng = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                         public_key=key.public_key(), spool_dir=tmp_path)
        eng.handle("batch", craft_batch(key, log_changes(dlog, 1, 3), dim=8))
        eng.handle("batch", craft_batch(forger, log_changes(dlog, 4, 4), dim=8))
        eng.handle("batch", os.urandom(200))
        assert sum(eng.rejections.values()) == 2
        eng.district_head = 5          # what the district's manifest announced
        reg = Registry()
        m = TerminalMetrics(reg)
        service = types.SimpleNamespace(terminal=None, store=store,
                                        subscriber=types.SimpleNamespace(engine=eng))
        reg.add_collector(service_collector(service, m))
        text = reg.render()
    finally:
        store.close()
    for reason, n in eng.rejections.items():
        assert f'motcua_sync_rejections_total{{reason="{reason}"}} {n}' in text
    assert f"motcua_sync_applied_change {store.last_seq}" in text
    assert f"motcua_sync_lag_changes {5 - store.last_seq}" in text
    assert f"motcua_gallery_citizens {store.citizen_count}" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("motcua_store_size_bytes ")]
    assert float(line.split()[1]) > 0
