"""Prometheus metrics of a terminal: a small registry and a text-format exporter.

Other parts call the helpers at the bottom (``frame()``, ``observe_stage()``,
``session_ended()``, ``sync_rejected()``, ``set_sync_lag()``, ``set_store_size()``);
the terminal serves :data:`REGISTRY` with :func:`serve` on a loopback port
(``[ops] metrics_port``). Stdlib only: the exposition format 0.0.4 is a few lines of
text, not worth a dependency on the device.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.label_names)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    """A number that only goes up (per label set)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def set_total(self, total: float, **labels: str) -> None:
        """Mirror a total another part keeps (collectors only); never goes down."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = max(self._values.get(key, 0.0), float(total))

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A number that goes up and down, or is computed when scraped (``set_function``)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        self._fn: Callable[[], float] | None = None

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Compute the (unlabelled) value at scrape time, e.g. a file size."""
        self._fn = fn

    def value(self, **labels: str) -> float:
        if self._fn is not None and not labels:
            return float(self._fn())
        with self._lock:
            return self._values.get(self._key(labels), math.nan)

    def samples(self) -> list[str]:
        if self._fn is not None:
            try:
                return [f"{self.name} {_num(float(self._fn()))}"]
            except Exception:  # a failing probe must not break the whole scrape
                return [f"{self.name} NaN"]
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


