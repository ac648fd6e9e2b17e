"""Wire format: signed envelopes and protobuf <-> sync.changes conversion.

Every district message is an ``Envelope`` whose signature covers a domain-separation
context, the payload kind and the body bytes. ``open_envelope`` runs every check that
needs no store (size, parse, version, district, signature) and raises
``MessageRejected(reason)``; the reasons are the counter names in docs/sync.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from core.errors import MessageRejected
from proto import sync_pb2 as pb
from sync.changes import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)

#: the protocol's major version (Envelope.protocol_version, and "v1" in the topic prefix)
PROTOCOL_VERSION = pb.PROTOCOL_VERSION
#: versions this code can read
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
#: signed bytes start with this, so a signature cannot be reused in another protocol
SIGN_CONTEXT = b"motcua.sync.v1\x00"
#: Ed25519 signatures are always 64 bytes
SIGNATURE_BYTES = 64

#: how far a squared embedding norm may be from 1 (float32 rounding of a unit vector)
UNIT_TOLERANCE = 2e-3

# rejection reasons (counter names)
OVERSIZED = "oversized"
MALFORMED = "malformed"
VERSION = "version"
OTHER_DISTRICT = "other_district"
SIGNATURE = "signature"
EPOCH = "epoch"
EMBEDDER = "embedder"
DUPLICATE = "duplicate"
INVALID = "invalid"  # signed and in order, but the store refused it
UNEXPECTED = "unexpected"  # a valid message the terminal did not ask for (stale snapshot)
#: signed, but older than what the terminal already accepted (a replayed old epoch or
#: state; the terminal persists its floor across restarts)
ROLLBACK = "rollback"
#: a signed manifest whose operating point is nonsense (NaN, threshold outside (0, 1],
#: confirm >= threshold); the rest of the manifest is still used, the point is not
BAD_POINT = "bad_point"


@dataclasses.dataclass(frozen=True)
class PublishedPoint:
    """The district's operating point as a signed manifest carries it (checked)."""

    threshold: float
    margin: float
    confirm_threshold: float
    target_fpir: float
    predicted_fpir: float
    gallery_size: int
    derived_at_ms: int
    method: str

    def source(self) -> str:
        """How the terminal names where its threshold came from."""
        if self.method == "pack":
            return (f"district: model pack threshold (gallery {self.gallery_size} too small "
                    "to calibrate)")
        return (f"district calibration (gallery {self.gallery_size}, "
                f"target {self.target_fpir:g})")


def point_from_pb(m: pb.Manifest) -> PublishedPoint | None:
    """The manifest's operating point (None when it has none); MessageRejected(BAD_POINT)
    when it is nonsense."""
    if not m.HasField("point"):
        return None
    p = m.point
    values = (p.threshold, p.margin, p.confirm_threshold, p.target_fpir)
    if not all(math.isfinite(v) for v in values):
        raise MessageRejected(BAD_POINT, "operating point has a NaN or infinite value")
    if not 0.0 < p.threshold <= 1.0:
        raise MessageRejected(BAD_POINT, f"threshold {p.threshold} outside (0, 1]")
    if not 0.0 <= p.margin < 1.0:
        raise MessageRejected(BAD_POINT, f"margin {p.margin} outside [0, 1)")
    if p.confirm_threshold != 0.0 and not 0.0 < p.confirm_threshold < p.threshold:
        raise MessageRejected(BAD_POINT, f"confirm threshold {p.confirm_threshold} not in "
                                         f"(0, threshold {p.threshold})")
    if not 0.0 < p.target_fpir < 1.0 or len(p.method) > 32:
        raise MessageRejected(BAD_POINT, "target FPIR outside (0, 1) or a bad method name")
    return PublishedPoint(
        threshold=float(p.threshold), margin=float(p.margin),
        confirm_threshold=float(p.confirm_threshold), target_fpir=float(p.target_fpir),
        predicted_fpir=float(p.predicted_fpir), gallery_size=int(p.gallery_size),
        derived_at_ms=int(p.derived_at_ms), method=p.method)

