"""The kiosk page server: static page, live state over Server-Sent Events, taps as POSTs.

Routes: ``GET /`` the page (``?lang=en`` for English), ``GET /events`` SSE stream of screen
states (JSON), ``GET /state`` the current state (polling fallback), ``GET /survey-qr.svg``
the district survey's QR of the result on screen, ``POST /api/pin``,
``/api/notme``, ``/api/rate``, ``/api/confirm``, ``/api/confirm_cancel`` (JSON bodies,
forwarded to the terminal), ``GET /healthz``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import segno

from core.errors import ConfigError
from core.net import is_loopback_host
from edge.display.client import CallFailed, TerminalLink
from edge.display.view import Screen

log = logging.getLogger(__name__)

#: SSE comment sent when nothing changed for this long, so proxies and the browser keep
#: the connection and a dead page is noticed; 15 s is the usual choice
HEARTBEAT_S = 15.0
#: largest POST body accepted; taps are a few dozen bytes
MAX_BODY = 4096

#: sent with every response. The page loads only its own script and style files (no
#: inline script or style, no eval), talks only to this server, may not be framed, and
#: leaks no Referer; nosniff keeps a JSON answer from being run as a script
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _asset(name: str) -> bytes:
    # one joinpath per part: Traversable.joinpath takes several only from Python 3.11
    return resources.files("edge.display").joinpath("static").joinpath(name).read_bytes()


class KioskServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], screen: Screen, link: TerminalLink | None,
                 stop: threading.Event, language: str) -> None:
        self.screen = screen
        self.link = link
        self.stop_event = stop
        self.language = language
        super().__init__(address, KioskHandler)

    @property
    def url(self) -> str:
        return f"http://{self.authority}/"

    @property
    def authority(self) -> str:
        """``host:port`` this server answers to (the bound address, IPv6 in brackets)."""
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"

    def allowed_hosts(self) -> set[str]:
        """Host header values accepted: the listen address, and for a loopback one its
        loopback names on the same port. Anything else is a DNS-rebinding page."""
        port = self.server_address[1]
        hosts = {self.authority}
        if is_loopback_host(self.authority.rpartition(":")[0].strip("[]")):
            hosts |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        return hosts


class KioskHandler(BaseHTTPRequestHandler):
    server: KioskServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("kiosk http: " + format, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def _host_ok(self) -> bool:
        """Refuse (403) requests whose Host is not this server: a foreign page that
        rebinds its own name to 127.0.0.1 would otherwise read and post as the kiosk."""
        if self.headers.get("Host", "") in self.server.allowed_hosts():
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "wrong Host"})
        return False

    def _origin_ok(self) -> bool:
        """A POST must come from the page itself: Origin present and equal to this
        server (browsers send it on every POST; a missing one is not a browser tap)."""
        origin = self.headers.get("Origin", "")
        if origin in {f"http://{h}" for h in self.server.allowed_hosts()}:
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "cross-origin request refused"})
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        if path in _STATIC:
            name, ctype = _STATIC[path]
            body = _asset(name)
            if name == "index.html":
                body = body.replace(b"__DEFAULT_LANG__", self.server.language.encode())
            self._send(HTTPStatus.OK, body, ctype)
        elif path == "/events":
            self._events()
        elif path == "/state":
            self._json(HTTPStatus.OK, self.server.screen.get()[1])
        elif path == "/survey-qr.svg":
            self._survey_qr()
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"ok": True, "connected": self.server.screen.get()[1].get(
                "connected", False)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _survey_qr(self) -> None:
        """The survey QR of the result on screen (SVG), 404 when there is none. Rendered
        here from the screen state (never from the request), so a page can only ever get
        the QR the terminal offered."""
        match = self.server.screen.get()[1].get("match") or {}
        url = str(match.get("survey_url") or "")
        if not url:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no survey on screen"})
            return
        self._send(HTTPStatus.OK, survey_qr_svg(url), "image/svg+xml")

    def _events(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        screen = self.server.screen
        version, state = screen.get()
        try:
            self.wfile.write(b"retry: 1000\n")
            self._event(state)
            while not self.server.stop_event.is_set():
                new_version, state = screen.wait_change(version, HEARTBEAT_S)
                if new_version == version:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                version = new_version
                self._event(state)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return

    def _event(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, ensure_ascii=False)
        self.wfile.write(f"id: {state.get('version', 0)}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok() or not self._origin_ok():
            return
        path = urlsplit(self.path).path
        if path not in ("/api/pin", "/api/notme", "/api/rate", "/api/confirm",
                        "/api/confirm_cancel"):
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        # only JSON: a text/plain or form POST is what a foreign page can send without a
        # CORS preflight
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                       {"error": "Content-Type must be application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body missing or too large"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("not an object")
            session_id = str(body.get("session_id", ""))
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body is not a JSON object"})
            return
        link = self.server.link
        if link is None:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no terminal"})
            return
        try:
            if path == "/api/pin":
                result = link.submit_pin(session_id, str(body.get("pin", "")))
            elif path == "/api/notme":
                result = link.not_me(session_id)
            elif path == "/api/confirm":
                result = link.submit_confirmation(session_id, str(body.get("answer", "")))
            elif path == "/api/confirm_cancel":
                result = link.cancel_confirmation(session_id)
            else:
                score = body.get("score")
                if not isinstance(score, int) or isinstance(score, bool):
                    self._json(HTTPStatus.BAD_REQUEST, {"error": "score must be an integer"})
                    return
                result = link.rate(session_id, score)
        except CallFailed as exc:
            status = HTTPStatus.BAD_GATEWAY if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") \
                else HTTPStatus.CONFLICT
            self._json(status, {"error": exc.message, "code": exc.code})
            return
        self._json(HTTPStatus.OK, result)


#: the QR's error correction: M (15 %) survives glare and a smudged screen and keeps a
#: ~60-character URL at version 4-5 (37 modules), big modules at the page's 260 px
QR_ERROR = "m"


@functools.lru_cache(maxsize=4)
def survey_qr_svg(url: str) -> bytes:
    """``url`` as an SVG QR code (segno), black on white with the standard 4-module quiet
    zone; cached: the same result screen asks for it once per render."""
    qr = segno.make_qr(url, error=QR_ERROR, boost_error=False)
    out = io.BytesIO()
    qr.save(out, kind="svg", scale=1, border=4, dark="#000", light="#fff",
            xmldecl=False, svgns=True, title="QR", svgclass=None, lineclass=None,
            omitsize=True)  # a viewBox: the page sizes it
    return out.getvalue()


def create_kiosk_server(listen: str, screen: Screen, link: TerminalLink | None,
                        stop: threading.Event, language: str = "vi") -> KioskServer:
    """Bind the page server (port 0 picks a free one); run ``serve_forever`` in a thread."""
    host, _, port = listen.rpartition(":")
    try:
        return KioskServer((host.strip("[]"), int(port)), screen, link, stop, language)
    except OSError as exc:
        raise ConfigError(f"display.http_listen: cannot listen on {listen}: {exc.strerror}"
                          ) from None
