#!/bin/sh
# Build the offline wheelhouse for the district's Raspberry Pis (Pi 4 and Pi 5, bookworm):
#   build-wheelhouse.sh OUT --release motcua-X.whl [--arm64-root DIR] [--hnswlib-wheel W]
# Needs python3 with pip (the district's workstation venv will do). See
# docs/technician-guide.md, "Building the wheelhouse".
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/build_wheelhouse.py" "$@"
