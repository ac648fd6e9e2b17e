"""One snapshot file for many terminals (docs/scale.md "One snapshot for many terminals").

The district builds a snapshot of its state once, as a file, and answers every
terminal's snapshot request (one that says ``accepts_file``) with the same signed
``SnapshotFile`` descriptor on its direct topic (a few hundred bytes); the terminals GET
the file from the district service over HTTP(S) with Range requests (resumable). The
broker carries the announcements only, whatever the number of terminals.

Reuse rule: the newest file is reused while it is of the log's epoch and embedder and
its ``last_seq`` is still inside the replay window (a terminal installs it and replays
the changes after it); otherwise a new one is built from the current state. So a burst
of requests after ``district new-epoch`` builds one file, and a district whose log moves
builds at most one per replay window of changes.

On disk (``[snapshots] dir``, default ``<log>.snapshots/``, mode 0700): ``<id>.snap`` (the
records, see sync/snapfile.py) and ``<id>.desc`` (the sealed descriptor), both written to
a temp file, fsynced and renamed; only the newest ``keep`` are kept (the previous one
stays so that terminals downloading it can finish).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import hnswlib
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from prometheus_client.core import CounterMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import DistrictError
from district.log import DistrictLog
from proto import sync_pb2 as pb
from sync import snapfile, snapgraph
from sync.wire import seal

log = logging.getLogger(__name__)

#: records of ~1 MiB (as the MQTT chunks): few records, small memory when reading
CHUNK_MAX_BYTES = 1 << 20
#: changes read at a time when looking for deletions after a file (bounded memory)
SCAN_CHANGES = 1000
#: how often the service looks for citizens deleted after a kept file (right to be
#: forgotten: such a file is removed, the next request builds a new one). 10 s: a
#: deleted citizen's embeddings stay on the district's disk seconds, not weeks, for a
#: scan of the changes since the last look (a few per second at most)
SWEEP_S = 10.0
#: HNSW parameters of the graph shipped in a snapshot file: the terminal's [store]
#: defaults (edge/config.py StoreSettings M and ef_construction; a test keeps them
#: equal). A terminal configured otherwise ignores the graph and builds its own
GRAPH_M = 32
GRAPH_EF_CONSTRUCTION = 125
#: threads of the graph build: 10,000 citizens are ~4-5 s of CPU once per file; two
#: threads halve the wait of the first terminal without taking the district's cores
GRAPH_THREADS = 2
#: snapshot files kept: the newest (what requests get) and the one before (terminals still
#: downloading it finish instead of starting over); each is ~2 KiB per citizen
KEEP = 2


class SnapshotFiles:
    """Builds, keeps and finds one district's snapshot files (thread safe)."""

    def __init__(self, directory: Path, key: Ed25519PrivateKey, base_url: str, *,
                 keep: int = KEEP, chunk_max_bytes: int = CHUNK_MAX_BYTES,
                 graph: bool = True) -> None:
        if keep < 1:
            raise ValueError("keep at least one snapshot file")
        self.dir = directory
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.keep = keep
        self.chunk_max_bytes = chunk_max_bytes
        #: ship the HNSW graph of the snapshot's embeddings in the file (sync/snapgraph.py)
        self.graph = graph
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        #: files built by this process (tests, benchmarks)
        self.built = 0
        #: files removed because a citizen was deleted after them
        self.forgotten = 0
        #: response body bytes the snapshot server handed to the connections (all
        #: responses; Range answers count what they send): the district's side of the
        #: re-snapshot traffic (``motcua_district_snapshot_http_bytes_total``)
        self.bytes_served = 0
        #: snapshot id -> change number up to which no citizen deletion follows it
        self._clean_to: dict[str, int] = {}
        for stale in self.dir.glob("*.tmp"):  # a build a crash interrupted
            stale.unlink(missing_ok=True)

    def path_of(self, snapshot_id: str) -> Path | None:
        """The file of a kept snapshot, None for anything else (never a path outside)."""
        if not snapfile.SNAPSHOT_ID.fullmatch(snapshot_id):
            return None
        path = self.dir / f"{snapshot_id}.snap"
        return path if path.is_file() and (self.dir / f"{snapshot_id}.desc").is_file() else None

    def _kept(self) -> list[tuple[pb.SnapshotFile, bytes]]:
        """Kept snapshots, newest first: (descriptor, sealed envelope)."""
        out = []
        for p in self.dir.glob("*.desc"):
            try:
                sealed = p.read_bytes()
                env = pb.Envelope.FromString(sealed)
                d = pb.SnapshotFile.FromString(env.body)
            except Exception as exc:  # a damaged file: rebuilt, never served
                log.warning("ignoring snapshot descriptor %s: %s", p.name, exc)
                continue
            if (self.dir / f"{d.snapshot_id}.snap").is_file():
                out.append((d, sealed))
        out.sort(key=lambda x: (x[0].created_at_ms, x[0].last_seq), reverse=True)
        return out

    def descriptor_for(self, dlog: DistrictLog, min_last_seq: int) -> bytes:
        """The sealed descriptor of a snapshot of ``dlog``'s epoch with ``last_seq >=
        min_last_seq`` (the newest kept one, else a new one built now)."""
        with self._lock:
            kept = self._kept()
            if kept:
                d, sealed = kept[0]
                if self._forgotten_after(dlog, d):
                    self._remove_stale(dlog, kept)
                elif (d.epoch == dlog.epoch and d.embedder_id == dlog.embedder_id
                        and d.dim == dlog.dim and d.last_seq >= min_last_seq
                        and d.district_id == dlog.district_id
                        and d.url.startswith(self.base_url + snapfile.URL_PATH)):
                    return sealed
            sealed = self._build(dlog)
            self._prune()
            return sealed

    def _build(self, dlog: DistrictLog) -> bytes:
        t0 = time.monotonic()
        snap_id = uuid.uuid4().hex
        epoch = dlog.epoch
        tmp = self.dir / f"{snap_id}.snap.tmp"
        digest = hashlib.sha256()
        size = 0

        class _Hashing:
            """Write-through file object that hashes and counts what it writes."""

            def __init__(self, fh: object) -> None:
                self.fh = fh

            def write(self, data: bytes) -> int:
                nonlocal size
                digest.update(data)
                size += len(data)
                return self.fh.write(data)  # type: ignore[attr-defined, no-any-return]

        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, dlog.snapshot() as (last_seq, nc, nd, rows):
                out = _Hashing(raw)
                index = 0
                pending: list[bytes] = []
                pending_graph = [b""]
                psize = 0

                def flush(last: bool) -> None:
                    nonlocal index
                    c = pb.SnapshotChunk(
                        district_id=dlog.district_id, epoch=epoch,
                        embedder_id=dlog.embedder_id, dim=dlog.dim, snapshot_id=snap_id,
                        last_seq=last_seq, index=index, last=last, citizen_count=nc,
                        dossier_count=nd, index_graph=pending_graph[0])
                    for blob in pending:
                        c.changes.add().MergeFromString(blob)
                    snapfile.write_record(out, c.SerializeToString())  # type: ignore[arg-type]
                    index += 1
                    pending.clear()

                vectors: list[np.ndarray] = []  # type: ignore[type-arg]
                for blob in rows:
                    if pending and psize + len(blob) > self.chunk_max_bytes:
                        flush(False)
                        psize = 0
                    pending.append(blob)
                    psize += len(blob)
                    if self.graph:
                        vectors.append(_embeddings(blob, dlog.dim))
                graph = build_graph(vectors, dlog.dim) if self.graph else b""
                if graph:
                    # the graph in records of its own, between the changes and an empty
                    # last record: older terminals see chunks without changes
                    flush(False)
                    for at in range(0, len(graph), self.chunk_max_bytes):
                        pending_graph[0] = graph[at:at + self.chunk_max_bytes]
                        flush(False)
                    pending_graph[0] = b""
                flush(True)
                raw.flush()
                os.fsync(raw.fileno())
            desc = pb.SnapshotFile(
                district_id=dlog.district_id, epoch=epoch, embedder_id=dlog.embedder_id,
                dim=dlog.dim, snapshot_id=snap_id, last_seq=last_seq, size=size,
                sha256=digest.digest(), citizen_count=nc, dossier_count=nd,
                url=f"{self.base_url}{snapfile.URL_PATH}{snap_id}",
                created_at_ms=int(time.time() * 1000))
            sealed = seal(self.key, dlog.district_id, pb.PAYLOAD_KIND_SNAPSHOT_FILE,
                          desc.SerializeToString())
            os.replace(tmp, self.dir / f"{snap_id}.snap")
            _write_atomic(self.dir / f"{snap_id}.desc", sealed)
        finally:
            tmp.unlink(missing_ok=True)
        self.built += 1
        log.info("snapshot file %s: epoch %d, change %d, %d citizens, %d bytes, %.1f s",
                 snap_id, epoch, last_seq, nc, size, time.monotonic() - t0)
        return sealed

    def sweep(self, dlog: DistrictLog) -> int:
        """Remove every kept file that holds a citizen deleted after it; how many."""
        with self._lock:
            return self._remove_stale(dlog, self._kept())

    def _remove_stale(self, dlog: DistrictLog,
                      kept: list[tuple[pb.SnapshotFile, bytes]]) -> int:
        n = 0
        for d, _ in kept:
            if self._forgotten_after(dlog, d):
                self._remove(d.snapshot_id)
                self.forgotten += 1
                n += 1
                log.info("snapshot file %s removed: a citizen in it was deleted since",
                         d.snapshot_id)
        return n

    def _forgotten_after(self, dlog: DistrictLog, d: pb.SnapshotFile) -> bool:
        """True when a citizen was deleted after ``d.last_seq`` (or the log no longer
        tells: compacted). Each change is read once per file (remembered)."""
        first = self._clean_to.get(d.snapshot_id, d.last_seq) + 1
        head = dlog.head_seq
        while first <= head:
            last = min(head, first + SCAN_CHANGES - 1)
            try:
                blobs = dlog.changes(first, last)
            except DistrictError:
                return True  # compacted past it: too old to reuse anyway
            for blob in blobs:  # redacted entries come as deletes too
                if pb.Change.FromString(blob).WhichOneof("kind") == "citizen_delete":
                    return True
            self._clean_to[d.snapshot_id] = last
            first = last + 1
        return False

    def _remove(self, snapshot_id: str) -> None:
        for suffix in (".desc", ".snap"):  # descriptor first: never served half-gone
            (self.dir / f"{snapshot_id}{suffix}").unlink(missing_ok=True)
        self._clean_to.pop(snapshot_id, None)

    def _prune(self) -> None:
        for d, _ in self._kept()[self.keep:]:
            self._remove(d.snapshot_id)


