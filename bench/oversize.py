"""Oversized-message benchmark: peak memory of a terminal sent three 250 MB messages.

A client with any broker credentials (here: an anonymous local Mosquitto with no
``max_packet_size``, i.e. a broker that does not protect the terminal) publishes three
250 MB messages on the district's batch topic. The terminal's subscriber runs in its own
process with a real store; the figure is its peak resident memory (VmHWM), next to the
same process's peak when no oversized message is sent (the baseline, same run).

    PYTHONPATH=. python bench/oversize.py [--mb 250] [--count 3] [--repo DIR]

``--repo DIR`` runs the terminal from another checkout of the project (e.g. the commit
before the fix, made with ``git worktree add``) against the same broker and sender; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from sync.localbroker import MosquittoBroker  # noqa: E402
from sync.topics import DEFAULT_PREFIX, Topics  # noqa: E402

#: the terminal child: subscribe, wait for the sender, report VmHWM (kB) on stdout
CHILD = r"""
import sys, time, threading
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edge.store.gallery import GalleryStore
from edge.syncclient.subscriber import TerminalSubscriber
from sync.mqtt import BrokerSettings
host, port, work, wait_s = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
store = GalleryStore.open(work / "store", embedder_id="bench-embedder", dim=16)
sub = TerminalSubscriber(store, BrokerSettings(host=host, port=port, reconnect_min_s=0.0,
                         reconnect_max_s=0.5), district_id="q1", terminal_id="t-bench",
                         public_key=Ed25519PrivateKey.generate().public_key(),
                         spool_dir=work).start()
deadline = time.monotonic() + 20
while not sub.connected.is_set() and time.monotonic() < deadline:
    time.sleep(0.05)
print("ready", flush=True)
sys.stdin.readline()          # the sender is done
time.sleep(wait_s)            # let the terminal take in whatever the broker forwards
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")]
print(hwm[0].split()[1], flush=True)
sub.stop(); store.close()
"""


def terminal_peak_kb(repo: Path, broker: MosquittoBroker, work: Path, send: int, mb: int,
                     wait_s: float) -> int:
    """Peak RSS (kB) of a terminal process while ``send`` messages of ``mb`` MB arrive."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.host, str(broker.port),
                              str(work), str(wait_s)], cwd=repo, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the terminal did not start")
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{send}",
                             protocol=mqtt.MQTTv5)
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        payload = bytes(mb * 1_000_000)
        topic = Topics(DEFAULT_PREFIX, "q1").batch
        for _ in range(send):
            sender.publish(topic, payload, qos=1).wait_for_publish(120)
        sender.disconnect()
        sender.loop_stop()
        child.stdin.write("go\n")
        child.stdin.flush()
        return int(child.stdout.readline())
    finally:
        child.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=250, help="size of each message (MB)")
    ap.add_argument("--count", type=int, default=3, help="oversized messages sent")
    ap.add_argument("--wait", type=float, default=8.0,
                    help="seconds the terminal gets to take the messages in")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout the terminal runs from")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker").start()
        try:
            (work / "base").mkdir()
            (work / "attacked").mkdir()
            base = terminal_peak_kb(args.repo, broker, work / "base", 0, args.mb, args.wait)
            attacked = terminal_peak_kb(args.repo, broker, work / "attacked", args.count,
                                        args.mb, args.wait)
        finally:
            broker.close()
    print(f"terminal from {args.repo}: peak RSS {base / 1024:.0f} MB with nothing sent, "
          f"{attacked / 1024:.0f} MB after {args.count} x {args.mb} MB", file=sys.stderr)
    print(json.dumps({"repo": str(args.repo), "message_mb": args.mb, "messages": args.count,
                      "peak_rss_mb_baseline": round(base / 1024, 1),
                      "peak_rss_mb_attacked": round(attacked / 1024, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
