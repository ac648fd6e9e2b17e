"""Store security: a deleted citizen's vector leaves every file within a bound (also
across a SIGKILL), a checkpoint with a corrupted graph never reaches hnswlib's search and
a crash loop on a checkpoint falls back to a rebuild, store files are private.

The processes that may die (SIGKILL, SIGSEGV) are children (tests/store_security_child.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import store_security_child as child
from store_helpers import DIM, FACES, cid, files_holding, fill, open_store

from edge.config import StoreSettings
from edge.store.validate import unit_rows

CHILD = Path(child.__file__).resolve()
#: the bound the delete test runs with (the default is in StoreSettings.deletion_scrub_s)
SCRUB_S = 3.0
#: slack for a loaded shared machine on top of the bound: process start-up is not in it
#: (the clock starts at the child's "deleted" line), only the scheduler's delays
SLACK_S = 2.0


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(CHILD.parents[1])},
    )


def _scrub_setting() -> dict[str, object]:
    """deletion_scrub_s=SCRUB_S (absent before the fix: the test then shows the leak)."""
    fields = {f.name for f in dataclasses.fields(StoreSettings)}
    return {"deletion_scrub_s": SCRUB_S} if "deletion_scrub_s" in fields else {}


def _deleted_forms() -> list[bytes]:
    raw = FACES.enrolled(child.DELETED, 1)[0]
    return [np.ascontiguousarray(v, dtype="<f4").tobytes()
            for v in (raw, unit_rows(raw, DIM, "t")[0])]


def _clean_within(directory: Path, forms: list[bytes], since: float, bound: float
                  ) -> float:
    """Seconds from ``since`` until no file holds the vector; fails past the bound."""
    while True:
        hits = files_holding(directory, forms)
        now = time.monotonic()
        if not hits:
            return now - since
        assert now - since <= bound + SLACK_S, f"deleted vector still in {hits}"
        time.sleep(0.05)  # polling a condition with a deadline, not a sleep as sync


@contextlib.contextmanager
def _deleting_child(directory: Path) -> Iterator[tuple[subprocess.Popen[str], float]]:
    proc = _start("delete", str(directory), str(SCRUB_S))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "deleted", proc.stderr.read() if proc.stderr else line
        yield proc, time.monotonic()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for fh in (proc.stdin, proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()


def test_deleted_vector_leaves_every_file_within_the_bound_while_running(tmp_path: Path
                                                                          ) -> None:
    forms = _deleted_forms()
    with _deleting_child(tmp_path) as (proc, t_deleted):
        took = _clean_within(tmp_path, forms, t_deleted, SCRUB_S)
        assert proc.poll() is None  # still running: no close() did it
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not files_holding(tmp_path, forms), "back after the kill"
    print(f"deleted vector gone from every file {took:.2f} s after the delete")


def test_deleted_vector_leaves_every_file_after_sigkill_before_the_bound(tmp_path: Path
                                                                          ) -> None:
    forms = _deleted_forms()
    with _deleting_child(tmp_path) as (proc, _):
        proc.send_signal(signal.SIGKILL)  # at once: nothing was scrubbed from the files
        proc.wait(30)
    assert files_holding(tmp_path, forms), "the probe must see the leftovers of the kill"
    t0 = time.monotonic()
    with open_store(tmp_path, checkpoint_every=10_000, **_scrub_setting()) as s:
        took = _clean_within(tmp_path, forms, t0, SCRUB_S)
        assert s.citizen(cid(child.DELETED)) is None
        s._abandon()  # noqa: SLF001 - like a crash: nothing more on close
    assert not files_holding(tmp_path, forms)
    print(f"deleted vector gone {took:.2f} s after the restart began")


# ------------------------------------------------------------------ untrusted index bytes
#: hnswlib's saveIndex header: offsetLevel0, max_elements, cur_element_count,
#: size_data_per_element, label_offset, offsetData (size_t), maxlevel (int),
#: enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction
HEADER = struct.Struct("<QQQQQQiIQQQdQ")


def _corrupt_links_keep_records(directory: Path) -> None:
    """Point a level-0 link of every element far outside the index, in every
    checkpoint, and record the new sha256/size as if the store had written them."""
    db = sqlite3.connect(directory / "gallery.db")
    try:
        for f in sorted((directory / "checkpoints").glob("index-*.hnsw")):
            data = bytearray(f.read_bytes())
            head = HEADER.unpack_from(data)
            n, per = head[2], head[3]
            for i in range(n):
                at = HEADER.size + i * per
                if struct.unpack_from("<H", data, at)[0]:
                    struct.pack_into("<I", data, at + 4, 0x7FFFFFF0)
            f.write_bytes(bytes(data))
            db.execute("UPDATE checkpoints SET sha256 = ?, size = ? WHERE name = ?",
                       (hashlib.sha256(data).hexdigest(), len(data), f.name))
        db.commit()
    finally:
        db.close()


def _search_child(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHILD), "search", str(directory), *extra],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(CHILD.parents[1])})


def test_checkpoint_with_corrupted_graph_and_matching_sha256_is_refused(tmp_path: Path
                                                                         ) -> None:
    with open_store(tmp_path) as s:
        fill(s, 60, most=1)
    _corrupt_links_keep_records(tmp_path)
    run = _search_child(tmp_path)
    assert run.returncode == 0, f"child died ({run.returncode}): {run.stderr[-2000:]}"
    assert f"found {cid(5)}" in run.stdout
    assert "skipping index checkpoint" in run.stderr and "link" in run.stderr
    with open_store(tmp_path) as s:  # the rebuilt index serves, and is checkpointed
        s.verify_index()


def test_crash_after_loading_a_checkpoint_falls_back_to_a_rebuild(tmp_path: Path) -> None:
    """A corruption the structural check would miss (here: the check switched off in
    the child) segfaults the first search once; the next start must not load that
    checkpoint again but rebuild from SQLite."""
    with open_store(tmp_path) as s:
        fill(s, 60, most=1)
    _corrupt_links_keep_records(tmp_path)
    first = _search_child(tmp_path, "unchecked")
    assert first.returncode == -signal.SIGSEGV, (first.returncode, first.stderr[-2000:])
    assert "opened" in first.stdout
    second = _search_child(tmp_path, "unchecked")
    assert second.returncode == 0, f"crash loop ({second.returncode}): {second.stderr[-2000:]}"
    assert f"found {cid(5)}" in second.stdout
    assert "rebuilding" in second.stderr


# ------------------------------------------------------------------ file modes
def test_store_files_and_dirs_are_private_under_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        where = tmp_path / "state" / "store"
        with open_store(where, checkpoint_every=10_000) as s:
            fill(s, 20, most=1)
            s.checkpoint()
            s.search(FACES.query(3))
            seen = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [where, *where.rglob("*")]}
    finally:
        os.umask(old)
    assert {"gallery.db", "gallery.db-wal", "gallery.db-shm", "checkpoints"} <= set(seen)
    assert any(n.startswith("index-") for n in seen)
    wrong = {n: oct(m) for n, m in seen.items()
             if m != (0o700 if (where / n).is_dir() or n in ("store", "checkpoints") else 0o600)}
    assert not wrong, f"not private: {wrong}"


def test_default_deletion_bound_is_set() -> None:
    assert 0 < StoreSettings().deletion_scrub_s <= 60
