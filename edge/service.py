"""The terminal service wiring, in one place: config -> model pack -> store -> sync
subscriber -> camera -> session loop -> gRPC display API.

``TerminalService.start()`` brings the parts up in that order (the API first, answering
health NOT_SERVING until the store is loaded), ``stop()`` takes them down in reverse. All
worker threads share one stop event. ``motcua terminal run`` and ``motcua demo`` use it;
tests build it with their own face pipeline and camera source.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.errors import MotcuaError, StoreError
from core.files import write_atomic
from edge.api.attempts import AttemptLimiter, AttemptPolicy, Verdict
from edge.api.confirm import DobConfirmer
from edge.api.relay import EventRelay
from edge.api.server import ApiServer, create_server
from edge.api.state import CitizenRecord, DisplayState, match_pb
from edge.api.survey import SurveyOffers
from edge.camera.base import Source
from edge.camera.factory import make_source
from edge.camera.grabber import Grabber
from edge.config import Config
from edge.session.audit import AuditLog, OutboxReporter
from edge.session.decision import Matcher, adopt_published, operating_point
from edge.session.events import ConfirmReply, ConfirmStatus, EventBus, SessionControl
from edge.session.loop import FrameLoop, LoopStats
from edge.session.machine import SessionMachine
from edge.session.ports import FaceDetector, FaceEmbedder
from edge.session.tracker import Tracker
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from faces.imagefiles import decode_image
from faces.pipeline import BgrPorts, load_pipeline
from proto import display_pb2 as pb
from sync.changes import Dossier
from sync.topics import DEFAULT_PREFIX
from sync.wire import PublishedPoint

if TYPE_CHECKING:
    from edge.syncclient.engine import SyncEngine, SyncStats
    from edge.syncclient.subscriber import TerminalSubscriber

log = logging.getLogger(__name__)

#: how long start() waits for the camera's first frame before starting the loop anyway (a
#: USB camera opens in ~0.5 s; a dead one is reported down by the loop after this)
CAMERA_OPEN_WAIT_S = 3.0


@dataclasses.dataclass(frozen=True)
class Vision:
    """What the terminal needs of a loaded model pack (camera frames are BGR)."""

    detector: FaceDetector
    embedder: FaceEmbedder
    pack: str
    embedder_id: str
    dim: int
    #: the pack's match threshold (cosine); [session] threshold overrides it when set
    threshold: float


@dataclasses.dataclass(frozen=True)
class SyncLink:
    """How the terminal reaches its district (None of it: run on the local store only)."""

    broker: Any  # sync.mqtt.BrokerSettings
    #: the district's key, or several during a key rotation (sync.keys.load_public_keys)
    public_key: Ed25519PublicKey | list[Ed25519PublicKey]
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's figures (metrics)."""

    citizens: int
    applied_seq: int
    #: the store's directory (its size on disk is summed by the metrics exporter)
    path: Path


@dataclasses.dataclass(frozen=True)
class ServiceStats:
    """What the terminal's parts report, read at one instant; None for a part that is
    not running (before ``start()``, after ``stop()``, sync switched off)."""

    loop: LoopStats | None = None
    store: StoreStats | None = None
    sync: SyncStats | None = None


def collect_stats(*, frame_loop: FrameLoop | None, store: GalleryStore | None,
                  engine: SyncEngine | None) -> ServiceStats:
    """The figures of whichever parts are given, through their public read-only API."""
    return ServiceStats(
        loop=frame_loop.stats() if frame_loop is not None else None,
        store=StoreStats(citizens=store.citizen_count, applied_seq=store.last_seq,
                         path=store.path) if store is not None else None,
        sync=engine.stats() if engine is not None else None,
    )


