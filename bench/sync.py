"""End-to-end benchmark of the district -> terminal sync over a local Mosquitto.

The district publisher runs as ``motcua district publish`` in its own process (as on the
district server); the terminal (TerminalSubscriber + the real GalleryStore) runs here.
Figures, 512-d synthetic embeddings:
1. baseline: the store's own apply rate (GalleryStore.apply, batches of 500 upserts,
   a fresh store) for the burst's citizens, measured in this run;
2. burst: N upserts committed to the district log at once -> all applied on the terminal
   (upserts_per_s; apply_ratio = that / the baseline);
3. latency: single citizen upserts, one at a time, from the district's commit to the
   change being searchable on the terminal (p50/p95/p99);
4. delete -> unmatchable: a deleted citizen's own embedding no longer finds them;
   and face suspension -> unmatchable (DistrictLog.suspend_face), the same way;
5. snapshot: a new terminal joins a district of S citizens (time, bytes on the wire),
   then the store's own install of the same S citizens (GalleryStore.replace_all, in this
   process, after the terminal's) -> snapshot_ratio = sync / store alone.
Embeddings: ``faces`` (default) are the store bench's clustered face-like vectors
(edge.store.synthetic, as bench/store.py); ``random`` are i.i.d. uniform on the 512-d
sphere, the worst case for HNSW construction (no neighbourhood structure: ~2x slower
adds). ``--snapshot-only`` runs part 5 alone. The last line is one JSON object.

    PYTHONPATH=. python bench/sync.py [--quick] [--burst N] [--snapshot S]
                                      [--snapshot-only] [--embeddings faces|random]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from district.log import DistrictLog  # noqa: E402
from district.publisher import BATCH_MAX_CHANGES  # noqa: E402
from edge.store.gallery import GalleryStore  # noqa: E402
from edge.store.synthetic import ClusteredFaces  # noqa: E402
from edge.syncclient.subscriber import TerminalSubscriber  # noqa: E402
from proto import sync_pb2 as pb  # noqa: E402
from sync.changes import CitizenUpsert  # noqa: E402
from sync.keys import generate_keypair, load_public_key  # noqa: E402
from sync.localbroker import MosquittoBroker  # noqa: E402
from sync.mqtt import BrokerSettings  # noqa: E402

DIM = 512
EMBEDDER = "bench-synthetic-512"


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Embeddings:
    """Unit embeddings as a pure function of (kind, seed, start, n): the snapshot's store
    baseline regenerates the district's vectors instead of keeping 200 MB of them."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self.faces = ClusteredFaces(DIM, seed=seed)

    def rows(self, start: int, n: int) -> np.ndarray:  # type: ignore[type-arg]
        if self.kind == "faces":
            return np.concatenate([self.faces.samples(start + i, [0]) for i in range(n)])
        v = np.random.default_rng([self.seed, start]).standard_normal((n, DIM))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(dlog: DistrictLog, start: int, n: int, embs: Embeddings) -> None:
    """n citizen upserts in one transaction (one embedding each)."""
    emb = embs.rows(start, n)
    with dlog.transaction():
        for i in range(n):
            dlog.upsert_citizen(f"c{start + i:07d}", masked_name="Nguyễn V. A***",
                                embeddings=emb[i:i + 1], pin_hash=b"h" * 32, pin_salt=b"s" * 16)


def wait(cond, timeout: float, what: str, step: float = 0.0005) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(step)


