#!/usr/bin/env bash
# Reproducibly trains, quantizes and documents HEMA3N-Core (edge-models/hema3n-core).
#
#   ./scripts/train-model.sh [--mimic triage.csv] [--n 30000] [--epochs 30]
#
# Installs the pinned requirements into .tools/model, then runs train.py, which rewrites the
# committed artifacts, manifest.toml, metrics.json, MODEL_CARD.md and the parity fixture.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
install_model_tools
PYTHONPATH="$ROOT/.tools/model" python3 edge-models/hema3n-core/train.py "$@"
