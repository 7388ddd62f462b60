#!/usr/bin/env bash
# Fuzzes a target for a bounded time with libFuzzer (cargo fuzz).
#
#   ./scripts/fuzz.sh [TARGET] [SECONDS]      default: senml 120
#
# cargo-fuzz needs nightly -Z flags; the pinned stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1 (no other toolchain can be installed here). Crashes land in fuzz/artifacts/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

TARGET="${1:-senml}"
SECONDS_="${2:-120}"
install_build_deps
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
mkdir -p "fuzz/corpus/$TARGET"
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run "$TARGET" "corpus/$TARGET" "seeds/$TARGET" -- \
    -max_total_time="$SECONDS_" -max_len=65536 -rss_limit_mb=2048
log "fuzzing $TARGET for $SECONDS_ s found no crash"
