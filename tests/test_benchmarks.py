"""The benchmarks still run (in their --quick form) and print the figures their issues
ask for as the last line's JSON. The figures themselves are read by people, from full
runs on a quiet machine (docs/store.md, docs/sync.md, docs/pipeline.md); here only
sanity bounds are checked, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _last_json(script: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_store_benchmark_quick() -> None:
    r = _last_json("store.py", "--quick")
    for key in ("search_ms_p50", "recall_at_1", "brute_force_ratio", "checkpoint_load_s",
                "upserts_per_s", "rss_mb", "brute_force_ratio_all_cores", "ef"):
        assert key in r, key
    assert r["citizens"] == 5000
    assert float(r["recall_at_1"]) >= 0.99  # type: ignore[arg-type]
    assert float(r["upserts_per_s"]) > 0 and float(r["rss_mb"]) > 0  # type: ignore[arg-type]


def test_sync_benchmark_quick() -> None:  # starts its own Mosquitto
    r = _last_json("sync.py", "--quick")
    for key in ("latency_ms_p50", "latency_ms_p99", "upserts_per_s", "snapshot_s",
                "delete_to_unmatchable_s", "suspend_to_unmatchable_s"):
        assert key in r, key
    assert r["rejections"] == 0


JETSON = "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"


def test_pipeline_benchmark_quick_takes_the_providers() -> None:
    """``--providers`` reaches the sessions: the Jetson list runs here on what this
    onnxruntime build has (the CPU on this machine), and says so."""
    import onnxruntime as ort

    r = _last_json("pipeline.py", "--quick", "--providers", JETSON)
    assert r["providers"] == JETSON.split(",")
    have = ort.get_available_providers()
    assert r["embedder_providers"] == [p for p in JETSON.split(",") if p in have]
    assert float(r["clip_fps"]) > 0  # type: ignore[arg-type]


def test_pipeline_benchmark_rejects_a_bad_provider_order() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--providers",
                           "CPUExecutionProvider,CUDAExecutionProvider"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "CPUExecutionProvider must be last" in proc.stderr


def test_district_benchmark_quick() -> None:  # starts its own Mosquitto and district service
    r = _last_json("district.py", "--quick")
    for key in ("status_to_display_ms_p50", "status_to_display_ms_p99", "ingest_events_per_s",
                "log_updates_per_s", "post_ms_p50"):
        assert key in r, key
    assert r["shown"] == r["events"] == 250 and r["wrong_status_shown"] == 0
    assert r["service_exit_code"] == 0
    assert float(r["ingest_events_per_s"]) > 0  # type: ignore[arg-type]


def test_snapshot_fanout_benchmark_small() -> None:  # its own Mosquitto, file server
    r = _last_json("snapshot_fanout.py", "--terminals", "2", "--citizens", "300",
                   "--mqtt-terminals", "1")
    f, t, m = r["file"], r["topic"], r["mqtt"]
    assert isinstance(f, dict) and isinstance(t, dict) and isinstance(m, dict)
    size = int(f["file_bytes"])
    assert f["files_built"] == 2 and f["http_bytes"] == 2 * size
    assert int(f["broker_bytes_sent"]) < 0.1 * size  # announcements, not the file
    assert 1.95 < float(t["ratio"]) < 2.1  # a shared topic: one copy per subscriber
    # the chunks carry the changes only; the file also the index graph (~12% at 512-d)
    assert int(m["broker_bytes_sent"]) >= int(m["chunk_bytes_one_snapshot"]) > 0.8 * size


def test_snapshot_install_benchmark_quick() -> None:  # builds and installs a 500-citizen file
    r = _last_json("snapshot_install.py", "--quick")
    assert r["citizens"] == 500 and r["quick"] is True
    c = r["current"]
    for stage in ("signature", "sha256", "install", "checkpoint", "close", "total"):
        for kind in ("cpu", "wall"):
            for stat in ("median", "p95"):
                assert f"{stage}_{kind}_s_{stat}" in c, (stage, kind, stat)
    assert c["runs"] == 2 and c["index"] == ["loaded"]  # the district's graph was used
    assert c["self_recall_at_1_min"] == 1.0
    assert float(c["peak_rss_mb_max"]) > 0 and float(r["install_cpu_s"]) > 0