class District:
    """A district log with its publisher process."""

    def __init__(self, work: Path, broker: MosquittoBroker, name: str) -> None:
        self.db = work / f"{name}.sqlite"
        self.log = DistrictLog.create(self.db, district_id=name, embedder_id=EMBEDDER, dim=DIM)
        self.key = work / f"{name}.key"
        self.pub = work / f"{name}.pub"
        generate_keypair(self.key, self.pub)
        self.broker = broker
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.errlog = open(self.db.with_suffix(".log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "motcua", "district", "publish", "--db", str(self.db),
             "--key", str(self.key), "--broker", f"{self.broker.host}:{self.broker.port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.errlog,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.errlog.close()
        self.log.close()

    def terminal(self, store: GalleryStore, name: str, work: Path) -> TerminalSubscriber:
        return TerminalSubscriber(
            store, BrokerSettings(host=self.broker.host, port=self.broker.port,
                                  reconnect_min_s=0.1, reconnect_max_s=1.0),
            district_id=self.log.district_id, terminal_id=name,
            public_key=load_public_key(self.pub), spool_dir=work,
        ).start()


class Baseline:
    """The store's own apply path: GalleryStore.apply in batches of the publisher's batch
    size on a store that grows like the terminal's (same first 100 citizens)."""

    def __init__(self, work: Path, total: int, embs: Embeddings) -> None:
        emb = embs.rows(0, total + 100)
        self.changes = [CitizenUpsert(i + 1, f"c{i:07d}", "Nguyễn V. A***", b"h" * 32,
                                      b"s" * 16, emb[i:i + 1]) for i in range(total + 100)]
        self.store = GalleryStore.open(work / "baseline", embedder_id=EMBEDDER, dim=DIM)
        self.store.apply(self.changes[:100], epoch=1)
        self.done = 100
        self.seconds = 0.0

    def run(self, n: int) -> None:
        todo = self.changes[self.done:self.done + n]
        t0 = time.perf_counter()
        for i in range(0, len(todo), BATCH_MAX_CHANGES):
            self.store.apply(todo[i:i + BATCH_MAX_CHANGES], epoch=1)
        self.seconds += time.perf_counter() - t0
        self.done += len(todo)

    def close(self) -> None:
        self.store.close()


def live(work: Path, broker: MosquittoBroker, embs: Embeddings, burst: int, samples: int,
         districts: list[District], subs: list[TerminalSubscriber],
         stores: list[GalleryStore]) -> dict[str, object]:
    """Parts 1-4: burst vs the store's own apply, single-update latency, delete."""
    # 1.+2. the burst through the sync and the store's own apply, in alternating
    # rounds (the machine is shared: drifts in load hit both sides alike)
    baseline = Baseline(work, burst, embs)
    d = District(work, broker, "q1")
    districts.append(d)
    fill(d.log, 0, 100, embs)
    d.start()
    store = GalleryStore.open(work / "t1", embedder_id=EMBEDDER, dim=DIM)
    stores.append(store)
    sub = d.terminal(store, "t1", work)
    subs.append(sub)
    wait(lambda: store.last_seq == d.log.head_seq, 60, "initial sync", 0.01)
    # rounds of ~1000 upserts (several publisher batches each); more rounds average
    # out the other processes' load better
    rounds = max(3, burst // 1000)
    sync_s = 0.0
    start_seq = d.log.head_seq
    for r in range(rounds):
        n = burst // rounds if r < rounds - 1 else burst - (rounds - 1) * (burst // rounds)
        baseline.run(n)
        target = d.log.head_seq + n
        fill(d.log, 1000 + r * burst, n, embs)  # one transaction: committed at once
        t0 = time.perf_counter()
        wait(lambda t=target: store.last_seq == t, 600, "burst applied", 0.001)
        sync_s += time.perf_counter() - t0
        if r % max(1, rounds // 5) == 0 or r == rounds - 1:
            progress(f"round {r + 1}/{rounds}: store {baseline.done - 100}/{burst} "
                     f"({(baseline.done - 100) / baseline.seconds:.0f}/s), sync "
                     f"{store.last_seq - start_seq}/{burst} "
                     f"({(store.last_seq - start_seq) / sync_s:.0f}/s)")
    baseline.close()
    base = burst / baseline.seconds
    rate = burst / sync_s
    progress(f"burst of {burst}: sync {rate:.0f} upserts/s, store alone {base:.0f}/s, "
             f"ratio {rate / base:.2f}")

    # 3. latency of single upserts, commit -> searchable
    lat = []
    misses = 0
    for i in range(samples):
        emb = embs.rows(10_000_000 + i, 1)
        t0 = time.perf_counter()
        seq = d.log.upsert_citizen(f"lat{i:05d}", masked_name="Trần T. B***", embeddings=emb)
        wait(lambda seq=seq: store.last_seq >= seq, 30, "single update", 0.0002)
        lat.append((time.perf_counter() - t0) * 1000)
        # searchable: found among the top 10 (HNSW is approximate; misses are counted)
        found = any(m.citizen_id == f"lat{i:05d}" for m in store.search(emb[0], 10))
        misses += not found
        time.sleep(0.005)
    progress(f"latency p50 {pct(lat, 50):.1f} ms p95 {pct(lat, 95):.1f} ms "
             f"p99 {pct(lat, 99):.1f} ms")

    # 4. delete -> unmatchable
    dels = []
    for i in range(10):
        cid = f"lat{i:05d}"
        seq = start_seq + burst + 1 + i  # the i-th latency upsert
        change = pb.Change.FromString(d.log.changes(seq, seq)[0])
        rec_emb = np.frombuffer(change.citizen_upsert.embeddings, dtype="<f4")
        t0 = time.perf_counter()
        d.log.delete_citizen(cid)
        wait(lambda cid=cid, e=rec_emb: all(m.citizen_id != cid for m in store.search(e, 3)),
             30, "deleted citizen unmatchable", 0.0005)
        dels.append(time.perf_counter() - t0)
    progress(f"delete -> unmatchable median {np.median(dels) * 1000:.1f} ms, "
             f"max {max(dels) * 1000:.1f} ms")

    # 4b. face suspension -> unmatchable (the citizen and dossiers stay)
    sus = []
    for i in range(10, 20):
        cid = f"lat{i:05d}"
        seq = start_seq + burst + 1 + i  # the i-th latency upsert
        change = pb.Change.FromString(d.log.changes(seq, seq)[0])
        rec_emb = np.frombuffer(change.citizen_upsert.embeddings, dtype="<f4")
        t0 = time.perf_counter()
        d.log.suspend_face(cid, reason="bench")
        wait(lambda cid=cid, e=rec_emb: all(m.citizen_id != cid for m in store.search(e, 3)),
             30, "suspended face unmatchable", 0.0005)
        sus.append(time.perf_counter() - t0)
        assert store.citizen(cid) is not None
    progress(f"suspend -> unmatchable median {np.median(sus) * 1000:.1f} ms, "
             f"max {max(sus) * 1000:.1f} ms")
    return {
        "store_upserts_per_s": round(base, 1),
        "upserts_per_s": round(rate, 1),
        "apply_ratio": round(rate / base, 3),
        "latency_ms_p50": round(pct(lat, 50), 2),
        "latency_ms_p95": round(pct(lat, 95), 2),
        "latency_ms_p99": round(pct(lat, 99), 2),
        "latency_search_misses": misses,
        "delete_to_unmatchable_s": round(float(np.median(dels)), 4),
        "delete_to_unmatchable_s_max": round(max(dels), 4),
        "suspend_to_unmatchable_s": round(float(np.median(sus)), 4),
        "suspend_to_unmatchable_s_max": round(max(sus), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, within a minute")
    ap.add_argument("--burst", type=int, help="upserts in the burst (default 20000)")
    ap.add_argument("--snapshot", type=int, help="citizens in the snapshot (default 100000)")
    ap.add_argument("--latency-samples", type=int, help="single updates timed (default 200)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--snapshot-only", action="store_true", help="only the snapshot part")
    ap.add_argument("--embeddings", choices=("faces", "random"), default="faces",
                    help="clustered face-like (as bench/store.py) or uniform random vectors")
    args = ap.parse_args()
    burst = args.burst or (3000 if args.quick else 20_000)
    snap_n = args.snapshot or (5000 if args.quick else 100_000)
    samples = args.latency_samples or (50 if args.quick else 200)
    if samples < 20 and not args.snapshot_only:
        ap.error("--latency-samples: at least 20 (parts 4 and 4b use 10 citizens each)")
    embs = Embeddings(args.embeddings, args.seed)
    work = Path(tempfile.mkdtemp(prefix="motcua-bench-sync-"))
    broker = MosquittoBroker(work / "broker").start()
    figures: dict[str, object] = {"embeddings": args.embeddings, "burst_upserts": burst,
                                  "snapshot_citizens": snap_n}
    districts: list[District] = []
    subs: list[TerminalSubscriber] = []
    stores: list[GalleryStore] = []
    try:
        print(f"sync bench: {DIM}-d embeddings, local Mosquitto, publisher process, "
              f"burst {burst}, {samples} single updates, snapshot {snap_n}")
        if args.snapshot_only:
            del figures["burst_upserts"]
        else:
            figures.update(live(work, broker, embs, burst, samples, districts, subs, stores))
        # 5. snapshot to a new terminal
        d2 = District(work, broker, "q2")
        districts.append(d2)
        t0 = time.perf_counter()
        step = 5000
        for s in range(0, snap_n, step):
            fill(d2.log, s, min(step, snap_n - s), embs)
            progress(f"district q2: {min(snap_n, s + step)}/{snap_n} citizens written")
        d2.log.mark_published(d2.log.head_seq)  # nobody listened to the live batches
        progress(f"district of {snap_n} citizens written in {time.perf_counter() - t0:.0f} s")
        d2.start()
        store2 = GalleryStore.open(work / "t2", embedder_id=EMBEDDER, dim=DIM)
        stores.append(store2)
        t0 = time.perf_counter()
        sub2 = d2.terminal(store2, "t2", work)
        subs.append(sub2)
        wait(lambda: store2.last_seq == d2.log.head_seq and sub2.engine.snapshots_applied == 1,
             900, "snapshot installed", 0.01)
        snapshot_s = time.perf_counter() - t0
        assert store2.citizen_count == snap_n
        recv_s, install_s = sub2.engine.last_snapshot_timing
        progress(f"snapshot of {snap_n} citizens: {snapshot_s:.1f} s (chunks received in "
                 f"{recv_s:.1f} s, store install {install_s:.1f} s), "
                 f"{sub2.bytes_received / 1e6:.0f} MB on the wire")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for sb in subs:  # the baseline gets the process to itself
            sb.stop()
        subs_stopped = list(subs)
        subs.clear()

        # the store's own install of the same citizens (vectors regenerated first, so
        # neither side pays for making them)
        emb = embs.rows(0, snap_n)
        snap = [CitizenUpsert(i + 1, f"c{i:07d}", "Nguyễn V. A***", b"h" * 32, b"s" * 16,
                              emb[i:i + 1]) for i in range(snap_n)]
        store3 = GalleryStore.open(work / "t3", embedder_id=EMBEDDER, dim=DIM)
        stores.append(store3)
        t0 = time.perf_counter()
        store3.replace_all(snap, epoch=1, last_seq=snap_n)
        store_snap_s = time.perf_counter() - t0
        del snap, emb
        progress(f"store alone: replace_all of {snap_n} citizens in {store_snap_s:.1f} s; "
                 f"sync/store {snapshot_s / store_snap_s:.2f}")

        figures.update({
            "snapshot_s": round(snapshot_s, 2),
            "snapshot_bytes": sub2.bytes_received,
            "snapshot_receive_s": round(recv_s, 2),
            "snapshot_install_s": round(install_s, 2),
            "snapshot_store_s": round(store_snap_s, 2),
            "snapshot_ratio": round(snapshot_s / store_snap_s, 3),
            "rejections": sum(sum(sb.engine.rejections.values()) - sb.engine.duplicates
                              for sb in subs_stopped),
            "peak_rss_mb": round(peak_mb, 1),
        })
        print(f"{'figure':28s} value")
        for k, v in figures.items():
            print(f"{k:28s} {v}")
        print(json.dumps(figures))
    finally:
        for sb in subs:
            sb.stop()
        for st in stores:
            st.close()
        for dd in districts:
            dd.stop()
        broker.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