#: latency buckets in seconds: 1 ms .. 5 s covers a Pi 4 from detection to a full session
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram(_Metric):
    """Observations counted in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, sc = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            sc[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(self._key(labels))
            return sum(data[0]) if data else 0

    @contextlib.contextmanager
    def time(self, **labels: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start, **labels)

    def samples(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_num(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lab = _labels(self.label_names, key)
            out.append(f"{self.name}_sum{lab} {_num(total)}")
            out.append(f"{self.name}_count{lab} {running}")
        return out


class Registry:
    """A named set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add_collector(self, fn: Callable[[], None]) -> None:
        """``fn`` refreshes metrics from live state right before each scrape."""
        with self._lock:
            self._collectors.append(fn)

    def remove_collector(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._collectors:
                self._collectors.remove(fn)

    def register(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} registered twice")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, help_text, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return self.register(Gauge(name, help_text, labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self.register(Histogram(name, help_text, labels, buckets))  # type: ignore[return-value]

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
            collectors = list(self._collectors)
        for fn in collectors:
            try:
                fn()
            except Exception:  # a part being torn down must not break the scrape
                logging.getLogger(__name__).debug("metrics collector failed", exc_info=True)
        return "".join(m.render() for m in metrics)


class TerminalMetrics:
    """The terminal's metrics, by name; one instance per registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.frames = registry.counter("motcua_frames_total", "Camera frames processed.")
        self.camera_fps = registry.gauge(
            "motcua_camera_fps", "Frames per second over the last 5 seconds."
        )
        self.stage_latency = registry.histogram(
            "motcua_stage_latency_seconds", "Time spent per pipeline stage.", ["stage"]
        )
        self.sessions = registry.counter(
            "motcua_sessions_total", "Lookup sessions ended, by outcome.", ["outcome"]
        )
        self.sync_lag = registry.gauge(
            "motcua_sync_lag_changes", "District head change number minus the applied one."
        )
        self.sync_applied = registry.gauge(
            "motcua_sync_applied_change", "Last change number applied to the store."
        )
        self.sync_rejections = registry.counter(
            "motcua_sync_rejections_total", "Sync messages rejected, by reason.", ["reason"]
        )
        self.store_size = registry.gauge("motcua_store_size_bytes", "Size of the store on disk.")
        self.gallery_citizens = registry.gauge(
            "motcua_gallery_citizens", "Citizens in the local gallery."
        )
        self.build_info = registry.gauge(
            "motcua_build_info", "Version of the running terminal software.", ["version"]
        )
        self._fps_window: list[float] = []
        self._fps_lock = threading.Lock()

    def frame(self, now: float | None = None) -> None:
        """One camera frame went through the pipeline (updates the counter and the fps)."""
        self.frames.inc()
        now = time.monotonic() if now is None else now
        with self._fps_lock:
            win = self._fps_window
            win.append(now)
            #: frames/s over the last 5 s: long enough to smooth, short enough to show a stall
            while win and now - win[0] > 5.0:
                win.pop(0)
            span = now - win[0] if len(win) > 1 else 0.0
            self.camera_fps.set((len(win) - 1) / span if span > 0 else 0.0)


REGISTRY = Registry()
#: the process-wide terminal metrics; parts import this module and call the helpers below
TERMINAL = TerminalMetrics(REGISTRY)


def frame() -> None:
    TERMINAL.frame()


def observe_stage(stage: str, seconds: float) -> None:
    TERMINAL.stage_latency.observe(seconds, stage=stage)


def timed(stage: str) -> contextlib.AbstractContextManager[None]:
    """``with metrics.timed("detect"): ...`` records the stage latency."""
    return TERMINAL.stage_latency.time(stage=stage)


def session_ended(outcome: str) -> None:
    TERMINAL.sessions.inc(outcome=outcome)


def sync_rejected(reason: str) -> None:
    TERMINAL.sync_rejections.inc(reason=reason)


def set_sync_state(applied: int, head: int | None = None) -> None:
    TERMINAL.sync_applied.set(applied)
    if head is not None:
        TERMINAL.sync_lag.set(max(0, head - applied))


def set_sync_lag(changes: int) -> None:
    TERMINAL.sync_lag.set(changes)


def set_store_size(size_bytes: float | Callable[[], float]) -> None:
    if callable(size_bytes):
        TERMINAL.store_size.set_function(size_bytes)
    else:
        TERMINAL.store_size.set(size_bytes)


def set_gallery_size(citizens: int) -> None:
    TERMINAL.gallery_citizens.set(citizens)


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


def service_collector(service: Any, metrics: TerminalMetrics | None = None
                      ) -> Callable[[], None]:
    """A collector that mirrors a running ``edge.service.TerminalService`` at scrape time:
    frames and fps from its loop, sessions by outcome from its session machine, gallery
    size, change number and bytes on disk from its store, sync lag and rejections by
    reason from its subscriber. Pull, not push: the hot loop pays nothing for it."""
    m = metrics or TERMINAL

    def collect() -> None:
        term = getattr(service, "terminal", None)
        if term is not None:
            m.frames.set_total(term.frames_processed)
            m.camera_fps.set(term.processing_fps())
            machine = getattr(term, "machine", None)
            for outcome, n in dict(getattr(machine, "outcomes", {}) or {}).items():
                m.sessions.set_total(n, outcome=str(outcome))
        store = getattr(service, "store", None)
        if store is not None:
            m.gallery_citizens.set(store.citizen_count)
            m.sync_applied.set(store.last_seq)
            m.store_size.set(dir_size(Path(store.path)))
        engine = getattr(getattr(service, "subscriber", None), "engine", None)
        if engine is not None:
            for reason, n in dict(getattr(engine, "rejections", {})).items():
                m.sync_rejections.set_total(n, reason=str(reason))
            head = int(getattr(engine, "district_head", 0) or 0)
            m.sync_lag.set(max(0, head - int(engine.applied_seq)))

    return collect


class TimedDetector:
    """Wraps a face detector: each ``detect`` is observed as stage "detect"."""

    def __init__(self, inner: Any, metrics: TerminalMetrics | None = None) -> None:
        self.inner = inner
        self._hist = (metrics or TERMINAL).stage_latency

    def detect(self, image: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self._hist.observe(time.perf_counter() - t0, stage="detect")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedEmbedder:
    """Wraps a face embedder: each ``embed`` is observed as stage "embed"."""

    def __init__(self, inner: Any, metrics: TerminalMetrics | None = None) -> None:
        self.inner = inner
        self._hist = (metrics or TERMINAL).stage_latency

    def embed(self, image: Any, faces: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.embed(image, faces)
        finally:
            self._hist.observe(time.perf_counter() - t0, stage="embed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """Serves a registry at ``/metrics`` on a loopback port in a named thread."""

    def __init__(self, registry: Registry = REGISTRY, host: str = "127.0.0.1", port: int = 0):
        reg = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = reg.render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes every 15 s would flood the journal

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]  # type: ignore[misc]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """Start the exporter for :data:`REGISTRY` (9464: the port Prometheus assigns to
    OpenTelemetry/edge exporters, free on a terminal)."""
    return MetricsServer(REGISTRY, host, port).start()
