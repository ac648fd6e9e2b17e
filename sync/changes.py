"""The change-log vocabulary shared by the district publisher, the sync and the store.

One district keeps one ordered change log; every entry has a change number ``seq``
(1, 2, 3, ... without gaps within an epoch). A batch is a run of consecutive entries
applied as one transaction. The sync layer converts protobuf messages to these types,
so the store never sees wire formats.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import numpy.typing as npt


class DossierStatus(enum.Enum):
    """Status of an administrative dossier, with the label citizens see."""

    RECEIVED = "received"
    PROCESSING = "processing"
    SUPPLEMENT_REQUIRED = "supplement_required"
    RESULT_READY = "result_ready"
    RETURNED = "returned"
    REJECTED = "rejected"

    @property
    def label_vi(self) -> str:
        return _LABELS_VI[self]

    @property
    def label_en(self) -> str:
        return _LABELS_EN[self]


_LABELS_VI = {
    DossierStatus.RECEIVED: "Đã tiếp nhận",
    DossierStatus.PROCESSING: "Đang giải quyết",
    DossierStatus.SUPPLEMENT_REQUIRED: "Cần bổ sung hồ sơ",
    DossierStatus.RESULT_READY: "Đã có kết quả",
    DossierStatus.RETURNED: "Đã trả kết quả",
    DossierStatus.REJECTED: "Từ chối giải quyết",
}
_LABELS_EN = {
    DossierStatus.RECEIVED: "Received",
    DossierStatus.PROCESSING: "In progress",
    DossierStatus.SUPPLEMENT_REQUIRED: "Documents needed",
    DossierStatus.RESULT_READY: "Result ready",
    DossierStatus.RETURNED: "Result collected",
    DossierStatus.REJECTED: "Rejected",
}


@dataclasses.dataclass(frozen=True)
class Dossier:
    """One dossier as the terminal keeps it (the code is masked only when shown)."""

    code: str
    citizen_id: str
    procedure: str
    status: DossierStatus
    #: current processing stage, free text from the district ("Phòng Tài nguyên - Môi trường")
    stage: str
    #: ISO dates (YYYY-MM-DD); appointment may be empty when not yet set
    received_on: str
    appointment_on: str = ""
    #: counter where the citizen collects the result / asks questions
    counter: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class CitizenUpsert:
    """Create or replace a citizen: masked name, PIN hash, all their embeddings, and the
    date-of-birth hash for the confirmation step.

    With zero embeddings it is a *face suspension* (docs/sync.md, "Face suspension"):
    the citizen and their dossiers stay, every vector of theirs goes, and no face
    lookup finds them until an upsert with new embeddings (re-enrolment)."""

    seq: int
    citizen_id: str
    #: already masked by the district ("Nguyễn T. T***"): the full name never leaves it
    masked_name: str
    #: salted PIN hash (see sync docs for the scheme) and its salt; empty when no PIN set
    pin_hash: bytes
    pin_salt: bytes
    #: float32 array of shape (k, dim), each row L2-normalised; k == 0: face suspended
    embeddings: npt.NDArray[np.float32]
    #: salted hash of the date of birth "DDMMYYYY" (sync.pin's KDF, its own salt); empty
    #: when the district has no date of birth: the citizen cannot use the confirmation step
    dob_hash: bytes = b""
    dob_salt: bytes = b""
    #: the hash covers the date of birth AND the last 4 digits of the personal
    #: identification number (sync.pin.hash_dob_id4): the kiosk asks both
    dob_id4: bool = False


def face_suspended(change: CitizenUpsert) -> bool:
    """Whether the upsert suspends the citizen's face (no embeddings at all)."""
    return int(change.embeddings.shape[0]) == 0


@dataclasses.dataclass(frozen=True)
class CitizenDelete:
    """Forget a citizen: embeddings, dossiers, everything (right to be forgotten)."""

    seq: int
    citizen_id: str


@dataclasses.dataclass(frozen=True)
class DossierUpsert:
    seq: int
    dossier: Dossier


@dataclasses.dataclass(frozen=True)
class DossierDelete:
    seq: int
    code: str


Change = CitizenUpsert | CitizenDelete | DossierUpsert | DossierDelete
