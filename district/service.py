"""``motcua district serve``: the district server as one long-running service.

One process per district (or several "workers" sharing the log: docs/scale.md; only the
holder of the publisher lease publishes) runs, with one stop event (SIGTERM/SIGINT set it):
- the publisher (district/publisher.py: threads ``district-publish``, ``district-serve``,
  ``district-reports`` and paho's network thread): batches, manifest, replays, snapshots,
  terminals' reports;
- the HTTP API (thread ``district-http``, uvicorn running FastAPI): the case system's
  ingest endpoints (bearer token), ``/healthz`` (the process answers), ``/readyz`` (the
  log is open and the broker connected), ``/metrics`` (Prometheus) and ``/openapi.json``;
  with ``[console] enabled``, the operator console at ``/console`` (district/console) and
  the whole server over TLS.
  with ``[survey]`` enabled also the survey pages for phones, ``/s/{token}``
  (district/survey_page.py).

Logs are JSON, one object per line on stderr. On SIGTERM the HTTP server stops taking
requests and finishes the ones in flight (at most SHUTDOWN_GRACE_S), the publisher stops
after the batch it is sending (progress is saved after each PUBACK, so what is committed
but not yet published goes out at the next start), then the log is closed.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field

from core.errors import ConfigError
from core.net import split_hostport
from district.config import DistrictConfig
from district.console.auth import Authenticator, Sessions
from district.console.views import ConsoleDeps, create_console
from district.enrol import PhotoEmbedder, pipeline_embedder
from district.ingest import Event, EventResult, IngestError, Ingestor, error_field
from district.lease import LeaseCollector
from district.log import DistrictLog
from district.publisher import Publisher
from district.snapshots import SWEEP_S, SnapshotCollector, SnapshotFiles, snapshot_app
from district.survey import OfferWriter, SurveyCollector, SurveyStore, published
from district.survey_page import mount_survey
from faces.pipeline import FacePipeline, load_pipeline
from sync.keys import load_private_key
from sync.mqtt import broker_settings

log = logging.getLogger(__name__)

#: how long SIGTERM waits for in-flight HTTP requests before closing them; an enrolment
#: embeds up to 8 photos (~2 s on a Raspberry Pi class CPU), 10 s covers a few queued
SHUTDOWN_GRACE_S = 10.0
#: concurrent connections of the terminals' snapshot server: a district has hundreds of
#: terminals; 256 streaming at once share the link anyway, more get 503 and retry
SNAPSHOT_CONNECTIONS_MAX = 256
#: request latency buckets (seconds): a status change takes ~5 ms, an enrolment ~1 s
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[MutableMapping[str, Any]], Awaitable[None]]], Awaitable[None]]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_json_logging(level: int = logging.INFO) -> None:
    """Send every logger's records (uvicorn's too) as JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class Metrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self, dlog: DistrictLog) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter("motcua_district_ingest_events", "case-system events by "
                              "kind and outcome (applied, duplicate, stale, rejected)",
                              ["kind", "outcome"], registry=self.registry)
        self.latency = Histogram("motcua_district_request_seconds", "HTTP request latency",
                                 ["path", "method", "code"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.ready = Gauge("motcua_district_ready", "1 when the log is open and the "
                           "broker connected", registry=self.registry)
        self.registry.register(_LagCollector(dlog))


class _LagCollector:
    """Publish lag, read from the log at scrape time: changes not yet acknowledged by
    the broker, and the age of the oldest of them."""

    def __init__(self, dlog: DistrictLog) -> None:
        self.log = dlog

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> list[GaugeMetricFamily]:
        try:
            head, published = self.log.head_seq, self.log.published_seq
            oldest = self.log.oldest_unpublished_at()
        except Exception:  # the log closed (shutting down): report nothing
            return []
        lag = GaugeMetricFamily("motcua_district_publish_lag_changes",
                                "changes committed but not yet acknowledged by the broker",
                                value=head - published)
        age = GaugeMetricFamily("motcua_district_publish_lag_seconds",
                                "age of the oldest unpublished change (0: none)",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
        head_g = GaugeMetricFamily("motcua_district_head_seq", "newest change number",
                                   value=head)
        return [lag, age, head_g]


class BodyLimit:
    """ASGI middleware: POST bodies need a Content-Length of at most ``limit`` bytes
    (413 above it, 411 without one); the server then reads no more than that."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = None
            for k, v in scope["headers"]:
                if k == b"content-length":
                    length = int(v) if v.isdigit() else -1
            if length is None or length < 0 or length > self.limit:
                code = 411 if length is None or length < 0 else 413
                msg = ("Content-Length required" if code == 411
                       else f"body larger than {self.limit} bytes")
                await JSONResponse({"errors": [{"field": "body", "message": msg}]},
                                   status_code=code)(scope, receive, send)
                return
            # uvicorn (h11) never hands the app more body than the Content-Length
        await self.app(scope, receive, send)


class BatchIn(BaseModel):
    """A batch: each valid event is applied in its own transaction and reported."""

    events: list[Event] = Field(min_length=1)


class ItemResult(BaseModel):
    index: int
    event_id: str
    outcome: str
    seq: int = 0
    issued_pin: str = ""
    field: str = ""
    error: str = ""


class BatchOut(BaseModel):
    applied: int
    duplicate: int
    stale: int
    rejected: int
    results: list[ItemResult]


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    errors: list[ErrorItem]


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "message": message}]}, status_code=status)


def create_app(ingestor: Ingestor, token: str, metrics: Metrics, *,
               ready: Callable[[], bool], max_body_bytes: int,
               max_batch_events: int) -> FastAPI:
    """The HTTP API (FastAPI). ``ready`` says whether /readyz answers 200."""
    app = FastAPI(
        title="motcua district ingest API",
        version="1",
        description="Events from the one-stop case-management system to the district's "
        "change log (docs/district.md). Every /v1 endpoint needs `Authorization: Bearer "
        "<token>`.",
        docs_url=None, redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False)
    expected = token.encode()

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = b"" if cred is None else cred.credentials.encode()
        if not hmac.compare_digest(given, expected):  # constant time
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"errors": [{"field": "", "message": str(exc.detail)}]},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": error_field(e), "message": str(e["msg"])}
                  for e in exc.errors()[:20]]  # the first 20: bounded answer
        for e in exc.errors():
            loc = tuple(e["loc"])
            kind = next((p for p in loc if isinstance(p, str) and "." in p), "unknown")
            metrics.events.labels(kind, "rejected").inc()
            break
        return JSONResponse({"errors": errors}, status_code=422)

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.latency.labels(path, request.method, str(response.status_code)).observe(
            time.perf_counter() - t0)
        return response

    @app.get("/healthz", response_class=PlainTextResponse, tags=["operations"])
    def healthz() -> str:
        """The process answers (liveness)."""
        return "ok\n"

    @app.get("/readyz", response_class=PlainTextResponse, tags=["operations"],
             responses={503: {"description": "not ready"}})
    def readyz() -> PlainTextResponse:
        """Ready: the change log is open and the broker connected."""
        ok = ready()
        metrics.ready.set(1 if ok else 0)
        return PlainTextResponse("ready\n" if ok else "not ready\n",
                                 status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def prometheus() -> PlainTextResponse:
        """Prometheus metrics."""
        metrics.ready.set(1 if ready() else 0)
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    def one(event: Any) -> EventResult:
        try:
            r = ingestor.apply(event)
        except IngestError:
            metrics.events.labels(event.kind, "rejected").inc()
            raise
        metrics.events.labels(event.kind, r.outcome).inc()
        return r

    @app.post("/v1/events", response_model=EventResult, tags=["ingest"],
              dependencies=[Depends(auth)],
              responses={401: {"model": ErrorOut}, 409: {"model": ErrorOut},
                         413: {"model": ErrorOut}, 422: {"model": ErrorOut}})
    def post_event(event: Event) -> Any:
        """Apply one event. 200 with outcome applied / duplicate / stale; 422 malformed,
        409 does not fit the current state (nothing changed in either case)."""
        try:
            return one(event)
        except IngestError as exc:
            return _error(exc.status, exc.field, exc.message)

    @app.post("/v1/events/batch", response_model=BatchOut, tags=["ingest"],
              dependencies=[Depends(auth)],
              responses={401: {"model": ErrorOut}, 413: {"model": ErrorOut},
                         422: {"model": ErrorOut}})
    def post_batch(batch: BatchIn) -> Any:
        """Apply events in order (one transaction, a savepoint each); every item is
        reported. A malformed item rejects the whole batch (422, nothing applied); an
        item that does not fit the current state is reported ``rejected`` (undone alone)
        and the others apply."""
        if len(batch.events) > max_batch_events:
            return _error(413, "events", f"at most {max_batch_events} events in a batch")
        results, counts = [], {"applied": 0, "duplicate": 0, "stale": 0, "rejected": 0}
        for i, (event, r) in enumerate(zip(batch.events, ingestor.apply_many(batch.events),
                                           strict=True)):
            if isinstance(r, IngestError):
                results.append(ItemResult(index=i, event_id=event.event_id,
                                          outcome="rejected", field=f"events[{i}].{r.field}",
                                          error=r.message))
                counts["rejected"] += 1
                metrics.events.labels(event.kind, "rejected").inc()
            else:
                results.append(ItemResult(index=i, event_id=r.event_id, outcome=r.outcome,
                                          seq=r.seq, issued_pin=r.issued_pin))
                counts[r.outcome] += 1
                metrics.events.labels(event.kind, r.outcome).inc()
        return BatchOut(results=results, **counts)

    app.add_middleware(BodyLimit, limit=max_body_bytes)  # type: ignore[arg-type]
    return app


@dataclasses.dataclass
class DistrictService:
    """The district service: ``start()``, then ``wait()`` / ``stop()``; one stop event."""

    cfg: DistrictConfig
    stop_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: the enrolment embedder (tests); default: the configured model pack, on first use
    embedder: PhotoEmbedder | Callable[[], PhotoEmbedder] | None = None
    #: overrides [ingest] listen (tests, benchmarks)
    listen: str | None = None
    #: overrides [snapshots] listen (tests, benchmarks; port 0 = any free port)
    snapshots_listen: str | None = None

    def __post_init__(self) -> None:
        d, ing = self.cfg.district, self.cfg.ingest
        if d.db is None:
            raise ConfigError("district.db: required to serve")
        if d.key_file is None:
            raise ConfigError("district.key_file: required to serve (district keygen)")
        if not self.cfg.broker.broker:
            raise ConfigError("broker.broker: required to serve (host:port)")
        self.host, self.port = split_hostport(self.listen or ing.listen, "ingest.listen")
        self.token = ing.read_token()
        self.key = load_private_key(d.key_file)
        self.broker = broker_settings(self.cfg.broker, key="broker")
        self.log = DistrictLog.open(d.db)
        if d.id and d.id != self.log.district_id:
            self.log.close()
            raise ConfigError(f"district.id: {d.id!r}, but {d.db} is the log of district "
                              f"{self.log.district_id!r}")
        self.snapshot_files, self.snapshot_server = self._snapshot_server()
        self.publisher = Publisher(self.log, self.key, self.broker, prefix=d.prefix,
                                   stop=self.stop_event, worker=d.worker,
                                   snapshot_files=self.snapshot_files)
        if self.embedder is None:
            cfg = self.cfg
            self.embedder = lambda: pipeline_embedder(_load_pipeline(cfg))
        self.ingestor = Ingestor(self.log, self.embedder, max_photo_bytes=ing.max_photo_bytes,
                                 on_change=self.publisher.notify,
                                 confirm_secret=self.cfg.calibration.confirm_secret)
        self.metrics = Metrics(self.log)
        self.metrics.registry.register(LeaseCollector(self.publisher.lease))
        if self.snapshot_files is not None:
            self.metrics.registry.register(SnapshotCollector(self.snapshot_files))
        self.app = create_app(self.ingestor, self.token, self.metrics, ready=self.ready,
                              max_body_bytes=ing.max_body_bytes,
                              max_batch_events=ing.max_batch_events)
        tls = self._mount_console()
        #: the survey QR hand-off ([survey], district/survey.py); None: off
        self.survey: SurveyStore | None = self._start_survey()
        self._closed = False
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host=self.host, port=self.port, log_config=None, access_log=False,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S), lifespan="off",
            h11_max_incomplete_event_size=64 * 1024, **tls))
        self._http = threading.Thread(target=self._serve_http, name="district-http",
                                      daemon=True)
        self._snap_http = threading.Thread(target=self._serve_snapshots,
                                           name="district-snapshots", daemon=True)

    def _snapshot_server(self) -> tuple[SnapshotFiles | None, uvicorn.Server | None]:
        """The terminals' snapshot file server (docs/scale.md), when [snapshots] listen
        is set: TLS with client certificates of the district CA when configured."""
        sc = self.cfg.snapshots
        listen = self.snapshots_listen or sc.listen
        if not listen:
            return None, None
        host, port = split_hostport(listen, "snapshots.listen")
        assert self.cfg.district.db is not None
        folder = sc.dir or self.cfg.district.db.with_name(self.cfg.district.db.name + ".snapshots")
        scheme = "https" if sc.tls_cert is not None else "http"
        files = SnapshotFiles(folder, self.key, sc.url or f"{scheme}://{host}:{port}",
                              keep=sc.keep)
        tls: dict[str, Any] = {}
        if sc.tls_cert is not None:
            import ssl
            tls = dict(ssl_certfile=str(sc.tls_cert), ssl_keyfile=str(sc.tls_key),
                       ssl_ca_certs=str(sc.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        server = uvicorn.Server(uvicorn.Config(
            snapshot_app(files), host=host, port=port, log_config=None, access_log=False,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S), lifespan="off",
            # each download is one connection streaming a file: bounded, so a burst
            # of terminals cannot exhaust the district's file descriptors (503 beyond:
            # the terminal retries with backoff)
            limit_concurrency=SNAPSHOT_CONNECTIONS_MAX,
            h11_max_incomplete_event_size=16 * 1024, **tls))
        return files, server

    def _mount_console(self) -> dict[str, Any]:
        """Mount the operator console at /console when ``[console] enabled``; its TLS
        settings for uvicorn (the whole server is then HTTPS only)."""
        con = self.cfg.console
        self.scheme = "http"
        if not con.enabled:
            return {}
        try:
            con.validate("console")  # TLS files and users file named: refuse to start without
            assert con.users_file and con.tls_cert_file and con.tls_key_file
            try:  # a bad pair is named here, not as "cannot serve" once uvicorn trips on it
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    con.tls_cert_file, con.tls_key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"console.tls_cert_file: {con.tls_cert_file} and "
                                  f"console.tls_key_file {con.tls_key_file} are not a "
                                  f"usable certificate and key: {exc}") from None
            auth = Authenticator(con.users_file, max_failures=con.max_failures,
                                 lockout_s=con.lockout_minutes * 60)
        except ConfigError:
            self.log.close()
            raise
        sessions = Sessions(lifetime_s=con.session_hours * 3600, idle_s=con.idle_minutes * 60)
        self.console = ConsoleDeps(self.log, self.publisher.fleet, auth, sessions,
                                   self.cfg.calibration)
        self.app.mount("/console", create_console(self.console))  # type: ignore[arg-type]
        self.scheme = "https"
        return {"ssl_certfile": str(con.tls_cert_file), "ssl_keyfile": str(con.tls_key_file)}

    def _start_survey(self) -> SurveyStore | None:
        """When ``[survey]`` is enabled: sign it into the manifest, store the terminals'
        offers, serve /s/{token} to phones."""
        sv = self.cfg.survey
        if not sv.enabled:
            return None
        assert self.cfg.district.db is not None
        store = SurveyStore(self.cfg.district.db, sv.token_lifetime_s)
        self.publisher.survey = published(sv.enabled, sv.base_url, sv.token_lifetime_s)
        writer = OfferWriter(self.cfg.district.db, sv.token_lifetime_s, self.stop_event)
        self.publisher.survey_offers = writer
        limiter = mount_survey(self.app, store, trusted_proxies=sv.trusted_proxies)
        self.metrics.registry.register(SurveyCollector(store, writer, limiter))
        return store

    def ready(self) -> bool:
        return not self._closed and self.publisher.wait_connected(0)

    def _serve_http(self) -> None:
        self._serve(self.server, "HTTP server")

    def _serve_snapshots(self) -> None:
        assert self.snapshot_server is not None
        self._serve(self.snapshot_server, "snapshot server")

    def _serve(self, server: uvicorn.Server, what: str) -> None:
        """Run ``server`` (a thread's body); when it ends but the service was not
        stopped, stop the service: it does not run on without one of its servers."""
        try:
            server.run()
        except BaseException:
            log.exception("the %s failed", what)
        finally:
            if not self.stop_event.is_set():
                log.error("the %s stopped: stopping the service", what)
                self.stop_event.set()

    def _sweep_snapshots(self) -> None:
        """Remove snapshot files holding a citizen deleted since (right to be forgotten)."""
        assert self.snapshot_files is not None
        while not self.stop_event.wait(SWEEP_S):
            try:
                self.snapshot_files.sweep(self.log)
            except Exception:  # the log busy or closing: next round
                log.exception("snapshot file sweep failed")

    def _start_snapshots(self, deadline: float) -> None:
        server, files = self.snapshot_server, self.snapshot_files
        if server is None or files is None:
            return
        self._snap_http.start()
        threading.Thread(target=self._sweep_snapshots, name="district-snapshot-sweep",
                         daemon=True).start()
        while not server.started:
            if not self._snap_http.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError("snapshots.listen: cannot serve on "
                                  f"{server.config.host}:{server.config.port}")
            self.stop_event.wait(0.01)
        if server.config.port == 0 and not self.cfg.snapshots.url:  # tests: the real port
            port = server.servers[0].sockets[0].getsockname()[1]
            scheme = files.base_url.split(":", 1)[0]
            files.base_url = f"{scheme}://{server.config.host}:{port}"
        log.info("snapshot files served at %s", files.base_url)

    def start(self, timeout: float = 30.0) -> DistrictService:
        """Start the publisher and the HTTP server; returns once the server listens."""
        self._start_snapshots(time.monotonic() + timeout)
        self.publisher.start()
        self._http.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._http.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"ingest.listen: cannot serve on {self.host}:{self.port}")
            self.stop_event.wait(0.01)
        log.info("district %s serving on %s (log %s, head %d, published %d)",
                 self.log.district_id, self.url, self.log.path,
                 self.log.head_seq, self.log.published_seq)
        return self

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def wait(self) -> None:
        """Block until the stop event is set (SIGTERM), then stop."""
        while not self.stop_event.wait(0.5):
            pass
        self.stop()

    def stop(self) -> None:
        """Graceful: finish HTTP requests in flight, then the publisher, then the log."""
        if self._closed:
            return
        self.stop_event.set()
        self.server.should_exit = True
        if self.snapshot_server is not None:
            self.snapshot_server.should_exit = True
        if self._http.is_alive():
            self._http.join(SHUTDOWN_GRACE_S + 5)
        if self._snap_http.is_alive():
            self._snap_http.join(SHUTDOWN_GRACE_S + 5)
        self.publisher.stop()
        self._closed = True
        if self.survey is not None:
            self.survey.close()
        self.log.close()
        log.info("district service stopped")


def _load_pipeline(cfg: DistrictConfig) -> FacePipeline:
    return load_pipeline(cfg)


def openapi_json(app: FastAPI) -> str:
    """The API's OpenAPI schema as committed under docs/ (sorted keys, 2-space indent)."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_app() -> FastAPI:
    """An app for the schema alone (no log, no broker)."""
    return create_app(None, "x" * 32, None, ready=lambda: False,  # type: ignore[arg-type]
                      max_body_bytes=1, max_batch_events=1)


__all__ = ["DistrictService", "JsonFormatter", "create_app", "openapi_json", "schema_app",
           "setup_json_logging", "Path"]
