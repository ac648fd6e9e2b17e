"""paho-mqtt 2.x clients for both sides: MQTT v5, TLS with client certificates, auth.

Library exceptions (ssl, OSError, paho error codes) become ``SyncError`` /
``AuthenticationError`` here.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import ConfigError, SyncError
from core.net import split_hostport
from core.tomlconfig import read_secret

#: the largest MQTT packet a client accepts (MQTT v5 CONNECT MaximumPacketSize: the
#: broker must not send us a bigger one; Mosquitto drops it for this client). The
#: terminal refuses payloads over 4 MiB anyway (edge.syncclient.engine.MAX_MESSAGE_BYTES);
#: 64 KiB on top covers the topic (<= ~200 bytes), properties and fixed header. Without
#: it paho buffers a whole packet (up to MQTT's 256 MB) before anyone can look at it.
#: The shipped broker config (deploy/mosquitto/motcua.conf) sets the same max_packet_size
MAX_PACKET_BYTES = (4 << 20) + (64 << 10)

#: CONNACK reason codes after which retrying cannot help (MQTT v5 3.2.2.2)
AUTH_FAILURE_CODES = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})

#: the most fallback brokers a client takes: a cluster behind one district has a few
#: nodes (docs/scale.md); a longer list is a configuration mistake, and each entry costs
#: one failed connect per round while its node is down
MAX_FALLBACK_BROKERS = 16


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect; secrets already resolved (see :func:`broker_settings`)."""

    host: str = "127.0.0.1"
    port: int = 1883
    #: further (host, port) nodes of the same broker cluster, tried in turn after
    #: ``host``:``port`` when a connection attempt fails or a connection drops
    fallbacks: tuple[tuple[str, int], ...] = ()
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    #: seconds between keepalive pings; 30 s notices a dead link within ~45 s
    keepalive_s: int = 30
    #: how long the broker keeps our session and queued messages while we are offline;
    #: a week covers a terminal switched off over a holiday
    session_expiry_s: int = 7 * 24 * 3600
    #: reconnect backoff (doubles from min to max); tests set both to 0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: MQTT v5 MaximumPacketSize announced at CONNECT (MAX_PACKET_BYTES says why)
    max_packet_bytes: int = MAX_PACKET_BYTES

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker node to try, in order: ``host``:``port`` first, then the fallbacks."""
        return ((self.host, self.port), *self.fallbacks)


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """How to reach the district's MQTT broker, as both applications configure it (the
    terminal's ``[sync]``, the district's ``[broker]``, the district commands' options).

    Secrets are files (``password_file``) or an environment variable (``password_env``),
    never values here. :func:`broker_settings` turns it into :class:`BrokerSettings`.
    """

    #: host:port of the district broker; "" = none configured
    broker: str = ""
    #: host:port of further nodes of the same broker cluster (docs/scale.md), tried in
    #: turn when the one before is down; empty = one broker, as before
    fallback_brokers: tuple[str, ...] = ()
    #: TLS to the broker (needs ca_file; cert_file/key_file for client certificates)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    #: MQTT keepalive; 30 s notices a dead link within ~45 s
    keepalive_s: int = 30
    #: how long the broker keeps the session and queues batches while the client is
    #: off; a week covers a holiday (longer gaps are healed by a snapshot anyway)
    session_expiry_s: int = 7 * 24 * 3600
    #: reconnect backoff, doubling from min to max; small min for a quick recovery after
    #: a broker restart, max so a district of terminals does not hammer a sick broker
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.broker:
            split_hostport(self.broker, f"{p}broker")
        self._validate_fallbacks(p)
        if not 5 <= self.keepalive_s <= 3600:
            raise ConfigError(f"{p}keepalive_s: expected 5..3600 seconds")
        if self.session_expiry_s < 0:
            raise ConfigError(f"{p}session_expiry_s: expected >= 0")
        if not 0 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError(f"{p}reconnect_min_s: expected 0 <= min <= reconnect_max_s")
        if self.tls and self.ca_file is None:
            raise ConfigError(f"{p}ca_file: required when tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(f"{p}cert_file: cert_file and key_file go together")

    def _validate_fallbacks(self, p: str) -> None:
        if not self.fallback_brokers:
            return
        if not self.broker:
            raise ConfigError(f"{p}fallback_brokers: needs broker (the first node to try)")
        if len(self.fallback_brokers) > MAX_FALLBACK_BROKERS:
            raise ConfigError(f"{p}fallback_brokers: at most {MAX_FALLBACK_BROKERS} entries")
        seen = {split_hostport(self.broker, f"{p}broker")}
        for i, entry in enumerate(self.fallback_brokers):
            address = split_hostport(entry, f"{p}fallback_brokers[{i}]")
            if address in seen:
                raise ConfigError(f"{p}fallback_brokers[{i}]: {entry!r} is listed twice")
            seen.add(address)


def broker_settings(cfg: BrokerConfig, key: str = "sync") -> BrokerSettings:
    """The one mapping from configuration to connection settings: address parsed, the
    password read from its file or environment variable, TLS only when ``tls`` is on.
    ``key`` names the configuration table in errors."""
    host, port = split_hostport(cfg.broker, f"{key}.broker")
    fallbacks = tuple(split_hostport(entry, f"{key}.fallback_brokers[{i}]")
                      for i, entry in enumerate(cfg.fallback_brokers))
    password = None
    if cfg.username and (cfg.password_file is not None or cfg.password_env is not None):
        password = read_secret(file=cfg.password_file, env=cfg.password_env,
                               key=f"{key}.password_file")
    return BrokerSettings(host=host, port=port, fallbacks=fallbacks,
                          ca_file=cfg.ca_file if cfg.tls else None,
                          cert_file=cfg.cert_file if cfg.tls else None,
                          key_file=cfg.key_file if cfg.tls else None,
                          username=cfg.username, password=password,
                          keepalive_s=cfg.keepalive_s, session_expiry_s=cfg.session_expiry_s,
                          reconnect_min_s=cfg.reconnect_min_s,
                          reconnect_max_s=cfg.reconnect_max_s)


def is_auth_failure(reason_code: ReasonCode | int) -> bool:
    value = reason_code.value if isinstance(reason_code, ReasonCode) else int(reason_code)
    return value in AUTH_FAILURE_CODES


def session_client_id(settings: BrokerSettings, default: str) -> str:
    """The client id to connect with: the user name when there is one (the shipped broker
    config replaces any id by the user name, ``use_username_as_clientid``, so that one
    login can only reach its own session), else ``default`` (brokers without logins)."""
    return settings.username or default


def make_client(client_id: str, settings: BrokerSettings) -> mqtt.Client:
    """A configured, unconnected v5 client (TLS and credentials applied)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=True,
    )
    # 0 means "retry at once" (tests); paho doubles the delay up to the max
    client.reconnect_delay_set(
        min_delay=settings.reconnect_min_s,  # type: ignore[arg-type]
        max_delay=settings.reconnect_max_s,  # type: ignore[arg-type]
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file))
            if settings.cert_file is not None:
                ctx.load_cert_chain(
                    str(settings.cert_file),
                    str(settings.key_file) if settings.key_file else None,
                )
        except (OSError, ssl.SSLError) as exc:
            raise SyncError(f"TLS files: {exc}") from None
        client.tls_set_context(ctx)
    # queue without limit while offline; the publisher only publishes when connected
    client.max_queued_messages_set(0)
    return client


