"""The survey QR hand-off, the parts both sides share (docs/district.md "Survey QR").

A district that enables ``[survey]`` puts :class:`pb.SurveySettings` in its signed
manifest. A terminal then shows, on a matched result screen, a QR code of
``base_url + "/s/" + token``: the token is :data:`TOKEN_BYTES` random bytes, base64url,
and means nothing by itself (no code, no name). The terminal reports only the token's
SHA-256 (a ``survey_offer`` TerminalReport with its session and citizen), so neither the
broker nor the district's database holds a usable token; the phone presents the token,
the district hashes it and finds the session.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import secrets
from urllib.parse import urlsplit

from core.errors import MessageRejected
from core.net import is_loopback_host
from proto import sync_pb2 as pb

#: random bytes per token: 18 bytes = 144 bits (>= 128, beyond guessing through an HTTP
#: endpoint) and a whole number of base64 groups, so 24 characters and no padding
TOKEN_BYTES = 18
#: what a token looks like in a URL; anything else is refused before any lookup
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{24}$")
#: longest base URL: the QR stays small (version 5-6 at ~60 characters) and scannable
#: from a phone at arm's length on a 1280x800 kiosk screen
MAX_BASE_URL = 120
#: a token can be answered for at least a minute (walking away from the kiosk) and at
#: most a week (the citizen answers at home); the district sets it within these
MIN_LIFETIME_S = 60
MAX_LIFETIME_S = 7 * 86400
#: a signed manifest whose survey settings are nonsense (counted; the terminal shows no QR)
BAD_SURVEY = "bad_survey"

_PATH_RE = re.compile(r"^[A-Za-z0-9/_.~-]*$")


def check_base_url(value: str) -> str:
    """The base URL without a trailing '/', or ValueError saying what is wrong.

    https only (the token travels in it), except http to a loopback host (tests, demo);
    no user name, query or fragment; a plain path prefix is allowed."""
    if not value or len(value) > MAX_BASE_URL or not value.isascii() or not value.isprintable():
        raise ValueError(f"a URL of 1..{MAX_BASE_URL} printable ASCII characters")
    try:
        u = urlsplit(value)
        host = u.hostname or ""
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if u.scheme not in ("https", "http") or not host:
        raise ValueError("expected https://host[:port][/path]")
    if u.scheme == "http" and not is_loopback_host(host):
        raise ValueError("https is required (the token travels in the URL); http only "
                         "to a loopback host")
    if u.username is not None or u.password is not None or u.query or u.fragment \
            or "?" in value or "#" in value:
        raise ValueError("no user name, query or fragment")
    if not _PATH_RE.match(u.path) or "//" in u.path or "/." in u.path:
        raise ValueError("the path may hold letters, digits and / _ . ~ - only")
    return value.rstrip("/")


def check_lifetime(value: int) -> int:
    if not MIN_LIFETIME_S <= value <= MAX_LIFETIME_S:
        raise ValueError(f"token lifetime {value} s not in {MIN_LIFETIME_S}..{MAX_LIFETIME_S}")
    return value


def new_token() -> str:
    """A fresh one-time token (CSPRNG)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode()


def token_sha256(token: str) -> bytes:
    """What the terminal reports and the district stores for ``token``."""
    return hashlib.sha256(token.encode("ascii")).digest()


def survey_url(base_url: str, token: str) -> str:
    return f"{base_url}/s/{token}"


@dataclasses.dataclass(frozen=True)
class PublishedSurvey:
    """The district's survey as its signed manifest carries it (checked)."""

    base_url: str
    token_lifetime_s: int


def survey_from_pb(m: pb.Manifest) -> PublishedSurvey | None:
    """The manifest's survey (None: the district has none); MessageRejected(BAD_SURVEY)
    when it is nonsense."""
    if not m.HasField("survey"):
        return None
    try:
        return PublishedSurvey(check_base_url(m.survey.base_url),
                               check_lifetime(m.survey.token_lifetime_s))
    except ValueError as exc:
        raise MessageRejected(BAD_SURVEY, str(exc)) from None


def survey_to_pb(s: PublishedSurvey) -> pb.SurveySettings:
    return pb.SurveySettings(base_url=s.base_url, token_lifetime_s=s.token_lifetime_s)
