"""What the district does to personal data before it leaves: masked names and PIN hashes.

Names: the family name (first word) stays, middle names become an initial and a dot,
the given name (last word) keeps its first letter followed by "***":
"Nguyễn Thị Thu" -> "Nguyễn T. T***". Full names never leave the district.

Dates of birth (optional on a record): only scrypt("DDMMYYYY", its own random salt)
leaves the district, for the terminal's confirmation step of an uncertain face match.
With the citizen's personal identification number (số định danh cá nhân, the 12 digits
on the CCCD card) and ``[calibration] confirm_secret = "birth_date_id4"``, that one hash
covers the date of birth followed by the number's last 4 digits instead
(:func:`hash_confirmation`); the number is validated, hashed and forgotten: it is never
stored, logged or published, and error messages never repeat it.

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
from sync.pin import hash_dob_id4 as edge_hash_dob_id4
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


#: digits of a personal identification number (số định danh cá nhân / CCCD number)
PERSONAL_ID_DIGITS = 12
#: the confirmation secrets a district may choose (``[calibration] confirm_secret``)
SECRET_DOB = "birth_date"
SECRET_DOB_ID4 = "birth_date_id4"


def personal_id_last4(text: str) -> str:
    """The last 4 digits of a personal identification number given as 12 ASCII digits
    (spaces allowed between groups); ValueError otherwise. The message never contains
    the number."""
    digits = "".join(text.split())
    if not (len(digits) == PERSONAL_ID_DIGITS and digits.isascii() and digits.isdigit()):
        raise ValueError(f"the personal identification number (số định danh cá nhân) is "
                         f"{PERSONAL_ID_DIGITS} digits; got {len(digits)} characters"
                         + ("" if digits.isascii() and digits.isdigit() else
                            " that are not all digits 0-9"))
    return digits[-4:]


def hash_confirmation(dob_text: str, personal_id: str, secret: str
                      ) -> tuple[bytes, bytes, bool]:
    """(hash, salt, covers the 4 digits) for the confirmation step. With ``secret`` =
    "birth_date_id4" and a ``personal_id``: scrypt(DDMMYYYY + its last 4 digits); else
    scrypt(DDMMYYYY). ``personal_id`` ("" = none) is always validated (ValueError)."""
    if secret not in (SECRET_DOB, SECRET_DOB_ID4):
        raise ValueError(f"confirm_secret: {SECRET_DOB} or {SECRET_DOB_ID4}, got {secret!r}")
    last4 = personal_id_last4(personal_id) if personal_id else ""
    dob = dob_digits(dob_text)
    if last4 and secret == SECRET_DOB_ID4:
        salt = new_salt()
        return edge_hash_dob_id4(dob, last4, salt), salt, True
    dob_hash, salt = hash_dob(dob)
    return dob_hash, salt, False


__all__ = ["mask_name", "check_phone", "issue_pin", "hash_pin", "verify_pin", "dob_digits",
           "hash_dob", "personal_id_last4", "hash_confirmation", "PERSONAL_ID_DIGITS"]
