"""The gRPC display API server (proto/display.proto) with health checking and reflection.

``create_server`` builds a ready-to-start server (bound, not started) so tests can run it on
port 0; ``serve`` runs one until a stop event is set and shuts it down gracefully.
Health (grpc.health.v1) answers NOT_SERVING until ``ApiServer.set_serving()`` is called once
the gallery store is loaded.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.errors import ConfigError, ImageError, MotcuaError
from edge import __version__
from edge.api.limits import RateLimiter, peer_key
from edge.api.state import DisplayState, Refused
from edge.config import ApiConfig
from edge.session.events import ConfirmReply, ConfirmStatus, SessionControl
from faces.imagefiles import check_image
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Display"].full_name
#: threads for calls besides the watcher streams (each stream holds one thread)
UNARY_THREADS = 8
#: how often a stream wakes to notice a cancelled client or a shutdown
STREAM_POLL_S = 0.5
#: a PIN check runs scrypt (~40 ms on a Pi): a call with less time left than this fails fast
PIN_MIN_TIME_S = 0.05

#: LookupImage calls decoding at once: one keeps the peak memory at one picture's worth
#: (api.max_image_pixels) and leaves the other core to the camera loop
LOOKUP_CONCURRENCY = 1
#: how long a LookupImage waits for the running one (a lookup takes ~0.1-0.5 s on a Pi)
LOOKUP_WAIT_S = 5.0

#: gRPC metadata key carrying the display token (edge/display/client.py sends it)
DISPLAY_TOKEN_HEADER = "x-motcua-display-token"

StatusFn = Callable[[], pb.TerminalStatus]
LookupFn = Callable[[bytes], pb.LookupImageResponse]


class _NoControl:
    """SessionControl used when no session machine is attached: refuses everything."""

    def not_me(self, session_id: str) -> bool:
        return False

    def rate(self, session_id: str, stars: int) -> bool:
        return False

    def confirm(self, session_id: str, answer: str) -> ConfirmReply:
        return ConfirmReply(ConfirmStatus.NO_SESSION)

    def cancel_confirmation(self, session_id: str) -> bool:
        return False


def _abort(context: grpc.ServicerContext, refused: Refused) -> None:
    context.abort(refused.code, refused.message)


class DisplayServicer(pb_grpc.DisplayServicer):
    """Converts requests and errors; the work is in DisplayState and the attached parts."""

    def __init__(
        self,
        state: DisplayState,
        config: ApiConfig,
        *,
        control: SessionControl | None = None,
        status: StatusFn | None = None,
        lookup: LookupFn | None = None,
        started: float | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.control: SessionControl = control or _NoControl()
        self.status_fn = status
        self.lookup_fn = lookup
        self.started = started if started is not None else time.monotonic()
        self.stopping = threading.Event()
        self.lookup_limit = RateLimiter(config.lookup_per_minute, config.lookup_burst)
        #: the secret the kiosk display sends (metadata DISPLAY_TOKEN_HEADER) to get its
        #: reserved watcher slots; None: only api.display_clients certificates get them
        self.display_token: bytes | None = None
        #: one decode + detect + embed at a time: each holds up to ~75 MB and a core
        self._lookup_slot = threading.Semaphore(LOOKUP_CONCURRENCY)

    def WatchSession(  # noqa: N802 (gRPC method name)
        self, request: pb.WatchSessionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SessionEvent]:
        if len(request.client_name) > 200:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_name longer than 200")
        peer = peer_key(context)
        try:
            watcher = self.state.watch(request.client_name, peer=peer,
                                       display=self._is_display(context, peer))
        except Refused as exc:
            _abort(context, exc)
            return
        context.add_callback(watcher.close)  # a cancelled client wakes the loop at once
        try:
            while context.is_active() and not self.stopping.is_set():
                msg = watcher.get(timeout=STREAM_POLL_S)
                if msg is not None:
                    yield msg
                elif watcher.closed:
                    break
        finally:
            watcher.close()
            log.info("display watcher %r gone", request.client_name)

    def _is_display(self, context: grpc.ServicerContext, peer: str) -> bool:
        """The kiosk display: the right token, or a certificate named in display_clients."""
        if peer.startswith("cn:") and peer[3:] in self.config.display_clients:
            return True
        token = self.display_token
        if not token:
            return False
        for key, value in context.invocation_metadata():
            if key == DISPLAY_TOKEN_HEADER:
                sent = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(sent, token)
        return False

    def SubmitPin(  # noqa: N802
        self, request: pb.SubmitPinRequest, context: grpc.ServicerContext
    ) -> pb.SubmitPinResponse:
        remaining = context.time_remaining()
        if remaining is not None and remaining < PIN_MIN_TIME_S:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline too short for a PIN check")
        try:
            return self.state.submit_pin(request.session_id, request.pin)
        except Refused as exc:
            _abort(context, exc)
            raise  # unreachable: abort raises
        except MotcuaError as exc:  # the store is closing or broken
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise

    def SubmitConfirmation(  # noqa: N802
        self, request: pb.SubmitConfirmationRequest, context: grpc.ServicerContext
    ) -> pb.SubmitConfirmationResponse:
        try:
            self.state.check_confirmation(request.session_id, request.answer)
        except Refused as exc:
            _abort(context, exc)
        remaining = context.time_remaining()
        if remaining is not None and remaining < PIN_MIN_TIME_S:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "deadline too short for a date-of-birth check")
        try:
            reply = self.control.confirm(request.session_id, request.answer)
        except MotcuaError as exc:  # the store or the attempt counter is closing or broken
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        if reply.status is ConfirmStatus.NO_SESSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no session with this id is waiting for a date of birth")
        return pb.SubmitConfirmationResponse(
            ok=reply.status is ConfirmStatus.CONFIRMED, tries_left=reply.tries_left,
            ended=reply.status is ConfirmStatus.ENDED)

    def CancelConfirmation(  # noqa: N802
        self, request: pb.CancelConfirmationRequest, context: grpc.ServicerContext
    ) -> pb.CancelConfirmationResponse:
        try:
            self.state.check_session(request.session_id)
        except Refused as exc:
            _abort(context, exc)
        if not self.control.cancel_confirmation(request.session_id):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no session with this id is waiting for a date of birth")
        return pb.CancelConfirmationResponse()

    def NotMe(  # noqa: N802
        self, request: pb.NotMeRequest, context: grpc.ServicerContext
    ) -> pb.NotMeResponse:
        try:
            self.state.check_session(request.session_id)
        except Refused as exc:
            _abort(context, exc)
        if not self.control.not_me(request.session_id):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no current session with this id"
            )
        return pb.NotMeResponse()

    def Rate(  # noqa: N802
        self, request: pb.RateRequest, context: grpc.ServicerContext
    ) -> pb.RateResponse:
        try:
            self.state.check_session(request.session_id)
        except Refused as exc:
            _abort(context, exc)
        if not 1 <= request.score <= 5:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "score must be 1 to 5")
        if not self.control.rate(request.session_id, request.score):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this session cannot be rated (not matched, already rated, or too late)",
            )
        return pb.RateResponse()

    def GetStatus(  # noqa: N802
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.TerminalStatus:
        out = pb.TerminalStatus()
        if self.status_fn is not None:
            try:
                out.CopyFrom(self.status_fn())
            except MotcuaError as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        out.version = __version__
        out.uptime_s = time.monotonic() - self.started
        out.watchers = self.state.watcher_count
        out.session_state = self.state.current().state
        return out

    def LookupImage(  # noqa: N802
        self, request: pb.LookupImageRequest, context: grpc.ServicerContext
    ) -> pb.LookupImageResponse:
        if not self.config.lookup_image:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "LookupImage is off on this terminal (api.lookup_image = false)",
            )
        if not request.image:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        if len(request.image) > self.config.max_image_bytes:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"image larger than {self.config.max_image_bytes} bytes",
            )
        lookup = self.lookup_fn
        if lookup is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no face pipeline attached")
            raise AssertionError("unreachable")
        wait = self.lookup_limit.take(peer_key(context))
        if wait > 0:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many lookups from this client (api.lookup_per_minute = "
                f"{self.config.lookup_per_minute:g}, api.lookup_burst = "
                f"{self.config.lookup_burst}); retry in {wait:.0f} s",
            )
        try:
            # the header is checked before anything is decoded or queued
            check_image(request.image, "image", max_pixels=self.config.max_image_pixels)
            if not self._lookup_slot.acquire(timeout=LOOKUP_WAIT_S):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "another lookup is running")
            try:
                return lookup(request.image)
            finally:
                self._lookup_slot.release()
        except ImageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MotcuaError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable")


@dataclasses.dataclass
class ApiServer:
    """A bound (not yet started) display API server and what tests and wiring need of it."""

    server: grpc.Server
    port: int
    servicer: DisplayServicer
    health: health.HealthServicer

    @property
    def state(self) -> DisplayState:
        return self.servicer.state

    def start(self) -> None:
        self.server.start()
        log.info("display API listening on port %d", self.port)

    def set_serving(self, serving: bool = True) -> None:
        """Health: SERVING once the store is loaded (NOT_SERVING until then)."""
        st = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", st)
        self.health.set(SERVICE_NAME, st)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: end the watcher streams, let running calls finish within grace."""
        self.servicer.stopping.set()
        self.health.enter_graceful_shutdown()
        self.state.close()
        self.server.stop(grace if grace is not None else self.servicer.config.grace_s).wait()


