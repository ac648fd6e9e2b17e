"""Metrics registry, text exposition and the loopback exporter; JSON journal logging."""

from __future__ import annotations

import io
import json
import logging
import math
import urllib.request

import pytest

from edge.ops.logging import JsonFormatter, setup_logging
from edge.ops.metrics import MetricsServer, Registry, TerminalMetrics


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
