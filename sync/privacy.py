"""What the district does to personal data before it leaves: masked names and PIN hashes.

Names: the family name (first word) stays, middle names become an initial and a dot,
the given name (last word) keeps its first letter followed by "***":
"Nguyễn Thị Thu" -> "Nguyễn T. T***". Full names never leave the district.

PINs: the district issues a random 6-digit PIN when it enrols a citizen (printed on the
dossier receipt / sent by SMS to the phone on the record) unless the record carries one.
The phone number itself never leaves the district; only scrypt(PIN, 16-byte random salt)
does, with the parameters below (fixed by protocol v1, see docs/sync.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata

#: digits in an issued PIN: 10^6 guesses x ~50 ms scrypt each is ~14 h of brute force
#: per citizen on a stolen terminal, and the terminal limits attempts at the screen
PIN_DIGITS = 6
#: scrypt cost: N=2^14, r=8 (16 MiB, ~50 ms on a Pi 4); p=1; 32-byte hash, 16-byte salt
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
PIN_HASH_BYTES = 32
PIN_SALT_BYTES = 16

_PIN = re.compile(r"^[0-9]{4,8}$")
_PHONE = re.compile(r"^\+?[0-9][0-9 .-]{7,18}[0-9]$")


def mask_name(full_name: str) -> str:
    """Mask a Vietnamese full name for the screen ("Nguyễn Thị Thu" -> "Nguyễn T. T***")."""
    words = unicodedata.normalize("NFC", " ".join(full_name.split())).split(" ")
    words = [w for w in words if w]
    if not words:
        raise ValueError("empty name")
    if len(words) == 1:
        return words[0][0].upper() + "***"
    family, *middle, given = words
    parts = [family] + [f"{w[0].upper()}." for w in middle] + [given[0].upper() + "***"]
    return " ".join(parts)


def check_phone(phone: str) -> str:
    """Validate a phone number (digits, optional +, spaces/dots/dashes)."""
    if not _PHONE.match(phone.strip()):
        raise ValueError(f"not a phone number: {phone!r}")
    return phone.strip()


def issue_pin() -> str:
    """A fresh random PIN of PIN_DIGITS digits."""
    return f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"


def hash_pin(pin: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """Return (hash, salt) for a PIN of 4-8 digits; a new random salt unless given."""
    if not _PIN.match(pin):
        raise ValueError("a PIN is 4 to 8 digits")
    salt = secrets.token_bytes(PIN_SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        pin.encode("ascii"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=64 * 1024 * 1024,
        dklen=PIN_HASH_BYTES,
    )
    return digest, salt


def verify_pin(pin: str, pin_hash: bytes, pin_salt: bytes) -> bool:
    """True if ``pin`` matches (constant-time compare); False for a malformed PIN."""
    if not pin_hash or not pin_salt or not _PIN.match(pin):
        return False
    digest, _ = hash_pin(pin, pin_salt)
    return hmac.compare_digest(digest, pin_hash)
