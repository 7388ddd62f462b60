#!/usr/bin/env bash
# Provisions one HEMA3N appliance (vehicle): keys, certificates, broker credentials, systemd
# credentials and config, on the running appliance (--root /) or into a mounted image root.
#
#   sudo ./scripts/provision.sh --appliance-id AMB-042 --receiver-public receiver-public.toml \
#        [--territory county-north] [--device mon-1 --device spo2-1 ...] [--hostname amb-042.lan] \
#        [--root /] [--bin /usr/bin/hema3n-edge] [--plain-keys]
#
# What it writes (never overwriting an existing key: re-running is safe):
# - the database key, blind-index key, audit MAC key, territory key v1 and the appliance's ES256
#   signing key (hema3n-edge init), the tablet TLS key and the cloud mTLS key (EC P-256);
# - certificate requests for the fleet CA: cloud-client.csr (CN = appliance id) and api.csr (the
#   vehicle LAN host name); the tablet uses a self-signed certificate until api-cert.pem is
#   replaced by the signed one;
# - the daemon's broker password and one broker credential per --device (printed once, in
#   devices.txt, 0600, for the installer to configure the monitors);
# - every key as an encrypted systemd credential in /etc/credstore.encrypted/hema3n/, made on the
#   vehicle itself (`hema3n-edge keys seal`: systemd-creds, bound to its TPM2 and/or credential
#   secret) — at once with --root /, else by hema3n-seal-keys.service at the image's first boot
#   (until then the image holds the keys as 0600 files: handle it as a secret) — and the unit
#   drop-in naming the territory key credentials; with --plain-keys (development, tests) keys stay
#   as 0600 files in /etc/hema3n/keys for good;
# - /etc/hema3n/edge.toml (appliance id, territory) and the receiver's public keys.
# Rotation and decommissioning: see README "Operations".
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/common.sh
. "$ROOT_DIR/scripts/lib/common.sh"

APPLIANCE=""
TERRITORY=default
RECEIVER=""
HOST=""
ROOT=/
BIN=""
PLAIN=0
DEVICES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --appliance-id) APPLIANCE="$2"; shift ;;
        --territory) TERRITORY="$2"; shift ;;
        --receiver-public) RECEIVER="$2"; shift ;;
        --hostname) HOST="$2"; shift ;;
        --device) DEVICES+=("$2"); shift ;;
        --root) ROOT="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        --plain-keys) PLAIN=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done
