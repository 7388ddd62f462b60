#!/usr/bin/env bash
# API contract check: schemathesis (--checks all, a bounded number of examples per operation)
# against the OpenAPI document served by a real daemon on loopback, authenticated as a
# paramedic. Any failure fails the script (warnings, e.g. operations a paramedic may not use,
# do not).
#
#   ./scripts/contract.sh [BINARY]     default target/debug/hema3n-edge
#   CONTRACT_EXAMPLES=50 ./scripts/contract.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"
BIN="${1:-$ROOT/target/debug/hema3n-edge}"
EXAMPLES="${CONTRACT_EXAMPLES:-10}"
[ -x "$BIN" ] || die "$BIN not built (cargo build)"
install_contract_tools

DIR="$(mktemp -d)"
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true
    # Kept for a failed run's diagnosis.
    cp "$DIR/daemon.log" "$ROOT/target/contract-daemon.log" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" init --data-dir "$DIR/state" >/dev/null
mkdir -p "$DIR/state/edge.d"
printf '[api]\nlisten = "127.0.0.1:0"\n' >"$DIR/state/edge.d/00-contract.toml"
CFG="$DIR/state/edge.toml"
PIN="$(python3 -c 'import secrets; print("c" + secrets.token_hex(12))')"
printf '%s\n' "$PIN" | "$BIN" --config "$CFG" users add contract --name Contract --role paramedic >/dev/null
NO_COLOR=1 RUST_LOG=info "$BIN" --config "$CFG" run >"$DIR/daemon.log" 2>&1 &
PID=$!
PORT=""
for _ in $(seq 300); do
    PORT="$(sed -n 's/.*api listening (https) addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$DIR/daemon.log" | head -1)"
    [ -n "$PORT" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/daemon.log"; die "daemon exited"; }
    sleep 0.1
done
[ -n "$PORT" ] || die "daemon did not listen"
URL="https://127.0.0.1:$PORT"
TOKEN="$(PIN="$PIN" URL="$URL" python3 - <<'PY'
import json, os, ssl, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request(os.environ["URL"] + "/api/v1/auth/login", method="POST",
    data=json.dumps({"user_id": "contract", "secret": os.environ["PIN"]}).encode(),
    headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req, context=ctx))["token"])
PY
)"
log "schemathesis: $EXAMPLES examples per operation against $URL"
# Logging out would end the token the run uses; it is covered by tests/api.rs.
PYTHONPATH="$(contract_tools_dir)" python3 -m schemathesis.cli \
    --config-file "$ROOT/tests/contract/schemathesis.toml" run "$URL/api/v1/openapi.json" \
    --checks all -n "$EXAMPLES" --seed "${CONTRACT_SEED:-1}" --tls-verify false \
    -H "Authorization: Bearer $TOKEN" -H "Territory-Id: default" \
    --exclude-path /api/v1/auth/logout
