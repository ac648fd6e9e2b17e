"""``motcua display``: run the kiosk screen (client of the terminal's display API)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

from edge.config import load_config
from edge.display.app import DisplayApp


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("display", help="serve the kiosk screen (a client of the terminal API)")
    p.add_argument("--api", help="terminal display API host:port (default: display.api)")
    p.add_argument("--listen", help="page address host:port (default: display.http_listen)")
    p.add_argument("--lang", choices=("vi", "en"), help="default language of the page")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config).display
    changes = {k: v for k, v in (("api", args.api), ("http_listen", args.listen),
                                 ("language", args.lang)) if v}
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
        cfg.validate("display")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app = DisplayApp(cfg, stop)
    print(f"kiosk page: {app.url}  (terminal API {cfg.api})", file=sys.stderr, flush=True)
    app.run()
    return 0
