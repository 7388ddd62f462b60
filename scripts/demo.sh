#!/usr/bin/env bash
# Builds and runs the HEMA3N Edge daemon on a local development data directory.
#
#   ./scripts/demo.sh [--duration SECONDS] [--fresh]
#
# Creates .demo/state (keys 0600, config, encrypted database) with `hema3n-edge init`, writes a
# few demo patients through the real store, shows `check` and `audit verify`, then runs the
# daemon in the foreground until Ctrl-C (or for --duration seconds). --fresh starts over.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh

DURATION=0
FRESH=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift ;;
        --fresh) FRESH=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done

install_build_deps
log "building hema3n-edge"
cargo build --locked --release --bin hema3n-edge
BIN="$ROOT/target/release/hema3n-edge"
STATE="$ROOT/.demo/state"
[ "$FRESH" -eq 1 ] && rm -rf "$ROOT/.demo"

log "initialising $STATE"
"$BIN" init --data-dir "$STATE" --appliance-id demo-ambulance-1
export HEMA3N_CONFIG="$STATE/edge.toml"

log "writing 5 demo patients and cases (encrypted, audited)"
"$BIN" debug soak --count 5 --last-name Demo-Patient >/dev/null
"$BIN" check
"$BIN" audit verify
log "the database is encrypted on disk; its first bytes:"
head -c 32 "$STATE/edge.db" | od -An -tx1 | head -2

log "running the daemon (Ctrl-C to stop)"
if [ "$DURATION" -gt 0 ]; then
    "$BIN" run & PID=$!
    trap 'kill -TERM $PID 2>/dev/null || true' EXIT
    sleep "$DURATION"   # demo length chosen by the user, not synchronisation
    kill -TERM "$PID"
    wait "$PID"
    trap - EXIT
    "$BIN" audit verify
else
    exec "$BIN" run
fi
