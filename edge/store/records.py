"""The one record of a citizen that the terminal keeps: the store returns it, the display
API reads it (edge.api.state), the confirmation step checks against it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CitizenRecord:
    """What the terminal knows about a citizen (never the face, never the full name)."""

    citizen_id: str
    masked_name: str
    pin_hash: bytes
    pin_salt: bytes
    embedding_count: int
    #: salted date-of-birth hash and salt (sync.pin); empty: no confirmation step
    dob_hash: bytes = b""
    dob_salt: bytes = b""
    #: the hash covers the date of birth + the last 4 digits of the personal number
    dob_id4: bool = False
