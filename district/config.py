"""The district server's configuration: one TOML file, validated once, passed down.

Tables: ``[district]`` (its id, change log, signing key, topic prefix), ``[broker]`` (the
MQTT broker, :class:`sync.mqtt.BrokerConfig`), ``[ingest]`` (the case system's HTTP API of
``motcua district serve``: address, bearer token file, size limits), ``[survey]`` (the
terminals' survey QR, off by default), and the face
pipeline's ``[models]``, ``[runtime]`` and ``[detector]`` (enrolment embeds the counter's
photos with the same pack as the terminals), ``[console]`` (the operator console).
Secrets (the broker password, the signing key itself, the ingest token) are never
values here: files or environment variable names. Command-line options override the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from core.errors import ConfigError, ModelError
from core.net import split_hostport
from core.tomlconfig import build_section, read_secret, read_toml
from district.calibration import CalibrationSettings
from faces.settings import DetectorConfig, ModelsConfig, RuntimeConfig
from models.pack import pack_confirm_floor
from sync.mqtt import BrokerConfig
from sync.survey import check_base_url, check_lifetime
from sync.topics import DEFAULT_PREFIX


@dataclasses.dataclass(frozen=True)
class DistrictSection:
    """Who this district is and where its state lives (``[district]``)."""

    #: district id: a topic level, so letters, digits, '-' and '_' only ("" = not set)
    id: str = ""
    #: the change log (SQLite); the source of every terminal's gallery
    db: Path | None = None
    #: the district's Ed25519 private key (PEM, mode 0600) that signs batches
    key_file: Path | None = None
    #: topic prefix shared with the terminals' ``[sync] prefix``
    prefix: str = DEFAULT_PREFIX
    #: this worker's name when several ``district serve`` processes share the log
    #: (docs/scale.md): part of its broker client id without a login ("" = the only one)
    worker: str = ""

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.id and not all(c.isalnum() or c in "-_" for c in self.id):
            raise ConfigError(f"{p}id: letters, digits, '-' and '_' only, got {self.id!r}")
        if len(self.worker) > 32 or not all(
                (c.isascii() and c.isalnum()) or c in "-_" for c in self.worker):
            raise ConfigError(f"{p}worker: at most 32 letters, digits, '-' and '_', "
                              f"got {self.worker!r}")
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(f"{p}prefix: a topic prefix without leading or trailing '/'")


#: the shortest bearer token accepted: 32 characters of ``openssl rand -hex 32`` output is
#: 128 bits, beyond guessing through an HTTP endpoint
MIN_TOKEN_LEN = 32


@dataclasses.dataclass(frozen=True)
class IngestSection:
    """The ingest API of ``motcua district serve`` (``[ingest]``)."""

    #: host:port the HTTP API listens on; loopback by default (a reverse proxy or the case
    #: system on the same host); the health, readiness and metrics endpoints share it
    listen: str = "127.0.0.1:8470"
    #: file holding the case system's bearer token (one line, >= 32 characters, mode 0600)
    token_file: Path | None = None
    #: largest request body; an enrolment carries up to 8 photos of <= 2 MiB as base64
    #: (~22 MiB), so 24 MiB fits one and bounds memory per request
    max_body_bytes: int = 24 << 20
    #: most events in one batch request: 1,000 status changes are ~300 KB and one
    #: transaction-per-event pass of ~1 s, short enough for an HTTP client's timeout
    max_batch_events: int = 1000
    #: largest photo (decoded bytes); a counter's webcam JPEG is 100-500 KB
    max_photo_bytes: int = 2 << 20

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        split_hostport(self.listen, f"{p}listen")
        if not 1024 <= self.max_body_bytes <= 256 << 20:
            raise ConfigError(f"{p}max_body_bytes: expected 1 KiB..256 MiB")
        if not 1 <= self.max_batch_events <= 10_000:
            raise ConfigError(f"{p}max_batch_events: expected 1..10000")
        if not 1024 <= self.max_photo_bytes <= 16 << 20:
            raise ConfigError(f"{p}max_photo_bytes: expected 1 KiB..16 MiB")

    def read_token(self, prefix: str = "ingest") -> str:
        """The bearer token from ``token_file``; ConfigError when missing or short."""
        if self.token_file is None:
            raise ConfigError(f"{prefix}.token_file: required to serve the ingest API")
        token = read_secret(file=self.token_file, key=f"{prefix}.token_file")
        if len(token) < MIN_TOKEN_LEN or any(c.isspace() or ord(c) < 33 for c in token):
            raise ConfigError(f"{prefix}.token_file: the token must be at least "
                              f"{MIN_TOKEN_LEN} printable characters without spaces "
                              "(openssl rand -hex 32)")
        return token


@dataclasses.dataclass(frozen=True)
class ConsoleSection:
    """The operator console of ``motcua district serve`` (``[console]``, docs/district.md).

    It shares the ingest API's address; when enabled the whole server speaks TLS only."""

    #: off by default: the console serves people's data, so it is turned on on purpose
    enabled: bool = False
    #: the staff's logins: ``motcua district console-user add NAME`` (mode 0600)
    users_file: Path | None = None
    #: the server's TLS certificate and key (PEM); ``motcua district console-cert`` makes
    #: a self-signed pair for a test install
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: a login lasts this long at most (a working day), and ends after idle_minutes idle
    session_hours: float = 8.0
    #: a session unused this long ends (an unattended screen in the office)
    idle_minutes: float = 30.0
    #: failed logins before a user name, or a client address, is locked out
    max_failures: int = 5
    #: how long the lockout lasts
    lockout_minutes: float = 15.0

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if not 0.05 <= self.session_hours <= 24.0:
            raise ConfigError(f"{p}session_hours: expected 0.05..24, got {self.session_hours!r}")
        if not 1.0 <= self.idle_minutes <= 24 * 60:
            raise ConfigError(f"{p}idle_minutes: expected 1..1440, got {self.idle_minutes!r}")
        if not 1 <= self.max_failures <= 100:
            raise ConfigError(f"{p}max_failures: expected 1..100, got {self.max_failures!r}")
        if not 0.1 <= self.lockout_minutes <= 24 * 60:
            raise ConfigError(f"{p}lockout_minutes: expected 0.1..1440, "
                              f"got {self.lockout_minutes!r}")
        if not self.enabled:
            return
        for key in ("users_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path is None:
                why = ("the console is served over TLS only"
                       if key.startswith("tls") else "the staff's logins")
                raise ConfigError(f"{p}{key}: required when the console is enabled ({why})")
            if key != "users_file" and not path.is_file():
                raise ConfigError(f"{p}{key}: {path} is not a file "
                                  "(motcua district console-cert makes a test pair)")


@dataclasses.dataclass(frozen=True)
class SurveySection:
    """The satisfaction survey behind the terminals' QR codes (``[survey]``, docs/district.md
    "Survey QR"): signed into the manifest when enabled, served by ``district serve``."""

    #: off by default: no terminal shows a QR until the district turns this on
    enabled: bool = False
    #: https://host[/path] the citizens' phones reach this service's /s/ pages at (a
    #: reverse proxy in front of [ingest] listen); http only to a loopback host
    base_url: str = ""
    #: how long a QR may be answered after it was shown: 30 min covers answering on the
    #: way out of the hall or at the bus stop; the longer, the longer a photo of it works
    token_lifetime_s: int = 1800
    #: peers whose X-Forwarded-For is believed (the reverse proxy in front): the rate
    #: limit is per phone address, and behind a proxy every request comes from the proxy
    trusted_proxies: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.enabled and not self.base_url:
            raise ConfigError(f"{p}base_url: required when the survey is enabled")
        if self.base_url:
            try:
                check_base_url(self.base_url)
            except ValueError as exc:
                raise ConfigError(f"{p}base_url: {exc}") from None
        try:
            check_lifetime(self.token_lifetime_s)
        except ValueError as exc:
            raise ConfigError(f"{p}token_lifetime_s: {exc}") from None
        for i, addr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(f"{p}trusted_proxies[{i}]: an IP address, got {addr!r}"
                                  ) from None


@dataclasses.dataclass(frozen=True)
class SnapshotsSection:
    """Shared snapshot files served to the terminals (``[snapshots]``, docs/scale.md)."""

    #: host:port of the terminals' HTTP(S) snapshot server; "" = off (snapshots go to
    #: each terminal as MQTT chunks, as before)
    listen: str = ""
    #: base URL the terminals reach it at, announced in the signed descriptor ("" =
    #: derived from ``listen``: https when tls_cert is set)
    url: str = ""
    #: where the files are kept (default: ``<district.db>.snapshots``)
    dir: Path | None = None
    #: snapshot files kept: the newest and the one before (terminals finishing it)
    keep: int = 2
    #: the server's certificate and key (PEM), and the CA whose client certificates may
    #: download: the district CA that signs the terminals' certificates (district/pki.py)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if not self.listen:
            return
        host, _port = split_hostport(self.listen, f"{p}listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"{p}tls_cert: tls_cert and tls_key go together")
        if self.tls_cert is not None and self.client_ca is None:
            raise ConfigError(f"{p}client_ca: required with tls_cert (the district CA: "
                              "only terminals' certificates may download)")
        if self.tls_cert is None and host not in ("127.0.0.1", "::1", "localhost"):
            # a snapshot holds every citizen's embeddings: never in clear on a network
            raise ConfigError(f"{p}tls_cert: required when listening beyond loopback "
                              f"({self.listen})")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{p}url: an http:// or https:// URL")
        if not 1 <= self.keep <= 10:
            raise ConfigError(f"{p}keep: expected 1..10")


@dataclasses.dataclass(frozen=True)
class DistrictConfig:
    """The whole district configuration tree."""

    district: DistrictSection = DistrictSection()
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestSection = IngestSection()
    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detector: DetectorConfig = DetectorConfig()
    #: the operating point derived from the gallery (district/calibration.py)
    calibration: CalibrationSettings = CalibrationSettings()
    #: the operator console (district/console)
    console: ConsoleSection = ConsoleSection()
    #: the survey QR hand-off (district/survey.py)
    survey: SurveySection = SurveySection()
    #: shared snapshot files for the terminals (HTTP(S), off by default)
    snapshots: SnapshotsSection = SnapshotsSection()

    def __post_init__(self) -> None:
        # the confirmation floor is a cosine on the embedder's scale: unless
        # [calibration] confirm_floor sets it, it is the [models] pack's own value
        if self.calibration.confirm_floor is None:
            try:
                floor = pack_confirm_floor(self.models.pack)
            except ModelError as exc:
                raise ConfigError(f"models.pack: {exc}") from None
            object.__setattr__(self, "calibration", self.calibration.with_pack_floor(floor))


def load_district_config(path: Path | None) -> DistrictConfig:
    """Load and validate the district's TOML file (defaults only when ``path`` is None)."""
    if path is None:
        return DistrictConfig()
    return build_section(DistrictConfig, read_toml(path))
