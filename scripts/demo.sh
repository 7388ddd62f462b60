#!/usr/bin/env bash
# Builds and runs HEMA3N Edge on a local development data directory, with an on-board broker
# and simulated field devices.
#
#   ./scripts/demo.sh [--duration SECONDS] [--fresh]
#
# What it does: creates .demo/state (keys 0600, config, encrypted database) with
# `hema3n-edge init`; starts mosquitto on a free loopback port (.demo/broker); registers three
# simulated monitors; opens a demo case and binds the first monitor to it; runs the daemon and
# the simulator (mixed clinical scenarios, a few faulty packs). The daemon's log shows vitals
# arriving and rejects; Ctrl-C (or --duration) stops everything and verifies the audit log.
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
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done

install_build_deps
install_test_services
install_model_tools
log "building hema3n-edge (release)"
cargo build --locked --release --bin hema3n-edge
BIN="$ROOT/target/release/hema3n-edge"
DEMO="$ROOT/.demo"
STATE="$DEMO/state"
[ "$FRESH" -eq 1 ] && rm -rf "$DEMO"
mkdir -p "$DEMO/broker"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
USER_LINE=""; [ "$(id -u)" -eq 0 ] && USER_LINE="user root"
cat >"$DEMO/broker/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $DEMO/broker/
max_inflight_messages 1000
max_queued_messages 1000000
message_size_limit 262144
$USER_LINE
CONF
log "starting mosquitto on 127.0.0.1:$PORT"
mosquitto -c "$DEMO/broker/mosquitto.conf" >"$DEMO/broker/mosquitto.log" 2>&1 & PIDS+=($!)

log "initialising $STATE"
"$BIN" init --data-dir "$STATE" --appliance-id demo-ambulance-1
export HEMA3N_CONFIG="$STATE/edge.toml"
mkdir -p "$STATE/edge.d"
cat >"$STATE/edge.d/50-demo.toml" <<CONF
# Written by scripts/demo.sh
[mqtt]
broker = "mqtt://127.0.0.1:$PORT"

[ingest]
summary_every_secs = 5
device_silent_secs = 15

[triage]
onnxruntime_library = "$(onnxruntime_lib)"
model_dir = "$ROOT/edge-models/hema3n-core"
variant = "fp32"
CONF

for d in demo-mon-1 demo-mon-2 demo-mon-3; do
    "$BIN" devices add "$d" >/dev/null 2>&1 && log "registered device $d" || true
done
CASE="$("$BIN" debug soak --count 1 --last-name Demo-Patient | awk '{print $3}')"
"$BIN" devices bind demo-mon-1 "$CASE"

log "starting the daemon"
"$BIN" run 2>"$DEMO/daemon.log" & DAEMON=$!; PIDS+=($DAEMON)
for _ in $(seq 1 100); do grep -q "subscribed to device topics" "$DEMO/daemon.log" && break; sleep 0.1; done
grep -q "subscribed to device topics" "$DEMO/daemon.log" || { cat "$DEMO/daemon.log"; die "daemon did not come up"; }

SIM_ARGS=()
[ "$DURATION" -gt 0 ] && SIM_ARGS=(--duration-secs "$DURATION")
log "starting 3 simulated monitors (demo-mon-1 follows haemorrhagic shock; 5 % faulty packs)"
"$BIN" simulate --devices 3 --device-prefix demo-mon- --scenario shock --interval-ms 1000 \
    --scenario-secs 300 --faults garbage,bad-units,clock-skew --fault-rate 0.05 \
    "${SIM_ARGS[@]}" >"$DEMO/simulator.log" 2>&1 & PIDS+=($!)

cat <<TXT

  HEMA3N Edge demo is running.
    data directory : $STATE   (encrypted database, keys 0600)
    broker         : mqtt://127.0.0.1:$PORT
    demo case      : $CASE   (monitor demo-mon-1 bound to it)
    daemon log     : $DEMO/daemon.log   (an "ingest summary" line every 5 s)
  Try in another shell:  HEMA3N_CONFIG=$STATE/edge.toml $BIN devices list
  The case's triage is printed every 15 s below as the simulated patient deteriorates.

TXT
show_triage() {
    while :; do
        sleep 15   # display interval of the demo, not synchronisation
        printf '\n--- triage of the demo case (%s) ---\n' "$(date +%T)"
        "$BIN" triage show "$CASE" 2>/dev/null | head -8 || true
    done
}
show_triage & PIDS+=($!)
if [ "$DURATION" -gt 0 ]; then
    tail -n +1 -f "$DEMO/daemon.log" & TAIL=$!
    sleep "$DURATION"   # demo length chosen by the user, not synchronisation
    kill "$TAIL" 2>/dev/null || true
else
    tail -n +1 -f "$DEMO/daemon.log" || true
fi
cleanup
PIDS=()
"$BIN" devices list
"$BIN" audit verify
