"""Unit-boundary stand-ins for the display API tests: a citizen directory and a session control.

The real GalleryStore and session machine are exercised by the end-to-end tests; these
only let the gRPC layer be tested without a camera.
"""

from __future__ import annotations

import threading

from edge.session.events import ConfirmReply, ConfirmStatus
from edge.store.records import CitizenRecord
from sync.changes import Dossier, DossierStatus
from sync.pin import hash_pin

SALT = b"0123456789abcdef"
PIN = "2468"


def Citizen(masked_name: str, pin_hash: bytes, pin_salt: bytes,  # noqa: N802
            dob_hash: bytes = b"", dob_salt: bytes = b"") -> CitizenRecord:
    """The store's own record (one embedding), as the fakes hand it to the display API."""
    return CitizenRecord("", masked_name, pin_hash, pin_salt, 1, dob_hash, dob_salt)


class FakeDirectory:
    def __init__(self) -> None:
        self.citizens = {
            "c1": Citizen("Nguyễn T. T***", hash_pin(PIN, SALT), SALT),
            "c2": Citizen("Trần V. B***", b"", b""),
        }
        self.records = {
            "c1": [
                Dossier(
                    code="000.00.12.H29-240915-0042",
                    citizen_id="c1",
                    procedure="Cấp giấy chứng nhận quyền sử dụng đất",
                    status=DossierStatus.PROCESSING,
                    stage="Phòng Tài nguyên - Môi trường",
                    received_on="2026-11-02",
                    appointment_on="2026-12-01",
                    counter="3",
                ),
                Dossier(
                    code="000.00.12.H29-241001-0107",
                    citizen_id="c1",
                    procedure="Đăng ký khai sinh",
                    status=DossierStatus.RESULT_READY,
                    stage="Bộ phận trả kết quả",
                    received_on="2026-11-20",
                    appointment_on="2026-11-27",
                    counter="1",
                ),
            ],
            "c2": [],
        }

    def citizen(self, citizen_id: str) -> Citizen | None:
        return self.citizens.get(citizen_id)

    def dossiers(self, citizen_id: str) -> list[Dossier]:
        return list(self.records.get(citizen_id, []))


class FakeControl:
    """Accepts not_me/rate for the session ids in ``current`` (like the session machine)."""

    def __init__(self) -> None:
        self.current: set[str] = set()
        self.not_mes: list[str] = []
        self.ratings: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def not_me(self, session_id: str) -> bool:
        with self.lock:
            if session_id not in self.current:
                return False
            self.not_mes.append(session_id)
            return True

    def rate(self, session_id: str, stars: int) -> bool:
        with self.lock:
            if session_id not in self.current or any(s == session_id for s, _ in self.ratings):
                return False
            self.ratings.append((session_id, stars))
            return True

    def confirm(self, session_id: str, answer: str) -> ConfirmReply:
        return ConfirmReply(ConfirmStatus.NO_SESSION)

    def cancel_confirmation(self, session_id: str) -> bool:
        return False
