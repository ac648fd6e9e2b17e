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

from edge.errors import SyncError

#: CONNACK reason codes after which retrying cannot help (MQTT v5 3.2.2.2)
AUTH_FAILURE_CODES = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect; secrets already resolved (see edge.config.read_secret)."""

    host: str = "127.0.0.1"
    port: int = 1883
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

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


def is_auth_failure(reason_code: ReasonCode | int) -> bool:
    value = reason_code.value if isinstance(reason_code, ReasonCode) else int(reason_code)
    return value in AUTH_FAILURE_CODES


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
    return props


def start_client(client: mqtt.Client, settings: BrokerSettings) -> None:
    """Connect in the background with a persistent session (MQTT v5, ``clean_start``
    off, the settings' session expiry) and start paho's network thread; the client's
    own reconnect delays (make_client) apply after a drop."""
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
