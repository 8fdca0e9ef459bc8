#!/usr/bin/env bash
# GPU checks in one go (under 8 minutes on one GPU): 20 steps each of LoRA with sdpa and
# flash-attn 2, QLoRA 4-bit, unsloth and liger (when installed) on a ~0.5B model built from a
# config, then a table of peak memory and tokens/s; then the distributed checks, if present.
#
# Usage: scripts/gpu_check.sh [--cpu-smoke] [gpu_check.py options]
# Runs on a fresh CUDA machine with only this repository: it sets up .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup_env.sh dev
PY=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

"$PY" -c "import torch; print('[gpu_check] torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
status=0
timeout 420 "$PY" scripts/gpu_check.py --json gpu_check_results.json "$@" || status=$?

if [ -x scripts/gpu_check_distributed.sh ] || [ -f scripts/gpu_check_distributed.sh ]; then
    echo "[gpu_check] running scripts/gpu_check_distributed.sh"
    bash scripts/gpu_check_distributed.sh || status=$?
fi
exit "$status"
