#!/usr/bin/env bash
# Builds the release aarch64 (Jetson AGX Orin) binary with a plain toolchain — rustup target +
# Debian's cross gcc; SQLCipher and OpenSSL are vendored, ONNX Runtime is loaded at run time —
# checks that it is an AArch64 ELF and, when qemu-user is present, runs its --version.
#
#   ./scripts/build-aarch64.sh [--features cuda,tensorrt] [--check]
#
# --check only type-checks (build scripts still cross-compile the C parts): the faster test gate.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

TARGET=aarch64-unknown-linux-gnu
FEATURES="cuda,tensorrt"
MODE=build
while [ $# -gt 0 ]; do
    case "$1" in
        --features) FEATURES="$2"; shift ;;
        --check) MODE=check ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done

install_build_deps
apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "adding rust target $TARGET"
    rustup target add "$TARGET"
fi
if [ "$MODE" = check ]; then
    log "type-checking for $TARGET with features [$FEATURES]"
    cargo check --locked --target "$TARGET" --features "$FEATURES" --lib --bins
    exit 0
fi
log "building release hema3n-edge for $TARGET with features [$FEATURES]"
cargo build --locked --release --target "$TARGET" --features "$FEATURES" --bin hema3n-edge
BIN="target/$TARGET/release/hema3n-edge"
MACHINE="$(aarch64-linux-gnu-readelf -h "$BIN" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
[ "$MACHINE" = "AArch64" ] || die "$BIN is not an AArch64 ELF (Machine: $MACHINE)"
log "$BIN is an AArch64 ELF ($(du -h "$BIN" | cut -f1))"
if command -v qemu-aarch64 >/dev/null; then
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" --version
else
    log "qemu-aarch64 not installed: skipping the --version run (apt-get install qemu-user)"
fi
