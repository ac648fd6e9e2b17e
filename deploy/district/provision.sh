#!/bin/sh
# Provision a Debian (bookworm or newer) machine as a Mot Cua district server.
# Run as root. Every argument is checked before anything changes; running it again
# changes nothing (existing keys, token, log and config are kept). See docs/district.md.
#
#   provision.sh --district ID --broker HOST:PORT [--listen HOST:PORT] [--pack NAME]
#                [--source DIR] [--motcua PATH] [--root DIR] [--no-start]
#
# --source DIR  install motcua from this source tree (or wheel folder) into
#               /opt/motcua/current (a venv); without it, /opt/motcua/current must exist
# --motcua PATH the motcua command to use (default /opt/motcua/current/bin/motcua)
# --root DIR    write into DIR instead of / (tests, images); no users, no systemctl
set -eu

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "provision.sh: $*; nothing was changed" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
root=/
district=""
broker=""
listen="127.0.0.1:8470"
pack=""
source_dir=""
motcua=/opt/motcua/current/bin/motcua
start=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --district) district=${2:-}; shift 2 ;;
        --broker) broker=${2:-}; shift 2 ;;
        --listen) listen=${2:-}; shift 2 ;;
        --pack) pack=${2:-}; shift 2 ;;
        --source) source_dir=${2:-}; shift 2 ;;
        --motcua) motcua=${2:-}; shift 2 ;;
        --root) root=${2:-}; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument $1 (--help lists them)" ;;
    esac
done

# ---- check everything first ----------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root"
case "$district" in
    ""|*[!A-Za-z0-9_-]*) die "--district: letters, digits, '-' and '_' only, got '$district'" ;;
esac
hostport() {  # $1 option name, $2 value
    host=${2%:*}
    port=${2##*:}
    case "$port" in ""|*[!0-9]*) die "$1: expected HOST:PORT, got '$2'" ;; esac
    if [ -z "$host" ] || [ "$host" = "$2" ]; then die "$1: expected HOST:PORT, got '$2'"; fi
    if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "$1: port out of 1..65535 in '$2'"
    fi
}
hostport --broker "$broker"
hostport --listen "$listen"
case "$pack" in *[!A-Za-z0-9._-]*) die "--pack: a model pack name, got '$pack'" ;; esac
[ -d "$root" ] || die "--root: $root is not a folder"
if [ -n "$source_dir" ]; then
    [ -d "$source_dir" ] || die "--source: $source_dir is not a folder"
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3-venv)"
elif [ ! -x "$motcua" ]; then
    die "$motcua is missing: give --source DIR (the motcua sources) or --motcua PATH"
fi

# ---- then change, each step only if needed -------------------------------------------
r=${root%/}
etc=$r/etc/motcua
state=$r/var/lib/motcua-district
user="motcua-district"
if [ -n "$source_dir" ]; then
    if [ ! -x "$r/opt/motcua/current/bin/python" ]; then
        python3 -m venv "$r/opt/motcua/current"
    fi
    "$r/opt/motcua/current/bin/pip" install --quiet "$source_dir"
fi
if [ "$root" = / ] && ! getent passwd "$user" >/dev/null; then
    useradd --system --home-dir /var/lib/motcua-district --shell /usr/sbin/nologin "$user"
fi
install -d -m 0755 "$etc"
install -d -m 0700 "$state"
own() {  # the service user owns its state (not under --root: no such user there)
    if [ "$root" = / ]; then chown -R "$user:$user" "$@"; fi
}
if [ ! -s "$state/ingest.token" ]; then
    umask 077
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$state/ingest.token.tmp"
    echo >> "$state/ingest.token.tmp"
    mv "$state/ingest.token.tmp" "$state/ingest.token"
    echo "created the ingest token: $state/ingest.token (give it to the case system)"
fi
if [ ! -s "$state/keys/district.key" ]; then
    "$motcua" district keygen --out "$state/keys"
fi
if [ ! -s "$state/district.sqlite" ]; then
    if [ -n "$pack" ]; then
        "$motcua" district init --db "$state/district.sqlite" --district "$district" --pack "$pack"
    else
        "$motcua" district init --db "$state/district.sqlite" --district "$district"
    fi
fi
config=$(cat <<TOML
# Written by deploy/district/provision.sh; edit freely: a new run keeps this file
# and writes its own proposal beside it as district.toml.new. docs/district.md.
[district]
id = "$district"
db = "/var/lib/motcua-district/district.sqlite"
key_file = "/var/lib/motcua-district/keys/district.key"

[broker]
broker = "$broker"

[ingest]
listen = "$listen"
token_file = "/var/lib/motcua-district/ingest.token"

# The operator console (docs/district.md "Console"), off until turned on on purpose:
# when on, the whole server (ingest, health, metrics too) speaks TLS only. To turn it on:
#   motcua --config /etc/motcua/district.toml district console-user add NAME
#   motcua --config /etc/motcua/district.toml district console-cert --host NAME
#     (a test install; a real one copies the office CA's certificate and key here)
#   chown -R motcua-district:motcua-district /var/lib/motcua-district
# then set enabled = true and restart motcua-district.
[console]
enabled = false
users_file = "/var/lib/motcua-district/console-users"
tls_cert_file = "/var/lib/motcua-district/console.crt"
tls_key_file = "/var/lib/motcua-district/console.key"

# The satisfaction survey behind the terminals' QR codes (docs/district.md "Survey QR"),
# off until turned on: set base_url to the https address the citizens' phones reach this
# server's /s/ pages at (a reverse proxy in front of [ingest] listen), then enabled = true.
[survey]
enabled = false
# base_url = "https://khaosat.example.vn"
# trusted_proxies = ["127.0.0.1"]   # the reverse proxy, whose X-Forwarded-For is believed
TOML
)
if [ -n "$pack" ]; then
    config="$config
$(printf '\n[models]\npack = "%s"' "$pack")"
fi
if [ ! -e "$etc/district.toml" ]; then
    printf '%s\n' "$config" > "$etc/district.toml"
    chmod 0644 "$etc/district.toml"
elif [ "$(cat "$etc/district.toml")" != "$config" ]; then
    if [ ! -e "$etc/district.toml.new" ] || [ "$(cat "$etc/district.toml.new")" != "$config" ]; then
        printf '%s\n' "$config" > "$etc/district.toml.new"
        echo "kept $etc/district.toml; these arguments' version is district.toml.new"
    fi
fi
own "$state"
unit=$r/etc/systemd/system/motcua-district.service
install -d -m 0755 "$r/etc/systemd/system"
if ! cmp -s "$here/motcua-district.service" "$unit"; then
    install -m 0644 "$here/motcua-district.service" "$unit"
    changed_unit=yes
else
    changed_unit=no
fi
if [ "$root" = / ]; then
    [ "$changed_unit" = no ] || systemctl daemon-reload
    if [ "$start" = yes ]; then
        systemctl enable --now motcua-district.service
    fi
fi
echo "district $district provisioned (config $etc/district.toml, state $state)"
