"""Masking what the screen shows before a PIN is given."""

from __future__ import annotations

#: characters of a dossier code left visible: the last 4 digits are what a citizen
#: recognises on their receipt, too few to look up anyone else's dossier
CODE_VISIBLE = 4


def mask_code(code: str, visible: int = CODE_VISIBLE) -> str:
    """Replace every letter/digit but the last ``visible`` ones with '*', keep separators.

    ``"000.00.12.H29-240915-0042"`` -> ``"***.**.**.***-******-0042"``.
    """
    alnum_positions = [i for i, ch in enumerate(code) if ch.isalnum()]
    keep = set(alnum_positions[-visible:]) if visible > 0 else set()
    return "".join(
        ch if (not ch.isalnum() or i in keep) else "*" for i, ch in enumerate(code)
    )