def _read(path: object, key: str) -> bytes:
    try:
        return Path(str(path)).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def create_server(
    config: ApiConfig,
    state: DisplayState,
    *,
    control: SessionControl | None = None,
    status: StatusFn | None = None,
    lookup: LookupFn | None = None,
) -> ApiServer:
    """Build and bind the display API server (health NOT_SERVING); call ``start()`` next."""
    workers = config.max_watchers + config.display_watchers + UNARY_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="display-api"),
        # more calls than threads queue; past twice that they are refused (RESOURCE_EXHAUSTED)
        maximum_concurrent_rpcs=workers * 2,
        options=[
            ("grpc.max_receive_message_length", config.max_image_bytes + 64 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = DisplayServicer(state, config, control=control, status=status, lookup=lookup)
    pb_grpc.add_DisplayServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if config.tls_cert is not None:
            creds = grpc.ssl_server_credentials(
                [(_read(config.tls_key, "api.tls_key"), _read(config.tls_cert, "api.tls_cert"))],
                root_certificates=_read(config.tls_client_ca, "api.tls_client_ca"),
                require_client_auth=True,
            )
            port = server.add_secure_port(config.listen, creds)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise ConfigError(f"api.listen: cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise ConfigError(f"api.listen: cannot listen on {config.listen}")
    api = ApiServer(server=server, port=port, servicer=servicer, health=health_servicer)
    api.set_serving(False)
    return api


def serve(api: ApiServer, stop: threading.Event) -> None:
    """Run ``api`` until ``stop`` is set, then shut it down gracefully."""
    api.start()
    try:
        stop.wait()
    finally:
        api.stop()
