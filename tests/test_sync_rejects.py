"""Hostile and broken messages on the real broker: rejected, counted, store untouched.

The terminal starts from the district's state (installed as a snapshot); no publisher
runs, the test publishes crafted messages on the district's topics itself, as an
attacker with broker access (or a broken district) would.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from proto import sync_pb2 as pb
from sync.changes import DossierStatus
from sync.mqtt import BrokerSettings
from sync.topics import DEFAULT_PREFIX, Topics
from sync.wire import seal
from tests.broker import MosquittoBroker
from tests.sync_helpers import (
    DISTRICT,
    EMBEDDER,
    add_citizens,
    craft_batch,
    log_changes,
    new_district,
    new_key,
    reference_store,
    wait_for,
)

DIM = 64
TOPICS = Topics(DEFAULT_PREFIX, DISTRICT)


class Injector:
    """A raw MQTT client publishing arbitrary bytes (QoS 1, waits for PUBACK)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.requests: list[pb.SyncRequest] = []
        self.got_request = threading.Event()

        def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
            self.requests.append(pb.SyncRequest.FromString(msg.payload))
            self.got_request.set()

        self.c.on_message = on_message
        self.c.subscribe(TOPICS.all_requests, qos=1)

    def send(self, payload: bytes, topic: str = TOPICS.batch) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_bad_messages_are_rejected_counted_and_change_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=DIM)
    add_citizens(dlog, 20)
    key = new_key()
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=DIM)
    reference_store(dlog, store)  # the terminal is in sync at seq 40
    before = store.content_hash()
    head = dlog.head_seq
    sub = TerminalSubscriber(
        store,
        BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0, reconnect_max_s=0),
        district_id=DISTRICT,
        terminal_id="t1",
        public_key=key.public_key(),
        spool_dir=tmp_path,
        max_message_bytes=256 * 1024,
        gap_timeout_s=0.3,
    ).start()
    inj = Injector(broker)
    try:
        wait_for(sub.connected.is_set, what="terminal connected")
        # two new genuine changes exist in the district log, not yet delivered
        dlog.update_dossier("HS-0000001", status=DossierStatus.PROCESSING)
        dlog.delete_citizen("c0000002")
        nxt1, nxt2 = log_changes(dlog, head + 1, head + 2)
        genuine_next = craft_batch(key, [nxt1], dim=DIM)
        other_key = new_key()
        old = log_changes(dlog, 1, 2)
        tampered = bytearray(craft_batch(key, [nxt1], dim=DIM))
        tampered[-70] ^= 0x01  # one bit of the signed body (just before the signature)
        cases = {
            # genuine batch of changes already applied (a duplicate / replayed-old seq)
            "duplicate": [craft_batch(key, old, dim=DIM), craft_batch(key, old[:1], dim=DIM)],
            # genuine-looking but from an old epoch (captured before a district reset):
            # below the terminal's floor
            "rollback": [craft_batch(key, [nxt1], epoch=0, dim=DIM)],
            # signed by someone else's key but claiming our district; or a flipped bit
            "signature": [craft_batch(other_key, [nxt1], dim=DIM), bytes(tampered)],
            # another district's (validly signed by its own key) batch
            "other_district": [craft_batch(other_key, [nxt1], district="q2", dim=DIM)],
            # signed by our district but for another embedding space
            "embedder": [craft_batch(key, [nxt1], embedder="other-model-v9", dim=DIM)],
            # larger than the terminal accepts (256 KiB here)
            "oversized": [os.urandom(300 * 1024)],
        }
        truncated = genuine_next[: len(genuine_next) // 2]
        random_bytes = [os.urandom(n) for n in (1, 17, 500, 4000)]
        for payloads in cases.values():
            for p in payloads:
                inj.send(p)
        inj.send(truncated)
        for p in random_bytes:
            inj.send(p)
        # a valid envelope of the wrong kind on the batch topic (manifest) is malformed
        inj.send(
            seal(
                key,
                DISTRICT,
                pb.PAYLOAD_KIND_MANIFEST,
                pb.Manifest(
                    district_id=DISTRICT, epoch=1, head_seq=head, embedder_id=EMBEDDER, dim=DIM
                ).SerializeToString(),
            )
        )
        expected_total = sum(len(v) for v in cases.values()) + 1 + len(random_bytes) + 1
        wait_for(
            lambda: sum(sub.engine.rejections.values()) >= expected_total,
            timeout=20,
            what=f"{expected_total} rejections (have {dict(sub.engine.rejections)})",
        )
        rej = sub.engine.rejections
        for reason, payloads in cases.items():
            assert rej[reason] == len(payloads), (reason, dict(rej))
        # truncated, random bytes and the misplaced manifest: malformed or signature failures
        leftover = sum(rej.values()) - sum(len(v) for v in cases.values())
        assert leftover == 1 + len(random_bytes) + 1
        assert store.content_hash() == before and store.last_seq == head

        # reordered: the second change arrives first, is buffered, then both apply
        inj.send(craft_batch(key, [nxt2], dim=DIM))
        wait_for(lambda: sub.engine.out_of_order == 1, what="buffered out-of-order batch")
        assert store.last_seq == head
        inj.send(genuine_next)
        wait_for(lambda: store.last_seq == head + 2, what="both batches applied in order")
        assert store.citizen("c0000002") is None
        (d,) = store.dossiers("c0000001")
        assert d.status is DossierStatus.PROCESSING
        ref = reference_store(
            dlog, GalleryStore.open(tmp_path / "ref", embedder_id=EMBEDDER, dim=DIM)
        )
        assert store.content_hash() == ref.content_hash()
        ref.close()
        assert sub._thread is not None and sub._thread.is_alive()

        # a gap that nobody fills: after the gap timeout the terminal asks for a replay
        dlog.update_dossier("HS-0000004", status=DossierStatus.RESULT_READY)
        dlog.update_dossier("HS-0000005", status=DossierStatus.RESULT_READY)
        inj.send(craft_batch(key, log_changes(dlog, head + 4, head + 4), dim=DIM))
        assert inj.got_request.wait(10), "no replay request after a gap"
        req = inj.requests[0]
        assert req.kind == pb.SyncRequest.KIND_REPLAY
        assert (req.terminal_id, req.district_id, req.from_seq) == ("t1", DISTRICT, head + 3)
    finally:
        inj.close()
        sub.stop()
        store.close()
