"""One snapshot, many terminals: what the broker carries when N terminals re-snapshot.

Three measurements over one local Mosquitto (``sys_interval 1``: the broker's own
``$SYS/broker/bytes/sent`` counter is read before and after each part):
1. ``topic``: the shared-topic design checked without building it: one client publishes
   S bytes (1 MiB messages, QoS 1) on one topic that N plain subscribers read; the
   broker sends N x S (MQTT delivers one copy per subscriber).
2. ``file``: the built design. A district log of C citizens (synthetic 512-d), the
   publisher with a snapshot file server (district/snapshots.py, uvicorn on loopback)
   and N real terminals (TerminalSubscriber + GalleryStore) converged; then
   ``new-epoch``: time until all N hold the district's content hash, the broker's bytes
   meanwhile, the HTTP bytes.
3. ``mqtt`` (baseline, ``--mqtt-terminals``, default = N): the same re-snapshot with the
   terminals asking for per-terminal MQTT chunks (the path kept for older terminals).

The last printed line is one JSON object.

    PYTHONPATH=. python bench/snapshot_fanout.py [--terminals 50] [--citizens 10000]
        [--mqtt-terminals N] [--skip-mqtt] [--topic-terminals N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import uvicorn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from district.log import DistrictLog  # noqa: E402
from district.publisher import Publisher  # noqa: E402
from district.snapshots import SnapshotFiles, snapshot_app  # noqa: E402
from district.synthetic import add_citizens, new_key  # noqa: E402
from edge.store.gallery import GalleryStore  # noqa: E402
from edge.syncclient.subscriber import TerminalSubscriber  # noqa: E402
from sync.localbroker import MosquittoBroker, free_port  # noqa: E402
from sync.mqtt import BrokerSettings  # noqa: E402

DIM = 512
EMBEDDER = "bench-synthetic-512"
DISTRICT = "q1"


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


class SysBytes:
    """The broker's ``$SYS/broker/bytes/sent`` (published every second)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.value = -1
        self.updates = 0
        self._cv = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *_a: c.subscribe("$SYS/broker/bytes/sent")
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            self.value = int(msg.payload)
            self.updates += 1
            self._cv.notify_all()

    def fresh(self) -> int:
        """A value published after this call (waits up to ~2 s)."""
        with self._cv:
            n = self.updates
            self._cv.wait_for(lambda: self.updates >= n + 2, timeout=5)
            return self.value

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def topic_part(broker: MosquittoBroker, sysb: SysBytes, n: int, total: int) -> dict[str, object]:
    got = [0] * n
    subs = []
    for i in range(n):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{i}")

        def on_msg(_c: object, _u: object, m: mqtt.MQTTMessage, i: int = i) -> None:
            got[i] += len(m.payload)
        c.on_message = on_msg
        c.connect(broker.host, broker.port)
        c.subscribe("bench/shared", qos=1)
        c.loop_start()
        subs.append(c)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(0.5)  # subscriptions settle (SUBACK not tracked here)
    before = sysb.fresh()
    piece = b"x" * (1 << 20)
    sent = 0
    while sent < total:
        pub.publish("bench/shared", piece, qos=1).wait_for_publish(30)
        sent += len(piece)
    wait_for(lambda: all(g >= sent for g in got), 120, "subscribers")
    after = sysb.fresh()
    for c in [*subs, pub]:
        c.loop_stop()
        c.disconnect()
    return {"subscribers": n, "published_bytes": sent, "broker_bytes_sent": after - before,
            "ratio": round((after - before) / sent, 3)}