_STATUS_TO_PB = {
    DossierStatus.RECEIVED: pb.DOSSIER_STATUS_RECEIVED,
    DossierStatus.PROCESSING: pb.DOSSIER_STATUS_PROCESSING,
    DossierStatus.SUPPLEMENT_REQUIRED: pb.DOSSIER_STATUS_SUPPLEMENT_REQUIRED,
    DossierStatus.RESULT_READY: pb.DOSSIER_STATUS_RESULT_READY,
    DossierStatus.RETURNED: pb.DOSSIER_STATUS_RETURNED,
    DossierStatus.REJECTED: pb.DOSSIER_STATUS_REJECTED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def _signed_bytes(kind: int, body: bytes) -> bytes:
    return SIGN_CONTEXT + bytes([kind]) + body


def seal(key: Ed25519PrivateKey, district_id: str, kind: int, body: bytes) -> bytes:
    """Sign ``body`` and wrap it in a serialized Envelope."""
    env = pb.Envelope(
        protocol_version=PROTOCOL_VERSION,
        district_id=district_id,
        kind=kind,  # type: ignore[arg-type]
        body=body,
        signature=key.sign(_signed_bytes(kind, body)),
    )
    return env.SerializeToString()


PublicKeys = Ed25519PublicKey | list[Ed25519PublicKey] | tuple[Ed25519PublicKey, ...]


def open_envelope(
    payload: bytes, *, district_id: str, public_key: PublicKeys, max_bytes: int
) -> pb.Envelope:
    """Check size, envelope, version, district and signature; return the envelope."""
    if len(payload) > max_bytes:
        raise MessageRejected(OVERSIZED, f"{len(payload)} bytes > {max_bytes}")
    env = pb.Envelope()
    try:
        env.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MessageRejected(MALFORMED, f"not an envelope: {exc}") from None
    if env.protocol_version == 0 or not env.body or len(env.signature) != SIGNATURE_BYTES:
        raise MessageRejected(MALFORMED, "envelope without version, body or signature")
    if env.protocol_version not in SUPPORTED_VERSIONS:
        raise MessageRejected(VERSION, f"protocol version {env.protocol_version}")
    if env.district_id != district_id:
        raise MessageRejected(OTHER_DISTRICT, repr(env.district_id[:64]))
    if env.kind not in (
        pb.PAYLOAD_KIND_BATCH,
        pb.PAYLOAD_KIND_MANIFEST,
        pb.PAYLOAD_KIND_SNAPSHOT_CHUNK,
        pb.PAYLOAD_KIND_SNAPSHOT_FILE,
        pb.PAYLOAD_KIND_REPORT_RECEIPT,
    ):
        raise MessageRejected(MALFORMED, f"unknown payload kind {env.kind}")
    signed = _signed_bytes(env.kind, env.body)
    keys = public_key if isinstance(public_key, list | tuple) else (public_key,)
    for key in keys:  # several during a key rotation
        try:
            key.verify(env.signature, signed)
        except InvalidSignature:
            continue
        return env
    raise MessageRejected(SIGNATURE, "bad Ed25519 signature")


def parse_body(
    env: pb.Envelope,
) -> pb.Batch | pb.Manifest | pb.SnapshotChunk | pb.SnapshotFile:
    """Parse a verified envelope's body; its district id must match the envelope's."""
    if env.kind == pb.PAYLOAD_KIND_REPORT_RECEIPT:  # the outbox's, see parse_receipt
        raise MessageRejected(UNEXPECTED, "a report receipt outside the outbox")
    cls: type[pb.Batch | pb.Manifest | pb.SnapshotChunk | pb.SnapshotFile] = {
        pb.PAYLOAD_KIND_BATCH: pb.Batch,
        pb.PAYLOAD_KIND_MANIFEST: pb.Manifest,
        pb.PAYLOAD_KIND_SNAPSHOT_CHUNK: pb.SnapshotChunk,
        pb.PAYLOAD_KIND_SNAPSHOT_FILE: pb.SnapshotFile,
    }[env.kind]
    msg = cls()
    try:
        msg.ParseFromString(env.body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MessageRejected(MALFORMED, f"body: {exc}") from None
    if msg.district_id != env.district_id:
        raise MessageRejected(MALFORMED, "body and envelope name different districts")
    return msg


def is_receipt(payload: bytes) -> bool:
    """Whether ``payload`` claims to be a ReportReceipt (not verified: a cheap look
    before :func:`open_envelope`, to route it to the outbox instead of the engine)."""
    env = pb.Envelope()
    try:
        env.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError):
        return False
    return env.kind == pb.PAYLOAD_KIND_REPORT_RECEIPT


def parse_receipt(env: pb.Envelope, terminal_id: str) -> pb.ReportReceipt:
    """Parse a verified envelope's ReportReceipt; it must name this district and terminal."""
    if env.kind != pb.PAYLOAD_KIND_REPORT_RECEIPT:
        raise MessageRejected(MALFORMED, f"payload kind {env.kind}, not a report receipt")
    msg = pb.ReportReceipt()
    try:
        msg.ParseFromString(env.body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MessageRejected(MALFORMED, f"body: {exc}") from None
    if msg.district_id != env.district_id or msg.terminal_id != terminal_id:
        raise MessageRejected(MALFORMED, "a receipt for another district or terminal")
    return msg


# ---- changes ---------------------------------------------------------------------------


def change_to_pb(change: Change) -> pb.Change:
    """Convert a store change into its wire form (district side)."""
    out = pb.Change(seq=change.seq)
    if isinstance(change, CitizenUpsert):
        emb = np.ascontiguousarray(change.embeddings, dtype="<f4")
        out.citizen_upsert.CopyFrom(
            pb.CitizenUpsert(
                citizen_id=change.citizen_id,
                masked_name=change.masked_name,
                pin_hash=change.pin_hash,
                pin_salt=change.pin_salt,
                count=emb.shape[0],
                embeddings=emb.tobytes(),
                dob_hash=change.dob_hash,
                dob_salt=change.dob_salt,
                dob_id4=change.dob_id4,
            )
        )
    elif isinstance(change, CitizenDelete):
        out.citizen_delete.citizen_id = change.citizen_id
    elif isinstance(change, DossierUpsert):
        d = change.dossier
        out.dossier_upsert.CopyFrom(
            pb.DossierUpsert(
                code=d.code,
                citizen_id=d.citizen_id,
                procedure=d.procedure,
                status=_STATUS_TO_PB[d.status],
                stage=d.stage,
                received_on=d.received_on,
                appointment_on=d.appointment_on,
                counter=d.counter,
            )
        )
    elif isinstance(change, DossierDelete):
        out.dossier_delete.code = change.code
    else:  # pragma: no cover - the Change union is closed
        raise TypeError(f"not a change: {change!r}")
    return out


def change_from_pb(c: pb.Change, dim: int) -> Change:
    """Convert a wire change into a store change; MessageRejected('malformed') if invalid."""
    kind = c.WhichOneof("kind")
    if c.seq == 0 or kind is None:
        raise MessageRejected(MALFORMED, "change without seq or kind")
    if kind == "citizen_upsert":
        u = c.citizen_upsert
        # count 0 with no bytes is a face suspension (docs/sync.md); count 0 with bytes,
        # or bytes that are not count*dim floats, is malformed
        if not u.citizen_id or len(u.embeddings) != u.count * dim * 4:
            raise MessageRejected(MALFORMED, f"citizen upsert {c.seq}: bad id or embeddings")
        emb = np.frombuffer(u.embeddings, dtype="<f4").reshape(u.count, dim)
        norms = np.einsum("ij,ij->i", emb, emb)  # squared norms; NaN/inf propagate
        if not np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE):
            raise MessageRejected(MALFORMED, f"citizen upsert {c.seq}: embedding not finite unit")
        return CitizenUpsert(
            seq=c.seq,
            citizen_id=u.citizen_id,
            masked_name=u.masked_name,
            pin_hash=u.pin_hash,
            pin_salt=u.pin_salt,
            embeddings=emb,
            dob_hash=u.dob_hash,
            dob_salt=u.dob_salt,
            dob_id4=u.dob_id4 and bool(u.dob_hash),
        )
    if kind == "citizen_delete":
        if not c.citizen_delete.citizen_id:
            raise MessageRejected(MALFORMED, f"citizen delete {c.seq}: no id")
        return CitizenDelete(seq=c.seq, citizen_id=c.citizen_delete.citizen_id)
    if kind == "dossier_upsert":
        d = c.dossier_upsert
        status = _STATUS_FROM_PB.get(d.status)
        if not d.code or not d.citizen_id or status is None:
            raise MessageRejected(MALFORMED, f"dossier upsert {c.seq}: bad code, owner or status")
        return DossierUpsert(
            seq=c.seq,
            dossier=Dossier(
                code=d.code,
                citizen_id=d.citizen_id,
                procedure=d.procedure,
                status=status,
                stage=d.stage,
                received_on=d.received_on,
                appointment_on=d.appointment_on,
                counter=d.counter,
            ),
        )
    if not c.dossier_delete.code:
        raise MessageRejected(MALFORMED, f"dossier delete {c.seq}: no code")
    return DossierDelete(seq=c.seq, code=c.dossier_delete.code)


def changes_from_pb(changes: Iterable[pb.Change], dim: int) -> list[Change]:
    """``change_from_pb`` of many changes (a snapshot chunk), with the same checks and the
    same first error, the citizens' unit-norm check done in one numpy pass over all their
    embeddings instead of one per citizen (each citizen's are a view of one matrix)."""
    items = list(changes)
    try:
        out: list[Change | None] = []
        upserts: list[tuple[int, pb.Change]] = []
        for c in items:
            u = c.citizen_upsert if c.WhichOneof("kind") == "citizen_upsert" else None
            if c.seq == 0 or u is None or not u.citizen_id or (
                    len(u.embeddings) != u.count * dim * 4):
                out.append(change_from_pb(c, dim))  # not a citizen, or it raises
            else:
                upserts.append((len(out), c))
                out.append(None)
        emb = np.frombuffer(b"".join(c.citizen_upsert.embeddings for _, c in upserts),
                            dtype="<f4").reshape(-1, dim)
        norms = np.einsum("ij,ij->i", emb, emb)  # squared norms; NaN/inf propagate
        if not np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE):
            raise MessageRejected(MALFORMED, "embedding not finite unit")
    except MessageRejected:
        return [change_from_pb(c, dim) for c in items]  # raises the first one's error
    row = 0
    for i, c in upserts:
        u = c.citizen_upsert
        out[i] = CitizenUpsert(
            seq=c.seq, citizen_id=u.citizen_id, masked_name=u.masked_name,
            pin_hash=u.pin_hash, pin_salt=u.pin_salt, embeddings=emb[row:row + u.count],
            dob_hash=u.dob_hash, dob_salt=u.dob_salt)
        row += u.count
    return [ch for ch in out if ch is not None]
