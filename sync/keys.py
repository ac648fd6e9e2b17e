"""District signing keys: Ed25519, PEM files. The private key stays on the district server."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import ConfigError
from core.files import write_atomic


def generate_keypair(private_path: Path, public_path: Path, *, overwrite: bool = False) -> None:
    """Write a new private key (mode 0600, created so) and its public key (0644)."""
    if not overwrite and private_path.exists():
        raise ConfigError(f"{private_path} exists; refusing to overwrite a district key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(private_path, pem, mode=0o600)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_pem(key.public_key()))
    public_path.chmod(0o644)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the district's private key; refuses a file readable by group or others."""
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"district key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"district key {path}: mode {mode:o} is too open (chmod 600)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"district key {path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"district key {path}: not an Ed25519 key")
    return key


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key} {path}: {exc.strerror}") from None


def _ed25519(pem: bytes, path: Path, key: str) -> Ed25519PublicKey:
    """One PEM public key block, which must be an Ed25519 key."""
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key} {path}: not a PEM public key: {exc}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{key} {path}: not an Ed25519 key")
    return loaded


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load the district public key installed on a terminal."""
    return _ed25519(_read(path, "sync.public_key"), path, "sync.public_key")


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """All district public keys in a PEM file (one or more blocks, for key rotation:
    the new key is added to every terminal before the district signs with it)."""
    key = "sync.district_key_file"
    data = _read(path, key)
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise ConfigError(f"{key} {path}: no PEM public key in it")
    return [_ed25519(block, path, key) for block in blocks]
