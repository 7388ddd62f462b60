#!/usr/bin/env bash
# Builds the release aarch64 (Jetson AGX Orin) binary with a plain toolchain — rustup target +
# Debian's cross gcc; SQLCipher and OpenSSL are vendored, ONNX Runtime is loaded at run time —
# checks that it is an AArch64 ELF that needs only the C library, and under qemu-user (installed
# here; --no-qemu skips it) runs --version, then init, check, audit checkpoint and audit verify on
# a scratch data dir: SQLCipher, ring's AArch64 assembly, ES256 and the audit chain on the target ISA.
#
#   ./scripts/build-aarch64.sh [--features cuda,tensorrt] [--profile P] [--check] [--no-qemu]
#
# --profile: cargo profile (default release, what the appliance ships; CI passes ci-target, the
#            same code without cross-crate LTO, see Cargo.toml). --check only type-checks (build
#            scripts still cross-compile the C parts).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

TARGET=aarch64-unknown-linux-gnu
FEATURES="cuda,tensorrt"
MODE=build
QEMU=1
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --features) FEATURES="$2"; shift ;;
        --profile) PROFILE="$2"; shift ;;
        --check) MODE=check ;;
        --no-qemu) QEMU=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done

install_build_deps
apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
[ "$QEMU" -eq 1 ] && [ "$MODE" = build ] && apt_install qemu-user
if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "adding rust target $TARGET"
    rustup target add "$TARGET"
fi
if [ "$MODE" = check ]; then
    log "type-checking for $TARGET with features [$FEATURES]"
    cargo check --locked --target "$TARGET" --features "$FEATURES" --lib --bins
    exit 0
fi
log "building hema3n-edge ($PROFILE profile) for $TARGET with features [$FEATURES]"
cargo build --locked --profile "$PROFILE" --target "$TARGET" --features "$FEATURES" --bin hema3n-edge
BIN="target/$TARGET/$PROFILE/hema3n-edge"
MACHINE="$(aarch64-linux-gnu-readelf -h "$BIN" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
[ "$MACHINE" = "AArch64" ] || die "$BIN is not an AArch64 ELF (Machine: $MACHINE)"
# Everything C is vendored and ONNX Runtime is dlopen()ed: the image must provide only glibc.
NEEDED="$(aarch64-linux-gnu-readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')"
for lib in $NEEDED; do
    case "$lib" in
        libc.so.6|libm.so.6|libgcc_s.so.1|ld-linux-aarch64.so.1|libdl.so.2|libpthread.so.0|librt.so.1) ;;
        *) die "$BIN needs $lib, which the appliance image does not promise (NEEDED: $NEEDED)" ;;
    esac
done
log "$BIN is an AArch64 ELF ($(du -h "$BIN" | cut -f1)), needs: $NEEDED"
if [ "$QEMU" -eq 1 ]; then
    VERSION="$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" --version)" || die "$BIN --version failed under qemu-aarch64"
    EXPECTED="hema3n-edge $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
    [ "$VERSION" = "$EXPECTED" ] || die "$BIN --version printed '$VERSION', expected '$EXPECTED'"
    log "qemu-aarch64: $VERSION"
    SCRATCH="$(mktemp -d)"; trap 'rm -rf "$SCRATCH"' EXIT
    run_a64() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" "$@" >"$SCRATCH/out.log" 2>&1 \
        || { cat "$SCRATCH/out.log"; die "under qemu-aarch64: hema3n-edge $* failed"; }; }
    run_a64 init --data-dir "$SCRATCH/state" --appliance-id QEMU-1
    run_a64 --config "$SCRATCH/state/edge.toml" check
    run_a64 --config "$SCRATCH/state/edge.toml" audit checkpoint
    run_a64 --config "$SCRATCH/state/edge.toml" audit verify
    log "qemu-aarch64: init, check, audit checkpoint and audit verify passed"
fi
