"""The confirmation step's check: a date of birth (and, for citizens whose district has
their personal identification number, its last 4 digits) against the few best face
candidates.

:class:`DobConfirmer` is the session machine's ``Confirmer`` (edge/session/ports.py). It
reads each candidate's ``dob_hash``/``dob_salt``/``dob_id4`` from the store: the kiosk
asks for the 4 digits when any candidate's hash covers them, and a candidate whose hash
is the date of birth only is checked against the date part of the answer (the weaker
secret; the district's calibration counts it as such). It counts wrong answers
with the terminal's :class:`~edge.api.attempts.AttemptLimiter` -- the same one the PIN
uses, so PINs and dates of birth share one budget per citizen, across sessions and
restarts. One wrong answer counts against *every* candidate it was checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from edge.api.attempts import AttemptLimiter
from sync.pin import verify_confirmation


class DobRecord(Protocol):
    @property
    def dob_hash(self) -> bytes: ...

    @property
    def dob_salt(self) -> bytes: ...

    @property
    def dob_id4(self) -> bool: ...


class DobDirectory(Protocol):
    def citizen(self, citizen_id: str) -> DobRecord | None: ...


class DobConfirmer:
    """Date-of-birth check over candidates, limited per citizen by ``limiter``."""

    def __init__(self, directory: DobDirectory,
                 limiter: AttemptLimiter | Callable[[], AttemptLimiter]) -> None:
        self._directory = directory
        # a callable: the terminal's limiter is opened after the display API is built
        self._limiter = limiter

    @property
    def limiter(self) -> AttemptLimiter:
        lim = self._limiter
        return lim if isinstance(lim, AttemptLimiter) else lim()

    def _has_dob(self, citizen_id: str) -> bool:
        rec = self._directory.citizen(citizen_id)
        return rec is not None and bool(rec.dob_hash) and bool(rec.dob_salt)

    def usable(self, candidates: Sequence[str]) -> list[str]:
        """Candidates with a date of birth on record whose budget is not locked."""
        limiter = self.limiter
        return [c for c in candidates if self._has_dob(c) and limiter.check(c).allowed]

    def needs_id4(self, candidates: Sequence[str]) -> bool:
        """Whether the step must ask the 4 digits: a candidate's hash covers them."""
        for c in candidates:
            rec = self._directory.citizen(c)
            if rec is not None and rec.dob_id4 and rec.dob_hash:
                return True
        return False

    def check(self, candidates: Sequence[str], answer: str) -> tuple[list[str], bool]:
        """(candidates the answer is right for, whether every candidate is now locked).
        ``answer``: DDMMYYYY, or DDMMYYYY + the 4 digits when the step asked for them."""
        records = {c: self._directory.citizen(c) for c in candidates}

        def verify(citizen_id: str) -> bool:
            rec = records.get(citizen_id)
            # one KDF run per candidate, stored hash or not: equal time per candidate
            return verify_confirmation(answer, rec.dob_hash if rec else b"",
                                       rec.dob_salt if rec else b"",
                                       bool(rec.dob_id4) if rec else False)

        right, verdicts = self.limiter.attempt_any(list(candidates), verify)
        all_locked = bool(verdicts) and not any(v.allowed for v in verdicts.values())
        return right, all_locked
