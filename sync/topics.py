"""MQTT topic layout of the sync protocol (see docs/sync.md).

{prefix}/{district}/gallery/batch              district -> all terminals (QoS 1)
{prefix}/{district}/gallery/manifest           district, retained: epoch + head
{prefix}/{district}/gallery/direct/{terminal}  district -> one terminal: replays, snapshots
{prefix}/{district}/terminal/{terminal}/request  terminal -> district: replay/snapshot
{prefix}/{district}/terminal/{terminal}/state    terminal, retained TerminalState
{prefix}/{district}/terminal/{terminal}/status   terminal, retained "online"/"offline" (will)
{prefix}/{district}/terminal/{terminal}/report   terminal -> district: TerminalReport (QoS 1)
"""

from __future__ import annotations

import dataclasses
import re

#: default prefix; its "v1" is the protocol's major version
DEFAULT_PREFIX = "motcua/v1"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str, what: str) -> str:
    """District and terminal ids become topic levels: letters, digits, '_', '.', '-'."""
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r}: use 1-64 letters, digits, '_', '.', '-'")
    return value


@dataclasses.dataclass(frozen=True)
class Topics:
    prefix: str
    district: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.district}"

    @property
    def batch(self) -> str:
        return f"{self.base}/gallery/batch"

    @property
    def manifest(self) -> str:
        return f"{self.base}/gallery/manifest"

    def direct(self, terminal: str) -> str:
        return f"{self.base}/gallery/direct/{terminal}"

    def request(self, terminal: str) -> str:
        return f"{self.base}/terminal/{terminal}/request"

    def state(self, terminal: str) -> str:
        return f"{self.base}/terminal/{terminal}/state"

    def status(self, terminal: str) -> str:
        return f"{self.base}/terminal/{terminal}/status"

    def report(self, terminal: str) -> str:
        return f"{self.base}/terminal/{terminal}/report"

    @property
    def all_reports(self) -> str:
        return f"{self.base}/terminal/+/report"

    @property
    def all_requests(self) -> str:
        return f"{self.base}/terminal/+/request"

    @property
    def all_states(self) -> str:
        return f"{self.base}/terminal/+/state"

    @property
    def all_statuses(self) -> str:
        return f"{self.base}/terminal/+/status"

    def terminal_of(self, topic: str) -> str | None:
        """The terminal id in a terminal/{id}/... topic, else None."""
        parts = topic.split("/")
        base = self.base.split("/")
        n = len(base)
        if len(parts) == n + 3 and parts[:n] == base and parts[n] == "terminal":
            return parts[n + 1]
        return None
