#!/usr/bin/env bash
# Checks the appliance packaging (run by scripts/test.sh after the build):
# - `systemd-analyze verify` on the units and `systemd-analyze security` exposure ≤ 2.0;
# - the Yocto layer: crate list in sync with Cargo.lock, `oelint-adv` clean;
# - `scripts/provision.sh --plain-keys` into a scratch root gives an appliance that `check` accepts
#   (the image → first-boot sealing path is tests/provisioning.rs).
#
#   ./scripts/check-appliance.sh [--bin target/debug]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
BINDIR="$ROOT/target/debug"
[ "${1:-}" = "--bin" ] && BINDIR="$2"
MAX_EXPOSURE=2.0

apt_install systemd
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT

log "systemd-analyze verify"
for u in hema3n-edge hema3n-receiver hema3n-backup hema3n-seal-keys hema3n-rotate-keys; do
    # verify checks that ExecStart exists: point it at the freshly built binary.
    sed "s#/usr/bin/hema3n-#$BINDIR/hema3n-#g" "systemd/$u.service" >"$TMP/$u.service"
done
cp systemd/hema3n-backup.timer systemd/hema3n-rotate-keys.timer "$TMP/"
# verify exits 0 on warnings: any output at all is a failure.
VERIFY_OUT="$(cd "$TMP" && systemd-analyze verify --man=no ./hema3n-edge.service ./hema3n-receiver.service \
    ./hema3n-backup.service ./hema3n-backup.timer ./hema3n-seal-keys.service \
    ./hema3n-rotate-keys.service ./hema3n-rotate-keys.timer 2>&1)" \
    || { echo "$VERIFY_OUT"; die "systemd-analyze verify failed"; }
[ -z "$VERIFY_OUT" ] || { echo "$VERIFY_OUT"; die "systemd-analyze verify printed warnings"; }
for u in hema3n-edge hema3n-receiver hema3n-backup; do
    score="$(cd "$TMP" && systemd-analyze security --offline=true "./$u.service" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    [ -n "$score" ] || die "no exposure score for $u"
    log "systemd-analyze security $u.service: exposure $score (target ≤ $MAX_EXPOSURE)"
    python3 -c "import sys; sys.exit(0 if float('$score') <= $MAX_EXPOSURE else 1)" || die "$u exposure $score > $MAX_EXPOSURE"
done

log "Yocto layer: crate list and oelint-adv"
./scripts/yocto-crates.sh --check
install_yocto_lint
# homepageping needs the network; BBCLASSEXTEND (native/nativesdk) makes no sense for a daemon.
PYTHONPATH="$ROOT/.tools/oelint" python3 -m oelint_adv --quiet --relpaths \
    --suppress oelint.vars.homepageping --suppress oelint.var.bbclassextend \
    $(find yocto/meta-hema3n -name '*.bb' -o -name '*.bbappend' | sort)

log "provisioning into a scratch root"
./scripts/provision.sh --appliance-id CHECK-1 --root "$TMP/root" --bin "$BINDIR/hema3n-edge" \
    --plain-keys --device mon-1 >/dev/null 2>&1 || die "provision.sh failed"
cat >"$TMP/root/etc/hema3n/edge.d/99-scratch.toml" <<CONF
data_dir = "$TMP/root/var/lib/hema3n"
[keys]
dir = "$TMP/root/etc/hema3n/keys"
[mqtt]
password_file = "$TMP/root/etc/mosquitto/hema3n/passwd"
[api]
cert_file = "$TMP/root/etc/hema3n/api-cert.pem"
CONF
"$BINDIR/hema3n-edge" --config "$TMP/root/etc/hema3n/edge.toml" check >"$TMP/check.log" 2>&1 \
    || { cat "$TMP/check.log"; die "check failed on the provisioned appliance"; }
for f in db.key index.key audit.key appliance-signing.p8 territory.default.v1.key api-tls.key cloud-client.key mqtt.password; do
    [ "$(stat -c %a "$TMP/root/etc/hema3n/keys/$f")" = 600 ] || die "$f is not 0600"
done
grep -q '^mon-1:' "$TMP/root/etc/mosquitto/hema3n/passwd" || die "device credential missing"
log "appliance packaging OK"
