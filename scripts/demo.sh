#!/usr/bin/env bash
# Builds and runs HEMA3N Edge on a local development data directory, with an on-board broker,
# simulated field devices, and a "cloud" broker with the cloud receiver.
#
#   ./scripts/demo.sh [--duration SECONDS] [--fresh]
#
# What it does: creates .demo/state (keys 0600, config, encrypted database) with
# `hema3n-edge init`; starts mosquitto on a free loopback port (.demo/broker); registers three
# simulated monitors; opens a demo case and binds the first monitor to it; runs the daemon and
# the simulator (mixed clinical scenarios, a few faulty packs). A second mosquitto plays the
# cloud broker and `hema3n-receiver` runs against it (.demo/cloud): a closed case's sealed FHIR
# bundle is receipted, then the cloud goes away for a while, another case is closed, and the
# backlog drains when it returns. The daemon's log shows vitals arriving and rejects; Ctrl-C (or
# --duration) stops everything and verifies the audit log.
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
cargo build --locked --release --bin hema3n-edge --bin hema3n-receiver
BIN="$ROOT/target/release/hema3n-edge"
RBIN="$ROOT/target/release/hema3n-receiver"
DEMO="$ROOT/.demo"
STATE="$DEMO/state"
[ "$FRESH" -eq 1 ] && rm -rf "$DEMO"
mkdir -p "$DEMO/broker"

