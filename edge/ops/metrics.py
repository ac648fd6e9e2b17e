"""Prometheus metrics of a terminal, through the official ``prometheus_client``.

Two kinds of figures, one registry (:data:`REGISTRY`, not the library's global one, so
the exposition holds exactly the names in docs/technician-guide.md):

- observed where they happen: the detect/embed latencies (:class:`TimedDetector`,
  :class:`TimedEmbedder` around the pack's ports) and the build version;
- read from the running service at scrape time by :class:`ServiceCollector` (frames,
  fps, session outcomes, store, sync): pull, so the hot loop pays nothing for them.

:class:`MetricsServer` serves the registry with prometheus_client's WSGI app on a
loopback wsgiref server (``[ops] metrics_listen``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    # typeshed's names (wsgiref.types is 3.11+; _typeshed exists only for type checkers)
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from edge.service import ServiceStats

log = logging.getLogger(__name__)

# The library adds a "<name>_created" series to every counter and histogram: names the
# dashboards never had, doubling the histogram's series. The terminal's own exposition
# keeps to the documented names (this switch is process-wide; nothing else here uses
# prometheus_client).
prometheus_client.disable_created_metrics()

#: latency buckets in seconds: 1 ms .. 5 s covers a Pi 4 from detection to a full session
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: the terminal's registry, served by :func:`serve`
REGISTRY = CollectorRegistry()


class TerminalMetrics:
    """The metrics observed where they happen, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_latency = Histogram(
            "motcua_stage_latency_seconds", "Time spent per pipeline stage.", ["stage"],
            buckets=DEFAULT_BUCKETS, registry=registry,
        )
        self.build_info = Gauge(
            "motcua_build_info", "Version of the running terminal software.", ["version"],
            registry=registry,
        )


#: the process-wide observed metrics (on :data:`REGISTRY`)
TERMINAL = TerminalMetrics(REGISTRY)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when it does not exist)."""
    total = 0
    if not path.is_dir():
        return 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:  # a checkpoint renamed away while we walk
            continue
    return total


class ServiceCollector(Collector):
    """The running ``TerminalService``'s figures, read when Prometheus scrapes.

    ``stats`` is ``TerminalService.stats`` (or anything returning a ``ServiceStats``).
    A part that is not running gives its families without samples; a failing read (the
    service stopping under the scrape) is logged and gives the same, never a failed
    scrape: the observed latencies are still worth serving."""

    def __init__(self, stats: Callable[[], ServiceStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        """The families without samples (the registry checks names with these)."""
        return list(self._families(None, None))

    def collect(self) -> Iterable[Metric]:
        try:
            st = self._stats()
            size = dir_size(st.store.path) if st.store is not None else None
        except Exception as exc:  # any failure: see the class docstring
            log.warning("metrics: the service's figures are unavailable: %s", exc)
            return list(self._families(None, None))
        return list(self._families(st, size))

    @staticmethod
    def _families(st: ServiceStats | None, store_bytes: int | None) -> Iterator[Metric]:
        loop = st.loop if st is not None else None
        store = st.store if st is not None else None
        sync = st.sync if st is not None else None

        frames = CounterMetricFamily("motcua_frames_total", "Camera frames processed.")
        fps = GaugeMetricFamily("motcua_camera_fps",
                                "Frames per second over the last 5 seconds.")
        sessions = CounterMetricFamily("motcua_sessions_total",
                                       "Lookup sessions ended, by outcome.", labels=["outcome"])
        if loop is not None:
            frames.add_metric([], loop.frames)
            fps.add_metric([], loop.fps)
            for outcome, n in sorted(loop.outcomes.items()):
                sessions.add_metric([outcome], n)
        yield from (frames, fps, sessions)

        lag = GaugeMetricFamily("motcua_sync_lag_changes",
                                "District head change number minus the applied one.")
        rejections = CounterMetricFamily("motcua_sync_rejections_total",
                                         "Sync messages rejected, by reason.", labels=["reason"])
        if sync is not None:
            lag.add_metric([], sync.lag_changes)
            for reason, n in sorted(sync.rejections.items()):
                rejections.add_metric([reason], n)
        applied = GaugeMetricFamily("motcua_sync_applied_change",
                                    "Last change number applied to the store.")
        size = GaugeMetricFamily("motcua_store_size_bytes", "Size of the store on disk.")
        citizens = GaugeMetricFamily("motcua_gallery_citizens", "Citizens in the local gallery.")
        if store is not None:
            applied.add_metric([], store.applied_seq)
            citizens.add_metric([], store.citizens)
        if store_bytes is not None:
            size.add_metric([], store_bytes)
        yield from (lag, applied, rejections, size, citizens)


_watched: ServiceCollector | None = None
_watch_lock = threading.Lock()


def watch_service(stats: Callable[[], ServiceStats]) -> None:
    """Make :data:`REGISTRY` read ``stats`` (``TerminalService.stats``) at each scrape,
    replacing the service watched before, if any (one service per process)."""
    global _watched
    with _watch_lock:
        if _watched is not None:
            REGISTRY.unregister(_watched)
        _watched = ServiceCollector(stats)
        REGISTRY.register(_watched)


class TimedDetector:
    """Wraps a face detector: each ``detect`` is observed as stage "detect"."""

    def __init__(self, inner: Any, metrics: TerminalMetrics | None = None) -> None:
        self.inner = inner
        self._hist = (metrics or TERMINAL).stage_latency.labels(stage="detect")

    def detect(self, image: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self._hist.observe(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedEmbedder:
    """Wraps a face embedder: each ``embed`` is observed as stage "embed"."""

    def __init__(self, inner: Any, metrics: TerminalMetrics | None = None) -> None:
        self.inner = inner
        self._hist = (metrics or TERMINAL).stage_latency.labels(stage="embed")

    def embed(self, image: Any, faces: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.embed(image, faces)
        finally:
            self._hist.observe(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


#: the paths served; prometheus_client's app answers any path, a typo should get a 404
METRICS_PATHS = frozenset({"/metrics", "/"})


def _metrics_paths_only(app: WSGIApplication) -> WSGIApplication:
    def routed(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in METRICS_PATHS:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics\n"]
        return app(environ, start_response)

    return routed


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return  # a scrape every 15 s would flood the journal


class _Server4(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """prometheus_client's WSGI app for ``registry`` on a wsgiref server at ``host:port``
    (port 0: any free one), served in the daemon thread "metrics-http". Binding happens
    here, so a taken port raises ``OSError`` before any thread starts."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        server_class = _Server6 if ":" in host else _Server4
        self._httpd = make_server(host, port, _metrics_paths_only(make_wsgi_app(registry)),
                                  server_class=server_class, handler_class=_QuietHandler)
        self.host: str = host
        self.port: int = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the thread; safe to call twice."""
        if self._thread.is_alive():
            self._httpd.shutdown()  # returns once serve_forever has left its loop
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """Start the exporter for :data:`REGISTRY` (9464: the port Prometheus assigns to
    OpenTelemetry/edge exporters, free on a terminal)."""
    return MetricsServer(REGISTRY, host, port).start()
