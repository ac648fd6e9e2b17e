"""Regenerate the Python code for every .proto of the project (run from anywhere).

    python proto/generate.py            # writes proto/*_pb2.py(i) beside the sources
    python proto/generate.py --out DIR  # writes DIR/proto/... (the staleness test uses it)

Sources are compiled with ``-I <repo>`` so generated modules import as ``proto.x_pb2``.
Add a new .proto file to PROTO_FILES; files with services also get ``*_pb2_grpc.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: every .proto of the project, relative to the repo root
PROTO_FILES: list[str] = [
    "proto/sync.proto",
    "proto/display.proto",
]


def generate(out: Path) -> list[Path]:
    """Compile PROTO_FILES into ``out`` (a repo-like root); return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, only needed here

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    (out / "proto").mkdir(parents=True, exist_ok=True)
    for name in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(REPO / name),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {name}")
    written = sorted(p for p in (out / "proto").iterdir() if "_pb2" in p.name)
    # grpc_python_out writes an (empty) *_pb2_grpc.py even for files without services
    for path in list(written):
        if path.name.endswith("_pb2_grpc.py") and "def add_" not in path.read_text():
            path.unlink()
            written.remove(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="root to write proto/ into")
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
