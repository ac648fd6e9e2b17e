"""``host:port`` strings: the one parser every setting and command-line option uses."""

from __future__ import annotations

import ipaddress

from core.errors import ConfigError


def split_hostport(value: str, key: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ``key`` names the setting in the
    ``ConfigError`` raised for anything else (missing port, port out of 0-65535, no host)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    """True for addresses only this machine can reach: ``localhost`` or an IP address in
    127.0.0.0/8 or ::1. A *name* that merely starts with "127." (``127.attacker.example``)
    is not: it resolves wherever its owner wants."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
