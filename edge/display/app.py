"""The display process: terminal link thread + page server thread, one stop event."""

from __future__ import annotations

import logging
import threading

from edge.config import DisplayConfig
from edge.display.client import TerminalLink
from edge.display.view import Screen
from edge.display.web import KioskServer, create_kiosk_server

log = logging.getLogger(__name__)


class DisplayApp:
    """Everything ``motcua display`` runs; ``start()`` then ``close()`` (or ``run()``)."""

    def __init__(self, cfg: DisplayConfig, stop: threading.Event | None = None,
                 name: str = "kiosk") -> None:
        self.cfg = cfg
        self.stop_event = stop or threading.Event()
        self.screen = Screen(cfg.language)
        self.link = TerminalLink(cfg, self.screen, self.stop_event, name=name)
        self.web: KioskServer = create_kiosk_server(
            cfg.http_listen, self.screen, self.link, self.stop_event, cfg.language
        )
        self._web_thread = threading.Thread(
            target=self.web.serve_forever, kwargs={"poll_interval": 0.25},
            name="display-http", daemon=True,
        )

    @property
    def url(self) -> str:
        return self.web.url

    def start(self) -> None:
        self.link.start()
        self._web_thread.start()
        log.info("kiosk page at %s (terminal API %s)", self.url, self.cfg.api)

    def close(self) -> None:
        self.stop_event.set()
        self.screen.wake_all()
        self.web.shutdown()
        self.web.server_close()
        self.link.close()
        self._web_thread.join(5)

    def run(self) -> None:
        """Start, wait for the stop event, close."""
        self.start()
        try:
            self.stop_event.wait()
        finally:
            self.close()
