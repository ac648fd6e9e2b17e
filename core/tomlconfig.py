"""Loading TOML files into validated trees of frozen dataclasses, and reading secrets.

Both applications (the terminal's ``edge.config`` and the district's ``district.config``)
describe their settings as frozen dataclasses with defaults; :func:`build_section` checks
every key and type and names the offending key (``camera.fps: expected a number, got
'fast'``), then calls each section's ``validate(prefix)``. Secrets are never values in a
file: a setting holds the *path* of a file or the *name* of an environment variable, read
by :func:`read_secret`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib  # novermin (guarded: Python 3.10 takes the tomli branch below)
else:  # Python 3.10 (JetPack 6's system Python on the Jetson): the same parser from PyPI
    import tomli as tomllib

T = TypeVar("T")


def convert_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return build_section(tp, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert_value(value, args[0], key)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(convert_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # a bug in a section


def build_section(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown setting")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = convert_value(value, hints[name], key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(prefix)
    return obj


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the TOML file at ``path``; every failure is a ``ConfigError`` naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def read_secret(*, file: Path | None = None, env: str | None = None, key: str) -> str:
    """Read a secret from a file or an environment variable; ``key`` names the setting."""
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read secret file {file}: {exc.strerror}") from None
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{key}: environment variable {env} is not set")
        return value
    raise ConfigError(f"{key}: neither a secret file nor an environment variable is given")