class _StoreDirectory:
    """The display's view of the store; answers "nobody" until the store is open."""

    def __init__(self) -> None:
        self.store: GalleryStore | None = None

    def citizen(self, citizen_id: str) -> CitizenRecord | None:
        return self.store.citizen(citizen_id) if self.store is not None else None

    def dossiers(self, citizen_id: str) -> Sequence[Dossier]:
        return self.store.dossiers(citizen_id) if self.store is not None else []


class _LateControl:
    """SessionControl forwarding to the session machine once it exists."""

    def __init__(self) -> None:
        self.machine: SessionControl | None = None

    def not_me(self, session_id: str) -> bool:
        return self.machine.not_me(session_id) if self.machine is not None else False

    def rate(self, session_id: str, stars: int) -> bool:
        return self.machine.rate(session_id, stars) if self.machine is not None else False

    def confirm(self, session_id: str, answer: str) -> ConfirmReply:
        if self.machine is None:
            return ConfirmReply(ConfirmStatus.NO_SESSION)
        return self.machine.confirm(session_id, answer)

    def cancel_confirmation(self, session_id: str) -> bool:
        return (self.machine.cancel_confirmation(session_id) if self.machine is not None
                else False)


class TerminalService:
    """The whole terminal process; ``start()``, then ``stop()`` (or ``run()``)."""

    def __init__(
        self,
        cfg: Config,
        vision: Vision,
        *,
        source: Source | None = None,
        sync: SyncLink | None = None,
        stop: threading.Event | None = None,
        heartbeat: Callable[[], object] | None = None,
        lookup: Callable[[bytes], pb.LookupImageResponse] | None = None,
    ) -> None:
        self.cfg = cfg
        self.vision = vision
        self.stop_event = stop or threading.Event()
        self.heartbeat = heartbeat
        self.sync_link = sync
        self._source = source
        self.bus = EventBus()
        self.directory = _StoreDirectory()
        self.control = _LateControl()
        self.display_state = DisplayState(
            self.directory,
            pin_tries=cfg.api.pin_tries,
            help_counter=cfg.api.help_counter,
            max_watchers=cfg.api.max_watchers,
            max_watchers_per_peer=cfg.api.max_watchers_per_peer,
            display_watchers=cfg.api.display_watchers,
            # off until the district's signed manifest enables it (_start_sync)
            survey=SurveyOffers(OutboxReporter.in_state_dir(cfg.terminal.state_dir),
                                cfg.terminal.id),
        )
        self.api: ApiServer = create_server(
            cfg.api, self.display_state, control=self.control, status=self.status,
            lookup=lookup or self.lookup_image,
        )
        self.store: GalleryStore | None = None
        #: the one decision path (sessions and LookupImage), set once the store is open
        self.matcher: Matcher | None = None
        self.subscriber: TerminalSubscriber | None = None
        self.pin_limiter: AttemptLimiter | None = None
        self.grabber: Grabber | None = None
        self.frame_loop: FrameLoop | None = None
        self.relay: EventRelay | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_error: BaseException | None = None
        self.started = time.monotonic()

    @property
    def state_dir(self) -> Path:
        return self.cfg.terminal.state_dir

    def audit_log(self) -> AuditLog:
        """The audit log, rotated as ``[terminal]`` says."""
        t = self.cfg.terminal
        return AuditLog.in_state_dir(self.state_dir, max_bytes=int(t.audit_max_mb * 1024 * 1024),
                                     keep=t.audit_files)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, before_camera: Callable[[], None] | None = None) -> TerminalService:
        """Bring everything up; returns once the store is loaded and the loop runs.

        ``before_camera`` runs after the store and sync are up and before the camera
        starts (the demo waits there for the first sync).
        """
        self.relay = EventRelay(self.bus, self.display_state, self.stop_event).start()
        self.api.start()
        self.prepare_state()
        matcher = self.open_store()[1]
        self.api.set_serving()
        if self.sync_link is not None:
            self._start_sync()
        machine = SessionMachine(
            self.cfg.session,
            embedder=self.vision.embedder,
            matcher=matcher,
            bus=self.bus,
            audit=self.audit_log(),
            reporter=OutboxReporter.in_state_dir(self.state_dir),
            terminal_id=self.cfg.terminal.id,
            # the date-of-birth check shares the PIN's per-citizen counter
            confirmer=DobConfirmer(self.directory, lambda: self.display_state.pin_limiter),
        )
        self.control.machine = machine
        if before_camera is not None:
            before_camera()
        source = self._source if self._source is not None else make_source(self.cfg.camera)
        self.grabber = Grabber(
            source, self.stop_event,
            reconnect_initial_s=self.cfg.camera.reconnect_initial_s,
            reconnect_max_s=self.cfg.camera.reconnect_max_s,
        ).start()
        # give the camera a moment to open so the loop does not report "down" at start
        deadline = time.monotonic() + CAMERA_OPEN_WAIT_S
        while not self.grabber.status().up and time.monotonic() < deadline:
            if self.stop_event.wait(0.02):
                break
        s = self.cfg.session
        self.frame_loop = FrameLoop(
            detector=self.vision.detector,
            machine=machine,
            tracker=Tracker(iou_min=s.track_iou, centre_max=s.track_centre, lost_s=s.lost_s),
            bus=self.bus,
            camera=self.grabber,
            camera_cfg=self.cfg.camera,
        )
        self._loop_thread = threading.Thread(target=self._loop, name="terminal-loop",
                                             daemon=True)
        self._loop_thread.start()
        return self

    def prepare_state(self) -> None:
        """Create the state dir and open what lives there besides the store: the per-citizen
        counter of wrong PINs (``attempts.sqlite``), which the display API uses from now."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create terminal.state_dir {self.state_dir}: "
                             f"{exc.strerror}") from None
        a = self.cfg.api
        self.pin_limiter = AttemptLimiter(
            self.state_dir / "attempts.sqlite",
            AttemptPolicy(max_failures=a.pin_max_failures, lockout_s=a.pin_lockout_s,
                          lockout_max_s=a.pin_lockout_max_s),
            on_lock=self._audit_pin_lock,
        )
        self.display_state.pin_limiter = self.pin_limiter
        self.api.servicer.display_token = display_token(self.state_dir / "display.token")

    def _audit_pin_lock(self, citizen_id: str, verdict: Verdict) -> None:
        import datetime

        until = datetime.datetime.fromtimestamp(verdict.locked_until, datetime.timezone.utc)
        # the counter is shared: a lock while a confirmation step is on screen came from
        # a date of birth, else from a PIN
        confirming = self.display_state.confirm_session
        self.audit_log().lockout(terminal=self.cfg.terminal.id,
                                 kind="confirm" if confirming else "pin",
                                 citizen_id=citizen_id,
                                 locked_until=until.isoformat(timespec="seconds"),
                                 session_id=confirming or self.display_state.matched_session)

    def open_store(self) -> tuple[GalleryStore, Matcher]:
        """Open the gallery store in the state dir, show it to the display API and set up
        the one decision path on it (sessions and LookupImage)."""
        t0 = time.monotonic()
        store = GalleryStore.open(
            self.state_dir / "store", embedder_id=self.vision.embedder_id, dim=self.vision.dim,
            settings=self.cfg.store,
        )
        self.store = store
        self.directory.store = store
        log.info("store loaded in %.2f s: %d citizens, change %d", time.monotonic() - t0,
                 store.citizen_count, store.last_seq)
        self.matcher = Matcher(store, operating_point(self.cfg.session, self.vision.threshold),
                               self.cfg.session.top_k, self.cfg.session.confirm_candidates)
        log.info("decision: %s", self.matcher.point.describe())
        return store, self.matcher

    def _start_sync(self) -> None:

        assert self.sync_link is not None and self.store is not None
        spool = self.state_dir / "sync-spool"
        try:
            # snapshot spools hold embeddings: private whatever the umask
            spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            spool.chmod(0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {spool}: {exc.strerror}") from None
        self.subscriber = TerminalSubscriber(
            self.store,
            self.sync_link.broker,
            district_id=self.cfg.terminal.district,
            terminal_id=self.cfg.terminal.id,
            public_key=self.sync_link.public_key,
            prefix=self.sync_link.prefix or DEFAULT_PREFIX,
            model=self.vision.pack,
            spool_dir=spool,
            stop=self.stop_event,
            outbox_dir=self.state_dir / "outbox",
        )
        self.subscriber.engine.on_citizens_removed = self.redact_removed_citizens
        self.subscriber.engine.on_point = self.adopt_point
        if self.display_state.survey is not None:
            self.subscriber.engine.on_survey = self.display_state.survey.configure
        if self.subscriber.engine.point is not None:  # persisted: used before the manifest
            self.adopt_point(self.subscriber.engine.point)
        self.subscriber.start()

    def adopt_point(self, point: PublishedPoint) -> bool:
        """Decide at the district's published operating point, unless ``[session]
        threshold`` is set (an explicit local override, logged); True when adopted."""
        assert self.matcher is not None
        return adopt_published(self.matcher, point, self.cfg.session.threshold,
                               self.cfg.session.confirm_threshold)

    def redact_removed_citizens(self) -> int:
        """Blank, in the audit log and the outbox, the ids of citizens no longer in the
        gallery (right to be forgotten: a delete from the district, or a snapshot
        without them); returns how many lines changed."""
        store = self.store
        assert store is not None
        known: dict[str, bool] = {}

        def keep(citizen_id: str) -> bool:
            if citizen_id not in known:
                known[citizen_id] = store.citizen(citizen_id) is not None
            return known[citizen_id]

        changed = self.audit_log().redact_citizens(keep)
        if self.pin_limiter is not None:
            self.pin_limiter.forget(keep)
        if self.subscriber is not None and self.subscriber.outbox is not None:
            changed += self.subscriber.outbox.redact_citizens(keep)
        if changed:
            log.info("redacted %d audit/outbox line(s) of citizens no longer in the gallery",
                     changed)
        return changed

    def _loop(self) -> None:
        assert self.frame_loop is not None
        hook = self.heartbeat

        def beat() -> None:
            if hook is not None:
                hook()

        try:
            self.frame_loop.run(self.stop_event, heartbeat=beat)
        except MotcuaError as exc:
            self._loop_error = exc
            log.error("terminal loop stopped: %s", exc)
        except Exception as exc:  # logged and surfaced by wait(); the API stays up
            self._loop_error = exc
            log.exception("terminal loop crashed")

    @property
    def loop_error(self) -> BaseException | None:
        """Why the camera loop stopped, if it failed."""
        return self._loop_error

    @property
    def loop_alive(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the stop event or the camera loop to end; True when it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if self._loop_thread is not None and not self._loop_thread.is_alive():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.stop_event.wait(0.2 if left is None else min(0.2, left))
        return True

    def stop(self) -> None:
        """Stop every part (reverse order); safe to call twice."""
        self.stop_event.set()
        if self._loop_thread is not None:
            self._loop_thread.join(10)
        if self.grabber is not None:
            self.grabber.join(5)
        if self.subscriber is not None:
            try:
                self.subscriber.stop()
            except MotcuaError as exc:
                log.warning("sync subscriber stop: %s", exc)
            self.subscriber = None
        self.api.stop()
        if self.relay is not None:
            self.relay.join(5)
        if self.store is not None:
            self.store.close()
            self.store = None
            self.directory.store = None
        if self.pin_limiter is not None:
            self.pin_limiter.close()
            self.pin_limiter = None

    # -- counter staff: one-shot lookup (api.lookup_image) --------------------------------

    def lookup_image(self, data: bytes) -> pb.LookupImageResponse:
        """Match the largest face of an encoded image (no liveness: staff hold the photo).

        Raises ImageError for undecodable images, StoreError before the store is loaded.
        The image and its embedding are dropped on return; an audit line is written.
        """
        import numpy as np


        if self.store is None or self.matcher is None:
            raise StoreError("the gallery is not loaded yet")
        rgb = decode_image(data, "image", max_pixels=self.cfg.api.max_image_pixels)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        del rgb
        dets = self.vision.detector.detect(bgr)
        if len(dets) == 0:
            self._audit_lookup("", None, "lookup_no_face")
            return pb.LookupImageResponse(matched=False)
        boxes = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
        i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        one = type(dets)(dets.boxes[i:i + 1], dets.scores[i:i + 1], dets.landmarks[i:i + 1])
        emb = self.vision.embedder.embed(bgr, one)
        d = self.matcher.match(emb[0])
        match = match_pb(self.directory, d.citizen_id, 0) if d.citizen_id else None
        self._audit_lookup(d.citizen_id if match else "", d.score,
                           "lookup_matched" if match else "lookup_not_recognised")
        if match is None:  # no score: it would tell a prober how close the photo came
            return pb.LookupImageResponse(matched=False)
        return pb.LookupImageResponse(matched=True, match=match, score=d.score)

    def _audit_lookup(self, citizen_id: str, score: float | None, outcome: str) -> None:
        import uuid

        self.audit_log().session(
            terminal=self.cfg.terminal.id, session_id=f"lookup-{uuid.uuid4().hex[:12]}",
            outcome=outcome, citizen_id=citizen_id, score=score)

    # -- technician status -----------------------------------------------------------------

    def stats(self) -> ServiceStats:
        """The running parts' figures (the metrics exporter reads these at scrape time;
        any thread)."""
        sub = self.subscriber
        return collect_stats(frame_loop=self.frame_loop, store=self.store,
                             engine=sub.engine if sub is not None else None)

    def status(self) -> pb.TerminalStatus:
        out = pb.TerminalStatus(
            terminal_id=self.cfg.terminal.id,
            district=self.cfg.terminal.district,
            model_pack=self.vision.pack,
            embedder_id=self.vision.embedder_id,
            store_loaded=self.store is not None,
            sync_lag_s=-1.0,
        )
        store = self.store
        if store is not None:
            out.gallery_size = store.citizen_count
            out.last_change_seq = store.last_seq
        if self.frame_loop is not None:
            out.camera_fps = self.frame_loop.processing_fps()
            cam = self.frame_loop.camera_status()
            if cam is not None:
                out.camera_up = cam.up
                out.camera_source = cam.name
        sub = self.subscriber
        if sub is not None:
            out.sync_connected = sub.connected.is_set()
            st = sub.engine.stats()
            out.sync_lag_s, out.sync_lag_changes = st.behind_s, st.lag_changes
        return out


#: bytes of randomness in the display token (256 bits: not guessable)
DISPLAY_TOKEN_BYTES = 32


def display_token(path: Path) -> bytes:
    """The kiosk display's token in ``path``, made (mode 0600, only the terminal's user
    and the display running as that user can read it) when missing or too short."""
    try:
        token = path.read_bytes().strip()
        if len(token) >= DISPLAY_TOKEN_BYTES:
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    token = secrets.token_hex(DISPLAY_TOKEN_BYTES).encode()
    try:
        write_atomic(path, token + b"\n", mode=0o600)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    return token


def load_vision(cfg: Config) -> Vision:
    """Load the configured model pack (hash-checked) as the terminal's detector/embedder."""

    pipe = load_pipeline(cfg)
    ports = BgrPorts(pipe, cfg.detector.min_face)
    return Vision(detector=ports, embedder=ports,
                  pack=cfg.models.pack,
                  embedder_id=pipe.embedder_id, dim=int(pipe.embedder.dim),
                  threshold=pipe.match_threshold)
