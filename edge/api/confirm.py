"""The confirmation step's check: a date of birth against the few best face candidates.

:class:`DobConfirmer` is the session machine's ``Confirmer`` (edge/session/ports.py). It
reads each candidate's ``dob_hash``/``dob_salt`` from the store and counts wrong answers
with the terminal's :class:`~edge.api.attempts.AttemptLimiter` -- the same one the PIN
uses, so PINs and dates of birth share one budget per citizen, across sessions and
restarts. One wrong answer counts against *every* candidate it was checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from edge.api.attempts import AttemptLimiter
from sync.pin import verify_dob


class DobRecord(Protocol):
    @property
    def dob_hash(self) -> bytes: ...

    @property
    def dob_salt(self) -> bytes: ...


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

    def check(self, candidates: Sequence[str], answer: str) -> tuple[list[str], bool]:
        """(candidates the answer is right for, whether every candidate is now locked)."""
        records = {c: self._directory.citizen(c) for c in candidates}

        def verify(citizen_id: str) -> bool:
            rec = records.get(citizen_id)
            # verify_dob runs the KDF even without a stored hash: equal time per candidate
            return verify_dob(answer, rec.dob_hash if rec else b"", rec.dob_salt if rec else b"")

        right, verdicts = self.limiter.attempt_any(list(candidates), verify)
        all_locked = bool(verdicts) and not any(v.allowed for v in verdicts.values())
        return right, all_locked
