"""The display's link to the terminal's gRPC API: watch the session stream, send taps back.

One named thread keeps a WatchSession stream open and feeds every message to the
``Screen``; when the terminal goes away (restart, crash) the screen shows "reconnecting"
and the thread retries with exponential backoff until it is back.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from core.errors import ConfigError
from edge.api.server import DISPLAY_TOKEN_HEADER
from edge.config import DisplayConfig
from edge.display.view import Screen, detail_view, disconnected_view, event_view
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: first wait after a lost stream; doubles up to display.reconnect_max_s. 0.2 s makes a
#: quick terminal restart invisible, the cap keeps a dead terminal from being hammered
BACKOFF_START_S = 0.2
#: deadline of the taps (PIN, not me, rating): a person is waiting for the answer
CALL_TIMEOUT_S = 5.0


class CallFailed(Exception):
    """A tap could not be delivered; ``code`` is the gRPC status name for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def make_channel(cfg: DisplayConfig) -> grpc.Channel:
    """A channel to the terminal (TLS with our client certificate when configured)."""
    if cfg.tls_cert is None:
        return grpc.insecure_channel(cfg.api)
    try:
        assert cfg.tls_key is not None and cfg.tls_ca is not None
        creds = grpc.ssl_channel_credentials(
            root_certificates=cfg.tls_ca.read_bytes(),
            private_key=cfg.tls_key.read_bytes(),
            certificate_chain=cfg.tls_cert.read_bytes(),
        )
    except OSError as exc:
        raise ConfigError(f"display.tls_cert: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.secure_channel(cfg.api, creds)


class TerminalLink:
    """Keeps the screen in step with the terminal; forwards the citizen's taps."""

    def __init__(self, cfg: DisplayConfig, screen: Screen, stop: threading.Event,
                 name: str = "kiosk") -> None:
        self.cfg = cfg
        self.screen = screen
        self.stop_event = stop
        self.name = name
        self.channel = make_channel(cfg)
        self.stub = pb_grpc.DisplayStub(self.channel)
        self._stream: Any = None
        self._lock = threading.Lock()
        #: number of times the stream was (re)opened and delivered its first message
        self.connects = 0
        self.thread = threading.Thread(target=self._run, name="display-link", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop_event.set()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
        self.thread.join(5)
        self.channel.close()

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        while not self.stop_event.is_set():
            try:
                stream = self.stub.WatchSession(
                    pb.WatchSessionRequest(client_name=self.name), wait_for_ready=False,
                    metadata=self._metadata(),
                )
                with self._lock:
                    self._stream = stream
                if self.stop_event.is_set():
                    stream.cancel()
                    break
                first = True
                for msg in stream:
                    if first:
                        self.connects += 1
                        log.info("display: connected to terminal at %s", self.cfg.api)
                        first = False
                        backoff = BACKOFF_START_S
                    self.screen.update(event_view(msg))
                reason = "stream ended"
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.CANCELLED and self.stop_event.is_set():
                    break
                reason = f"{code.name}: {exc.details()}"  # type: ignore[attr-defined]
            finally:
                with self._lock:
                    self._stream = None
            if self.stop_event.is_set():
                break
            log.warning("display: lost the terminal (%s); retrying in %.1f s", reason, backoff)
            self.screen.update(disconnected_view(reason))
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    def _metadata(self) -> list[tuple[str, str]]:
        """The display token (read each time: the terminal may make it after we start)."""
        path = self.cfg.api_token_file
        if path is None:
            return []
        try:
            token = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return []  # an ordinary watcher, without the reserved slots
        return [(DISPLAY_TOKEN_HEADER, token)] if token else []

    # -- taps ------------------------------------------------------------------------------

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise CallFailed(exc.code().name, exc.details() or "") from None  # type: ignore[attr-defined]

    def submit_pin(self, session_id: str, pin: str) -> dict[str, Any]:
        r = self._call(self.stub.SubmitPin, pb.SubmitPinRequest(session_id=session_id, pin=pin))
        return {
            "ok": r.ok,
            "tries_left": r.tries_left,
            "locked": r.locked,
            "locked_until_unix_ms": r.locked_until_unix_ms,
            "dossiers": [detail_view(d) for d in r.dossiers],
        }

    def submit_confirmation(self, session_id: str, answer: str) -> dict[str, Any]:
        r = self._call(self.stub.SubmitConfirmation,
                       pb.SubmitConfirmationRequest(session_id=session_id, answer=answer))
        return {"ok": r.ok, "tries_left": r.tries_left, "ended": r.ended}

    def cancel_confirmation(self, session_id: str) -> dict[str, Any]:
        self._call(self.stub.CancelConfirmation,
                   pb.CancelConfirmationRequest(session_id=session_id))
        return {"ok": True}

    def not_me(self, session_id: str) -> dict[str, Any]:
        self._call(self.stub.NotMe, pb.NotMeRequest(session_id=session_id))
        return {"ok": True}

    def rate(self, session_id: str, score: int) -> dict[str, Any]:
        self._call(self.stub.Rate, pb.RateRequest(session_id=session_id, score=score))
        return {"ok": True}
