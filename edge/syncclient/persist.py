"""What the sync must remember across restarts, beside the store: the rollback floor and
the snapshot-failure record.

The floor is the highest (epoch, change number) this terminal has accepted from a signed
district message. The store's SQLite already holds its own epoch and ``last_seq`` durably;
this file adds what the store cannot know: an epoch announced by a signed manifest whose
snapshot is not installed yet, and the state of the last snapshot if the store is wiped.
At start the floor is the larger of this file and the store. A recorded, validly signed
message below the floor (an old manifest or snapshot replayed after ``district
new-epoch`` and a restart) is refused (reason ``rollback``).

The snapshot-failure record (count, reason, wall-clock time of the next try) is here so
that ``motcua doctor`` (another process) can show why the gallery is not updating.

One small JSON file, replaced atomically (temp file, fsync, rename, fsync of the
directory); it is only written when the epoch rises, a snapshot is installed or fails,
so its cost is nothing next to a snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from edge.session.audit import write_atomic

log = logging.getLogger(__name__)

#: the file is a few hundred bytes; anything larger is not ours
MAX_FILE_BYTES = 64 << 10


def state_file(spool_dir: Path, terminal_id: str) -> Path:
    """Where a terminal's sync state lives (beside its snapshot spools)."""
    return spool_dir / f"sync-state-{terminal_id}.json"


@dataclasses.dataclass
class SyncState:
    """The persisted part of the sync (see the module docstring)."""

    #: the highest epoch accepted, and within it the highest change number known applied
    floor_epoch: int = 0
    floor_seq: int = 0
    #: snapshots that could not be received or installed since the last installed one
    snapshot_failures: int = 0
    snapshot_error: str = ""
    #: wall-clock (Unix seconds) before which no snapshot is asked for; 0 = none
    snapshot_retry_at: float = 0.0
    #: the pull stopped after too many failures (until a new manifest, a restart or
    #: ``snapshot_retry_at``)
    snapshot_paused: bool = False
    #: the district's last accepted operating point (sync.wire.PublishedPoint fields), so a
    #: restart decides with it before the next manifest; None = none received
    point: dict[str, object] | None = None

    @property
    def floor(self) -> tuple[int, int]:
        return (self.floor_epoch, self.floor_seq)


def load(path: Path) -> SyncState:
    """Read the state; a missing file is a fresh state, a damaged one is logged and
    treated as fresh (the store's own epoch and change number still hold the floor)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return SyncState()
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return SyncState()
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError("too large")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return SyncState(
            floor_epoch=_nonneg_int(data.get("floor_epoch", 0)),
            floor_seq=_nonneg_int(data.get("floor_seq", 0)),
            snapshot_failures=_nonneg_int(data.get("snapshot_failures", 0)),
            snapshot_error=str(data.get("snapshot_error", ""))[:200],
            snapshot_retry_at=float(data.get("snapshot_retry_at", 0.0)),
            snapshot_paused=bool(data.get("snapshot_paused", False)),
            point=_point(data.get("point")),
        )
    except (ValueError, TypeError) as exc:
        log.warning("ignoring damaged %s: %s", path, exc)
        return SyncState()


def _point(value: object) -> dict[str, object] | None:
    """A stored point's fields (checked again by the engine before use)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("point: not an object")
    return {str(k): v for k, v in value.items()}


def _nonneg_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def save(path: Path, state: SyncState) -> None:
    """Replace the file durably (OSError to the caller)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(dataclasses.asdict(state), sort_keys=True).encode()
    write_atomic(path, data)