def _embeddings(blob: bytes, dim: int) -> np.ndarray:  # type: ignore[type-arg]
    """A log change's embeddings (float32 rows; none for anything but a citizen)."""
    c = pb.Change.FromString(blob)
    if c.WhichOneof("kind") != "citizen_upsert":
        return np.empty((0, dim), dtype=np.float32)
    u = c.citizen_upsert
    return np.frombuffer(u.embeddings, dtype="<f4").reshape(-1, dim)


def build_graph(vectors: list[np.ndarray], dim: int) -> bytes:  # type: ignore[type-arg]
    """The snapshot's index graph payload (sync/snapgraph.py) over ``vectors`` (each
    citizen's embeddings in file order); b"" when there are none."""
    if not vectors:
        return b""
    unit64 = np.concatenate(vectors).astype(np.float64)
    if not len(unit64):
        return b""
    # normalised as the terminal's store does (edge/store/validate.unit_rows)
    unit = (unit64 / np.linalg.norm(unit64, axis=1, keepdims=True)).astype(np.float32)
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=len(unit), M=GRAPH_M, ef_construction=GRAPH_EF_CONSTRUCTION,
                     random_seed=100)
    index.add_items(unit, np.arange(len(unit)), num_threads=GRAPH_THREADS)
    with tempfile.TemporaryDirectory(prefix="snapgraph-") as tmp:
        path = Path(tmp) / "graph.hnsw"
        index.save_index(str(path))
        return snapgraph.strip(path.read_bytes(), dim)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _CountBody:
    """ASGI middleware: adds every response body's bytes to ``files.bytes_served``
    (runs on the server's one event loop thread: no lock)."""

    def __init__(self, app: ASGIApp, files: SnapshotFiles) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.files.bytes_served += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting if scope["type"] == "http" else send)


