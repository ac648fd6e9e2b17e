"""What installing one snapshot file costs a terminal (issue 15, docs/scale.md
"Install cost").

The district side builds, with the project's code, a signed snapshot file of ``--citizens``
synthetic citizens (clustered face-like 512-d embeddings, one dossier each):
``district.log.DistrictLog`` + ``district.snapshots.SnapshotFiles``. Then each run installs
it into a fresh terminal store through the terminal's real path, in a child process of
its own (clean memory figures, no state shared between runs):

- ``signature``: ``SyncEngine.handle`` of the sealed descriptor (Ed25519 over the
  envelope, descriptor checks);
- ``sha256``: ``Downloader._verified``, the size and SHA-256 check of the downloaded file
  against the signed descriptor (the download itself is not timed: the file is copied
  into the terminal's spool before);
- ``install``: ``SyncEngine.install_file`` (records parsed and checked, changes decoded
  and validated, SQLite transaction, HNSW index build, the checkpoint saved);
- ``checkpoint``: waiting for the checkpoint's background part (fsync, hash, rename,
  record);
- ``close``: ``GalleryStore.close``.

CPU is the process's (all threads: hnswlib's build threads count), wall is elapsed
time. ``--baseline REV`` runs the same children against the code of git revision REV
(exported with ``git archive``), alternating with the current code, so that the ratio
holds on a noisy machine. ``--profile`` runs one more install under cProfile and prints
the top functions. The last line is JSON.

    PYTHONPATH=. python bench/snapshot_install.py --citizens 10000 --runs 5 --baseline 0bd5c12
    PYTHONPATH=. python bench/snapshot_install.py --quick
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the code under test: this checkout, or (children of --baseline) an exported revision;
#: first on the path, before bench/ (whose district.py would shadow the package)
SRC = Path(os.environ.get("MOTCUA_BENCH_SRC", str(ROOT)))
sys.path.insert(0, str(SRC))
DIM = 512
EMBEDDER = "bench-embedder"
DISTRICT = "q1"
#: citizens (every n-th label, i.e. spread over the graph's insertion order) that
#: search for their own stored embedding after the install: a wrong label or a broken
#: graph shows as a miss; 1,000 searches are ~0.3 s, outside the timed stages
SELF_RECALL_SAMPLE = 1000
STAGES = ("signature", "sha256", "install", "checkpoint", "close", "total")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ district side
def build_snapshot(work: Path, citizens: int, seed: int) -> dict[str, Any]:
    """A district log of ``citizens`` and its signed snapshot file; what the children need."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fleet  # bench/fleet.py: district gallery helpers

    from district.log import DistrictLog
    from district.snapshots import SnapshotFiles
    from proto import sync_pb2 as pb
    from sync.keys import generate_keypair, load_private_key

    keys = work / "keys"
    generate_keypair(keys / "district.key", keys / "district.pub")
    dlog = DistrictLog.create(work / "district.sqlite", district_id=DISTRICT,
                              embedder_id=EMBEDDER, dim=DIM)
    fleet.fill(dlog, citizens, seed)  # the fleet bench's synthetic gallery (512-d)
    t0 = time.perf_counter()
    files = SnapshotFiles(work / "snapshots", load_private_key(keys / "district.key"),
                          "http://127.0.0.1:1")
    sealed = files.descriptor_for(dlog, 0)
    build_s = time.perf_counter() - t0
    desc = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
    path = files.path_of(desc.snapshot_id)
    assert path is not None
    (work / "descriptor.sealed").write_bytes(sealed)
    dlog.close()
    return {"file": str(path), "descriptor": str(work / "descriptor.sealed"),
            "public_key": str(keys / "district.pub"), "file_bytes": desc.size,
            "citizens": desc.citizen_count, "dossiers": desc.dossier_count,
            "build_s": round(build_s, 2)}


