"""The Prometheus exporter (prometheus_client) scraped over real HTTP; JSON journal logging."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from edge.ops.logging import JsonFormatter, setup_logging
from edge.ops.metrics import (
    MetricsServer,
    ServiceCollector,
    TerminalMetrics,
    TimedDetector,
    TimedEmbedder,
)
from edge.service import ServiceStats, collect_stats
from edge.session.loop import LoopStats

#: the exposition dashboards rely on (docs/technician-guide.md): name as scraped ->
#: (type, help, labels). Counters are listed under their sample name.
CONTRACT = {
    "motcua_frames_total": ("counter", "Camera frames processed.", ()),
    "motcua_camera_fps": ("gauge", "Frames per second over the last 5 seconds.", ()),
    "motcua_stage_latency_seconds": ("histogram", "Time spent per pipeline stage.", ("stage",)),
    "motcua_sessions_total": ("counter", "Lookup sessions ended, by outcome.", ("outcome",)),
    "motcua_sync_lag_changes": ("gauge", "District head change number minus the applied one.",
                                ()),
    "motcua_sync_applied_change": ("gauge", "Last change number applied to the store.", ()),
    "motcua_sync_rejections_total": ("counter", "Sync messages rejected, by reason.",
                                     ("reason",)),
    "motcua_store_size_bytes": ("gauge", "Size of the store on disk.", ()),
    "motcua_gallery_citizens": ("gauge", "Citizens in the local gallery.", ()),
    "motcua_build_info": ("gauge", "Version of the running terminal software.", ("version",)),
}


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """(body, content type) of a real HTTP GET on the exporter."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode(), r.headers["Content-Type"]


