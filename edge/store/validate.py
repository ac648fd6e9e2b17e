"""Validation of what the sync hands the store: changes and query vectors.

Pure Python and numpy, no I/O: a batch is checked completely before SQLite is touched,
so any bad change refuses the whole batch and nothing changes (docs/store.md,
"Validation / refusals"). A citizen upsert with zero embeddings is valid: a suspended
face (docs/store.md, "Face suspension").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from core.errors import StoreError
from edge.config import StoreSettings
from sync.changes import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)

#: longest citizen id / dossier code accepted (the district uses UUIDs and short codes)
MAX_ID_LEN = 128
#: longest masked name / free-text dossier field accepted
MAX_TEXT_LEN = 512
#: longest PIN hash or salt accepted (a sha256/scrypt output is 32-64 bytes)
MAX_PIN_FIELD = 256
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def unit_rows(arr: npt.ArrayLike, dim: int, what: str) -> npt.NDArray[np.float32]:
    """Check an embedding matrix (or one vector) and return unit float32 rows.

    Refuses a wrong shape or dimension, non-float data, NaN/inf and zero norm.
    """
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        raise StoreError(f"{what}: embeddings must be floats, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[0] < 1:
        raise StoreError(f"{what}: expected shape (n, {dim}), got {np.shape(arr)}")
    if a.shape[1] != dim:
        raise StoreError(f"{what}: embedding dimension {a.shape[1]}, the gallery's is {dim}")
    # one float64 pass: a NaN or infinity anywhere (or a float64 value too large to
    # square) makes the row's norm non-finite; this runs on every search
    wide = a.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    if not np.isfinite(norms).all():
        raise StoreError(f"{what}: embedding contains NaN or infinity")
    if (norms < 1e-6).any():
        raise StoreError(f"{what}: embedding has zero norm")
    return (wide / norms[:, None]).astype(np.float32)


def check_text(value: object, what: str, *, limit: int = MAX_TEXT_LEN,
                empty: bool = True) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what}: expected text, got {type(value).__name__}")
    if not empty and not value:
        raise StoreError(f"{what}: must not be empty")
    if len(value) > limit:
        raise StoreError(f"{what}: longer than {limit} characters")
    if "\x00" in value:
        raise StoreError(f"{what}: contains a NUL character")
    return value


def check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise StoreError(f"{what}: expected bytes, got {type(value).__name__}")
    if len(value) > MAX_PIN_FIELD:
        raise StoreError(f"{what}: longer than {MAX_PIN_FIELD} bytes")
    return bytes(value)


@dataclasses.dataclass
class Prepared:
    """A validated change, with what the SQL and the index need."""

    change: Change
    raw: bytes = b""  # float32 little-endian embeddings, as sent
    unit: npt.NDArray[np.float32] | None = None


def _check_citizen_fields(change: CitizenUpsert) -> str:
    """Check a citizen upsert's text and byte fields; the name of the change for errors."""
    what = f"change {change.seq} (citizen {change.citizen_id!r})"
    check_text(change.citizen_id, f"{what} citizen_id", limit=MAX_ID_LEN, empty=False)
    check_text(change.masked_name, f"{what} masked_name")
    check_bytes(change.pin_hash, f"{what} pin_hash")
    check_bytes(change.pin_salt, f"{what} pin_salt")
    check_bytes(change.dob_hash, f"{what} dob_hash")
    check_bytes(change.dob_salt, f"{what} dob_salt")
    return what


def prepare_many(changes: Sequence[object], dim: int, settings: StoreSettings
                 ) -> list[Prepared]:
    """``[prepare(ch, dim, settings) for ch in changes]`` with the same checks and the
    same first error, the citizens' embeddings checked and normalised in one numpy pass
    (a snapshot's 2,000-citizen chunks: one ``unit_rows`` instead of 2,000)."""
    out: list[Prepared] = []
    pending: list[tuple[Prepared, npt.NDArray[np.floating]]] = []
    try:
        for ch in changes:
            if isinstance(ch, CitizenUpsert):
                emb = np.asarray(ch.embeddings)
                if (emb.ndim == 2 and 0 < emb.shape[0] <= settings.max_embeddings_per_citizen
                        and emb.shape[1] == dim and emb.dtype.kind == "f"):
                    _check_citizen_fields(ch)
                    p = Prepared(ch)
                    pending.append((p, emb))
                    out.append(p)
                    continue
            out.append(prepare(ch, dim, settings))  # anything else, or it raises
        if pending:
            stacked = np.concatenate([emb for _, emb in pending])
            unit = unit_rows(stacked, dim, "snapshot embeddings")
            raw = np.ascontiguousarray(stacked.astype("<f4"))
    except StoreError:
        return [prepare(ch, dim, settings) for ch in changes]  # raises the first error
    row = 0
    for p, emb in pending:
        k = emb.shape[0]
        p.unit = unit[row:row + k]
        p.raw = raw[row:row + k].tobytes()
        row += k
    return out


def prepare(change: object, dim: int, settings: StoreSettings) -> Prepared:
    if isinstance(change, CitizenUpsert):
        what = _check_citizen_fields(change)
        emb = np.asarray(change.embeddings)
        if emb.ndim != 2:
            raise StoreError(f"{what}: embeddings must have shape (k, {dim}), got {emb.shape}")
        if emb.shape[0] > settings.max_embeddings_per_citizen:
            raise StoreError(
                f"{what}: {emb.shape[0]} embeddings, at most "
                f"{settings.max_embeddings_per_citizen} per citizen"
            )
        if emb.shape[0] == 0:  # face suspension: the citizen stays, no vector
            if emb.shape[1] != dim or emb.dtype.kind != "f":
                raise StoreError(f"{what}: no embeddings, but shape {emb.shape} "
                                 f"dtype {emb.dtype} (expected (0, {dim}) floats)")
            return Prepared(change, b"", np.empty((0, dim), dtype=np.float32))
        unit = unit_rows(emb, dim, what)
        raw = np.ascontiguousarray(emb.astype("<f4")).tobytes()
        return Prepared(change, raw, unit)
    if isinstance(change, CitizenDelete):
        check_text(change.citizen_id, f"change {change.seq} citizen_id", limit=MAX_ID_LEN,
                    empty=False)
        return Prepared(change)
    if isinstance(change, DossierUpsert):
        d = change.dossier
        what = f"change {change.seq} (dossier)"
        if not isinstance(d, Dossier):
            raise StoreError(f"{what}: expected a Dossier, got {type(d).__name__}")
        check_text(d.code, f"{what} code", limit=MAX_ID_LEN, empty=False)
        check_text(d.citizen_id, f"{what} citizen_id", limit=MAX_ID_LEN, empty=False)
        for name in ("procedure", "stage", "counter"):
            check_text(getattr(d, name), f"{what} {name}")
        if not isinstance(d.status, DossierStatus):
            raise StoreError(f"{what}: status must be a DossierStatus, got {d.status!r}")
        if not isinstance(d.received_on, str) or not DATE_RE.match(d.received_on):
            raise StoreError(f"{what}: received_on must be YYYY-MM-DD, got {d.received_on!r}")
        if not isinstance(d.appointment_on, str) or (
            d.appointment_on and not DATE_RE.match(d.appointment_on)
        ):
            raise StoreError(
                f"{what}: appointment_on must be YYYY-MM-DD or empty, got {d.appointment_on!r}"
            )
        return Prepared(change)
    if isinstance(change, DossierDelete):
        check_text(change.code, f"change {change.seq} code", limit=MAX_ID_LEN, empty=False)
        return Prepared(change)
    raise StoreError(f"not a change: {type(change).__name__}")

