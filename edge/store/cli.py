"""``motcua store``: look at, check and maintain a terminal's gallery store.

    motcua store info [--dir D] [--json]   what the gallery holds (read-only; works while
                                           the terminal service runs)
    motcua store verify [--dir D]          index == SQLite, and the content hash
    motcua store checkpoint [--dir D]      write an index checkpoint now
    motcua store rebuild [--dir D]         rebuild the index from SQLite

``verify``, ``checkpoint`` and ``rebuild`` open the store, so the terminal service must
be stopped (the store refuses a second process). The directory defaults to
``<terminal.state_dir>/store``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from core.errors import StoreError
from edge.config import load_config
from edge.store.gallery import DB_NAME, GalleryStore


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("store", help="inspect, verify and maintain the gallery store")
    actions = p.add_subparsers(dest="store_action", metavar="ACTION", required=True)
    for name, helptext in (("info", "what the gallery holds (read-only)"),
                           ("verify", "check index == SQLite and print the content hash"),
                           ("checkpoint", "write an index checkpoint now"),
                           ("rebuild", "rebuild the index from SQLite")):
        a = actions.add_parser(name, help=helptext)
        a.add_argument("--dir", type=Path, help="store directory "
                       "(default: <terminal.state_dir>/store)")
        if name == "info":
            a.add_argument("--json", action="store_true", help="one JSON object")
        a.set_defaults(func=run)


def read_info(directory: Path) -> dict[str, Any]:
    """Figures of a store read without opening it for writing (safe while in use)."""
    db = directory / DB_NAME
    if not db.is_file():
        raise StoreError(f"no gallery store at {directory} ({DB_NAME} missing)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                      for t in ("citizens", "embeddings", "dossiers")}
            ckpts = [dict(zip(("name", "seq", "size", "sha256", "created"), row, strict=True))
                     for row in conn.execute("SELECT name, seq, size, sha256, created "
                                             "FROM checkpoints ORDER BY seq DESC")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {db}: {exc}") from None
    return {
        "dir": str(directory), "embedder_id": meta.get("embedder_id"), "dim": meta.get("dim"),
        "epoch": meta.get("epoch"), "last_seq": meta.get("last_seq"),
        "generation": meta.get("generation"), **counts,
        "db_bytes": sum(f.stat().st_size for f in directory.glob(DB_NAME + "*")),
        "checkpoints": ckpts,
    }


def run(args: argparse.Namespace) -> int:
    directory = args.dir or load_config(args.config).terminal.state_dir / "store"
    info = read_info(directory)
    if args.store_action == "info":
        if args.json:
            print(json.dumps(info))
            return 0
        for key in ("dir", "embedder_id", "dim", "epoch", "last_seq", "generation",
                    "citizens", "embeddings", "dossiers", "db_bytes"):
            print(f"{key:12} {info[key]}")
        for c in info["checkpoints"]:
            print(f"checkpoint   {c['name']}  {c['size']} bytes  sha256 {c['sha256'][:16]}")
        return 0
    t0 = time.monotonic()
    with GalleryStore.open(directory, embedder_id=str(info["embedder_id"]),
                           dim=int(info["dim"])) as store:
        print(f"opened in {time.monotonic() - t0:.2f} s: {store.citizen_count} citizens, "
              f"change {store.last_seq}")
        if args.store_action == "verify":
            store.verify_index()
            print(f"index matches SQLite; content hash {store.content_hash()}")
        elif args.store_action == "checkpoint":
            store.checkpoint(force=True)
            print("checkpoint written")
        else:
            t0 = time.monotonic()
            store.rebuild()
            store.wait_for_checkpoint()
            print(f"index rebuilt in {time.monotonic() - t0:.1f} s")
    return 0
