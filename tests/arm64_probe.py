"""Work tests/test_arm64.py runs inside the emulated arm64 root, with the installed release.

Copied into the root and run as ``/opt/motcua/current/bin/python arm64_probe.py KIND ...``;
it imports only the installed project (never ``tests``) and prints one JSON object on
its last stdout line. The same functions run on the host (x86) for the reference values.

- ``faces DIR``: every face of every image under DIR, embedded with the configured pack;
- ``store DIR``: a gallery store round trip (upsert, checkpoint, reopen, search);
- ``sync DIR PORT KEY N``: a terminal subscriber on 127.0.0.1:PORT that applies the
  district's changes until change N and reports its content hash.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

#: the store round trip's size: enough for several HNSW layers and a checkpoint file,
#: small enough for emulation (each upsert is a few hundred emulated microseconds)
STORE_CITIZENS = 300
STORE_DIM = 512
STORE_EMBEDDER = "arm64-probe-v1"
#: the sync gallery's dimension and embedder id (tests/sync_helpers.py's defaults)
SYNC_DIM = 16
SYNC_EMBEDDER = "test-embedder-v1"
SYNC_DISTRICT = "q1"
#: how long the subscriber may take to reach change N under emulation (a few seconds
#: natively; qemu is ~10-30x slower)
SYNC_TIMEOUT_S = 180.0
IMAGES = {".jpg", ".jpeg", ".png"}


def faces(media: Path) -> dict[str, Any]:
    """Embeddings of every face of every image under ``media`` (sorted paths)."""
    from edge.config import Config
    from faces.imagefiles import read_image
    from faces.pipeline import load_pipeline

    pipeline = load_pipeline(Config())
    out: dict[str, list[list[float]]] = {}
    times = []
    for path in sorted(p for p in media.rglob("*") if p.suffix.lower() in IMAGES):
        image = read_image(path)
        start = time.perf_counter()
        found = pipeline.analyse(image)
        times.append(time.perf_counter() - start)
        out[str(path.relative_to(media))] = found.embeddings.astype(float).tolist()
    return {"embedder": pipeline.embedder_id, "embeddings": out,
            "seconds_per_image": sorted(times)}


def store(path: Path) -> dict[str, Any]:
    """Upsert citizens, checkpoint, reopen from the checkpoint, search each citizen."""
    from edge.store import CitizenUpsert, GalleryStore
    from edge.store.synthetic import ClusteredFaces

    gen = ClusteredFaces(STORE_DIM, seed=11)
    s = GalleryStore.open(path, embedder_id=STORE_EMBEDDER, dim=STORE_DIM)
    changes = [CitizenUpsert(i + 1, f"cit-{i:05d}", f"Trần V. {i}***", f"h{i}".encode(),
                             f"s{i}".encode(), gen.enrolled(i, 2))
               for i in range(STORE_CITIZENS)]
    for first in range(0, STORE_CITIZENS, 100):
        s.apply(changes[first:first + 100], epoch=1)
    s.checkpoint(force=True)
    s.wait_for_checkpoint()
    before = s.content_hash()
    s.close()
    s = GalleryStore.open(path, embedder_id=STORE_EMBEDDER, dim=STORE_DIM)
    try:
        s.verify_index()
        hits = [s.search(gen.query(i, 5), k=1)[0].citizen_id for i in range(STORE_CITIZENS)]
        right = sum(h == f"cit-{i:05d}" for i, h in enumerate(hits))
        return {"hash_before": before, "hash_after": s.content_hash(), "last_seq": s.last_seq,
                "checkpoints": sorted(p.name for p in (path / "checkpoints").glob("*.hnsw")),
                "right": right, "of": STORE_CITIZENS}
    finally:
        s.close()


def sync(path: Path, port: int, key: Path, until: int) -> dict[str, Any]:
    """Apply the district's published changes from the broker until change ``until``."""
    from edge.store import GalleryStore
    from edge.syncclient.subscriber import TerminalSubscriber
    from sync.keys import load_public_key
    from sync.mqtt import BrokerSettings

    s = GalleryStore.open(path / "store", embedder_id=SYNC_EMBEDDER, dim=SYNC_DIM)
    sub = TerminalSubscriber(
        s, BrokerSettings(host="127.0.0.1", port=port, reconnect_min_s=0, reconnect_max_s=0),
        district_id=SYNC_DISTRICT, terminal_id="arm64-t1", public_key=load_public_key(key),
        spool_dir=path, gap_timeout_s=0.5, request_retry_s=1.0).start()
    try:
        if not sub.connected.wait(60):
            raise SystemExit("arm64 probe: not connected to the broker within 60 s")
        print("connected", flush=True)  # the test starts the district's publisher now
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while s.last_seq < until and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the store's counter, as tests/sync_helpers.wait_for
        return {"last_seq": s.last_seq, "content_hash": s.content_hash(),
                "citizens": s.citizen_count}
    finally:
        sub.stop()
        s.close()


def main(argv: list[str]) -> int:
    import platform

    kind, args = argv[0], argv[1:]
    if kind == "faces":
        result = faces(Path(args[0]))
    elif kind == "store":
        result = store(Path(args[0]))
    elif kind == "sync":
        result = sync(Path(args[0]), int(args[1]), Path(args[2]), int(args[3]))
    else:
        raise SystemExit(f"arm64 probe: unknown kind {kind!r}")
    result["machine"] = platform.machine()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
