#!/usr/bin/env bash
# Benchmarks against raw baselines measured in the same run (SYSTEM.md §8).
#
#   ./scripts/bench.sh [--debug] [store|ingest|triage|sync|receiver|api|host|all]
#
# Each suite prints its tables and `BENCH <name> value=… unit=… baseline=… ratio=…` lines.
# Suites appear here as the capabilities they measure land; record results in docs/benchmarks.md.
# --debug runs an unoptimised build (for harness smoke tests; numbers are meaningless).
# HEMA3N_BENCH_QUICK=1 shrinks sizes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

SUITES=(store ingest triage sync receiver api host)
PROFILE=()
WHAT=all
for arg in "$@"; do
    case "$arg" in
        --debug) PROFILE=(--profile dev) ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) WHAT="$arg" ;;
    esac
done

run_suite() {
    case "$1" in
        store) cargo bench --locked "${PROFILE[@]}" --bench store ;;
        ingest) install_test_services; cargo bench --locked "${PROFILE[@]}" --bench ingest ;;
        triage) install_model_tools; HEMA3N_ORT_LIB="${HEMA3N_ORT_LIB:-$(onnxruntime_lib)}" cargo bench --locked "${PROFILE[@]}" --bench triage ;;
        sync) install_test_services; cargo bench --locked "${PROFILE[@]}" --bench sync ;;
        api) install_test_services; install_model_tools; HEMA3N_ORT_LIB="${HEMA3N_ORT_LIB:-$(onnxruntime_lib)}" cargo bench --locked "${PROFILE[@]}" --bench api ;;
        receiver) install_test_services; cargo bench --locked "${PROFILE[@]}" --bench receiver ;;
        host) install_test_services; install_model_tools; HEMA3N_ORT_LIB="${HEMA3N_ORT_LIB:-$(onnxruntime_lib)}" cargo bench --locked "${PROFILE[@]}" --bench host ;;
        *) die "unknown suite '$1'; available: ${SUITES[*]} all" ;;
    esac
}

install_build_deps
if [ "$WHAT" = all ]; then
    for s in "${SUITES[@]}"; do log "suite $s"; run_suite "$s"; done
else
    run_suite "$WHAT"
fi
