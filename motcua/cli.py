"""The ``motcua`` command: one subcommand per job.

Each subcommand lives in its own module exposing ``register(subparsers)``; the parser
stores a ``func(args) -> int`` to run. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from core import __version__
from core.errors import MotcuaError

#: modules contributing subcommands, in the order they appear in --help
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "models.cli",
    "faces.cli",
    "motcua.recognise",
    "edge.terminal_cli",
    "edge.display.cli",
    "motcua.demo",
    "edge.ops.doctor",
    "district.cli",
    "edge.store.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motcua", description="Một Cửa face-lookup terminals and district tools."
    )
    parser.add_argument("--version", action="version", version=f"motcua {__version__}")
    parser.add_argument(
        "--config", metavar="TOML", help="terminal configuration file (defaults if omitted)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MotcuaError as exc:
        print(f"motcua: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("motcua: interrupted", file=sys.stderr)
        return 130
