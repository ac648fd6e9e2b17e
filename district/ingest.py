"""Events from the one-stop case-management system, checked and applied to the change log.

The case system sends one JSON object per event (``motcua district serve``'s HTTP API,
or a file for ``motcua district import``)::

    {"event_id": "hs-2024-000123-v7", "kind": "dossier.status_changed", "version": 7,
     "data": {"code": "000.00.12.H29-240101-0001", "status": "result_ready"}}

``event_id`` is the source's unique id of the event: an event seen before is a no-op
(``duplicate``), whether it was applied or not. ``version`` is the source's version of
the entity the event is about (a row version or a timestamp in milliseconds; larger is
newer): per entity (a dossier by its code, a citizen by their id) the log remembers the
newest version applied, and an event older than that changes nothing (``stale``). Both
are kept in the log's own SQLite (tables ``ingest_events``, ``ingest_versions``), in the
same transaction as the change the event became, so a crash at any instant leaves either
the event applied and recorded or neither.

A malformed event (shape, types, limits) is refused before anything happens, with the
offending field named (``data.status: Input should be 'received', ...``); an event that
does not fit the current state (a status change of an unknown dossier) is refused with a
:class:`IngestError` naming the field, and is not recorded: sent again later, it applies.

Photos (``citizen.enrolled``, ``citizen.updated``) are base64 JPEG or PNG files embedded
by the face pipeline, as ``motcua district enrol`` does: every photo must show a face.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from core.errors import DistrictError, ImageError
from district.enrol import MAX_PHOTOS, PhotoEmbedder
from district.log import MAX_ID_LEN, MAX_TEXT_LEN, DistrictLog
from district.privacy import (
    PERSONAL_ID_DIGITS,
    SECRET_DOB_ID4,
    hash_confirmation,
    hash_pin,
    issue_pin,
    mask_name,
)
from faces.imagefiles import decode_image, sniff_format
from sync.changes import Dossier, DossierStatus

#: largest photo in the event schema (base64 characters); the configured
#: ``[ingest] max_photo_bytes`` (at most 16 MiB) is checked on the decoded bytes
MAX_PHOTO_B64 = (16 << 20) * 4 // 3 + 4
#: longest full name accepted (only its masked form leaves the district)
MAX_NAME_LEN = 200

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                           pattern=r"^[\x21-\x7e]+$")]
Version = Annotated[int, Field(ge=0, le=2**63 - 1, description=(
    "the source's version of the entity (row version or timestamp in ms); larger is newer"))]
Code = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN,
                                        pattern=r"^[^\x00-\x1f]+$")]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LEN, pattern=r"^[^\x00-\x1f]*$")]
DateStr = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Photo = Annotated[str, StringConstraints(min_length=4, max_length=MAX_PHOTO_B64),
                  Field(description="a JPEG or PNG file, base64")]
Photos = Annotated[list[Photo], Field(min_length=1, max_length=MAX_PHOTOS)]
FullName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LEN,
                                            pattern=r"^[^\x00-\x1f]+$")]
#: the personal identification number (số định danh cá nhân, 12 digits on the CCCD card):
#: only hashed with the date of birth; the pattern's error message never repeats the value
PersonalId = Annotated[str, StringConstraints(max_length=PERSONAL_ID_DIGITS,
                                              pattern=r"^([0-9]{12})?$")]


def _real_date(value: str) -> str:
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value} is not a calendar date") from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DossierData(_Model):
    code: Code
    citizen_id: Code
    procedure: Annotated[Text, StringConstraints(min_length=1)]
    status: DossierStatus
    stage: Text = ""
    received_on: DateStr
    appointment_on: DateStr | Literal[""] = ""
    counter: Text = ""
    #: the officer handling it (district-side only: never sent to terminals; staff
    #: ratings are joined to it)
    officer: Text = ""

    _dates = field_validator("received_on", "appointment_on")(
        lambda v: _real_date(v) if v else v)


class StatusData(_Model):
    code: Code
    status: DossierStatus
    #: the officer handling it from now on, if it changed (district-side only)
    officer: Text | None = None


class StageData(_Model):
    code: Code
    stage: Text
    #: the counter the dossier moved to with the stage, if it moved
    counter: Text | None = None
    #: the officer handling it from now on, if it changed (district-side only)
    officer: Text | None = None


class AppointmentData(_Model):
    code: Code
    #: the new appointment date, "" to clear it
    appointment_on: DateStr | Literal[""]

    _date = field_validator("appointment_on")(lambda v: _real_date(v) if v else v)


class EnrolData(_Model):
    citizen_id: Code
    full_name: FullName
    #: DD/MM/YYYY or YYYY-MM-DD; enables the terminal's confirmation step
    date_of_birth: str = ""
    #: 12 digits; with the date of birth, its last 4 make the confirmation secret
    #: stronger ([calibration] confirm_secret); never stored or published
    personal_id_number: PersonalId = ""
    #: 4-8 digits; "" issues one (returned once, in the answer)
    pin: Annotated[str, StringConstraints(pattern=r"^(\d{4,8})?$")] = ""
    photos: Photos


class CitizenUpdateData(_Model):
    citizen_id: Code
    full_name: FullName | None = None
    date_of_birth: str | None = None
    #: sent with date_of_birth (the district keeps neither in the clear, so a change of
    #: either re-hashes both)
    personal_id_number: PersonalId | None = None
    pin: Annotated[str, StringConstraints(pattern=r"^\d{4,8}$")] | None = None
    #: new photos replace the citizen's embeddings
    photos: Photos | None = None


class CitizenRef(_Model):
    citizen_id: Code


class _Event(_Model):
    event_id: EventId
    version: Version


class DossierCreated(_Event):
    kind: Literal["dossier.created"]
    data: DossierData


class DossierStatusChanged(_Event):
    kind: Literal["dossier.status_changed"]
    data: StatusData


class DossierStageChanged(_Event):
    kind: Literal["dossier.stage_changed"]
    data: StageData


class DossierAppointmentMoved(_Event):
    kind: Literal["dossier.appointment_moved"]
    data: AppointmentData


class CitizenEnrolled(_Event):
    kind: Literal["citizen.enrolled"]
    data: EnrolData


class CitizenUpdated(_Event):
    kind: Literal["citizen.updated"]
    data: CitizenUpdateData


class CitizenDeleted(_Event):
    kind: Literal["citizen.deleted"]
    data: CitizenRef


Event = Annotated[
    DossierCreated | DossierStatusChanged | DossierStageChanged | DossierAppointmentMoved
    | CitizenEnrolled | CitizenUpdated | CitizenDeleted,
    Field(discriminator="kind"),
]
KINDS = ("dossier.created", "dossier.status_changed", "dossier.stage_changed",
         "dossier.appointment_moved", "citizen.enrolled", "citizen.updated", "citizen.deleted")

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


class EventResult(_Model):
    """What became of one event."""

    event_id: str
    #: applied: a change was written; duplicate: this event_id was processed before;
    #: stale: a newer version of the entity was applied already (nothing changed)
    outcome: Literal["applied", "duplicate", "stale"]
    #: the change number it became (0: none)
    seq: int = 0
    #: a PIN issued to a newly enrolled citizen (only in the first answer; hand it out)
    issued_pin: str = ""


class IngestError(DistrictError):
    """An event that cannot be applied; ``field`` names the culprit, ``status`` is the
    HTTP status (422 malformed, 409 does not fit the current state)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def field_name(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as a field path: ('events', 3, 'dossier.created',
    'data', 'code') -> ``events[3].data.code`` (the union's tag is left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in KINDS or part == "body":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def error_field(err: Any) -> str:
    """The field a pydantic error is about; an unknown or missing ``kind`` names it."""
    loc = tuple(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
    return field_name(loc)


def parse_event(obj: object, where: str = "") -> Any:
    """Validate one event (a parsed JSON value); IngestError names the first bad field."""
    try:
        return EVENT_ADAPTER.validate_python(obj)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        raise IngestError(where + error_field(err), err["msg"]) from None


def entity_of(event: Any) -> str:
    if event.kind.startswith("dossier."):
        return f"dossier:{event.data.code}"
    return f"citizen:{event.data.citizen_id}"


@dataclasses.dataclass
class _Prepared:
    """Citizen data computed before the transaction (photos embedded, secrets hashed)."""

    embeddings: npt.NDArray[np.float32] | None = None
    masked_name: str | None = None
    pin: str = ""
    pin_hash: bytes = b""
    pin_salt: bytes = b""
    dob_hash: bytes | None = None
    dob_salt: bytes = b""
    dob_id4: bool = False


class Ingestor:
    """Applies events to one district log; thread-safe (the log serialises writers).

    ``embedder`` is the face pipeline's (``district.enrol.pipeline_embedder``), or a
    function giving it on first use, so a service that never enrols loads no model.
    ``on_change`` is called after each applied event (the publisher's ``notify``).
    """

    def __init__(
        self,
        dlog: DistrictLog,
        embedder: PhotoEmbedder | Callable[[], PhotoEmbedder] | None,
        *,
        max_photo_bytes: int = 2 << 20,
        on_change: Callable[[], None] | None = None,
        confirm_secret: str = SECRET_DOB_ID4,
    ) -> None:
        self.log = dlog
        #: ``[calibration] confirm_secret``: whether the number's 4 digits join the hash
        self.confirm_secret = confirm_secret
        self._embedder = embedder
        self._embed_lock = threading.Lock()
        self.max_photo_bytes = max_photo_bytes
        self.on_change = on_change

    # ---- photos -------------------------------------------------------------------

    def embedder(self) -> PhotoEmbedder:
        with self._embed_lock:
            if self._embedder is None:
                raise IngestError("data.photos", "this server has no face pipeline", 409)
            if not isinstance(self._embedder, PhotoEmbedder):
                self._embedder = self._embedder()
                if (self._embedder.embedder_id, self._embedder.dim) != (
                        self.log.embedder_id, self.log.dim):
                    raise DistrictError(
                        f"the log is for embedder {self.log.embedder_id!r}/{self.log.dim}, "
                        f"the model pack gives {self._embedder.embedder_id!r}/"
                        f"{self._embedder.dim}")
            return self._embedder

    def embed_photos(self, photos: list[str]) -> npt.NDArray[np.float32]:
        """One embedding per photo (its best face); IngestError names a bad photo."""
        emb = self.embedder()
        rows = []
        for i, text in enumerate(photos):
            where = f"data.photos[{i}]"
            if len(text) > self.max_photo_bytes * 4 // 3 + 4:
                raise IngestError(where, f"larger than {self.max_photo_bytes} bytes")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise IngestError(where, "not valid base64") from None
            if len(data) > self.max_photo_bytes:
                raise IngestError(where, f"larger than {self.max_photo_bytes} bytes")
            if sniff_format(data) not in ("JPEG", "PNG"):
                raise IngestError(where, "not a JPEG or PNG file")
            try:
                image = decode_image(data, name=where)
            except ImageError as exc:
                raise IngestError(where, str(exc).removeprefix(where + ": ")) from None
            with self._embed_lock:  # one inference at a time: the pipeline is not shared
                faces = np.asarray(emb.embed(image), dtype=np.float32)
            if faces.ndim != 2 or faces.shape[0] == 0:
                raise IngestError(where, "no face found")
            rows.append(faces[0])  # best face first: the citizen at the counter
        return np.stack(rows)

    def _prepare(self, event: Any) -> _Prepared:
        p = _Prepared()
        data = event.data
        if event.kind not in ("citizen.enrolled", "citizen.updated"):
            return p
        if data.full_name is not None:
            try:
                p.masked_name = mask_name(data.full_name)
            except ValueError as exc:
                raise IngestError("data.full_name", str(exc)) from None
        personal_id = data.personal_id_number or ""
        if personal_id and not data.date_of_birth:
            raise IngestError("data.date_of_birth", "required with data.personal_id_number "
                              "(the confirmation secret is the date of birth and the number's "
                              "last 4 digits, hashed together)")
        if data.date_of_birth:
            try:
                p.dob_hash, p.dob_salt, p.dob_id4 = hash_confirmation(
                    data.date_of_birth, personal_id, self.confirm_secret)
            except ValueError as exc:
                raise IngestError("data.date_of_birth", str(exc)) from None
        elif data.date_of_birth == "":
            p.dob_hash, p.dob_salt = b"", b""
        if data.pin is not None:
            p.pin = data.pin
            if event.kind == "citizen.enrolled" and not p.pin:
                p.pin = issue_pin()
            if p.pin:
                p.pin_hash, p.pin_salt = hash_pin(p.pin)
        if data.photos is not None:
            p.embeddings = self.embed_photos(list(data.photos))
        return p

    # ---- applying -----------------------------------------------------------------

    def _known(self, event: Any, entity: str) -> EventResult | None:
        seen = self.log.ingested(event.event_id)
        if seen is not None:
            return EventResult(event_id=event.event_id, outcome="duplicate", seq=seen[1])
        newest = self.log.entity_version(entity)
        if newest is not None and event.version < newest:
            self.log.record_ingest(event.event_id, event.kind, entity, event.version, "stale", 0)
            return EventResult(event_id=event.event_id, outcome="stale")
        return None

    def apply(self, event: Any) -> EventResult:
        """Apply one parsed event (see :func:`parse_event`) in one transaction."""
        entity = entity_of(event)
        if (known := self._known(event, entity)) is not None:  # before costly embedding
            return known
        prepared = self._prepare(event)
        with self.log.transaction():
            if (known := self._known(event, entity)) is not None:  # raced with a twin
                return known
            seq = self._apply(event, prepared)
            self.log.record_ingest(event.event_id, event.kind, entity, event.version,
                                   "applied", seq)
        if self.on_change is not None:
            self.on_change()
        issued = prepared.pin if (event.kind == "citizen.enrolled" and not event.data.pin) else ""
        return EventResult(event_id=event.event_id, outcome="applied", seq=seq,
                           issued_pin=issued)

    def apply_many(self, events: list[Any]) -> list[EventResult | IngestError]:
        """Apply events in order in ONE transaction (one disk sync for all), each inside
        its own savepoint: a refused event is undone alone and reported as its
        IngestError, the others are applied. Photos are embedded before it starts."""
        prepared: list[_Prepared | IngestError] = []
        for event in events:
            try:
                prepared.append(self._prepare(event))
            except IngestError as exc:
                prepared.append(exc)
        out: list[EventResult | IngestError] = []
        applied = False
        with self.log.transaction():
            for event, prep in zip(events, prepared, strict=True):
                if isinstance(prep, IngestError):
                    out.append(prep)
                    continue
                entity = entity_of(event)
                try:
                    with self.log.savepoint():
                        if (known := self._known(event, entity)) is not None:
                            out.append(known)
                            continue
                        seq = self._apply(event, prep)
                        self.log.record_ingest(event.event_id, event.kind, entity,
                                               event.version, "applied", seq)
                except IngestError as exc:
                    out.append(exc)
                    continue
                applied = True
                issued = prep.pin if (event.kind == "citizen.enrolled"
                                      and not event.data.pin) else ""
                out.append(EventResult(event_id=event.event_id, outcome="applied", seq=seq,
                                       issued_pin=issued))
        if applied and self.on_change is not None:
            self.on_change()
        return out

    def _dossier(self, code: str) -> Dossier:
        try:
            return self.log.dossier(code)
        except DistrictError:
            raise IngestError("data.code", f"no dossier {code} (send dossier.created first)",
                              409) from None

    def _apply(self, event: Any, p: _Prepared) -> int:
        d = event.data
        try:
            if event.kind == "dossier.created":
                if not self.log.has_citizen(d.citizen_id):
                    raise IngestError("data.citizen_id", f"no citizen {d.citizen_id} "
                                      "(send citizen.enrolled first)", 409)
                try:
                    old = self.log.dossier(d.code)
                except DistrictError:
                    old = None
                if old is not None and old.citizen_id != d.citizen_id:
                    raise IngestError("data.citizen_id",
                                      f"dossier {d.code} belongs to another citizen", 409)
                return self.log.upsert_dossier(Dossier(
                    code=d.code, citizen_id=d.citizen_id, procedure=d.procedure,
                    status=d.status, stage=d.stage, received_on=d.received_on,
                    appointment_on=d.appointment_on, counter=d.counter), officer=d.officer)
            if event.kind == "dossier.status_changed":
                self._dossier(d.code)
                return self.log.update_dossier(d.code, status=d.status, officer=d.officer)
            if event.kind == "dossier.stage_changed":
                self._dossier(d.code)
                return self.log.update_dossier(d.code, stage=d.stage, counter=d.counter,
                                               officer=d.officer)
            if event.kind == "dossier.appointment_moved":
                self._dossier(d.code)
                return self.log.update_dossier(d.code, appointment_on=d.appointment_on)
            if event.kind == "citizen.deleted":
                if not self.log.has_citizen(d.citizen_id):
                    raise IngestError("data.citizen_id", f"no citizen {d.citizen_id}", 409)
                return self.log.delete_citizen(d.citizen_id)
            old_c = self.log.citizen(d.citizen_id)
            if event.kind == "citizen.updated" and old_c is None:
                raise IngestError("data.citizen_id", f"no citizen {d.citizen_id} "
                                  "(send citizen.enrolled first)", 409)
            if old_c is not None and event.kind == "citizen.updated":
                emb = old_c.embeddings if p.embeddings is None else p.embeddings
                return self.log.upsert_citizen(
                    d.citizen_id,
                    masked_name=p.masked_name or old_c.masked_name,
                    embeddings=emb,
                    pin_hash=p.pin_hash or old_c.pin_hash,
                    pin_salt=p.pin_salt or old_c.pin_salt,
                    dob_hash=old_c.dob_hash if p.dob_hash is None else p.dob_hash,
                    dob_salt=old_c.dob_salt if p.dob_hash is None else p.dob_salt,
                    dob_id4=old_c.dob_id4 if p.dob_hash is None else p.dob_id4)
            assert p.embeddings is not None and p.masked_name is not None
            return self.log.upsert_citizen(
                d.citizen_id, masked_name=p.masked_name, embeddings=p.embeddings,
                pin_hash=p.pin_hash, pin_salt=p.pin_salt,
                dob_hash=p.dob_hash or b"", dob_salt=p.dob_salt, dob_id4=p.dob_id4)
        except IngestError:
            raise
        except DistrictError as exc:  # the log's own checks (text limits, dates)
            raise IngestError("data", str(exc)) from None


__all__ = ["Event", "EventResult", "IngestError", "Ingestor", "KINDS", "error_field",
           "parse_event", "field_name"]