PIDS=()
cleanup() {
    # The cloud broker may have been restarted by the sync story (a subshell).
    [ -f "$DEMO/cloud-broker/pid" ] && PIDS+=("$(cat "$DEMO/cloud-broker/pid")")
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
set_tcp_nodelay true
$USER_LINE
CONF
log "starting mosquitto on 127.0.0.1:$PORT"
mosquitto -c "$DEMO/broker/mosquitto.conf" >"$DEMO/broker/mosquitto.log" 2>&1 & PIDS+=($!)

# The "cloud" broker (loopback, plain MQTT for the demo; production is mqtts with mTLS).
mkdir -p "$DEMO/cloud-broker"
CPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$DEMO/cloud-broker/mosquitto.conf" <<CONF
listener $CPORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $DEMO/cloud-broker/
max_queued_messages 1000000
message_size_limit 16777216
set_tcp_nodelay true
$USER_LINE
CONF
start_cloud() {
    mosquitto -c "$DEMO/cloud-broker/mosquitto.conf" >>"$DEMO/cloud-broker/mosquitto.log" 2>&1 &
    CLOUD=$!; PIDS+=($CLOUD); echo "$CLOUD" >"$DEMO/cloud-broker/pid"
}
log "starting the cloud broker on 127.0.0.1:$CPORT"
start_cloud

APORT=8443
python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",8443))' 2>/dev/null \
    || APORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
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
# The development key that signed the committed model (scripts/train-model.sh).
model_signing_keys = ["$(grep -v -- ----- "$ROOT/edge-models/model-signing-dev.pub" | tr -d '\n')"]
variant = "fp32"

[api]
listen = "127.0.0.1:$APORT"
CONF

# Demo crew accounts (PINs are for this loopback demo only; real crews choose their own).
DEMO_PIN=284613
for u in "medic1 paramedic Demo-Paramedic" "emt1 emt Demo-EMT" "desk1 staff Demo-Staff" "super1 supervisor Demo-Supervisor" "admin1 admin Demo-Admin"; do
    set -- $u
    "$BIN" users list | grep -q "^$1 " || echo "$DEMO_PIN" | "$BIN" users add "$1" --role "$2" --name "${3//-/ }" >/dev/null
done

log "initialising the cloud receiver in $DEMO/cloud and exchanging public keys"
"$RBIN" init --data-dir "$DEMO/cloud" --broker "mqtt://127.0.0.1:$CPORT" --receiver-id demo-cloud >/dev/null
sed -i "s#^broker = .*#broker = \"mqtt://127.0.0.1:$CPORT\"#" "$DEMO/cloud/receiver.toml"
RCFG="$DEMO/cloud/receiver.toml"
"$BIN" keys export-public --out "$DEMO/appliance.pem"
"$RBIN" --config "$RCFG" appliances add demo-ambulance-1 "$DEMO/appliance.pem" >/dev/null
"$RBIN" --config "$RCFG" export-public --out "$DEMO/receiver-public.toml"
"$BIN" keys import-receiver "$DEMO/receiver-public.toml"
cat >"$STATE/edge.d/60-sync.toml" <<CONF
# Written by scripts/demo.sh: the cloud is a loopback broker without TLS (demo only).
[sync]
cloud_broker = "mqtt://127.0.0.1:$CPORT"
allow_plaintext = true
retry_interval_secs = 2
backoff_max_ms = 2000
receipt_timeout_secs = 10
CONF
"$RBIN" --config "$RCFG" run 2>"$DEMO/receiver.log" & PIDS+=($!)

for d in demo-mon-1 demo-mon-2 demo-mon-3; do
    "$BIN" devices add "$d" >/dev/null 2>&1 && log "registered device $d" || true
done
CASE="$("$BIN" debug soak --count 1 --last-name Demo-Patient | awk '{print $3}')"
mapfile -t CLOSED < <("$BIN" debug soak --count 2 --last-name Demo-Handoff | awk '{print $3}')
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
    crew tablet    : https://127.0.0.1:$APORT/   (self-signed certificate: accept it once)
    demo logins    : medic1 (paramedic), emt1, desk1 (staff), super1 (supervisor), admin1
                     PIN $DEMO_PIN, territory "default"; the demo case follows demo-mon-1 live
    data directory : $STATE   (encrypted database, keys 0600)
    broker         : mqtt://127.0.0.1:$PORT
    demo case      : $CASE   (monitor demo-mon-1 bound to it)
    daemon log     : $DEMO/daemon.log   (an "ingest summary" line every 5 s)
    cloud          : mqtt://127.0.0.1:$CPORT, receiver log $DEMO/receiver.log
  The sync story runs below: a case is closed and receipted; the cloud goes down, another
  case is closed and waits in the outbox; the cloud returns and the backlog drains.
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

outbox() { "$BIN" outbox status 2>/dev/null | head -1; }
wait_case_receipted() {   # polls until the case's bundle is receipted (or 60 s pass)
    for _ in $(seq 1 600); do
        "$BIN" outbox list --last 100 2>/dev/null | grep -qP "\tbundle\t$1\treceipted" && return 0
        sleep 0.1
    done
    return 1
}
cloud_story() {
    printf '\n--- sync: closing case %s ---\n' "${CLOSED[0]}"
    "$BIN" cases close "${CLOSED[0]}"
    wait_case_receipted "${CLOSED[0]}" && printf -- '--- sync: bundle receipted by the cloud: %s\n' "$(outbox)"
    printf -- '--- sync: the cloud broker goes down; closing case %s ---\n' "${CLOSED[1]}"
    kill -TERM "$CLOUD"; wait "$CLOUD" 2>/dev/null || true
    rm -f "$DEMO/cloud-broker/pid"
    "$BIN" cases close "${CLOSED[1]}"
    sleep 8   # demo pacing: let the outage be visible
    printf -- '--- sync: during the outage: %s\n' "$(outbox)"
    printf -- '--- sync: the cloud broker is back ---\n'
    start_cloud
    wait_case_receipted "${CLOSED[1]}" && printf -- '--- sync: backlog drained: %s\n' "$(outbox)"
    "$RBIN" --config "$RCFG" stats | sed 's/^/--- receiver: /'
}
cloud_story & PIDS+=($!)
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
"$BIN" outbox list --last 5
"$RBIN" --config "$RCFG" bundles
"$BIN" audit verify