# ------------------------------------------------------------------ terminal side (child)
def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited
    from the parent across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One install into a fresh store; per-stage (wall, cpu) seconds and memory."""
    from edge.store.gallery import GalleryStore
    from edge.syncclient.download import Downloader
    from edge.syncclient.engine import SyncEngine
    from proto import sync_pb2 as pb
    from sync.keys import load_public_key

    work = Path(spec["work"])
    graph_log: list[str] = []

    class _GraphLog(logging.Handler):
        """Whether the store loaded the district's index graph (its log says so)."""

        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "index graph" in msg:
                graph_log.append(msg)

    logging.getLogger("motcua.store").addHandler(_GraphLog())
    logging.getLogger("motcua.store").setLevel(logging.INFO)
    rss_before_mb = peak_rss_mb()
    sealed = Path(spec["descriptor"]).read_bytes()
    store = GalleryStore.open(work / "store", embedder_id=EMBEDDER, dim=DIM)
    spool = work / "spool"
    engine = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                        public_key=load_public_key(Path(spec["public_key"])),
                        spool_dir=spool, accepts_file=True,
                        max_snapshot_file_bytes=1 << 34)
    downloader = Downloader(spool, "t1")
    spool.mkdir(parents=True, exist_ok=True)
    desc = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
    part = downloader.part_path(desc.snapshot_id)
    shutil.copyfile(spec["file"], part)  # "downloaded"
    times: dict[str, tuple[float, float]] = {}
    prof = cProfile.Profile() if spec.get("profile") else None

    def stage(name: str, fn: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times[name] = (time.perf_counter() - t0, time.process_time() - c0)
        return out

    if prof is not None:
        prof.enable()
    stage("signature", lambda: engine.handle("direct", sealed))
    d = engine.take_download()
    if d is None:
        raise SystemExit(f"descriptor refused: {dict(engine.rejections)} {engine.last_error}")
    path = stage("sha256", lambda: downloader._verified(d, part))  # noqa: SLF001
    stage("install", lambda: engine.install_file(d, path))
    stage("checkpoint", store.wait_for_checkpoint)
    if prof is not None:
        prof.disable()
    if engine.snapshot_files_applied != 1 or store.citizen_count != spec["citizens"]:
        raise SystemExit(f"install failed: {dict(engine.rejections)} {engine.last_error}")
    index_stats = store.index_stats()
    # the index serves the right citizens: each of a sample finds itself first
    import sqlite3

    import numpy as np
    with sqlite3.connect(f"file:{work / 'store' / 'gallery.db'}?mode=ro", uri=True) as ro:
        step = max(1, int(spec["citizens"]) // SELF_RECALL_SAMPLE)
        sample = ro.execute("SELECT citizen_id, vector FROM embeddings WHERE label % ? = 0 "
                            "LIMIT ?", (step, SELF_RECALL_SAMPLE)).fetchall()
    ro.close()
    found = sum(store.search(np.frombuffer(v, dtype="<f4"), k=1)[0].citizen_id == cid
                for cid, v in sample)
    stage("close", store.close)
    times["total"] = (sum(w for w, _ in times.values()), sum(c for _, c in times.values()))
    out: dict[str, Any] = {
        "wall": {k: v[0] for k, v in times.items()},
        "cpu": {k: v[1] for k, v in times.items()},
        "rss_before_mb": rss_before_mb,
        "peak_rss_mb": peak_rss_mb(),
        "index_live": index_stats["live"],
        "self_recall_at_1": found / max(len(sample), 1),
        # "loaded": the district's graph was used; "built": the terminal built the index
        "index": ("loaded" if any(m.startswith("snapshot index graph loaded") for m in graph_log)
                  else "built"),
        "graph_log": graph_log,
        "store_bytes": sum(f.stat().st_size for f in (work / "store").rglob("*")
                           if f.is_file()),
    }
    if prof is not None:
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(int(spec.get("profile_top", 25)))
        out["profile"] = buf.getvalue()
    return out


# ------------------------------------------------------------------ runner
def export_rev(rev: str, dest: Path) -> None:
    """The tree of git revision ``rev`` in ``dest`` (read-only use of the repository)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def run_child(src: Path, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec = {**spec, "work": str(work)}
    env = {**os.environ, "PYTHONPATH": str(src), "MOTCUA_BENCH_SRC": str(src)}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           json.dumps(spec)], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=src)
    if proc.returncode != 0:
        raise SystemExit(f"install child failed ({src}):\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work)
    return result


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a small sample."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for kind in ("cpu", "wall"):
        for st in STAGES:
            vals = [r[kind][st] for r in runs]
            out[f"{st}_{kind}_s_median"] = round(statistics.median(vals), 3)
            out[f"{st}_{kind}_s_p95"] = round(pct(vals, 95), 3)
    out["peak_rss_mb_max"] = round(max(r["peak_rss_mb"] for r in runs), 1)
    out["rss_before_mb"] = round(max(r["rss_before_mb"] for r in runs), 1)
    out["store_bytes"] = runs[-1]["store_bytes"]
    out["index"] = sorted({r["index"] for r in runs})
    out["self_recall_at_1_min"] = min(r["self_recall_at_1"] for r in runs)
    return out


def table(label: str, s: dict[str, Any]) -> str:
    lines = [f"{label} ({s['runs']} runs; seconds, median / p95)",
             f"  {'stage':<11} {'cpu':>16} {'wall':>16}"]
    for st in STAGES:
        lines.append(f"  {st:<11} {s[f'{st}_cpu_s_median']:>7.3f} / {s[f'{st}_cpu_s_p95']:<7.3f}"
                     f" {s[f'{st}_wall_s_median']:>7.3f} / {s[f'{st}_wall_s_p95']:<7.3f}")
    lines.append(f"  peak RSS {s['peak_rss_mb_max']:.1f} MB (before the install: "
                 f"{s['rss_before_mb']:.1f} MB), store {s['store_bytes']:,} bytes, "
                 f"index {'/'.join(s['index'])}, self recall@1 {s['self_recall_at_1_min']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--citizens", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="500 citizens, 2 runs (CI)")
    ap.add_argument("--baseline", metavar="REV", default="",
                    help="also run the code of git revision REV, alternating")
    ap.add_argument("--profile", action="store_true",
                    help="one more install (current code) under cProfile")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.citizens, args.runs = 500, 2
    with tempfile.TemporaryDirectory(prefix="snapinstall-") as tmp:
        work = Path(tmp)
        progress(f"building the district's snapshot file of {args.citizens} citizens")
        spec = build_snapshot(work / "district", args.citizens, args.seed)
        progress(f"snapshot file: {spec['file_bytes']:,} bytes, built in {spec['build_s']} s")
        sources = {"current": ROOT}
        if args.baseline:
            export_rev(args.baseline, work / "baseline-src")
            sources = {"baseline": work / "baseline-src", "current": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sources}
        for i in range(args.runs):
            for name, src in sources.items():
                r = run_child(src, spec, work / "terminal")
                runs[name].append(r)
                for m in r["graph_log"]:
                    progress(f"  store: {m}")
                progress(f"run {i + 1}/{args.runs} {name} (index {r['index']}): "
                         f"install {r['cpu']['install']:.2f} s CPU, "
                         f"total {r['cpu']['total']:.2f} s CPU / "
                         f"{r['wall']['total']:.2f} s wall, peak {r['peak_rss_mb']:.0f} MB")
        result: dict[str, Any] = {
            "citizens": spec["citizens"], "file_bytes": spec["file_bytes"],
            "district_build_s": spec["build_s"], "quick": args.quick,
            "baseline_rev": args.baseline or None,
        }
        for name, rs in runs.items():
            s = summarise(rs)
            print(table(name, s))
            result[name] = s
        if args.baseline:
            b, c = result["baseline"], result["current"]
            result["total_cpu_ratio"] = round(b["total_cpu_s_median"]
                                              / max(c["total_cpu_s_median"], 1e-9), 2)
            result["total_wall_ratio"] = round(b["total_wall_s_median"]
                                               / max(c["total_wall_s_median"], 1e-9), 2)
            print(f"baseline / current, median total: CPU {result['total_cpu_ratio']}x, "
                  f"wall {result['total_wall_ratio']}x")
        if args.profile:
            r = run_child(ROOT, {**spec, "profile": True}, work / "terminal")
            print(r["profile"])
        result["install_cpu_s"] = result["current"]["total_cpu_s_median"]
        result["install_wall_s"] = result["current"]["total_wall_s_median"]
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result))


if __name__ == "__main__":
    main()
