"""Small file helpers for a box that may lose power at any instant.

- :func:`write_atomic`: replace a file so that a power cut leaves the old or the new one;
- :func:`append_synced`: append bytes and fsync them (a power cut loses at most them);
- :func:`file_lock`: an exclusive ``flock`` shared by threads and processes;
- :func:`read_json_lines`: the intact lines of a JSON-lines file (a torn last line from a
  power cut is skipped).

Files are created with an explicit mode (private by default), never from the umask.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: owner read/write, group read: the service's files (logs, outbox, keys override it)
DEFAULT_MODE = 0o640


def write_atomic(path: Path, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, fsync, rename, fsync of the
    directory. The new file has ``mode`` whatever the umask."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_synced(path: Path, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Append ``data`` to ``path`` (created with ``mode``) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, *, mode: int = DEFAULT_MODE) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the ``with`` block;
    other holders, threads or processes, wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json_lines(path: Path) -> list[Any]:
    """Every intact JSON line of ``path``; [] when it is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn by a power cut
    return out
