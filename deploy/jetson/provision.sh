#!/bin/sh
# Provision a Jetson Orin (JetPack 6: Ubuntu 22.04, Python 3.10) as a Một Cửa terminal.
# Run as root; every argument is checked before anything changes; running it twice
# changes nothing. Needs --ort-wheel FILE: NVIDIA's onnxruntime-gpu wheel for JetPack 6,
# downloaded onto the device beforehand (docs/technician-guide.md, "Jetson Orin").
# `provision.sh --help` lists the other arguments (the same as on a Raspberry Pi).
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
exec python3 "$here/jetson_device.py" --root "$root" provision "$@"
