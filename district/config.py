"""The district server's configuration: one TOML file, validated once, passed down.

Tables: ``[district]`` (its id, change log, signing key, topic prefix), ``[broker]`` (the
MQTT broker, :class:`sync.mqtt.BrokerConfig`), and the face pipeline's ``[models]``,
``[runtime]`` and ``[detector]`` (enrolment embeds the counter's photos with the same pack
as the terminals). Secrets (the broker password, the signing key itself) are never values
here: files or environment variable names. Command-line options override the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.errors import ConfigError
from core.tomlconfig import build_section, read_toml
from district.calibration import CalibrationSettings
from faces.settings import DetectorConfig, ModelsConfig, RuntimeConfig
from sync.mqtt import BrokerConfig
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

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.id and not all(c.isalnum() or c in "-_" for c in self.id):
            raise ConfigError(f"{p}id: letters, digits, '-' and '_' only, got {self.id!r}")
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(f"{p}prefix: a topic prefix without leading or trailing '/'")


@dataclasses.dataclass(frozen=True)
class DistrictConfig:
    """The whole district configuration tree."""

    district: DistrictSection = DistrictSection()
    broker: BrokerConfig = BrokerConfig()
    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detector: DetectorConfig = DetectorConfig()
    #: the operating point derived from the gallery (district/calibration.py)
    calibration: CalibrationSettings = CalibrationSettings()


def load_district_config(path: Path | None) -> DistrictConfig:
    """Load and validate the district's TOML file (defaults only when ``path`` is None)."""
    if path is None:
        return DistrictConfig()
    return build_section(DistrictConfig, read_toml(path))
