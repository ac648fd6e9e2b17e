"""The citizen PIN scheme shared by the district (which hashes) and the terminal (which checks).

The district never sends a PIN, only ``pin_hash = scrypt(pin, salt, n=2**14, r=8, p=1,
dklen=32)`` with a random 16-byte ``pin_salt`` per citizen (both travel in CitizenUpsert).
A short PIN cannot resist an offline search; what protects it is that the terminal allows
only a few tries per session (``api.pin_tries``) and that the hash never leaves the store.

The date of birth (for the confirmation step of an uncertain face match) uses the same
KDF with its own random salt: ``dob_hash = scrypt("DDMMYYYY", dob_salt, ...)``. It is
a weaker secret than a PIN (a few tens of thousands of likely dates), so it too relies on
the terminal's tries per citizen, never on the hash alone.

When the district has the citizen's personal identification number (12 digits on the
CCCD card), the same hash covers the date of birth followed by the number's last 4 digits
(``dob_id4``): ``scrypt("DDMMYYYY" + "NNNN", dob_salt, ...)``, 10,000 times more
combinations. The kiosk then takes a 12-digit answer; :func:`verify_confirmation` checks
it against either kind of hash.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re

#: scrypt cost: 2**14 takes ~40 ms on a Pi 4 — slow enough to make each try cost
#: something, fast enough for a person pressing OK
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
HASH_LEN = 32
SALT_LEN = 16
#: a PIN is 4 to 8 ASCII digits (what a kiosk PIN pad can enter)
PIN_RE = re.compile(r"[0-9]{4,8}")


def valid_pin(pin: str) -> bool:
    """True when ``pin`` has the accepted shape (4..8 ASCII digits)."""
    return PIN_RE.fullmatch(pin) is not None


#: a date of birth as typed on the kiosk keypad: DDMMYYYY
DOB_RE = re.compile(r"[0-9]{8}")
#: years accepted for a date of birth. Not "up to today": a Pi without a real-time clock
#: may boot in 1970 before NTP, and a date check must not depend on that
DOB_MIN_YEAR = 1900
DOB_MAX_YEAR = 2099


def valid_dob(dob: str) -> bool:
    """True when ``dob`` is 8 ASCII digits DDMMYYYY naming a real calendar date."""
    if DOB_RE.fullmatch(dob) is None:
        return False
    day, month, year = int(dob[:2]), int(dob[2:4]), int(dob[4:])
    if not DOB_MIN_YEAR <= year <= DOB_MAX_YEAR:
        return False
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


#: the last 4 digits of the personal identification number, as typed on the keypad
ID4_RE = re.compile(r"[0-9]{4}")
#: digits of a confirmation answer: the date of birth, then maybe the 4 digits
DOB_LEN = 8
DOB_ID4_LEN = 12


def valid_id4(id4: str) -> bool:
    """True when ``id4`` is 4 ASCII digits."""
    return ID4_RE.fullmatch(id4) is not None


def valid_answer(answer: str) -> bool:
    """True for a confirmation answer: a date of birth DDMMYYYY, optionally followed by
    4 digits (the personal identification number's last 4)."""
    if len(answer) == DOB_ID4_LEN:
        return valid_dob(answer[:DOB_LEN]) and valid_id4(answer[DOB_LEN:])
    return valid_dob(answer)


def _kdf(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        secret.encode("ascii"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_LEN
    )


def new_salt() -> bytes:
    return os.urandom(SALT_LEN)


def hash_pin(pin: str, salt: bytes) -> bytes:
    """The stored hash of ``pin`` (raises ValueError on a malformed PIN or empty salt)."""
    if not valid_pin(pin):
        raise ValueError("a PIN is 4 to 8 digits")
    if not salt:
        raise ValueError("empty PIN salt")
    return _kdf(pin, salt)


def verify_pin(pin: str, pin_hash: bytes, salt: bytes) -> bool:
    """Constant-time check of ``pin`` against a stored hash; False for malformed input."""
    if not valid_pin(pin) or not salt or len(pin_hash) != HASH_LEN:
        return False
    return hmac.compare_digest(hash_pin(pin, salt), pin_hash)


def hash_dob(dob: str, salt: bytes) -> bytes:
    """The stored hash of a date of birth ``DDMMYYYY`` (ValueError when malformed)."""
    if not valid_dob(dob):
        raise ValueError("a date of birth is 8 digits DDMMYYYY naming a real date")
    if not salt:
        raise ValueError("empty date-of-birth salt")
    return _kdf(dob, salt)


def verify_dob(dob: str, dob_hash: bytes, salt: bytes) -> bool:
    """Constant-time check of ``dob`` against a stored hash; False for malformed input or
    a citizen without a date of birth (empty hash). Always runs the KDF once when the
    answer is well-formed, so the time does not tell whether a hash is stored."""
    if not valid_dob(dob):
        return False
    computed = _kdf(dob, salt or b"\0" * SALT_LEN)
    return len(dob_hash) == HASH_LEN and bool(salt) and hmac.compare_digest(computed, dob_hash)


def hash_dob_id4(dob: str, id4: str, salt: bytes) -> bytes:
    """The stored hash of a date of birth ``DDMMYYYY`` followed by the last 4 digits of
    the personal identification number (ValueError when either is malformed)."""
    if not valid_id4(id4):
        raise ValueError("the last 4 digits of the personal identification number: 4 digits")
    hash_dob(dob, salt)  # validates dob and salt (the cost is paid once, at the district)
    return _kdf(dob + id4, salt)


def verify_confirmation(answer: str, dob_hash: bytes, salt: bytes, with_id4: bool) -> bool:
    """Constant-time check of a confirmation ``answer`` (8 or 12 digits) against one
    citizen's stored hash: ``with_id4`` (the hash covers date of birth + 4 digits) needs
    all 12 digits; a date-of-birth-only hash is checked against the first 8, whatever
    follows. Runs the KDF exactly once for a well-formed answer, stored hash or not."""
    if not valid_answer(answer):
        return False
    secret = answer if with_id4 else answer[:DOB_LEN]
    computed = _kdf(secret, salt or b"\0" * SALT_LEN)
    right_shape = len(secret) == (DOB_ID4_LEN if with_id4 else DOB_LEN)
    return (right_shape and len(dob_hash) == HASH_LEN and bool(salt)
            and hmac.compare_digest(computed, dob_hash))
