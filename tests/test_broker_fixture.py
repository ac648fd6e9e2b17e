"""The Mosquitto test broker really runs, persists retained messages and restarts."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from tests.broker import MosquittoBroker


def _retained(broker: MosquittoBroker, topic: str, timeout: float = 5.0) -> bytes | None:
    got: list[bytes] = []
    ev = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        ev.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    ev.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else None


def test_broker_keeps_retained_message_across_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = MosquittoBroker(tmp_path / "b").start()
    try:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(b.host, b.port, properties=Properties(1))  # 1 = CONNECT packet type
        c.loop_start()
        c.publish("t/x", b"hello", qos=1, retain=True).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
        assert _retained(b, "t/x") == b"hello"
        time.sleep(2.5)  # > autosave_interval (1 s), with margin
        b.kill()
        assert not b.running
        b.start()
        assert _retained(b, "t/x") == b"hello"
    finally:
        b.stop()
