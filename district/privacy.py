"""What the district does to personal data before it leaves: masked names and PIN hashes.

Names: the family name (first word) stays, middle names become an initial and a dot,
the given name (last word) keeps its first letter followed by "***":
"Nguyễn Thị Thu" -> "Nguyễn T. T***". Full names never leave the district.

Dates of birth (optional on a record): only scrypt("DDMMYYYY", its own random salt)
leaves the district, for the terminal's confirmation step of an uncertain face match.

PINs: the district issues a random 6-digit PIN when it enrols a citizen (printed on the
dossier receipt / sent by SMS to the phone on the record) unless the record carries one.
The phone number itself never leaves the district; only scrypt(PIN, 16-byte random salt)
does (the scheme is sync/pin.py's: scrypt n=2^14, r=8, p=1, 32 bytes, 16-byte salt).
"""

from __future__ import annotations

import re
import secrets
import unicodedata

from sync.pin import hash_dob as edge_hash_dob
from sync.pin import hash_pin as edge_hash_pin
from sync.pin import new_salt, valid_dob, verify_pin

#: digits in an issued PIN: 10^6 guesses x ~40 ms scrypt each is ~11 h of brute force
#: per citizen on a stolen terminal, and the terminal limits tries at the screen
PIN_DIGITS = 6

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


def hash_pin(pin: str) -> tuple[bytes, bytes]:
    """(hash, salt) for a PIN with a fresh salt; the scheme is sync.pin's (scrypt)."""
    salt = new_salt()
    return edge_hash_pin(pin, salt), salt


_ISO_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_VN_DATE = re.compile(r"^([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})$")


def dob_digits(text: str) -> str:
    """A date of birth from a record ("YYYY-MM-DD", "DD/MM/YYYY" or already "DDMMYYYY") as
    the kiosk keypad takes it ("DDMMYYYY"); ValueError when it is not a real date."""
    text = text.strip()
    if len(text) == 8 and text.isdigit() and text.isascii():
        digits = text
    elif m := _ISO_DATE.match(text):
        digits = f"{m[3]}{m[2]}{m[1]}"
    elif m := _VN_DATE.match(text):
        digits = f"{int(m[1]):02d}{int(m[2]):02d}{m[3]}"
    else:
        raise ValueError(f"date of birth {text!r}: expected YYYY-MM-DD or DD/MM/YYYY")
    # (the ISO/VN patterns use [0-9], so no other script's digits get here)
    if not valid_dob(digits):
        raise ValueError(f"date of birth {text!r} is not a real date")
    return digits


def hash_dob(text: str) -> tuple[bytes, bytes]:
    """(hash, salt) of a date of birth (any form :func:`dob_digits` reads), fresh salt;
    only these leave the district, never the date."""
    salt = new_salt()
    return edge_hash_dob(dob_digits(text), salt), salt


__all__ = ["mask_name", "check_phone", "issue_pin", "hash_pin", "verify_pin", "dob_digits",
           "hash_dob"]
