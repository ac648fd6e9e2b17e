"""Terminal side protocol logic, without the network: verify, order, apply, ask.

``SyncEngine.handle(channel, payload)`` takes one MQTT message (channel = "batch",
"manifest" or "direct"); ``SyncEngine.tick()`` returns the SyncRequests to send (replay
or snapshot). Every message is checked (size, envelope, version, district, signature,
body, embedder id, epoch) BEFORE the store is touched; rejections are counted by reason.
Batches are applied strictly in order; duplicates are ignored; a batch from the future
is buffered for ``gap_timeout_s`` and then a replay is requested; when the district
cannot replay (other epoch, older than its log), a snapshot is requested.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from core.errors import ChangeOrderError, MessageRejected, StoreError
from edge.syncclient import persist
from proto import sync_pb2 as pb
from sync import snapfile, wire
from sync.changes import Change, CitizenDelete, CitizenUpsert, DossierUpsert
from sync.survey import PublishedSurvey, survey_from_pb
from sync.wire import PublicKeys

log = logging.getLogger(__name__)

#: wait this long for a missing batch to arrive by itself (reordering, a slow broker)
#: before asking for a replay; 1 s is ~4000x a local QoS 1 hop, short for a person
GAP_TIMEOUT_S = 1.0
#: a request with no progress since is sent again after this long (doubling, up to max)
REQUEST_RETRY_S = 2.0
REQUEST_RETRY_MAX_S = 60.0
#: after this many replay requests without progress, ask for a snapshot instead
REPLAYS_BEFORE_SNAPSHOT = 3
#: after a snapshot that could not be received or installed (disk full, a store error,
#: a bad snapshot), wait this long before asking again, doubling per failure up to the
#: max. Chunks arriving do NOT reset it, only an installed snapshot does: a 100k-citizen
#: snapshot is ~214 MB on the wire, so the first retry after 30 s and at most one per
#: 30 min thereafter keep a broken terminal from pulling gigabytes an hour
SNAPSHOT_RETRY_S = 30.0
SNAPSHOT_RETRY_MAX_S = 30 * 60.0
#: after this many failed snapshots in a row the terminal stops asking until something
#: changes: a new manifest (the district moved on: one more try), a restart (a
#: technician freed space), or SNAPSHOT_PAUSE_S (a full disk may clear by itself when
#: logs rotate). 5 failures = ~1 GB of a 100k district's snapshots, ~8 min of backoff
SNAPSHOT_MAX_FAILURES = 5
SNAPSHOT_PAUSE_S = 6 * 3600.0
#: counted in ``rejections`` (and so in the fleet view) for each failed snapshot
SNAPSHOT_FAILED = "snapshot_failed"
#: out-of-order batches kept while waiting (more are dropped: the replay brings them),
#: bounded in count and in payload bytes. Sized for a 2 GB board: HNSW index of 100k x
#: 512-d (~250 MB), face models (~300 MB), Chromium kiosk (~300-400 MB) and the OS leave
#: well under 1 GB; the sync gets ~140 MB worst case: this buffer 32 MiB of payloads
#: (+~32 MiB decoded embeddings), the subscriber's inbox 64 MiB (INBOX_MAX_BYTES), one
#: packet in paho (<= 4 MiB + 64 KiB, sync.mqtt.MAX_PACKET_BYTES) and its copy. Before,
#: 256 batches x 4 MiB = 1 GiB could be held here alone. 32 MiB is 32 full 1 MiB
#: batches or thousands of ordinary ones: gaps are filled by a replay anyway
BUFFER_MAX_BATCHES = 256
BUFFER_MAX_BYTES = 32 << 20
#: the terminal refuses messages above this size (a 1 MiB batch/chunk is the norm)
MAX_MESSAGE_BYTES = 4 << 20
#: the largest snapshot file a terminal downloads: a 100k-citizen district's snapshot is
#: ~214 MB, so 1 GiB leaves room for 4x that (or more embeddings per citizen) while a
#: descriptor cannot make a terminal fill its SD card
MAX_SNAPSHOT_FILE_BYTES = 1 << 30


class GalleryTarget(Protocol):
    """What the sync needs of the terminal store (edge.store.GalleryStore)."""

    @property
    def last_seq(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def embedder_id(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def citizen_count(self) -> int: ...

    def apply(self, changes: list[Change], *, epoch: int) -> None: ...

    def replace_all(self, changes: Iterable[Change], *, epoch: int, last_seq: int,
                    graph: Callable[[], bytes] | None = None) -> None: ...


@dataclasses.dataclass
class _Snapshot:
    snapshot_id: str
    epoch: int
    last_seq: int
    spool: Path
    chunks: dict[int, tuple[int, int]]  # index -> (offset, length) in the spool file
    last_index: int | None = None
    citizen_count: int = 0
    dossier_count: int = 0
    last_progress: float = 0.0
    started: float = 0.0


@dataclasses.dataclass(frozen=True)
class SyncStats:
    """A read-only snapshot of a :class:`SyncEngine`'s figures (metrics, status)."""

    #: last change number applied to the store
    applied_seq: int
    #: the district's head change number, as its last manifest said (0: none seen yet)
    district_head: int
    #: changes the store is behind that head (never negative)
    lag_changes: int
    #: seconds since the engine first saw it was behind (0 when it is not)
    behind_s: float
    #: messages rejected so far, by reason
    rejections: MappingProxyType[str, int]