def families(text: str) -> dict[str, object]:
    """Parsed families by the name they are scraped under (counters with ``_total``)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name + ("_total" if fam.type == "counter" else "")] = fam
    return out


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and sorted labels -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


class Stub:
    """A detector/embedder port with no model behind it (the timing is what is tested)."""

    def detect(self, image: object) -> list[object]:
        return []

    def embed(self, image: object, faces: object) -> list[object]:
        return []

    name = "stub"


def test_observed_latencies_served_over_http() -> None:
    reg = CollectorRegistry()
    m = TerminalMetrics(reg)
    det, emb = TimedDetector(Stub(), m), TimedEmbedder(Stub(), m)
    det.detect(None)
    det.detect(None)
    emb.embed(None, [])
    assert det.name == "stub"                     # the wrapper passes other attributes on
    m.stage_latency.labels(stage="detect").observe(0.2)   # a slow one, for the buckets
    m.build_info.labels(version="1.2.3").set(1)
    with MetricsServer(reg, "127.0.0.1", 0) as srv:
        text, ctype = scrape(srv.port)
        assert ctype.startswith("text/plain; version=0.0.4")
        assert 'motcua_build_info{version="1.2.3"}' in scrape(srv.port, "/")[0]
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(srv.port, "/nope")
        assert err.value.code == 404
        err.value.close()
    got = samples(text)
    det_l, emb_l = (("stage", "detect"),), (("stage", "embed"),)
    assert got[("motcua_stage_latency_seconds_count", det_l)] == 3
    assert got[("motcua_stage_latency_seconds_count", emb_l)] == 1
    assert got[("motcua_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "detect")))] == 3
    # the stub answers in microseconds: two below 1 ms, the 0.2 s one only from le=0.25
    assert got[("motcua_stage_latency_seconds_bucket", (("le", "0.001"), ("stage", "detect")))] == 2
    assert got[("motcua_stage_latency_seconds_bucket", (("le", "0.25"), ("stage", "detect")))] == 3
    assert got[("motcua_stage_latency_seconds_sum", det_l)] >= 0.2
    assert got[("motcua_build_info", (("version", "1.2.3"),))] == 1
    assert not [n for n, _ in got if n.endswith("_created")]   # no series dashboards lack


def test_the_exporter_stops_and_frees_its_port() -> None:
    srv = MetricsServer(CollectorRegistry(), "127.0.0.1", 0).start()
    port = srv.port
    srv.stop()
    srv.stop()                                    # twice is harmless
    with socket.socket() as s:                    # the port is free again
        s.bind(("127.0.0.1", port))
    MetricsServer(CollectorRegistry(), "127.0.0.1", 0).stop()   # never started


def test_a_taken_port_is_logged_not_fatal(caplog) -> None:
    from edge.config import config_from_dict
    from edge.terminal_cli import start_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config_from_dict({"ops": {"metrics_listen": f"127.0.0.1:{port}"}})
        service = types.SimpleNamespace(stats=ServiceStats)
        with caplog.at_level(logging.WARNING, logger="edge.terminal_cli"):
            assert start_metrics(cfg, service) is None  # type: ignore[arg-type]
    assert f"metrics exporter not started on 127.0.0.1:{port}" in caplog.text


def test_service_collector_mirrors_real_store_and_sync_engine(tmp_path) -> None:
    """The collector over a real GalleryStore and a real SyncEngine fed by the district's
    own signed batches plus a forged one and random bytes (no broker: the engine is the
    part that counts; the broker tests cover delivery), scraped over HTTP."""
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
        eng.district_head = 5          # what the district's manifest announced
        stats = collect_stats(frame_loop=None, store=store, engine=eng)
        assert eng.lag == 5 - store.last_seq == stats.sync.lag_changes  # type: ignore[union-attr]
        assert sum(stats.sync.rejections.values()) == 2  # type: ignore[union-attr]
        # the loop's figures come from a running camera loop (test_ops_terminal.py)
        loop = LoopStats(frames=31, fps=10.0, outcomes={"matched": 2, "not_recognised": 1})
        reg = CollectorRegistry()
        TerminalMetrics(reg).build_info.labels(version="0.1.0").set(1)
        reg.register(ServiceCollector(lambda: dataclasses.replace(stats, loop=loop)))
        with MetricsServer(reg, "127.0.0.1", 0) as srv:
            text, _ = scrape(srv.port)
        applied, citizens = store.last_seq, store.citizen_count
    finally:
        store.close()
    fams = families(text)
    assert set(fams) == set(CONTRACT), text
    for name, (kind, help_text, labels) in CONTRACT.items():
        fam = fams[name]
        assert (fam.type, fam.documentation) == (kind, help_text), name  # type: ignore[attr-defined]
        for s in fam.samples:  # type: ignore[attr-defined]
            assert set(s.labels) - {"le"} == set(labels), (name, s)
    got = samples(text)
    assert stats.sync is not None
    for reason, n in stats.sync.rejections.items():
        assert got[("motcua_sync_rejections_total", (("reason", reason),))] == n
    assert got[("motcua_sync_applied_change", ())] == applied == 3
    assert got[("motcua_sync_lag_changes", ())] == 5 - applied
    assert got[("motcua_gallery_citizens", ())] == citizens > 0
    assert got[("motcua_store_size_bytes", ())] > 0
    assert got[("motcua_frames_total", ())] == 31
    assert got[("motcua_camera_fps", ())] == 10.0
    assert got[("motcua_sessions_total", (("outcome", "matched"),))] == 2
    assert got[("motcua_sessions_total", (("outcome", "not_recognised"),))] == 1


def test_parts_not_running_and_a_failing_read_still_scrape(tmp_path: Path, caplog) -> None:
    """Before start (no parts) the service families are there without samples; a read
    that fails (the service stopping under the scrape) is logged, the rest is served."""
    reg = CollectorRegistry()
    TerminalMetrics(reg).stage_latency.labels(stage="detect").observe(0.01)
    fail = {"now": False}

    def stats() -> ServiceStats:
        if fail["now"]:
            raise RuntimeError("store closed under the scrape")
        return ServiceStats()

    reg.register(ServiceCollector(stats))
    with MetricsServer(reg, "127.0.0.1", 0) as srv:
        idle, _ = scrape(srv.port)
        fail["now"] = True
        with caplog.at_level(logging.WARNING, logger="edge.ops.metrics"):
            broken, _ = scrape(srv.port)
    for text in (idle, broken):
        fams = families(text)
        assert set(fams) == set(CONTRACT), text
        assert not fams["motcua_frames_total"].samples  # type: ignore[attr-defined]
        assert samples(text)[("motcua_stage_latency_seconds_count", (("stage", "detect"),))] == 1
    assert "store closed under the scrape" in caplog.text


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