def connect_properties(settings: BrokerSettings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    # the broker must not forward us anything bigger (it drops it for this client)
    props.MaximumPacketSize = settings.max_packet_bytes
    return props


class BrokerRotation:
    """paho ``on_pre_connect`` hook that walks a list of broker nodes: the first attempt
    goes to the first node, every later attempt (after a failed attempt or a dropped
    connection) to the next one, round robin. paho calls the hook in ``reconnect()``
    after closing the old socket and before opening the new one, which is where the
    address may change; its reconnect delays (make_client) still apply between attempts,
    so a whole cluster down is retried at the same pace as one broker down."""

    def __init__(self, addresses: tuple[tuple[str, int], ...]) -> None:
        self.addresses = addresses
        #: index of the node of the current (or last) attempt; -1 = none yet
        self.index = -1

    def __call__(self, client: mqtt.Client, _userdata: object) -> None:
        self.index = (self.index + 1) % len(self.addresses)
        # the public host/port setters refuse while the state is "connecting", which
        # it already is here; reconnect() reads these two right after this hook
        client._host, client._port = self.addresses[self.index]


def start_client(client: mqtt.Client, settings: BrokerSettings) -> None:
    """Connect in the background with a persistent session (MQTT v5, ``clean_start``
    off, the settings' session expiry) and start paho's network thread; the client's
    own reconnect delays (make_client) apply after a drop. With fallback brokers each
    attempt goes to the next node of the list (:class:`BrokerRotation`)."""
    if settings.fallbacks:
        client.on_pre_connect = BrokerRotation(settings.addresses)
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=False,
        properties=connect_properties(settings),
    )
    client.loop_start()


def stop_client(client: mqtt.Client) -> None:
    """Stop paho's network thread and close the client's sockets now.

    paho closes the socket pair that loop_start() made (and the broker socket) only in
    Client.__del__ (paho issue #627). A client held in a reference cycle (its callbacks
    are our bound methods) is then freed by the garbage collector, whenever it runs, and
    in whatever order: the sockets' own finalizers may come first and warn "unclosed"
    (an error under the tests' filterwarnings, in whichever test the collection falls).
    """
    client.loop_stop()
    client._reset_sockets()  # paho's own __del__ does just this