[ -n "$APPLIANCE" ] || die "--appliance-id is required"
[[ "$APPLIANCE" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "appliance id must match [A-Za-z0-9._-]{1,64}"
[[ "$TERRITORY" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "territory must match [A-Za-z0-9._-]{1,64}"
[ -z "$RECEIVER" ] || [ -f "$RECEIVER" ] || die "receiver public keys $RECEIVER not found"
HOST="${HOST:-$APPLIANCE.vehicle.lan}"
BIN="${BIN:-$(command -v hema3n-edge || echo "$ROOT/usr/bin/hema3n-edge")}"
[ -x "$BIN" ] || die "hema3n-edge binary not found (pass --bin)"
command -v openssl >/dev/null || die "openssl is required"
# systemd-creds binds a credential to the machine that encrypts it (its credential secret or
# TPM): credentials made here for another machine's image would not open on that vehicle. So an
# image gets its keys as files and the vehicle seals them itself at first boot; only --root /
# (this machine is the vehicle) seals now.
ON_VEHICLE=0
[ "$(mkdir -p "$ROOT" && cd "$ROOT" && pwd -P)" = "/" ] && ON_VEHICLE=1
if [ "$PLAIN" -eq 0 ] && [ "$ON_VEHICLE" -eq 1 ] && ! command -v systemd-creds >/dev/null; then
    die "systemd-creds not found: use --plain-keys to keep keys as 0600 files"
fi

ETC="$ROOT/etc/hema3n"
KEYS="$ETC/keys"
STATE="$ROOT/var/lib/hema3n"
CREDS="$ROOT/etc/credstore.encrypted/hema3n"
umask 077
mkdir -p "$ETC/edge.d" "$KEYS" "$STATE"

# 1. Keys, config and database through the daemon's own init (keys 0600, never overwritten).
log "initialising keys and database for $APPLIANCE (territory $TERRITORY)"
"$BIN" init --data-dir "$STATE" --appliance-id "$APPLIANCE" --territory "$TERRITORY" \
    --lan-name "$HOST" >/dev/null
# init keeps keys beside the state; the appliance reads them from /etc/hema3n/keys or credentials.
for f in "$STATE"/keys/*; do
    name="$(basename "$f")"
    [ -e "$KEYS/$name" ] || mv "$f" "$KEYS/$name"
done
rmdir "$STATE/keys" 2>/dev/null || true
[ -f "$KEYS/api-cert.pem" ] && { [ -e "$ETC/api-cert.pem" ] || mv "$KEYS/api-cert.pem" "$ETC/api-cert.pem"; }
chmod 0644 "$ETC/api-cert.pem"
cat >"$ETC/edge.toml" <<CONF
# Written by scripts/provision.sh for $APPLIANCE. Secrets never live here.
appliance_id = "$APPLIANCE"
data_dir = "/var/lib/hema3n"
default_territory = "$TERRITORY"

[keys]
dir = "/etc/hema3n/keys"

[mqtt]
broker = "mqtt://127.0.0.1:1883"
username = "hema3n-edge"
password_file = "/etc/mosquitto/hema3n/passwd"

[api]
listen = "0.0.0.0:8443"
cert_file = "/etc/hema3n/api-cert.pem"
CONF
rm -f "$STATE/edge.toml"
CFG=(--config "$ETC/edge.toml")
# Commands below run against the staged root: point keys and state there.
cat >"$ETC/edge.d/00-provision-root.toml" <<CONF
data_dir = "$STATE"
[keys]
dir = "$KEYS"
credstore = "$CREDS"
[mqtt]
password_file = "$ROOT/etc/mosquitto/hema3n/passwd"
[api]
cert_file = "$ETC/api-cert.pem"
CONF
trap 'rm -f "$ETC/edge.d/00-provision-root.toml"' EXIT

# 2. TLS keys and certificate requests for the fleet CA.
for k in cloud-client api-tls; do
    [ -f "$KEYS/$k.key" ] && [ "$k" = api-tls ] && continue
    if [ ! -f "$KEYS/$k.key" ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEYS/$k.key" 2>/dev/null
        chmod 0600 "$KEYS/$k.key"
    fi
done
openssl req -new -key "$KEYS/cloud-client.key" -subj "/CN=$APPLIANCE/O=HEMA3N fleet" -out "$ETC/cloud-client.csr"
openssl req -new -key "$KEYS/api-tls.key" -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" -out "$ETC/api.csr"
log "certificate requests: $ETC/cloud-client.csr (cloud mTLS), $ETC/api.csr (tablet HTTPS)"

# 3. Broker credentials: the daemon's own, then one per device.
mkdir -p "$ROOT/etc/mosquitto/hema3n"
if [ ! -f "$KEYS/mqtt.password" ]; then
    openssl rand -base64 32 | tr -d '\n' >"$KEYS/mqtt.password"
    chmod 0600 "$KEYS/mqtt.password"
fi
PASSWD="$ROOT/etc/mosquitto/hema3n/passwd"
if command -v mosquitto_passwd >/dev/null; then
    touch "$PASSWD"
    grep -q '^hema3n-edge:' "$PASSWD" || mosquitto_passwd -b "$PASSWD" hema3n-edge "$(cat "$KEYS/mqtt.password")"
else
    log "mosquitto_passwd not found: add broker user hema3n-edge with the password in mqtt.password on the appliance"
fi
DEVFILE="$ETC/devices.txt"
: >"$DEVFILE"
for d in "${DEVICES[@]}"; do
    if out="$("$BIN" "${CFG[@]}" devices add "$d" 2>&1)"; then
        printf '%s\n' "$out" >>"$DEVFILE"
    else
        printf '%s: %s\n' "$d" "$out" >&2
    fi
done
[ ${#DEVICES[@]} -eq 0 ] || log "device broker credentials (shown once): $DEVFILE"

# 4. The cloud receiver's public keys.
if [ -n "$RECEIVER" ]; then
    "$BIN" "${CFG[@]}" keys import-receiver "$RECEIVER"
fi
"$BIN" "${CFG[@]}" keys export-public --out "$ETC/appliance-signing.pub.pem" >/dev/null
log "register $ETC/appliance-signing.pub.pem with the receiver: hema3n-receiver appliances add $APPLIANCE FILE"

# 5. Keys become systemd credentials (encrypted, TPM-bound when available).
DROPIN="$ROOT/etc/systemd/system/hema3n-edge.service.d"
mkdir -p "$DROPIN"
{
    echo "# Written by scripts/provision.sh: territory key versions of this appliance."
    echo "[Service]"
} >"$DROPIN/credentials.conf"
for f in "$KEYS"/territory.*.key; do
    n="$(basename "$f")"
    echo "LoadCredentialEncrypted=$n:/etc/credstore.encrypted/hema3n/$n" >>"$DROPIN/credentials.conf"
done
if [ "$PLAIN" -eq 1 ]; then
    rm -f "$DROPIN/credentials.conf"
    log "--plain-keys: keys stay as 0600 files in $KEYS (development and tests only)"
elif [ "$ON_VEHICLE" -eq 1 ]; then
    "$BIN" "${CFG[@]}" keys seal
    log "keys are encrypted credentials in $CREDS (plaintext overwritten and removed)"
else
    log "keys wait in $KEYS (0600) for hema3n-seal-keys.service to seal them on the vehicle at first boot; treat the image as secret until then"
fi
log "provisioned $APPLIANCE; start with: systemctl enable --now hema3n-edge"