def snapshot_part(tmp: Path, broker: MosquittoBroker, sysb: SysBytes, dlog: DistrictLog,
                  key, n: int, *, files: bool) -> dict[str, object]:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    snap_files = server = None
    if files:
        port = free_port()
        snap_files = SnapshotFiles(tmp / f"files-{n}", key, f"http://127.0.0.1:{port}")
        server = uvicorn.Server(uvicorn.Config(snapshot_app(snap_files), host="127.0.0.1",
                                               port=port, log_config=None, access_log=False,
                                               lifespan="off", limit_concurrency=256))
        threading.Thread(target=server.run, daemon=True).start()
        wait_for(lambda: server.started, 30, "snapshot server")
    settings = BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.0,
                              reconnect_max_s=1.0)
    pub = Publisher(dlog, key, settings, stop=stop, snapshot_files=snap_files,
                    snapshot_min_interval_s=0.5,
                    # the baseline must not be held back by the per-terminal budget
                    request_burst_bytes=1 << 40, request_bytes_per_s=1 << 40).start()
    tag = "f" if files else "m"
    terms: list[TerminalSubscriber] = []
    stores: list[GalleryStore] = []
    for i in range(n):
        s = GalleryStore.open(tmp / f"stores-{tag}" / f"t{i}", embedder_id=EMBEDDER, dim=DIM)
        stores.append(s)
        terms.append(TerminalSubscriber(
            s, settings, district_id=DISTRICT, terminal_id=f"{tag}{i}",
            public_key=key.public_key(), spool_dir=tmp / f"spool-{tag}" / f"t{i}",
            snapshot_files=files, download_retry_s=0.5, request_retry_s=2.0).start())

    def converged() -> bool:
        return all(t.engine.store.epoch == dlog.epoch and t.engine.store.last_seq == dlog.head_seq
                   for t in terms)

    t0 = time.monotonic()
    wait_for(converged, 1800, "initial sync")
    progress(f"{n} terminals ({'file' if files else 'mqtt'}): initial sync "
             f"{time.monotonic() - t0:.1f} s")
    ref = stores[0].content_hash()
    mqtt_before = sum(t.bytes_received for t in terms)
    http_before = sum(t.downloader.bytes_received for t in terms if t.downloader)
    before = sysb.fresh()
    t0 = time.monotonic()
    dlog.new_epoch()
    wait_for(converged, 1800, "re-snapshot")
    took = time.monotonic() - t0
    after = sysb.fresh()
    hashes = {s.content_hash() for s in stores}
    assert len(hashes) == 1 and hashes != {ref}, "terminals differ"
    out: dict[str, object] = {
        "terminals": n, "resnapshot_s": round(took, 1),
        "broker_bytes_sent": after - before,
        "payload_bytes_to_terminals": sum(t.bytes_received for t in terms) - mqtt_before,
        "http_bytes": sum(t.downloader.bytes_received for t in terms if t.downloader)
        - http_before,
        "chunk_bytes_one_snapshot": pub.stats.last_snapshot_bytes,
        # per terminal: seconds downloading (file) or receiving chunks, and installing
        "max_receive_s": round(max(
            t.downloader.last_fetch_s if files and t.downloader else
            t.engine.last_snapshot_timing[0] for t in terms), 1),
        "max_install_s": round(max(t.engine.last_snapshot_timing[1] for t in terms), 1),
    }
    if snap_files is not None:
        kept = snap_files._kept()
        out["file_bytes"] = kept[0][0].size
        out["files_built"] = snap_files.built
    for t in terms:
        t.stop()
    stop.set()
    pub.stop()
    if server is not None:
        server.should_exit = True
    for s in stores:
        s.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--citizens", type=int, default=10_000)
    ap.add_argument("--mqtt-terminals", type=int, default=None)
    ap.add_argument("--skip-mqtt", action="store_true")
    ap.add_argument("--topic-terminals", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="motcua-fanout-") as d:
        tmp = Path(d)
        inc = tmp / "sys.conf"
        inc.write_text("sys_interval 1\nmax_queued_messages 100000\n")
        broker = MosquittoBroker(tmp / "broker", include=inc).start()
        sysb = SysBytes(broker)
        dlog = DistrictLog.create(tmp / "district.sqlite", district_id=DISTRICT,
                                  embedder_id=EMBEDDER, dim=DIM)
        progress(f"enrolling {args.citizens} synthetic citizens")
        add_citizens(dlog, args.citizens)
        key = new_key()
        result: dict[str, object] = {"citizens": args.citizens}
        try:
            result["file"] = snapshot_part(tmp, broker, sysb, dlog, key, args.terminals,
                                           files=True)
            progress(f"file: {result['file']}")
            size = int(result["file"]["file_bytes"])  # type: ignore[index]
            result["topic"] = topic_part(broker, sysb, args.topic_terminals or args.terminals,
                                         size)
            progress(f"topic: {result['topic']}")
            if not args.skip_mqtt:
                result["mqtt"] = snapshot_part(tmp, broker, sysb, dlog, key,
                                               args.mqtt_terminals or args.terminals,
                                               files=False)
                progress(f"mqtt: {result['mqtt']}")
        finally:
            sysb.close()
            dlog.close()
            broker.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
