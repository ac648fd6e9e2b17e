"""District publisher -> real Mosquitto -> terminal subscribers, end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge.store.changes import DossierStatus
from sync.mqtt import BrokerSettings
from sync.publisher import Publisher
from sync.subscriber import TerminalSubscriber
from tests.broker import MosquittoBroker
from tests.memstore import MemoryStore
from tests.sync_helpers import (
    DISTRICT,
    EMBEDDER,
    add_citizens,
    new_district,
    new_key,
    reference_store,
    wait_for,
)

FAST = dict(reconnect_min_s=0.0, reconnect_max_s=0.5, keepalive_s=5)


def settings(b: MosquittoBroker, **kw: object) -> BrokerSettings:
    return BrokerSettings(host=b.host, port=b.port, **{**FAST, **kw})  # type: ignore[arg-type]


class Rig:
    """A district log + key + publisher, and terminals created on demand."""

    def __init__(self, tmp: Path, broker: MosquittoBroker, dim: int = 32) -> None:
        self.tmp = tmp
        self.broker = broker
        self.dlog = new_district(tmp / "district.sqlite", dim=dim)
        self.key = new_key()
        self.stop = threading.Event()
        self.publisher: Publisher | None = None
        self.terminals: list[TerminalSubscriber] = []

    def start_publisher(self) -> Publisher:
        self.publisher = Publisher(
            self.dlog, self.key, settings(self.broker), snapshot_min_interval_s=0.5
        ).start()
        return self.publisher

    def terminal(self, name: str, store: MemoryStore | None = None) -> TerminalSubscriber:
        store = store or MemoryStore(embedder_id=EMBEDDER, dim=self.dlog.dim)
        t = TerminalSubscriber(
            store,
            settings(self.broker),
            district_id=DISTRICT,
            terminal_id=name,
            public_key=self.key.public_key(),
            spool_dir=self.tmp,
            gap_timeout_s=0.3,
            request_retry_s=0.5,
            state_interval_s=0.2,
        ).start()
        self.terminals.append(t)
        return t

    def expected_hash(self) -> str:
        ref = reference_store(self.dlog, MemoryStore(embedder_id=EMBEDDER, dim=self.dlog.dim))
        return str(ref.content_hash())

    def converged(self, t: TerminalSubscriber) -> bool:
        return (
            t.engine.store.last_seq == self.dlog.head_seq
            and t.engine.store.content_hash() == self.expected_hash()
        )

    def close(self) -> None:
        for t in self.terminals:
            t.stop()
        if self.publisher is not None:
            self.publisher.stop()


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker):  # type: ignore[no-untyped-def]
    r = Rig(tmp_path, broker)
    yield r
    r.close()


def test_live_updates_and_delete_reach_two_terminals(rig: Rig) -> None:
    ids = add_citizens(rig.dlog, 50)
    rig.start_publisher()
    a, b = rig.terminal("t-a"), rig.terminal("t-b")
    for t in (a, b):
        wait_for(lambda t=t: rig.converged(t), what=f"{t.terminal_id} initial sync")
    rig.dlog.update_dossier("HS-0000003", status=DossierStatus.RESULT_READY, stage="Trả kết quả")
    victim = ids[7]
    emb = np.asarray(a.engine.store.citizens[victim].embeddings[0])
    assert a.engine.store.search(emb, 1)[0].citizen_id == victim
    rig.dlog.delete_citizen(victim)
    for t in (a, b):
        wait_for(lambda t=t: rig.converged(t), what=f"{t.terminal_id} after update+delete")
        store = t.engine.store
        assert store.dossier_map["HS-0000003"].status is DossierStatus.RESULT_READY
        assert victim not in store.citizens
        assert all(m.citizen_id != victim for m in store.search(emb, 5))
        assert sum(t.engine.rejections.values()) == t.engine.rejections["duplicate"]
