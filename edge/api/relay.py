"""The thread that carries session events from the session's EventBus to the DisplayState.

The camera loop publishes on its own thread and must never wait for the store lookups a
MATCHED message needs, so the relay reads a bounded subscription on its own named thread.
"""

from __future__ import annotations

import logging
import threading

from edge.api.state import DisplayState
from edge.session.events import EventBus

log = logging.getLogger(__name__)

#: how often the relay wakes to notice the stop event
POLL_S = 0.5


class EventRelay:
    """``start()`` subscribes to ``bus`` and feeds every event to ``state`` until ``stop``."""

    def __init__(self, bus: EventBus, state: DisplayState, stop: threading.Event) -> None:
        self.bus = bus
        self.state = state
        self.stop_event = stop
        self.relayed = 0
        self._sub = bus.subscribe()
        self.thread = threading.Thread(target=self._run, name="display-relay", daemon=True)

    def start(self) -> EventRelay:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                event = self._sub.get(timeout=POLL_S)
                if event is not None:
                    self.state.on_event(event)
                    self.relayed += 1
        finally:
            self._sub.close()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
