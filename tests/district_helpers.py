"""The district service's test set-up, shared by every test that runs a real one: its
signing keys, its ingest token and a ``district.toml`` naming the test's Mosquitto and a
loopback port for the ingest API (a free one unless the test picks it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sync.keys import generate_keypair
from sync.localbroker import free_port
from tests.broker import MosquittoBroker

REPO = Path(__file__).resolve().parents[1]
#: the ingest bearer token the tests' districts accept (the service wants >= 32 chars)
TOKEN = "t" * 40


def district_keys(tmp: Path) -> tuple[Path, Path]:
    """The district's signing key and public key under ``tmp/keys``, made on first use."""
    key, pub = tmp / "keys" / "district.key", tmp / "keys" / "district.pub"
    if not key.exists():
        generate_keypair(key, pub)
    return key, pub


def write_district_config(tmp: Path, broker: MosquittoBroker, *, district: str, db: Path,
                          port: int | None = None, ingest: str = "",
                          sections: str = "") -> Path:
    """``tmp/district.toml`` for district ``district`` on the log ``db``: its keys
    (:func:`district_keys`), the token file ``tmp/token`` (mode 0600), the broker with
    quick reconnects, the ingest API on ``127.0.0.1:port`` (a free port when None).
    ``ingest``: more lines of ``[ingest]``; ``sections``: more tables after it."""
    key, _pub = district_keys(tmp)
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)
    cfg = tmp / "district.toml"
    cfg.write_text(f"""
[district]
id = "{district}"
db = "{db}"
key_file = "{key}"

[broker]
broker = "{broker.host}:{broker.port}"
reconnect_min_s = 0.1
reconnect_max_s = 1.0

[ingest]
listen = "127.0.0.1:{free_port() if port is None else port}"
token_file = "{tmp / 'token'}"
{ingest}
{sections}
""")
    return cfg


def serve_process(cfg: Path, **popen: Any) -> subprocess.Popen[Any]:
    """``motcua --config cfg district serve`` as a process of this checkout's code;
    ``popen``: where its output goes (stderr=..., text=...). The caller waits for it to
    be ready and stops it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "motcua", "--config", str(cfg),
                             "district", "serve"], cwd=REPO, env=env, **popen)