class SyncEngine:
    """Applies verified district messages to a store; no threads, no network."""

    def __init__(
        self,
        store: GalleryTarget,
        *,
        district_id: str,
        terminal_id: str,
        public_key: PublicKeys,
        spool_dir: Path | None = None,
        state_path: Path | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        request_retry_s: float = REQUEST_RETRY_S,
        snapshot_retry_s: float = SNAPSHOT_RETRY_S,
        snapshot_retry_max_s: float = SNAPSHOT_RETRY_MAX_S,
        snapshot_max_failures: int = SNAPSHOT_MAX_FAILURES,
        snapshot_pause_s: float = SNAPSHOT_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        accepts_file: bool = False,
        max_snapshot_file_bytes: int = MAX_SNAPSHOT_FILE_BYTES,
    ) -> None:
        self.store = store
        #: ask for snapshots as one shared file over HTTP(S) (the subscriber downloads it)
        self.accepts_file = accepts_file
        self.max_snapshot_file_bytes = max_snapshot_file_bytes
        #: the snapshot file being downloaded (None: none); no request is sent meanwhile
        self.download: pb.SnapshotFile | None = None
        self._download_new = False
        #: after a failed download the next snapshot request asks for MQTT chunks
        self._file_fallback = False
        self.snapshot_files_applied = 0
        self.district_id = district_id
        self.terminal_id = terminal_id
        self.public_key = public_key
        self.spool_dir = spool_dir
        self.max_message_bytes = max_message_bytes
        self.gap_timeout_s = gap_timeout_s
        self.request_retry_s = request_retry_s
        self.snapshot_retry_s = snapshot_retry_s
        self.snapshot_retry_max_s = snapshot_retry_max_s
        self.snapshot_max_failures = snapshot_max_failures
        self.snapshot_pause_s = snapshot_pause_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.rejections: collections.Counter[str] = collections.Counter()
        self.applied_batches = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.snapshots_applied = 0
        self.last_snapshot_timing = (0.0, 0.0)
        #: requests sent, by kind ("replay" / "snapshot")
        self.requests: collections.Counter[str] = collections.Counter()
        self.last_error = ""
        #: the district's head and epoch as the last manifest said
        self.district_head = 0
        self.district_epoch = 0
        self.replay_from_seq = 1
        self._buffer: dict[int, tuple[pb.Batch, list[Change]]] = {}  # first_seq -> batch
        self._buffer_bytes = 0
        self._need_snapshot = False
        self._stalled_since: float | None = None
        self._request_sent_at: float | None = None
        self._request_delay = request_retry_s
        self._replays_without_progress = 0
        self._snapshot: _Snapshot | None = None
        #: persisted across restarts (edge/syncclient/persist.py): the rollback floor;
        #: default beside the spools, None (tests of the engine alone) = memory only
        if state_path is None and spool_dir is not None:
            state_path = persist.state_file(spool_dir, terminal_id)
        self.state_path = state_path
        self.persisted = persist.load(state_path) if state_path is not None else persist.SyncState()
        if (store.epoch, store.last_seq) > self.persisted.floor:
            self.persisted.floor_epoch, self.persisted.floor_seq = store.epoch, store.last_seq
        #: no snapshot request before this (monotonic clock); set by failed snapshots
        self._snapshot_next_try = 0.0
        #: the manifest (epoch, head) known when the pull was paused: a newer one lifts it
        self._paused_at_manifest: tuple[int, int] | None = None
        if self.persisted.snapshot_failures:
            # a restart is "something changed" (a technician freed space): try again
            log.info("previous run: %d failed snapshot(s) (%s); trying again",
                     self.persisted.snapshot_failures, self.persisted.snapshot_error)
            self.persisted = dataclasses.replace(
                self.persisted, snapshot_failures=0, snapshot_error="", snapshot_retry_at=0.0,
                snapshot_paused=False)
            self._save()
        if spool_dir is not None and spool_dir.is_dir():
            # spools of a snapshot that a crash or power cut interrupted: never resumed
            for stale in spool_dir.glob(f"snapshot-{terminal_id}-*.spool"):
                stale.unlink(missing_ok=True)
        #: called with each applied batch (latency figures, tests)
        self.on_applied: Callable[[pb.Batch | pb.SnapshotChunk], None] | None = None
        #: called (sync thread) after citizens may have left the gallery: a batch with a
        #: citizen delete was applied, or a snapshot installed (the terminal redacts
        #: their ids from its audit log and outbox)
        self.on_citizens_removed: Callable[[], object] | None = None
        #: the district's operating point (signed manifest, else the persisted one)
        self.point: wire.PublishedPoint | None = self._load_point()
        #: called (sync thread) with each newly accepted operating point
        self.on_point: Callable[[wire.PublishedPoint], object] | None = None
        #: the district's survey (newest signed manifest; None: off, or no manifest yet
        #: since this start: a terminal shows no QR until its district says so)
        self.survey: PublishedSurvey | None = None
        #: the newest manifest says the district sends ReportReceipts (the outbox then
        #: keeps a report until its receipt; edge/syncclient/outbox.py); None: no
        #: manifest since this start (the outbox waits for one)
        self.report_receipts: bool | None = None
        #: called (sync thread) when the survey settings change (None: switched off)
        self.on_survey: Callable[[PublishedSurvey | None], object] | None = None

    # ---- helpers -----------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        return int(self.store.last_seq)

    @property
    def lag(self) -> int:
        """Changes the store is behind the district's announced head (never negative)."""
        return max(0, self.district_head - self.applied_seq)

    def stats(self) -> SyncStats:
        """The engine's figures now, copied: safe to read from another thread (the copy of
        the rejection counts is one dict copy, atomic under the GIL)."""
        stalled = self._stalled_since
        return SyncStats(
            applied_seq=self.applied_seq,
            district_head=self.district_head,
            lag_changes=self.lag,
            behind_s=max(0.0, self.clock() - stalled) if stalled is not None else 0.0,
            rejections=MappingProxyType(dict(self.rejections)),
        )

    def _fresh(self) -> bool:
        """An empty store that never applied anything takes any epoch from seq 1."""
        return self.store.last_seq == 0

    @property
    def floor(self) -> tuple[int, int]:
        """The highest (epoch, change number) accepted, persisted across restarts."""
        store = (self.store.epoch, self.store.last_seq)
        return max(self.persisted.floor, store)

    def _raise_floor(self, epoch: int, seq: int, *, durable: bool) -> None:
        """Move the floor up to (epoch, seq); ``durable`` writes the file now (epoch rises
        and installed snapshots; the store's own transaction covers applied batches)."""
        if (epoch, seq) <= self.persisted.floor:
            return
        self.persisted.floor_epoch, self.persisted.floor_seq = epoch, seq
        if durable:
            self._save()

    def _save(self) -> None:
        if self.state_path is None:
            return
        try:
            persist.save(self.state_path, self.persisted)
        except OSError as exc:  # a full disk: the store still holds its own floor
            log.error("cannot write %s: %s", self.state_path, exc)
            self.last_error = f"cannot write the sync state: {exc.strerror or exc}"[:200]

    def _below_floor(self, epoch: int, seq: int | None, what: str) -> None:
        """Refuse a signed message that would take the terminal back (reason rollback)."""
        f_epoch, f_seq = self.floor
        if epoch < f_epoch or (seq is not None and epoch == f_epoch and seq < f_seq):
            where = f"epoch {epoch}" + (f" change {seq}" if seq is not None else "")
            raise MessageRejected(
                wire.ROLLBACK, f"{what} at {where}, terminal already at epoch {f_epoch} "
                               f"change {f_seq}")

    def _reject(self, exc: MessageRejected) -> None:
        self.rejections[exc.reason] += 1
        self.last_error = str(exc)[:200]
        log.warning("sync message rejected: %s", exc)

    def _progress(self) -> None:
        self._stalled_since = None
        self._request_sent_at = None
        self._request_delay = self.request_retry_s
        self._replays_without_progress = 0

    # ---- input ---------------------------------------------------------------------

    def handle(self, channel: str, payload: bytes) -> None:
        """Process one message; never raises for bad input (it is counted instead)."""
        try:
            env = wire.open_envelope(
                payload,
                district_id=self.district_id,
                public_key=self.public_key,
                max_bytes=self.max_message_bytes,
            )
            body = wire.parse_body(env)
            if isinstance(body, pb.Manifest):
                if channel != "manifest":
                    raise MessageRejected(wire.MALFORMED, f"manifest on the {channel} topic")
                self._on_manifest(body)
            elif isinstance(body, pb.Batch):
                if channel not in ("batch", "direct"):
                    raise MessageRejected(wire.MALFORMED, f"batch on the {channel} topic")
                self._on_batch(body)
            elif isinstance(body, pb.SnapshotFile):
                if channel != "direct":
                    raise MessageRejected(wire.MALFORMED, f"snapshot file on the {channel} topic")
                self._on_snapshot_file(body)
            else:
                if channel != "direct":
                    raise MessageRejected(wire.MALFORMED, f"snapshot chunk on the {channel} topic")
                self._on_chunk(body)
        except MessageRejected as exc:
            self._reject(exc)

    def _check_space(self, embedder_id: str, dim: int) -> None:
        if embedder_id != self.store.embedder_id or dim != self.store.dim:
            raise MessageRejected(
                wire.EMBEDDER,
                f"district embedder {embedder_id!r}/{dim}, terminal "
                f"{self.store.embedder_id!r}/{self.store.dim}",
            )

    def _load_point(self) -> wire.PublishedPoint | None:
        raw = self.persisted.point
        if not raw:
            return None
        try:
            m = pb.Manifest(point=pb.OperatingPoint(**raw))  # type: ignore[arg-type]
            return wire.point_from_pb(m)
        except (MessageRejected, TypeError, ValueError) as exc:
            log.warning("ignoring the stored operating point: %s", exc)
            return None

    def _take_point(self, m: pb.Manifest) -> None:
        """Adopt the manifest's operating point if it is new and sane (a bad one is
        counted as ``bad_point`` and the previous point stays)."""
        try:
            point = wire.point_from_pb(m)
        except MessageRejected as exc:
            self._reject(exc)
            return
        if point is None or point == self.point:
            return
        if self.point is not None and point.derived_at_ms < self.point.derived_at_ms:
            return  # an older point replayed in a manifest of the same head: keep ours
        self.point = point
        self.persisted.point = dataclasses.asdict(point)
        self._save()
        if self.on_point is not None:
            self.on_point(point)

    def _take_survey(self, m: pb.Manifest) -> None:
        """Follow the manifest's survey settings; bad ones are counted as ``bad_survey``
        and switch the QR off (never a QR to an unchecked address)."""
        try:
            survey = survey_from_pb(m)
        except MessageRejected as exc:
            self._reject(exc)
            survey = None
        if survey == self.survey:
            return
        self.survey = survey
        log.info("district survey: %s", "off" if survey is None else survey.base_url)
        if self.on_survey is not None:
            self.on_survey(survey)

    def _on_manifest(self, m: pb.Manifest) -> None:
        self._check_space(m.embedder_id, m.dim)
        self._below_floor(m.epoch, None, "manifest")
        if m.epoch < self.district_epoch or (
            m.epoch == self.district_epoch and m.head_seq < self.district_head
        ):
            return  # an older manifest (replayed or reordered): keep what we know
        self._take_point(m)
        self._take_survey(m)
        self.report_receipts = m.report_receipts
        self.district_epoch = m.epoch
        self.district_head = m.head_seq
        # a signed manifest of a newer epoch: never accept the older one again, even
        # if the terminal restarts before the new epoch's snapshot is installed
        self._raise_floor(m.epoch, 0, durable=True)
        paused_at = self._paused_at_manifest
        if paused_at is not None and (m.epoch, m.head_seq) > paused_at:
            # the district moved on since the pull stopped: one more try (failures are
            # kept, so another failure pauses again at once)
            self._paused_at_manifest = None
            self._snapshot_next_try = 0.0
            self.persisted.snapshot_paused = False
            self.persisted.snapshot_retry_at = 0.0
            self._save()
        self.replay_from_seq = max(1, m.replay_from_seq)
        if self._fresh():
            # a new or replaced terminal: one snapshot beats replaying the whole history
            self._need_snapshot = m.head_seq > 0
        elif m.epoch != self.store.epoch or self.applied_seq + 1 < self.replay_from_seq:
            self._need_snapshot = True

    def _decode_changes(self, changes: Iterable[pb.Change], dim: int) -> list[Change]:
        return [wire.change_from_pb(c, dim) for c in changes]

    def _on_batch(self, b: pb.Batch) -> None:
        self._check_space(b.embedder_id, b.dim)
        n = len(b.changes)
        if n == 0 or b.first_seq == 0 or b.last_seq != b.first_seq + n - 1:
            raise MessageRejected(wire.MALFORMED, "batch numbers do not match its changes")
        for i, c in enumerate(b.changes):
            if c.seq != b.first_seq + i:
                raise MessageRejected(wire.MALFORMED, "batch changes are not consecutive")
        self._below_floor(b.epoch, None, "batch")
        if self._fresh():
            if b.epoch < self.district_epoch:
                raise MessageRejected(wire.EPOCH, f"batch of old epoch {b.epoch}")
        elif b.epoch != self.store.epoch:
            if b.epoch > self.store.epoch:
                self._need_snapshot = True  # the district started a new epoch
            raise MessageRejected(wire.EPOCH, f"batch epoch {b.epoch}, store {self.store.epoch}")
        if b.last_seq <= self.applied_seq:
            self.duplicates += 1
            self.rejections[wire.DUPLICATE] += 1
            return
        changes = self._decode_changes(b.changes, b.dim)
        if b.first_seq > self.applied_seq + 1:
            self.out_of_order += 1
            size = b.ByteSize()
            if (len(self._buffer) < BUFFER_MAX_BATCHES
                    and self._buffer_bytes + size <= BUFFER_MAX_BYTES
                    and b.first_seq not in self._buffer):
                self._buffer[b.first_seq] = (b, changes)
                self._buffer_bytes += size
            if self._stalled_since is None:
                self._stalled_since = self.clock()
            return
        self._apply(b, changes)
        self._drain()

    def _apply(self, b: pb.Batch, changes: list[Change]) -> None:
        skip = self.applied_seq + 1 - b.first_seq  # overlap with what we have
        todo = changes[skip:]
        if not todo:
            return
        epoch = b.epoch
        try:
            self.store.apply(todo, epoch=epoch)
        except ChangeOrderError as exc:  # the store moved under us: re-sync
            self._reject(MessageRejected(wire.INVALID, f"store order: {exc}"))
            self._need_snapshot = True
            return
        except StoreError as exc:
            self._reject(MessageRejected(wire.INVALID, str(exc)))
            self._need_snapshot = True
            return
        self.applied_batches += 1
        self.last_error = ""
        self._progress()
        if self.on_applied is not None:
            self.on_applied(b)
        if any(isinstance(c, CitizenDelete) for c in todo):
            self._citizens_removed()

    def _drain(self) -> None:
        while self._buffer:
            for first in sorted(self._buffer):
                if first <= self.applied_seq + 1:
                    b, changes = self._buffer.pop(first)
                    self._buffer_bytes -= b.ByteSize()
                    if b.last_seq > self.applied_seq and b.epoch == self.store.epoch:
                        self._apply(b, changes)
                    break
            else:
                return

    # ---- snapshots -----------------------------------------------------------------

    def _on_chunk(self, c: pb.SnapshotChunk) -> None:
        self._check_space(c.embedder_id, c.dim)
        self._below_floor(c.epoch, c.last_seq, "snapshot")
        snap = self._snapshot
        if snap is None or snap.snapshot_id != c.snapshot_id:
            useful = (
                c.epoch > self.store.epoch
                or (c.epoch == self.store.epoch and c.last_seq > self.applied_seq)
                or self._need_snapshot
            )
            if c.index != 0 or not useful or c.epoch < self.district_epoch:
                what = f"snapshot {c.snapshot_id[:8]} chunk {c.index}"
                raise MessageRejected(wire.UNEXPECTED, what)
            if snap is not None:
                snap.spool.unlink(missing_ok=True)
            if self.spool_dir is not None:
                self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(
                prefix=f"snapshot-{self.terminal_id}-", suffix=".spool", dir=self.spool_dir
            )
            os.close(fd)
            snap = self._snapshot = _Snapshot(
                started=self.clock(),
                snapshot_id=c.snapshot_id,
                epoch=c.epoch,
                last_seq=c.last_seq,
                spool=Path(name),
                chunks={},
                citizen_count=c.citizen_count,
                dossier_count=c.dossier_count,
            )
        if c.epoch != snap.epoch or c.last_seq != snap.last_seq or c.index in snap.chunks:
            raise MessageRejected(wire.MALFORMED, "snapshot chunk inconsistent or repeated")
        # decode now so that a bad chunk is rejected on arrival, keep only the bytes
        self._decode_changes(c.changes, c.dim)
        data = c.SerializeToString()
        try:
            with open(snap.spool, "ab") as fh:
                offset = fh.tell()
                fh.write(data)
        except OSError as exc:  # a full disk: the snapshot cannot be received
            self._snapshot = None
            snap.spool.unlink(missing_ok=True)
            self._snapshot_failed(f"cannot spool the snapshot: {exc.strerror or exc}")
            return
        snap.chunks[c.index] = (offset, len(data))
        snap.last_progress = self.clock()
        self._progress()
        if c.last:
            snap.last_index = c.index
        if snap.last_index is not None and len(snap.chunks) == snap.last_index + 1:
            self._install(snap, c.dim)

    def _on_snapshot_file(self, d: pb.SnapshotFile) -> None:
        """A signed descriptor of the district's shared snapshot file: check it, then the
        subscriber downloads it (``take_download``) and hands it to ``install_file``."""
        self._check_space(d.embedder_id, d.dim)
        self._below_floor(d.epoch, d.last_seq, "snapshot file")
        snapfile.check_descriptor(d, self.max_snapshot_file_bytes)
        if self.download is not None:
            return  # one at a time; the one in progress installs or fails first
        useful = (
            d.epoch > self.store.epoch
            or (d.epoch == self.store.epoch and d.last_seq > self.applied_seq)
            or self._need_snapshot
        )
        if not useful or d.epoch < self.district_epoch:
            raise MessageRejected(wire.UNEXPECTED, f"snapshot file {d.snapshot_id[:8]}")
        if not self.accepts_file:
            raise MessageRejected(wire.UNEXPECTED, "snapshot file, but no downloader")
        self.download = d
        self._download_new = True
        self._progress()

    def take_download(self) -> pb.SnapshotFile | None:
        """The descriptor to start downloading now (once per descriptor), or None."""
        if self.download is not None and self._download_new:
            self._download_new = False
            return self.download
        return None

    def download_failed(self, d: pb.SnapshotFile, reason: str, *, gone: bool = False) -> None:
        """The subscriber could not fetch ``d`` (or refused it): back off as for any failed
        snapshot; the next request asks for MQTT chunks instead (the fallback). ``gone``
        (the district replaced the file meanwhile) is no failure: ask again for the new
        one after the usual request delay."""
        if self.download is None or self.download.snapshot_id != d.snapshot_id:
            return
        self.download = None
        if gone:
            log.info("snapshot file %s replaced at the district: asking again", d.snapshot_id)
            self._need_snapshot = True
            self._request_sent_at = self.clock()
            return
        self._file_fallback = True
        self._snapshot_failed(reason)

    def install_file(self, d: pb.SnapshotFile, path: Path) -> None:
        """Install a downloaded snapshot file whose size and SHA-256 the downloader
        checked against the signed descriptor ``d``; the file is deleted afterwards."""
        if self.download is None or self.download.snapshot_id != d.snapshot_id:
            path.unlink(missing_ok=True)
            return
        self.download = None
        started = self.clock()
        graph: list[bytes] = []  # the district's index graph, filled while reading the file

        def take_graph() -> bytes:
            data = b"".join(graph)
            graph.clear()
            return data

        try:
            self._install_from(d.epoch, d.last_seq, self._file_changes(d, path, graph),
                               started, path, graph=take_graph)
        except MessageRejected as exc:
            self._file_fallback = True  # the district's file is bad: ask for chunks next
            self._reject(exc)
            return
        self.snapshot_files_applied += 1

    def _file_changes(self, d: pb.SnapshotFile, path: Path, graph: list[bytes]
                      ) -> Iterator[Change]:
        citizens = dossiers = 0
        with open(path, "rb") as fh:
            for chunk in snapfile.read_chunks(fh, d):
                if chunk.index_graph:
                    graph.append(chunk.index_graph)
                for change in wire.changes_from_pb(chunk.changes, d.dim):
                    if isinstance(change, CitizenUpsert):
                        citizens += 1
                    elif isinstance(change, DossierUpsert):
                        dossiers += 1
                    else:
                        raise MessageRejected(wire.MALFORMED, "a delete inside a snapshot")
                    yield change
        if citizens != d.citizen_count or dossiers != d.dossier_count:
            raise MessageRejected(wire.MALFORMED, "snapshot counts do not match its file")

    def _snapshot_changes(self, snap: _Snapshot, dim: int) -> Iterator[Change]:
        citizens = dossiers = 0
        with open(snap.spool, "rb") as fh:
            for index in range(snap.last_index + 1 if snap.last_index is not None else 0):
                offset, length = snap.chunks[index]
                fh.seek(offset)
                chunk = pb.SnapshotChunk.FromString(fh.read(length))
                for change in wire.changes_from_pb(chunk.changes, dim):
                    if isinstance(change, CitizenUpsert):
                        citizens += 1
                    elif isinstance(change, DossierUpsert):
                        dossiers += 1
                    else:
                        raise MessageRejected(wire.MALFORMED, "a delete inside a snapshot")
                    yield change
        if citizens != snap.citizen_count or dossiers != snap.dossier_count:
            raise MessageRejected(wire.MALFORMED, "snapshot counts do not match its chunks")

    def _install(self, snap: _Snapshot, dim: int) -> None:
        self._snapshot = None
        self._install_from(snap.epoch, snap.last_seq, self._snapshot_changes(snap, dim),
                           snap.started, snap.spool)

    def _install_from(self, epoch: int, last_seq: int, changes: Iterator[Change],
                      started: float, spool: Path,
                      graph: Callable[[], bytes] | None = None) -> None:
        """Install a received snapshot (chunks or a file) atomically, then catch up."""
        received = self.clock()
        try:
            # the floor may have risen while the chunks came in (a newer manifest)
            self._below_floor(epoch, last_seq, "snapshot")
            if graph is None:
                self.store.replace_all(changes, epoch=epoch, last_seq=last_seq)
            else:
                self.store.replace_all(changes, epoch=epoch, last_seq=last_seq, graph=graph)
        except MessageRejected as exc:
            self._snapshot_failed(str(exc))
            raise
        except StoreError as exc:
            self._snapshot_failed(f"the store refused it: {exc}")
            raise MessageRejected(wire.INVALID, f"snapshot refused by the store: {exc}") from None
        except OSError as exc:
            self._snapshot_failed(f"cannot read the spool: {exc.strerror or exc}")
            raise
        finally:
            spool.unlink(missing_ok=True)
        self.snapshots_applied += 1
        self._file_fallback = False  # an installed snapshot: try files again next time
        self._snapshot_next_try = 0.0
        self._paused_at_manifest = None
        self.persisted.snapshot_failures = 0
        self.persisted.snapshot_error = ""
        self.persisted.snapshot_retry_at = 0.0
        self.persisted.snapshot_paused = False
        self._raise_floor(epoch, last_seq, durable=True)
        #: (seconds receiving the chunks, seconds installing them) of the last snapshot
        self.last_snapshot_timing = (received - started, self.clock() - received)
        self._need_snapshot = False
        self.last_error = ""
        self._progress()
        # buffered batches past the snapshot still apply; older ones are dropped
        for first in [f for f, (b, _) in self._buffer.items() if b.last_seq <= self.applied_seq]:
            self._buffer_bytes -= self._buffer.pop(first)[0].ByteSize()
        self._drain()
        log.info("snapshot installed: epoch %d, seq %d", epoch, last_seq)
        self._citizens_removed()

    def _snapshot_failed(self, reason: str) -> None:
        """Back off (not reset by chunks, only by an installed snapshot); after
        ``snapshot_max_failures`` stop asking until a newer manifest, a restart or
        ``snapshot_pause_s``. The reason goes to the retained state and the doctor."""
        p = self.persisted
        p.snapshot_failures += 1
        p.snapshot_error = reason[:160]
        self.rejections[SNAPSHOT_FAILED] += 1
        delay = min(self.snapshot_retry_s * 2 ** (p.snapshot_failures - 1),
                    self.snapshot_retry_max_s)
        if p.snapshot_failures >= self.snapshot_max_failures:
            p.snapshot_paused = True
            delay = self.snapshot_pause_s
            self._paused_at_manifest = (self.district_epoch, self.district_head)
        self._snapshot_next_try = self.clock() + delay
        p.snapshot_retry_at = self.wall_clock() + delay
        self._need_snapshot = True
        log.error("snapshot failed (%d in a row): %s; next request in %.0f s%s",
                  p.snapshot_failures, reason, delay, " (paused)" if p.snapshot_paused else "")
        self._save()

    def snapshot_status(self) -> str:
        """'' or why the gallery is not being updated by snapshot (fleet view, doctor)."""
        p = self.persisted
        if not p.snapshot_failures:
            return ""
        wait = max(0.0, self._snapshot_next_try - self.clock())
        when = ("paused until a new district change or a restart, or "
                if p.snapshot_paused else "next try ")
        return (f"snapshot failed {p.snapshot_failures}x: {p.snapshot_error}; "
                f"{when}in {wait:.0f} s")[:200]

    def _citizens_removed(self) -> None:
        if self.on_citizens_removed is None:
            return
        try:
            self.on_citizens_removed()
        except Exception:  # the sync must go on; the redaction is retried at the next one
            log.exception("redacting removed citizens failed")

    # ---- output ----------------------------------------------------------------------

    def target_seq(self) -> int:
        """The highest change number we know exists (manifest or buffered batches)."""
        head = self.district_head if self.district_epoch in (self.store.epoch, 0) else 0
        if self._fresh():
            head = self.district_head
        buffered = max((b.last_seq for b, _ in self._buffer.values()), default=0)
        return max(head, buffered)

    def tick(self) -> list[pb.SyncRequest]:
        """Requests to send now (at most one)."""
        now = self.clock()
        snap = self._snapshot
        if snap is not None and now - snap.last_progress < self.request_retry_s:
            return []  # a snapshot is streaming in
        if self.download is not None:
            return []  # a snapshot file is downloading (it installs or fails)
        behind = self.applied_seq < self.target_seq()
        if not behind and not self._need_snapshot:
            self._stalled_since = None
            return []
        if self._stalled_since is None:
            self._stalled_since = now
            if not self._need_snapshot:
                return []
        if not self._need_snapshot and now - self._stalled_since < self.gap_timeout_s:
            return []
        want_snapshot = self._need_snapshot or (
            self._replays_without_progress >= REPLAYS_BEFORE_SNAPSHOT
        )
        if want_snapshot and now < self._snapshot_next_try:
            return []  # backing off after failed snapshots (or paused)
        if self._request_sent_at is not None and now - self._request_sent_at < self._request_delay:
            return []
        if self._request_sent_at is not None:
            self._request_delay = min(self._request_delay * 2, REQUEST_RETRY_MAX_S)
        self._request_sent_at = now
        if not want_snapshot:
            self._replays_without_progress += 1
        self.requests["snapshot" if want_snapshot else "replay"] += 1
        req = pb.SyncRequest(
            protocol_version=wire.PROTOCOL_VERSION,
            terminal_id=self.terminal_id,
            district_id=self.district_id,
            kind=pb.SyncRequest.KIND_SNAPSHOT if want_snapshot else pb.SyncRequest.KIND_REPLAY,
            epoch=self.store.epoch if not self._fresh() else self.district_epoch,
            from_seq=self.applied_seq + 1,
            request_id=uuid.uuid4().hex[:16],
            reason="need snapshot" if want_snapshot else "gap",
            accepts_file=want_snapshot and self.accepts_file and not self._file_fallback,
        )
        return [req]

    def state(self) -> pb.TerminalState:
        return pb.TerminalState(
            protocol_version=wire.PROTOCOL_VERSION,
            terminal_id=self.terminal_id,
            district_id=self.district_id,
            epoch=self.store.epoch,
            applied_seq=self.applied_seq,
            gallery_size=self.store.citizen_count,
            embedder_id=self.store.embedder_id,
            last_error=self.snapshot_status() or self.last_error,
            rejections=dict(self.rejections),
            updated_at_ms=int(time.time() * 1000),
            syncing=(self._snapshot is not None or self.download is not None
                     or self.applied_seq < self.target_seq()),
        )
