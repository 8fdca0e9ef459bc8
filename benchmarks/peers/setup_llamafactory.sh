#!/usr/bin/env bash
# LLaMA-Factory 0.9.5 from PyPI in its own virtual environment, for benchmarks/compare_peer.py.
#
#   bash benchmarks/peers/setup_llamafactory.sh          # creates benchmarks/peers/.venv-llamafactory
#
# On a CPU-only machine three things keep it importable:
#  1. torch==2.13.0 goes in first and stays pinned (a constraints file), so resolving
#     llamafactory's requirements keeps the CPU build instead of pulling a CUDA one;
#  2. torchvision, pulled in as a CUDA-only wheel, is removed (transformers then skips the vision
#     code paths instead of failing to import it);
#  3. torchaudio's compiled extension libraries are moved aside (they are built for CUDA and fail to
#     load; without them torchaudio imports as pure python, which is all transformers asks of it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LLAMAFACTORY_VENV:-$HERE/.venv-llamafactory}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "torch==2.13.0"
TORCH_PIN="$VENV/torch-constraints.txt"
"$VENV/bin/python" -c "import torch; print(f'torch=={torch.__version__}')" > "$TORCH_PIN"
"${PIP[@]}" install -q -c "$TORCH_PIN" "llamafactory==0.9.5"

"${PIP[@]}" uninstall -y -q torchvision 2>/dev/null || true
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -d "$SITE/torchaudio/lib" ]; then
  mkdir -p "$SITE/torchaudio/lib.disabled"
  find "$SITE/torchaudio/lib" -maxdepth 1 -name '*.so' -exec mv {} "$SITE/torchaudio/lib.disabled/" \;
fi
find "$SITE/torchaudio" -maxdepth 1 -name '_torchaudio*.so' -exec mv {} "$SITE/torchaudio/lib.disabled/" \; 2>/dev/null || true

"$VENV/bin/python" - <<'PY'
import torch, transformers, llamafactory
print(f"llamafactory {llamafactory.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
PY
echo "ready: $VENV/bin/llamafactory-cli"
