"""Showing text that a terminal sent (fleet view, reports) on an operator's screen.

Everything in a terminal's state message, its topic's terminal id and its reports is
untrusted (docs/security.md): escape sequences could move the cursor, clear or retitle
the operator's terminal, fake table rows; bidi overrides could make text read backwards.
:func:`shown` is the one function every display path passes such text through.
"""

from __future__ import annotations

import re
import unicodedata

#: longest text shown for one field; longer text is cut and ends in "…". 120 characters
#: hold any real error message or version string and keep a table row on one screen
SHOWN_MAX_CHARS = 120

# ANSI/ECMA-48 sequences as a whole (so "ESC[2J" leaves nothing behind, not "[2J"):
# CSI (ESC [ or the C1 byte 0x9b) parameters final; OSC/DCS/PM/APC strings up to BEL or
# ST; any other two-character ESC sequence
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x20-\x3f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]P^_X]|[\x90\x9d\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x7e]?"
)
#: Unicode categories never shown: controls (Cc: C0, DEL, C1), format characters (Cf:
#: bidi overrides and isolates, zero-width characters), surrogates, private use,
#: unassigned; line and paragraph separators (Zl, Zp) would break a row
_DROP = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def shown(text: object, limit: int = SHOWN_MAX_CHARS) -> str:
    """``text`` made safe to print on one line: escape sequences, control, format (bidi)
    and separator characters removed, other white space made a plain space, at most
    ``limit`` characters (cut with "…")."""
    s = _ESCAPES.sub("", str(text)[: limit * 8])  # bound the work before the regex
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif cat in _DROP:
            continue
        elif cat == "Zs":
            out.append(" ")
        else:
            out.append(ch)
    clean = "".join(out)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
