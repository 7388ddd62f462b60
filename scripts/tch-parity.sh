#!/usr/bin/env bash
# Optional: checks the ONNX path against the libtorch reference network (cargo feature
# `tch-backend`). Installs torch==2.13.0 from PyPI into .tools/torch (the CUDA build with its
# nvidia-* packages, about 4.7 GB, even on CPU), exports TorchScript, builds with
# LIBTORCH_USE_PYTORCH=1 and runs tests/tch_parity.rs. Not part of CI (size and build time).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/common.sh
. scripts/lib/common.sh
install_build_deps
install_model_tools
TORCH="$ROOT/.tools/torch"
if [ ! -d "$TORCH/torch" ]; then
    log "installing torch==2.13.0 into .tools/torch (large download)"
    python3 -m pip install --quiet --disable-pip-version-check --target "$TORCH" torch==2.13.0
fi
OUT="$ROOT/target/hema3n-core.torchscript.pt"
mkdir -p "$ROOT/target"
PYTHONPATH="$TORCH:$ROOT/.tools/model" python3 edge-models/hema3n-core/export_torchscript.py "$OUT"
export LIBTORCH_USE_PYTORCH=1 PYTHONPATH="$TORCH"
export LD_LIBRARY_PATH="$TORCH/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HEMA3N_TORCHSCRIPT="$OUT" HEMA3N_ORT_LIB="${HEMA3N_ORT_LIB:-$(onnxruntime_lib)}"
cargo test --features tch-backend --test tch_parity -- --nocapture
