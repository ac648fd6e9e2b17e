"""District enrolment: records (CSV or JSON) + a folder of photos -> change-log entries.

Records: JSON ``[{citizen_id, full_name, phone, pin?, date_of_birth?, personal_id_number?,
photos?, dossiers: [{code, procedure, status, stage, received_on, appointment_on?,
counter?}]}]`` or CSV with columns ``citizen_id, full_name, phone[, pin][, date_of_birth][,
personal_id_number][, dossier_code, procedure, status, stage, received_on, appointment_on,
counter]`` (one row per dossier; citizen columns repeat). ``date_of_birth`` is
``YYYY-MM-DD`` or ``DD/MM/YYYY``; a citizen without one cannot use the terminal's
confirmation step (only a sure face match shows them). ``personal_id_number`` (12 digits,
the CCCD number) needs a date of birth; only its last 4 digits are kept in memory, hashed
with the date of birth (``[calibration] confirm_secret``), never written anywhere.
Photos: ``<photos>/<citizen_id>/*`` or ``<photos>/<citizen_id>.<ext>`` (or the record's
``photos`` list, relative to the folder).

Everything is checked and every photo embedded before the first write; then the whole
enrolment is one transaction of the log. Full names and phone numbers stay here: the
log gets the masked name, a PIN hash and a date-of-birth hash (district/privacy.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.errors import DistrictError, ImageError
from district.log import DistrictLog
from district.privacy import (
    SECRET_DOB_ID4,
    check_phone,
    dob_digits,
    hash_confirmation,
    hash_pin,
    issue_pin,
    mask_name,
    personal_id_last4,
)
from faces.imagefiles import read_image
from sync.changes import Dossier, DossierStatus

log = logging.getLogger(__name__)

PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".webp")
#: at most this many photos per citizen are embedded (the store keeps up to 16)
MAX_PHOTOS = 8

#: an RGB image (h, w, 3) uint8 -> unit embeddings (n, dim) of its faces, best face first
EmbedFn = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]


@dataclasses.dataclass(frozen=True)
class PhotoEmbedder:
    """The embedding step of enrolment, behind a small interface (any model pack)."""

    embedder_id: str
    dim: int
    embed: EmbedFn


def pipeline_embedder(pipeline) -> PhotoEmbedder:  # type: ignore[no-untyped-def]
    """Adapt faces.pipeline.FacePipeline (the terminal's own model pack)."""
    return PhotoEmbedder(
        embedder_id=pipeline.embedder_id,
        dim=int(pipeline.embedder.dim),
        embed=lambda image: pipeline.analyse(image).embeddings,
    )


@dataclasses.dataclass
class Record:
    citizen_id: str
    full_name: str
    phone: str
    pin: str = ""
    #: "DDMMYYYY" (normalised from the record), "" when the record has none
    date_of_birth: str = ""
    #: 8 zeros + the last 4 digits of the personal identification number (the rest is
    #: dropped when the record is read), "" when the record has none
    personal_id: str = ""
    photos: list[str] = dataclasses.field(default_factory=list)
    dossiers: list[Dossier] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EnrolResult:
    citizens: int
    dossiers: int
    photos: int
    skipped_photos: list[str]
    issued_pins: list[tuple[str, str, str]]  # (citizen id, phone, PIN)
    first_seq: int
    last_seq: int


def _status(value: str, where: str) -> DossierStatus:
    try:
        return DossierStatus(value.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in DossierStatus)
        raise DistrictError(f"{where}: status {value!r} is not one of {names}") from None


def _dossier(d: dict[str, str], cid: str, where: str) -> Dossier:
    for key in ("code", "procedure", "status", "received_on"):
        if not str(d.get(key, "")).strip():
            raise DistrictError(f"{where}: dossier field {key!r} is missing")
    return Dossier(
        code=str(d["code"]).strip(),
        citizen_id=cid,
        procedure=str(d["procedure"]).strip(),
        status=_status(str(d["status"]), where),
        stage=str(d.get("stage", "")).strip(),
        received_on=str(d["received_on"]).strip(),
        appointment_on=str(d.get("appointment_on", "") or "").strip(),
        counter=str(d.get("counter", "") or "").strip(),
    )


def read_records(path: Path) -> list[Record]:
    """Parse a CSV or JSON records file; DistrictError names the row or entry."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DistrictError(f"{path}: cannot read records: {exc}") from None
    records: dict[str, Record] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DistrictError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise DistrictError(f"{path}: expected a list of citizen records")
        for i, item in enumerate(data):
            where = f"{path} entry {i}"
            if not isinstance(item, dict):
                raise DistrictError(f"{where}: expected an object")
            rec = _citizen(item, where)
            if rec.citizen_id in records:
                raise DistrictError(f"{where}: citizen {rec.citizen_id} appears twice")
            photos = item.get("photos", [])
            if not isinstance(photos, list):
                raise DistrictError(f"{where}: photos must be a list")
            rec.photos = [str(p) for p in photos]
            for d in item.get("dossiers", []) or []:
                if not isinstance(d, dict):
                    raise DistrictError(f"{where}: a dossier must be an object")
                rec.dossiers.append(_dossier(d, rec.citizen_id, where))
            records[rec.citizen_id] = rec
    else:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "citizen_id" not in reader.fieldnames:
            raise DistrictError(f"{path}: CSV needs a header with citizen_id, full_name, phone")
        for n, row in enumerate(reader, start=2):
            where = f"{path} line {n}"
            rec = _citizen(row, where)
            have = records.setdefault(rec.citizen_id, rec)
            if (have.full_name, have.phone, have.date_of_birth, have.personal_id) != (
                    rec.full_name, rec.phone, rec.date_of_birth, rec.personal_id):
                raise DistrictError(f"{where}: citizen {rec.citizen_id} differs from earlier rows")
            if (row.get("dossier_code") or "").strip():
                d = {
                    k: row.get(k, "") or ""
                    for k in (
                        "procedure",
                        "status",
                        "stage",
                        "received_on",
                        "appointment_on",
                        "counter",
                    )
                }
                d["code"] = row["dossier_code"]
                have.dossiers.append(_dossier(d, rec.citizen_id, where))
    codes: set[str] = set()
    for rec in records.values():
        for d in rec.dossiers:
            if d.code in codes:
                raise DistrictError(f"{path}: dossier {d.code} appears twice")
            codes.add(d.code)
    if not records:
        raise DistrictError(f"{path}: no records")
    return list(records.values())


def _citizen(item: dict, where: str) -> Record:  # type: ignore[type-arg]
    cid = str(item.get("citizen_id", "") or "").strip()
    name = str(item.get("full_name", "") or "").strip()
    phone = str(item.get("phone", "") or "").strip()
    pin = str(item.get("pin", "") or "").strip()
    dob = str(item.get("date_of_birth", "") or "").strip()
    pid = str(item.get("personal_id_number", "") or "").strip()
    if not cid or not name:
        raise DistrictError(f"{where}: citizen_id and full_name are required")
    if pid:
        try:
            # only the last 4 digits are kept (padded to 12 so the shape stays checked)
            pid = "0" * 8 + personal_id_last4(pid)
        except ValueError as exc:
            raise DistrictError(f"{where}: personal_id_number: {exc}") from None
        if not dob:
            raise DistrictError(f"{where}: personal_id_number needs date_of_birth (the "
                                "confirmation secret hashes them together)")
    try:
        if phone:
            check_phone(phone)
        mask_name(name)
        if dob:
            dob = dob_digits(dob)
    except ValueError as exc:
        raise DistrictError(f"{where}: {exc}") from None
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 8):
        raise DistrictError(f"{where}: a PIN is 4 to 8 digits")
    return Record(cid, name, phone, pin, dob, pid)


def photo_paths(rec: Record, photos_dir: Path) -> list[Path]:
    if rec.photos:
        paths = [photos_dir / p for p in rec.photos]
    else:
        folder = photos_dir / rec.citizen_id
        if folder.is_dir():
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTS)
        else:
            paths = [photos_dir / f"{rec.citizen_id}{ext}" for ext in PHOTO_EXTS]
            paths = [p for p in paths if p.is_file()]
    return paths[:MAX_PHOTOS]


def _embed_all(
    records: list[Record], photos_dir: Path, embedder: PhotoEmbedder, skipped: list[str]
) -> Iterator[tuple[Record, npt.NDArray[np.float32]]]:

    for i, rec in enumerate(records):
        rows = []
        paths = photo_paths(rec, photos_dir)
        if not paths:
            raise DistrictError(f"citizen {rec.citizen_id}: no photo in {photos_dir}")
        for p in paths:
            try:
                faces = np.asarray(embedder.embed(read_image(p)), dtype=np.float32)
            except ImageError as exc:
                skipped.append(f"{p}: {exc}")
                continue
            if faces.ndim != 2 or faces.shape[0] == 0:
                skipped.append(f"{p}: no face found")
                continue
            if faces.shape[1] != embedder.dim:
                raise DistrictError(f"{p}: embedding of dim {faces.shape[1]}, not {embedder.dim}")
            rows.append(faces[0])  # best face first: the citizen at the counter
        if not rows:
            raise DistrictError(f"citizen {rec.citizen_id}: no usable face in {len(paths)} photos")
        log.info("embedded %d/%d: %s (%d photos)", i + 1, len(records), rec.citizen_id, len(rows))
        yield rec, np.stack(rows)


def enrol(
    dlog: DistrictLog,
    records: list[Record],
    photos_dir: Path,
    embedder: PhotoEmbedder,
    *,
    progress: Callable[[int, int], None] | None = None,
    confirm_secret: str = SECRET_DOB_ID4,
) -> EnrolResult:
    """Embed every citizen's photos, then append all changes in one transaction;
    ``confirm_secret``: ``[calibration] confirm_secret`` (what the confirmation hash
    covers when a record has the personal identification number)."""
    if embedder.embedder_id != dlog.embedder_id or embedder.dim != dlog.dim:
        raise DistrictError(
            f"the log is for embedder {dlog.embedder_id!r}/{dlog.dim}, the model pack gives "
            f"{embedder.embedder_id!r}/{embedder.dim}"
        )
    skipped: list[str] = []
    embedded = []
    for n, item in enumerate(_embed_all(records, photos_dir, embedder, skipped), start=1):
        embedded.append(item)
        if progress is not None:
            progress(n, len(records))
    issued: list[tuple[str, str, str]] = []
    prepared = []
    for rec, emb in embedded:
        pin = rec.pin
        if not pin:
            pin = issue_pin()
            issued.append((rec.citizen_id, rec.phone, pin))
        pin_hash, pin_salt = hash_pin(pin)
        dob_hash, dob_salt, dob_id4 = (
            hash_confirmation(rec.date_of_birth, rec.personal_id, confirm_secret)
            if rec.date_of_birth else (b"", b"", False))
        prepared.append((rec, emb, mask_name(rec.full_name), pin_hash, pin_salt, dob_hash,
                         dob_salt, dob_id4))
    first = dlog.head_seq + 1
    with dlog.transaction():
        for rec, emb, masked, pin_hash, pin_salt, dob_hash, dob_salt, dob_id4 in prepared:
            dlog.upsert_citizen(
                rec.citizen_id,
                masked_name=masked,
                embeddings=emb,
                pin_hash=pin_hash,
                pin_salt=pin_salt,
                dob_hash=dob_hash,
                dob_salt=dob_salt,
                dob_id4=dob_id4,
            )
            for d in rec.dossiers:
                dlog.upsert_dossier(d)
    return EnrolResult(
        citizens=len(prepared),
        dossiers=sum(len(r.dossiers) for r in records),
        photos=sum(e.shape[0] for _, e in embedded),
        skipped_photos=skipped,
        issued_pins=issued,
        first_seq=first,
        last_seq=dlog.head_seq,
    )


def write_pins(path: Path, issued: list[tuple[str, str, str]]) -> None:
    """Append issued PINs (citizen id, phone, PIN) to a 0600 CSV for the counter/SMS."""
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["citizen_id", "phone", "pin"])
        w.writerows(issued)
    os.chmod(path, 0o600)