class SnapshotCollector:
    """Prometheus: bytes the snapshot server sent and files built by this worker."""

    def __init__(self, files: SnapshotFiles) -> None:
        self.files = files

    def describe(self) -> list[CounterMetricFamily]:
        return []

    def collect(self) -> list[CounterMetricFamily]:
        return [
            CounterMetricFamily("motcua_district_snapshot_http_bytes", "response body "
                                "bytes the snapshot file server sent",
                                value=self.files.bytes_served),
            CounterMetricFamily("motcua_district_snapshot_files_built", "snapshot files "
                                "this worker built", value=self.files.built),
        ]


def snapshot_app(files: SnapshotFiles) -> FastAPI:
    """The terminals' HTTP API: ``GET /v1/snapshots/{id}`` (Range requests: resumable).
    Who may connect is the TLS layer's job (client certificates of the district CA,
    ``[snapshots] client_ca``); the file itself is checked by the terminal against the
    signed descriptor."""
    app = FastAPI(title="motcua district snapshots", version="1", docs_url=None,
                  redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(_r: object, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"errors": [{"field": "", "message": str(exc.detail)}]},
                            status_code=exc.status_code)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok\n"

    @app.get(snapfile.URL_PATH + "{snapshot_id}")
    def get_snapshot(snapshot_id: str) -> FileResponse:
        path = files.path_of(snapshot_id)
        if path is None:
            raise HTTPException(404, "no such snapshot (a newer one replaced it: ask again)")
        return FileResponse(path, media_type="application/octet-stream")

    app.add_middleware(_CountBody, files=files)
    return app


__all__ = ["KEEP", "SWEEP_S", "SnapshotCollector", "SnapshotFiles", "snapshot_app"]
