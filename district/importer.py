"""``motcua district import FILE``: bulk case-system events from a file into the log.

Formats (docs/district.md): ``.json`` (a list of events, as the API takes them),
``.jsonl``/``.ndjson`` (one event per line) or ``.csv`` (columns ``event_id, kind,
version`` and the data fields, e.g. ``code, citizen_id, procedure, status, stage,
received_on, appointment_on, counter, full_name, date_of_birth, personal_id_number,
pin, photos``; a cell
only counts for the kinds that have that field, an empty cell is "not given" except
``stage`` and ``appointment_on``, where it clears; ``photos`` are ';'-separated paths
relative to the CSV file).

The whole file is read and every event checked first: a malformed one refuses the file
(naming its line or entry) before anything is applied. Then each event is applied in its
own savepoint, CHUNK_EVENTS to a transaction (district/ingest.py), so a run killed at any
instant loses at most the chunk in progress, and a re-run skips what was done (by
``event_id``). Events that do not fit the current state
(a status change of an unknown dossier) are listed at the end; the exit code is 1 then.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

from core.errors import DistrictError
from district.config import DistrictConfig
from district.enrol import pipeline_embedder
from district.ingest import Event, IngestError, Ingestor, parse_event
from district.log import DistrictLog
from faces.pipeline import FacePipeline, load_pipeline

#: largest import file; 2 GiB holds ~5 million status changes, more than a district's
#: decades; a bigger file is split by the exporter
MAX_FILE_BYTES = 2 << 30
#: progress bar redraws at most this often (a terminal scrolls nothing, stderr stays light)
PROGRESS_EVERY_S = 0.2
BAR_WIDTH = 30
#: events applied per transaction (one disk sync each); a crash redoes at most one
#: chunk, and 200 status changes commit in ~50 ms, so the bar moves smoothly
CHUNK_EVENTS = 200
#: fields whose empty value means "clear it" rather than "not given"
_CLEARABLE = ("stage", "appointment_on")


def _data_fields() -> dict[str, set[str]]:
    """kind -> the data fields it has (from the event models)."""
    out = {}
    for cls in typing.get_args(typing.get_args(Event)[0]):
        kind = typing.get_args(cls.model_fields["kind"].annotation)[0]
        out[kind] = set(cls.model_fields["data"].annotation.model_fields)
    return out


def _csv_events(path: Path, text: str, max_photo_bytes: int) -> list[tuple[str, object]]:
    fields = _data_fields()
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"event_id", "kind", "version"} <= set(reader.fieldnames):
        raise DistrictError(f"{path}: CSV needs a header with event_id, kind, version")
    out: list[tuple[str, object]] = []
    for n, row in enumerate(reader, start=2):
        where = f"{path} line {n}"
        kind = (row.get("kind") or "").strip()
        version = (row.get("version") or "").strip()
        data: dict[str, Any] = {}
        for key in fields.get(kind, set()):
            value = (row.get(key) or "").strip()
            if not value and key not in _CLEARABLE:
                continue
            if key == "photos":
                data[key] = [_photo(path.parent / p.strip(), max_photo_bytes, where)
                             for p in value.split(";") if p.strip()]
            else:
                data[key] = value
        event = {"event_id": (row.get("event_id") or "").strip(), "kind": kind,
                 "version": int(version) if version.isdigit() else version, "data": data}
        out.append((where, event))
    return out


def _photo(path: Path, limit: int, where: str) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise DistrictError(f"{where}: photo {path} is larger than {limit} bytes")
        return base64.b64encode(path.read_bytes()).decode()
    except OSError as exc:
        raise DistrictError(f"{where}: cannot read photo {path}: {exc.strerror}") from None


def read_events(path: Path, max_photo_bytes: int = 2 << 20) -> list[tuple[str, Any]]:
    """(where, parsed event) for every event of the file; DistrictError names the first
    bad line/entry and field."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DistrictError(f"{path}: larger than {MAX_FILE_BYTES} bytes; split it")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DistrictError(f"{path}: cannot read events: {exc}") from None
    suffix = path.suffix.lower()
    raw: list[tuple[str, object]]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DistrictError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise DistrictError(f"{path}: expected a list of events")
        raw = [(f"{path} entry {i}", e) for i, e in enumerate(data)]
    elif suffix in (".jsonl", ".ndjson"):
        raw = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((f"{path} line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DistrictError(f"{path} line {n}: not valid JSON: {exc}") from None
    elif suffix == ".csv":
        raw = _csv_events(path, text, max_photo_bytes)
    else:
        raise DistrictError(f"{path}: expected a .json, .jsonl or .csv file")
    out = []
    seen: set[str] = set()
    for where, obj in raw:
        try:
            event = parse_event(obj)
        except IngestError as exc:
            raise DistrictError(f"{where}: {exc}") from None
        if event.event_id in seen:
            raise DistrictError(f"{where}: event_id {event.event_id} appears twice in the file")
        seen.add(event.event_id)
        out.append((where, event))
    if not out:
        raise DistrictError(f"{path}: no events")
    return out


class Progress:
    """A one-line progress bar on stderr: done/total, outcomes, rate."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.t0 = time.monotonic()
        self._last = 0.0

    def show(self, done: int, counts: dict[str, int], force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < PROGRESS_EVERY_S):
            return
        self._last = now
        filled = BAR_WIDTH * done // max(self.total, 1)
        rate = done / max(now - self.t0, 1e-9)
        print(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} "
              f"applied {counts['applied']} skipped {counts['duplicate'] + counts['stale']} "
              f"rejected {counts['rejected']}  {rate:.0f}/s", end="", file=sys.stderr,
              flush=True)


def run_import(cfg: DistrictConfig, db: Path, path: Path, *, progress: bool = True) -> int:
    """Apply the file's events to the log at ``db``; 0 when none was rejected."""
    events = read_events(path, cfg.ingest.max_photo_bytes)
    dlog = DistrictLog.open(db)
    try:
        ingestor = Ingestor(dlog, lambda: pipeline_embedder(_load_pipeline(cfg)),
                            max_photo_bytes=cfg.ingest.max_photo_bytes,
                            confirm_secret=cfg.calibration.confirm_secret)
        counts = {"applied": 0, "duplicate": 0, "stale": 0, "rejected": 0}
        rejected: list[str] = []
        bar = Progress(len(events), progress)
        for start in range(0, len(events), CHUNK_EVENTS):
            chunk = events[start:start + CHUNK_EVENTS]
            results = ingestor.apply_many([e for _, e in chunk])
            for (where, event), r in zip(chunk, results, strict=True):
                if isinstance(r, IngestError):
                    counts["rejected"] += 1
                    rejected.append(f"{where} ({event.event_id}): {r}")
                else:
                    counts[r.outcome] += 1
            bar.show(start + len(chunk), counts)
        bar.show(len(events), counts, force=True)
        if progress:
            print(file=sys.stderr)
    finally:
        dlog.close()
    for line in rejected[:100]:
        print(f"rejected {line}", file=sys.stderr)
    if len(rejected) > 100:
        print(f"... and {len(rejected) - 100} more rejected", file=sys.stderr)
    print(f"{len(events)} events: {counts['applied']} applied, {counts['duplicate']} already "
          f"done, {counts['stale']} stale, {counts['rejected']} rejected")
    return 1 if rejected else 0


def _load_pipeline(cfg: DistrictConfig) -> FacePipeline:
    return load_pipeline(cfg)
