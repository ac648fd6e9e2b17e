"""The index graph shipped in a snapshot file (sync/snapgraph.py, docs/scale.md
"Install cost"): the terminal loads the district's links with its own vectors and
labels instead of building the index; a graph that does not fit or fails the
structural check is not loaded (the index is built as before); the install stays one
transaction, also against a power cut (SIGKILL) in the middle."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest
import snapshot_kill_child as child
from store_helpers import DIM, FACES, cid, dossier, open_store, upsert

from district.snapshots import GRAPH_EF_CONSTRUCTION, GRAPH_M, build_graph
from edge.config import StoreSettings
from edge.store import Change, CitizenUpsert, GalleryStore, gallery
from edge.store.checkpoints import CHECKPOINT_DIR
from sync import snapgraph

CHILD = Path(child.__file__).resolve()
LOADED = "snapshot index graph loaded"


def _snapshot(n: int) -> list[Change]:
    changes: list[Change] = [upsert(0, i) for i in range(n)]
    return changes + [dossier(0, f"HS-{i}", i) for i in range(0, n, 7)]


def _graph(changes: list[Change]) -> bytes:
    return build_graph([c.embeddings for c in changes if isinstance(c, CitizenUpsert)], DIM)


def _install(store: GalleryStore, changes: list[Change], graph: bytes | None) -> None:
    store.replace_all(iter(changes), epoch=2, last_seq=500,
                      graph=None if graph is None else (lambda: graph))


def _serves_everyone(store: GalleryStore, n: int) -> None:
    store.verify_index()
    for i in range(n):
        assert store.search(FACES.query(i), k=1)[0].citizen_id == cid(i)


def test_graph_constants_are_the_store_defaults() -> None:
    s = StoreSettings()
    assert (s.M, s.ef_construction) == (GRAPH_M, GRAPH_EF_CONSTRUCTION)


def test_district_graph_is_loaded_with_the_terminals_vectors_and_labels(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    changes = _snapshot(300)
    with open_store(tmp_path / "ref") as ref:
        _install(ref, changes, None)
        want = ref.content_hash()
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path / "t") as s:
        s.apply([upsert(i + 1, 900 + i) for i in range(25)], epoch=1)  # labels start past 0
        _install(s, changes, _graph(changes))
        assert LOADED in caplog.text
        assert s.content_hash() == want
        _serves_everyone(s, 300)
        s.apply([upsert(501, 7, sample_base=50)], epoch=2)  # the loaded index takes adds
        assert s.search(FACES.query(7), k=1)[0].citizen_id == cid(7)
    with open_store(tmp_path / "t") as s:  # and its checkpoint reopens
        _serves_everyone(s, 300)
    assert not list((tmp_path / "t" / CHECKPOINT_DIR).glob("snapshot-graph-*"))


def _links_past_the_end(g: bytes) -> bytes:
    n, links0 = struct.unpack_from("<Q", g, 16)[0], 4 + 4 * 2 * GRAPH_M
    b = bytearray(g)
    row = snapgraph.HEADER.size + 3 * (links0 + 8)  # element 3
    struct.pack_into("<H", b, row, 1)
    struct.pack_into("<I", b, row + 4, n + 5)
    return bytes(b)


def _labels_repeated(g: bytes) -> bytes:
    links0 = 4 + 4 * 2 * GRAPH_M
    b = bytearray(g)
    struct.pack_into("<Q", b, snapgraph.HEADER.size + links0, 1)  # element 0 says 1
    struct.pack_into("<Q", b, snapgraph.HEADER.size + 2 * (links0 + 8) - 8, 1)
    return bytes(b)


def _marked_deleted(g: bytes) -> bytes:
    b = bytearray(g)
    b[snapgraph.HEADER.size + 2] = 1
    return bytes(b)


def _other_m(changes: list[Change]) -> bytes:
    unit = np.concatenate([c.embeddings for c in changes if isinstance(c, CitizenUpsert)])
    idx = hnswlib.Index(space="ip", dim=DIM)
    idx.init_index(max_elements=len(unit), M=16, ef_construction=GRAPH_EF_CONSTRUCTION)
    idx.add_items(unit, np.arange(len(unit)))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"m16-{os.getpid()}.hnsw"
    try:
        idx.save_index(str(path))
        return snapgraph.strip(path.read_bytes(), DIM)
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("bad", ["links past the end", "labels repeated", "marked deleted",
                                 "other M", "truncated", "for fewer embeddings", "junk"])
def test_a_graph_that_does_not_fit_is_not_loaded_and_the_install_completes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    changes = _snapshot(120)
    good = _graph(changes)
    payload = {
        "links past the end": lambda: _links_past_the_end(good),
        "labels repeated": lambda: _labels_repeated(good),
        "marked deleted": lambda: _marked_deleted(good),
        "other M": lambda: _other_m(changes),
        "truncated": lambda: good[:len(good) // 2],
        "for fewer embeddings": lambda: _graph(changes[:100]),
        "junk": lambda: b"\xff" * 4096,
    }[bad]()
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path / "ref") as ref:
        _install(ref, changes, None)
        want = ref.content_hash()
    with open_store(tmp_path / "t") as s:
        _install(s, changes, payload)
        assert LOADED not in caplog.text
        assert "building the index instead" in caplog.text
        assert s.content_hash() == want
        _serves_everyone(s, 120)


def test_a_repeated_citizen_ends_the_wait_for_the_graph(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """A stream the bulk path cannot take (a repeated citizen, in its third chunk) ends
    the wait for the graph: what was deferred is indexed, the rest as before."""
    monkeypatch.setattr(gallery, "SNAPSHOT_CHUNK", 16)
    changes = _snapshot(60)
    changes.insert(30, upsert(0, 5, sample_base=40))  # citizen 5 again, new embeddings
    caplog.set_level(logging.INFO, logger="motcua.store")
    with open_store(tmp_path / "ref") as ref:
        _install(ref, changes, None)
        want = ref.content_hash()
    with open_store(tmp_path / "t", build_threads=1) as s:
        _install(s, changes, _graph(changes))
        assert LOADED not in caplog.text
        assert s.content_hash() == want
        s.verify_index()


def _hash_of(directory: Path, build: object) -> str:
    with open_store(directory) as s:
        build(s)  # type: ignore[operator]
        return s.content_hash()


def test_power_cut_during_a_graph_install_leaves_one_whole_gallery(tmp_path: Path) -> None:
    """SIGKILL at several instants of an install (with the district's graph): the store
    reopens as gallery A or as snapshot B, never a mix, its index equals SQLite, and no
    temporary graph file is left. Fails if the install stops being one transaction."""
    changes = child.snapshot_b()
    hash_a = _hash_of(tmp_path / "ref-a", child.gallery_a)
    hash_b = _hash_of(tmp_path / "ref-b", lambda s: s.replace_all(
        changes, epoch=2, last_seq=child.B_LAST_SEQ))
    seen: dict[str, int] = {}
    for run, delay in enumerate((0.0, 0.05, 0.15, 0.3, 0.6, 1.0)):
        directory = tmp_path / f"run{run}"
        proc = subprocess.Popen([sys.executable, str(CHILD), str(directory)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(CHILD.parents[1])})
        assert proc.stdout is not None
        lines: list[str] = []
        started = threading.Event()

        def read(p: subprocess.Popen[str] = proc, out: list[str] = lines,
                 ev: threading.Event = started) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                out.append(line.strip())
                if line.startswith("installing"):
                    ev.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if not started.wait(120):
                raise AssertionError(f"child never started installing: {proc.stderr}")
            time.sleep(delay)
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
        installed = "installed" in lines
        with open_store(directory) as s:
            got = s.content_hash()
            if installed:
                assert got == hash_b, f"run {run}: acknowledged install lost"
            assert got in (hash_a, hash_b), f"run {run}: a half-installed gallery"
            assert (s.epoch, s.last_seq) == ((2, child.B_LAST_SEQ) if got == hash_b
                                             else (1, child.A_CITIZENS))
            s.verify_index()
        assert not list((directory / CHECKPOINT_DIR).glob("snapshot-graph-*"))
        what = "b" if got == hash_b else "a"
        seen[what] = seen.get(what, 0) + 1
    print(f"after the kills: {seen}")
    assert seen.get("a", 0) >= 1  # at least one kill landed inside the install
