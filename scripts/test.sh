#!/usr/bin/env bash
# Runs the whole test suite (installing first, idempotently). Extra arguments go to pytest.
# pytest exits 5 when no test ran; that is a failure here like any other non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
