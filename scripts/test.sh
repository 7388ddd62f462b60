#!/usr/bin/env bash
# Installs what the tests need (idempotently), then runs every test.
#
#   ./scripts/test.sh            unit + integration tests (what CI runs)
#   ./scripts/test.sh --soak     long runs: store kill -9 loop 500 rounds, ingest kill -9 200 rounds,
#                                sync outage/kill -9 schedule 200 rounds, receiver group kill -9
#                                100 rounds
#   ./scripts/test.sh --fuzz     also fuzz the SenML parser for FUZZ_SECONDS (default 120)
#
# Tests start their own real services (SQLCipher files in temp dirs, mosquitto brokers, PostgreSQL
# clusters, a private dbus-daemon, Chromium driven by Playwright) on loopback and random ports and
# tear them down.
# Then: appliance packaging gates, the aarch64 build (+ --version under qemu-user) and a
# quick run of every benchmark harness.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

SOAK=0
FUZZ=0
for arg in "$@"; do
    case "$arg" in
        --soak) SOAK=1 ;;
        --fuzz) FUZZ=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option $arg (try --help)" ;;
    esac
done

stage "build dependencies (apt)"
install_build_deps

# Cheap checks first, failing fast: formatting, then one build of every target in which clippy
# lints our code (warnings are errors), the tidy architecture rules (tests/tidy.rs) and the unit
# tests — before any service is installed.
#
# Clippy runs as the compiler of our own crates (RUSTC_WORKSPACE_WRAPPER, what `cargo clippy`
# does for `cargo check`) instead of a separate `cargo clippy` pass: that pass checked every
# dependency a second time (~10 of CI's minutes on 2 cores) for metadata no later stage could
# use. The wrapper is part of cargo's fingerprint, so every stage below keeps it (a plain
# `cargo test` afterwards rebuilds our crates once, not the dependencies).
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
stage "format (cargo fmt --check)"
cargo fmt --all -- --check || die "cargo fmt --check failed: run \`cargo fmt\`"
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$CLIPPY_DRIVER" ] || die "clippy-driver missing from the toolchain: rustup component add clippy"
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
stage "build all targets, clippy -D warnings on our code"
cargo build --locked --all-targets
stage "tidy (architecture rules)"
cargo test --locked --test tidy -- --test-threads="$(nproc)"
stage "unit tests (lib)"
cargo test --locked --lib -- --test-threads="$(nproc)"

stage "test services and reference tools (apt, PyPI, npm)"
install_test_services
install_python_tools
install_media_tools
install_nemsis_tools
install_browser_tools
install_model_tools
export HEMA3N_ORT_LIB="${HEMA3N_ORT_LIB:-$(onnxruntime_lib)}"
[ -n "$HEMA3N_ORT_LIB" ] || die "ONNX Runtime library missing from .tools/model"

export RUST_BACKTRACE=1
if [ "$SOAK" -eq 1 ]; then
    export HEMA3N_KILL9_ROUNDS="${HEMA3N_KILL9_ROUNDS:-500}"
    export HEMA3N_INGEST_KILL9_ROUNDS="${HEMA3N_INGEST_KILL9_ROUNDS:-200}"
    export HEMA3N_SYNC_ROUNDS="${HEMA3N_SYNC_ROUNDS:-200}"
    export HEMA3N_RECEIVER_KILL9_ROUNDS="${HEMA3N_RECEIVER_KILL9_ROUNDS:-100}"
fi

stage "integration tests"
cargo test --locked --all-targets -- --test-threads="$(nproc)"

stage "API contract (schemathesis against the served OpenAPI document)"
./scripts/contract.sh "$ROOT/target/debug/hema3n-edge"

stage "appliance packaging (systemd units, Yocto layer, provisioning)"
./scripts/check-appliance.sh

stage "aarch64 build (ci-target profile) with the CUDA and TensorRT execution providers"
# Linted above for the host; its own fingerprint, so no wrapper needed here.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    ./scripts/build-aarch64.sh --features cuda,tensorrt --profile ci-target

stage "benchmark harness smoke run (quick sizes)"
HEMA3N_BENCH_QUICK=1 ./scripts/bench.sh --debug all >/tmp/hema3n-bench-smoke.log 2>&1 || { cat /tmp/hema3n-bench-smoke.log; die "bench smoke run failed"; }
grep -c '^BENCH ' /tmp/hema3n-bench-smoke.log | grep -qx '[1-9][0-9]*' || die "bench printed no BENCH lines"
if [ "$FUZZ" -eq 1 ]; then
    stage "fuzzing the SenML parser for ${FUZZ_SECONDS:-120} s"
    ./scripts/fuzz.sh senml "${FUZZ_SECONDS:-120}"
fi
stage_end
log "all tests passed"
