#!/usr/bin/env bash
# Reproducibly trains, quantizes and documents HEMA3N-Core (edge-models/hema3n-core).
#
#   ./scripts/train-model.sh [--mimic triage.csv] [--n 30000] [--epochs 30]
#
# Installs the pinned requirements into .tools/model, then runs train.py, which rewrites the
# committed artifacts, manifest.toml, metrics.json, MODEL_CARD.md and the parity fixture, then
# signs the manifest (manifest.sig) with a development model-signing key:
# $HEMA3N_MODEL_SIGNING_KEY, default .tools/model-signing/model-signing.key, created on first use
# (never committed). Its public part goes to edge-models/model-signing-dev.pub, which the demo,
# the tests and a development image pin; a release re-signs with the release key.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
install_model_tools
PYTHONPATH="$ROOT/.tools/model" python3 edge-models/hema3n-core/train.py "$@"
KEY="${HEMA3N_MODEL_SIGNING_KEY:-$ROOT/.tools/model-signing/model-signing.key}"
cargo build --locked --quiet --bin hema3n-edge
BIN="$ROOT/target/debug/hema3n-edge"
if [ ! -f "$KEY" ]; then
    [ -z "${HEMA3N_MODEL_SIGNING_KEY:-}" ] || die "HEMA3N_MODEL_SIGNING_KEY=$KEY does not exist"
    "$BIN" model keygen --out "$(dirname "$KEY")"
fi
"$BIN" model sign edge-models/hema3n-core --key "$KEY"
if [ -z "${HEMA3N_MODEL_SIGNING_KEY:-}" ]; then
    cp "$(dirname "$KEY")/model-signing.pub" edge-models/model-signing-dev.pub
fi
