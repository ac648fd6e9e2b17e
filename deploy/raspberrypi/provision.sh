#!/bin/sh
# Provision a Raspberry Pi (Raspberry Pi OS bookworm, 64-bit) as a Một Cửa terminal.
# Run as root; every argument is checked before anything changes; running it twice
# changes nothing. `provision.sh --help` lists the arguments; see docs/technician-guide.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v python3 >/dev/null 2>&1; then
    echo "provision.sh: python3 is missing; install it first: apt-get install python3" >&2
    exit 2
fi
root=/
if [ "${1:-}" = "--root" ] && [ -n "${2:-}" ]; then
    root=$2
    shift 2
fi
exec python3 "$here/motcua_device.py" --root "$root" provision "$@"
