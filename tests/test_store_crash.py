"""Crash safety: a child applies batches (and now and then a snapshot) and is SIGKILLed
at random instants, 60 times over the same store directory. After each kill the store
must open, its index must equal SQLite, its change number must not go back, no
acknowledged batch may be lost and its content must be exactly the log up to a batch
boundary (never half a batch)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import store_crash_child as child
from store_crash_child import Model

from edge.store import GalleryStore

#: kill runs; the issue asks for at least 50
RUNS = 60
CHILD = Path(child.__file__).resolve()


def _run_and_kill(directory: Path, rng: random.Random) -> tuple[int, str]:
    """Start the child, kill it at a random instant; (highest acked seq, what it was
    doing: "opening", "snapshot" or "applying")."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(CHILD.parents[1])},
    )
    acked = [0]
    last_line = [""]
    ready = threading.Event()
    assert proc.stdout is not None

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            last_line[0] = line.strip()
            if line.startswith("ready"):
                ready.set()
            elif line.startswith("ack "):
                acked[0] = max(acked[0], int(line.split()[1]))

    reader = threading.Thread(target=read, name="crash-child-stdout", daemon=True)
    reader.start()
    try:
        if rng.random() < 0.3:
            # anywhere from start-up: may land while opening (load, replay, rebuild)
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            if not ready.wait(60):
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                raise AssertionError(f"child never became ready: {err}")
            time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            raise AssertionError(f"child died by itself: {proc.stderr.read()}")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        reader.join(10)
        for fh in (proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()
    doing = "opening" if not ready.is_set() else (
        "snapshot" if last_line[0] == "snapshot" else "applying")
    return acked[0], doing


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    model = Model(5)
    previous = 0
    acked_total = 0
    progressed = 0
    where: dict[str, int] = {}
    for run in range(RUNS):
        acked, doing = _run_and_kill(tmp_path, rng)
        where[doing] = where.get(doing, 0) + 1
        acked_total = max(acked_total, acked)
        store = GalleryStore.open(tmp_path, embedder_id=child.EMBEDDER, dim=child.DIM,
                                  settings=child.SETTINGS)
        try:
            seq = store.last_seq
            assert seq >= previous, f"run {run}: change number went back {previous} -> {seq}"
            assert seq >= acked_total, f"run {run}: acknowledged {acked_total}, store at {seq}"
            store.verify_index()
            model.advance_to(seq)  # fails if seq is inside a batch
            assert store.content_hash() == model.hash(), f"run {run}: content differs at {seq}"
            for upsert in list(model.citizens.values())[:5]:
                best = store.search(upsert.embeddings[0], k=1)[0]
                assert best.citizen_id == upsert.citizen_id
        finally:
            # drop the handle without the closing checkpoint: the next child finds the
            # files exactly as the killed one left them
            store._abandon()  # noqa: SLF001 - like a crash: no closing checkpoint
        progressed += seq > previous
        previous = seq
    print(f"kills: {where}; final change {previous}")
    # the runs did real work: many batches, including checkpoints and snapshots
    assert previous > 200
    assert progressed >= RUNS // 2
    assert model.last_seq == previous
