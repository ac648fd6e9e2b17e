"""``motcua terminal run``: the terminal service (camera, sessions, sync, display API)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from core.errors import CameraError, MotcuaError
from core.net import split_hostport
from edge import __version__
from edge.config import Config, load_config
from edge.ops import metrics
from edge.ops.logging import setup_logging
from edge.ops.metrics import TimedDetector, TimedEmbedder
from edge.ops.sdnotify import Notifier, WatchdogHook
from edge.service import SyncLink, TerminalService, Vision, load_vision
from sync.keys import load_public_keys
from sync.mqtt import broker_settings

if TYPE_CHECKING:
    from edge.ops.metrics import MetricsServer

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("terminal", help="run the terminal service")
    tsub = p.add_subparsers(dest="terminal_command", metavar="ACTION", required=True)
    run_p = tsub.add_parser("run", help="camera -> sessions -> display API, synced with the "
                                         "district")
    run_p.add_argument("--camera", metavar="SOURCE",
                       help="override camera.source (device, video file, image folder, URL)")
    run_p.add_argument("--no-sync", action="store_true",
                       help="do not connect to the district broker (local store only)")
    run_p.set_defaults(func=run)


def sync_link(cfg: Config) -> SyncLink | None:
    """The broker settings and district key from ``[sync]``; None when no broker is set."""
    s = cfg.sync
    if not s.broker:
        return None

    broker = broker_settings(s, "sync")
    return SyncLink(broker=broker, public_key=load_public_keys(s.district_key_file),
                    prefix=s.prefix)


def start_metrics(cfg: Config, service: TerminalService) -> MetricsServer | None:
    """Serve the terminal's Prometheus metrics on ``[ops] metrics_listen`` ("" = off).
    A port already taken is logged, not fatal: the terminal matters more than its metrics."""

    metrics.watch_service(service.stats)
    metrics.TERMINAL.build_info.labels(version=__version__).set(1)
    if not cfg.ops.metrics_listen:
        return None
    host, port = split_hostport(cfg.ops.metrics_listen, "ops.metrics_listen")
    try:
        server = metrics.MetricsServer(metrics.REGISTRY, host, port).start()
    except OSError as exc:
        log.warning("metrics exporter not started on %s: %s", cfg.ops.metrics_listen,
                    exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d/metrics", server.host, server.port)
    return server


def run(args: argparse.Namespace) -> int:

    cfg = load_config(args.config)
    setup_logging(cfg.ops.log_level.upper(), cfg.ops.log_format)
    if args.camera:
        cfg = dataclasses.replace(cfg, camera=dataclasses.replace(cfg.camera,
                                                                  source=args.camera))
    link = None if args.no_sync else sync_link(cfg)
    if link is None and not args.no_sync:
        log.warning("[sync] broker not set: running on the local store only")
    vision: Vision = load_vision(cfg)
    # stage latencies for the Prometheus exporter (edge/ops/metrics.py)
    vision = dataclasses.replace(vision, detector=TimedDetector(vision.detector),
                                 embedder=TimedEmbedder(vision.embedder))
    notifier = Notifier.from_env()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = TerminalService(cfg, vision, sync=link, stop=stop,
                              heartbeat=WatchdogHook(notifier).tick)
    exporter = start_metrics(cfg, service)
    try:
        service.start()
    except BaseException:
        service.stop()
        if exporter is not None:
            exporter.stop()
        raise
    notifier.ready(f"serving on port {service.api.port}")
    print(f"terminal {cfg.terminal.id}: display API on port {service.api.port}, "
          f"{service.store.citizen_count if service.store else 0} citizens", file=sys.stderr)
    try:
        service.wait()
    finally:
        notifier.stopping()
        service.stop()
        if exporter is not None:
            exporter.stop()
    err = service.loop_error
    if isinstance(err, MotcuaError):
        raise err
    if err is not None:
        raise CameraError(f"the camera loop crashed: {err}")
    return 0
