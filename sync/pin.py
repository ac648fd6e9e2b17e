"""The citizen PIN scheme shared by the district (which hashes) and the terminal (which checks).

The district never sends a PIN, only ``pin_hash = scrypt(pin, salt, n=2**14, r=8, p=1,
dklen=32)`` with a random 16-byte ``pin_salt`` per citizen (both travel in CitizenUpsert).
A short PIN cannot resist an offline search; what protects it is that the terminal allows
only a few tries per session (``api.pin_tries``) and that the hash never leaves the store.
"""

from __future__ import annotations

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


def new_salt() -> bytes:
    return os.urandom(SALT_LEN)


def hash_pin(pin: str, salt: bytes) -> bytes:
    """The stored hash of ``pin`` (raises ValueError on a malformed PIN or empty salt)."""
    if not valid_pin(pin):
        raise ValueError("a PIN is 4 to 8 digits")
    if not salt:
        raise ValueError("empty PIN salt")
    return hashlib.scrypt(
        pin.encode("ascii"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_LEN
    )


def verify_pin(pin: str, pin_hash: bytes, salt: bytes) -> bool:
    """Constant-time check of ``pin`` against a stored hash; False for malformed input."""
    if not valid_pin(pin) or not salt or len(pin_hash) != HASH_LEN:
        return False
    return hmac.compare_digest(hash_pin(pin, salt), pin_hash)
