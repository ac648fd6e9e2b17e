"""Check a broker (or two nodes of a broker cluster) against what the sync needs from it
(docs/scale.md, "What the project needs from a broker").

Each check is a few MQTT v5 exchanges with plain paho clients, node A and node B
playing the terminal's and the district's side (give the same address twice for a
single broker), over TLS when given the listeners' CA. The logins are the project's:
the district's user and two terminal users, one password for all three (a test
deployment). Checks:

``qos1``: a QoS 1 PUBLISH from B is acknowledged and reaches a QoS 1 subscriber on A.
``retained``: a retained message published on B for a topic nobody used before is
given to a later subscriber on A (the manifest reaches terminals on any node).
``session``: a persistent session (clean_start off, SessionExpiryInterval) on A keeps
its subscription and queues a message published while the client is away, also when
the client comes back through B (a terminal moved to another node).
``will``: a retained will published when a client's link drops (the terminal's status).
``max_packet``: a message bigger than the subscriber's MQTT v5 MaximumPacketSize is
not sent to it, and the connection stays usable.
``login_acl``: a login cannot take over another login's session by choosing its client
id, cannot publish on another terminal's topics, gets nothing from another terminal's
direct topic.
``shared``: a ``$share/<group>/<topic>`` subscription by two clients delivers each
message to exactly one of them.

``python -m sync.brokercheck --broker A --broker B --district q1 ...`` prints one line
per check and exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import ConfigError
from core.net import split_hostport
from sync.topics import DEFAULT_PREFIX, Topics

#: how long one exchange may take; a local cluster answers in milliseconds, 10 s covers
#: a loaded CI machine or a broker across a WAN
STEP_TIMEOUT_S = 10.0
#: how long to wait for a message that must NOT come (a dropped oversized packet, a
#: denied publish): long against a local round trip (~1 ms), short for a test run
ABSENCE_WAIT_S = 1.0
#: how long after the SUBACK a retained message may take: brokers send it right behind
#: the SUBACK (MQTT v5 3.3.1.3), so 3 s is long even for a loaded broker
RETAINED_WAIT_S = 3.0
#: the subscriber's MaximumPacketSize in the max_packet check, and the payload that
#: exceeds it; small, so that the check costs nothing
PROBE_MAX_PACKET = 4096
#: messages sent to a shared subscription (enough that a broker that copies each one to
#: both members cannot pass by chance)
SHARED_MESSAGES = 10


@dataclasses.dataclass(frozen=True)
class Target:
    """Two nodes of one broker cluster (or one broker twice) and the logins to use."""

    a: tuple[str, int]
    b: tuple[str, int]
    topics: Topics
    district_user: str | None
    terminal_users: tuple[str, str]
    password: str | None
    #: the CA of the brokers' TLS listeners (server certificates checked, host names
    #: included); None = plain TCP
    ca_file: Path | None = None


@dataclasses.dataclass
class Result:
    need: str
    ok: bool
    detail: str


class Probe:
    """One MQTT v5 client with its received messages and connection events."""

    def __init__(self, target: Target, node: tuple[str, int], user: str | None, *,
                 client_id: str | None = None, max_packet: int | None = None,
                 expiry_s: int = 300, will: tuple[str, bytes] | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or user or f"probe-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        if user is not None and target.password is not None:
            self.client.username_pw_set(user, target.password)
        if target.ca_file is not None:
            self.client.tls_set_context(ssl.create_default_context(cafile=str(target.ca_file)))
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.node, self.max_packet, self.expiry_s = node, max_packet, expiry_s
        self.messages: list[mqtt.MQTTMessage] = []
        self.connacks: list[tuple[int, bool]] = []
        self.disconnects: list[str] = []
        self.subacks: list[list[int]] = []
        self.pubacks: dict[int, int] = {}
        self.cond = threading.Condition()
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish

    def _note(self, fn: Callable[[], None]) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, rc: object,
                    _p: object) -> None:
        self._note(lambda: self.connacks.append((int(getattr(rc, "value", 0)),
                                                 bool(flags.session_present))))

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: object,
                       _p: object) -> None:
        self._note(lambda: self.disconnects.append(str(rc)))

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._note(lambda: self.messages.append(msg))

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, rcs: list[ReasonCode],
                      _p: Properties) -> None:
        self._note(lambda: self.subacks.append([int(getattr(r, "value", 0)) for r in rcs]))

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        self._note(lambda: self.pubacks.__setitem__(mid, int(getattr(rc, "value", 0))))

    def wait(self, cond: Callable[[], bool], timeout: float = STEP_TIMEOUT_S) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)

    def connect(self, *, clean_start: bool = False) -> tuple[int, bool]:
        """Connect; returns (CONNACK reason code, session present), (-1, False) if none."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.expiry_s
        if self.max_packet is not None:
            props.MaximumPacketSize = self.max_packet
        n = len(self.connacks)
        try:
            self.client.connect(self.node[0], self.node[1], keepalive=30,
                                clean_start=clean_start, properties=props)
        except OSError as exc:
            self.disconnects.append(f"connect: {exc}")
            return -1, False
        self.client.loop_start()
        if not self.wait(lambda: len(self.connacks) > n):
            return -1, False
        return self.connacks[-1]

    def subscribe(self, topic: str) -> list[int]:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: len(self.subacks) > n or bool(self.disconnects))
        return self.subacks[-1] if len(self.subacks) > n else [-1]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """QoS 1 publish; the PUBACK reason code, -1 if none came (e.g. disconnected)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if not self.wait(lambda: info.mid in self.pubacks or bool(self.disconnects)):
            return -1
        return self.pubacks.get(info.mid, -1)

    def got(self, topic: str, payload: bytes | None = None,
            timeout: float = STEP_TIMEOUT_S) -> bool:
        return self.wait(lambda: any(m.topic == topic and (payload is None or m.payload == payload)
                                     for m in self.messages), timeout)

    def close(self, *, graceful: bool = True) -> None:
        if graceful:
            with contextlib.suppress(Exception):
                self.client.disconnect()
        else:  # drop the link without DISCONNECT (the will goes out)
            sock = self.client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        self.client._reset_sockets()  # see sync.mqtt.stop_client


@contextlib.contextmanager
def probes(*made: Probe) -> Iterator[tuple[Probe, ...]]:
    try:
        yield made
    finally:
        for p in made:
            p.close()


def _connected(*ps: Probe) -> str | None:
    for p in ps:
        rc, _ = p.connect(clean_start=True)
        if rc != 0:
            return f"cannot connect {p.client._client_id!r} to {p.node}: rc={rc} {p.disconnects}"
    return None


def check_qos1(t: Target) -> Result:
    u1, _ = t.terminal_users
    topic = t.topics.batch
    with probes(Probe(t, t.a, u1), Probe(t, t.b, t.district_user)) as (sub, pub):
        if (err := _connected(sub, pub)) is not None:
            return Result("qos1", False, err)
        if sub.subscribe(topic) != [1]:
            return Result("qos1", False, f"SUBACK {sub.subacks}: QoS 1 not granted")
        payload = secrets.token_bytes(16)
        if not 0 <= (rc := pub.publish(topic, payload)) < 0x80:
            return Result("qos1", False, f"PUBACK reason {rc}")
        if not sub.got(topic, payload):
            return Result("qos1", False, "a QoS 1 message from node B did not reach node A")
        qos = next(m.qos for m in sub.messages if m.payload == payload)
        return Result("qos1", qos == 1, f"delivered from B to A with QoS {qos}")


def check_retained(t: Target) -> Result:
    u1, _ = t.terminal_users
    topic = t.topics.direct(u1)
    payload = secrets.token_bytes(16)
    with probes(Probe(t, t.b, t.district_user)) as (pub,):
        if (err := _connected(pub)) is not None:
            return Result("retained", False, err)
        if not 0 <= (rc := pub.publish(topic, payload, retain=True)) < 0x80:
            return Result("retained", False, f"PUBACK reason {rc}")
    detail = []
    ok = True
    for name, node in (("A", t.a), ("B", t.b)):
        with probes(Probe(t, node, u1, client_id=f"{u1}")) as (sub,):
            if (err := _connected(sub)) is not None:
                return Result("retained", False, err)
            sub.subscribe(topic)
            got = sub.got(topic, payload, RETAINED_WAIT_S)
            ok = ok and got
            detail.append(f"published on B, subscriber on {name}: "
                          f"{'delivered' if got else 'NOT delivered'}")
    with probes(Probe(t, t.b, t.district_user)) as (pub,):  # clean up (empty = delete)
        if _connected(pub) is None:
            pub.publish(topic, b"", retain=True)
    return Result("retained", ok, "; ".join(detail))


def check_session(t: Target) -> Result:
    u1, _ = t.terminal_users
    topic = t.topics.batch
    detail = []
    for name, back in (("A", t.a), ("B", t.b)):
        sub = Probe(t, t.a, u1)
        with probes(sub, Probe(t, t.b, t.district_user)) as (_, pub):
            if (err := _connected(sub, pub)) is not None:
                return Result("session", False, err)
            sub.subscribe(topic)
            sub.close()  # graceful: the session stays (expiry 300 s)
            payload = secrets.token_bytes(16)
            pub.publish(topic, payload)
            again = Probe(t, back, u1)
            with probes(again):
                rc, present = again.connect(clean_start=False)
                got = rc == 0 and again.got(topic, payload)
                detail.append(f"back through {name}: session_present={present}, "
                              f"queued message {'delivered' if got else 'LOST'}")
                if not (present and got):
                    return Result("session", False, "; ".join(detail))
    return Result("session", True, "; ".join(detail))


def check_will(t: Target) -> Result:
    u1, _ = t.terminal_users
    topic = t.topics.status(u1)
    payload = b"offline-" + secrets.token_hex(4).encode()
    with probes(Probe(t, t.b, t.district_user)) as (watch,):
        if (err := _connected(watch)) is not None:
            return Result("will", False, err)
        watch.subscribe(topic)
        dying = Probe(t, t.a, u1, will=(topic, payload), expiry_s=0)
        if (err := _connected(dying)) is not None:
            return Result("will", False, err)
        dying.close(graceful=False)
        got = watch.got(topic, payload)
    return Result("will", got, "will of a client dropped on A " +
                  ("delivered on B" if got else "NOT delivered on B"))


def check_max_packet(t: Target) -> Result:
    u1, _ = t.terminal_users
    topic = t.topics.batch
    big, small = b"x" * (PROBE_MAX_PACKET * 2), secrets.token_bytes(16)
    with probes(Probe(t, t.a, u1, max_packet=PROBE_MAX_PACKET),
                Probe(t, t.b, t.district_user)) as (sub, pub):
        if (err := _connected(sub, pub)) is not None:
            return Result("max_packet", False, err)
        sub.subscribe(topic)
        pub.publish(topic, big)
        pub.publish(topic, small)
        got_small = sub.got(topic, small)
        got_big = any(len(m.payload) == len(big) for m in sub.messages)
    ok = got_small and not got_big
    return Result("max_packet", ok,
                  f"{len(big)}-byte message to a client announcing MaximumPacketSize "
                  f"{PROBE_MAX_PACKET}: {'SENT' if got_big else 'not sent'}; "
                  f"later small one {'delivered' if got_small else 'LOST'}")


def check_login_acl(t: Target) -> Result:
    u1, u2 = t.terminal_users
    problems, detail = [], []
    # u1 holds a session under its own client id; u2 logs in with that client id
    with probes(Probe(t, t.a, u1, client_id=u1)) as (victim,):
        if (err := _connected(victim)) is not None:
            return Result("login_acl", False, err)
        victim.subscribe(t.topics.batch)
        thief = Probe(t, t.b, u2, client_id=u1)
        with probes(thief):
            rc, present = thief.connect(clean_start=False)
            taken = bool(victim.wait(lambda: bool(victim.disconnects), ABSENCE_WAIT_S))
            detail.append(f"{u2} with client id {u1}: rc={rc} session_present={present}"
                          f"{', took the session over' if taken else ''}")
            if rc == 0 and (present or taken):
                problems.append(f"{u2} reached {u1}'s session")
    with probes(Probe(t, t.b, u2)) as (p,):
        if (err := _connected(p)) is not None:
            return Result("login_acl", False, err)
        rc = p.publish(t.topics.state(u1), b"forged")
        denied = rc >= 0x80 or rc == -1
        detail.append(f"{u2} publishing on {u1}'s state: " +
                      ("denied" if denied else f"ACCEPTED (PUBACK {rc})"))
        if not denied:
            problems.append("publish on another terminal's topic accepted")
    # u2 subscribes to u1's direct topic: the broker may refuse the subscription or
    # grant it and deliver nothing (Mosquitto does the latter); u1 gets the message
    with probes(Probe(t, t.a, u1), Probe(t, t.b, u2),
                Probe(t, t.b, t.district_user)) as (owner, spy, pub):
        if (err := _connected(owner, spy, pub)) is not None:
            return Result("login_acl", False, err)
        owner.subscribe(t.topics.direct(u1))
        codes = spy.subscribe(t.topics.direct(u1))
        payload = secrets.token_bytes(16)
        pub.publish(t.topics.direct(u1), payload)
        if not owner.got(t.topics.direct(u1), payload):
            return Result("login_acl", False, f"{u1} did not get its own direct message")
        leaked = spy.got(t.topics.direct(u1), payload, ABSENCE_WAIT_S)
        detail.append(f"{u2} subscribing to {u1}'s direct topic: SUBACK {codes}, " +
                      ("message LEAKED" if leaked else "nothing delivered"))
        if leaked:
            problems.append("another terminal's direct message delivered")
    return Result("login_acl", not problems, "; ".join(detail))


def check_shared(t: Target) -> Result:
    u1, u2 = t.terminal_users
    group = f"$share/g{secrets.token_hex(3)}/{t.topics.batch}"
    with probes(Probe(t, t.a, u1), Probe(t, t.b, u2),
                Probe(t, t.b, t.district_user)) as (m1, m2, pub):
        if (err := _connected(m1, m2, pub)) is not None:
            return Result("shared", False, err)
        codes = m1.subscribe(group) + m2.subscribe(group)
        if any(c >= 0x80 for c in codes) or m1.disconnects or m2.disconnects:
            return Result("shared", False, f"refused: SUBACK {codes}, "
                          f"disconnects {m1.disconnects + m2.disconnects}")
        sent = [secrets.token_bytes(8) for _ in range(SHARED_MESSAGES)]
        for payload in sent:
            pub.publish(t.topics.batch, payload)
        m1.wait(lambda: len(m1.messages) + len(m2.messages) >= len(sent))
        time.sleep(ABSENCE_WAIT_S)  # duplicates, if the broker copies to both, come now
        got = [m.payload for m in m1.messages + m2.messages]
    ok = sorted(got) == sorted(sent)
    return Result("shared", ok, f"{len(sent)} sent, {len(m1.messages)} to one member and "
                  f"{len(m2.messages)} to the other")


CHECKS: dict[str, Callable[[Target], Result]] = {
    "qos1": check_qos1,
    "retained": check_retained,
    "session": check_session,
    "will": check_will,
    "max_packet": check_max_packet,
    "login_acl": check_login_acl,
    "shared": check_shared,
}


def run_checks(target: Target, names: tuple[str, ...] = tuple(CHECKS)) -> list[Result]:
    """Run the named checks in order; an exception in one is that check's failure."""
    results = []
    for name in names:
        try:
            results.append(CHECKS[name](target))
        except Exception as exc:  # noqa: BLE001 - a probe's failure is the check's result
            results.append(Result(name, False, f"{type(exc).__name__}: {exc}"))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sync.brokercheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", action="append", required=True,
                   help="host:port of node A, then of node B (once: a single broker)")
    p.add_argument("--district", required=True)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--district-user")
    p.add_argument("--terminal-user", action="append", default=[],
                   help="two terminal logins (user names = terminal ids)")
    p.add_argument("--password-env", help="environment variable with the logins' password")
    p.add_argument("--ca-file", type=Path, help="CA of the brokers' TLS listeners (enables TLS)")
    p.add_argument("--check", action="append", choices=sorted(CHECKS))
    args = p.parse_args(argv)
    try:
        nodes = [split_hostport(b, "--broker") for b in args.broker]
        if len(nodes) not in (1, 2):
            raise ConfigError("--broker: give one or two")
        if len(args.terminal_user) != 2:
            raise ConfigError("--terminal-user: give two")
        password = os.environ.get(args.password_env) if args.password_env else None
        if args.password_env and password is None:
            raise ConfigError(f"--password-env: {args.password_env} is not set")
    except ConfigError as exc:
        p.error(str(exc))
    target = Target(nodes[0], nodes[-1], Topics(args.prefix, args.district),
                    args.district_user, tuple(args.terminal_user), password,  # type: ignore[arg-type]
                    args.ca_file)
    results = run_checks(target, tuple(args.check or CHECKS))
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.need:<11} {r.detail}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
