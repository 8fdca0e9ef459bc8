#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs lathe into it.
#
# Why a script and not a plain `pip install -e .`: pip resolves `torch` to the default
# wheel, which on Linux is a multi-GB CUDA build. On a machine without CUDA we install the
# CPU build first and then pin exactly that torch with a constraints file, so no later
# dependency can replace it. On a machine with CUDA we install the normal wheel.
#
# Usage: scripts/setup_env.sh [extra]   (extra: "dev" installs the test dependencies)
set -euo pipefail

VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
EXTRA="${1:-}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] CUDA found: installing torch==$TORCH_VERSION (default wheel)"
        "${PIP[@]}" "torch==$TORCH_VERSION"
    else
        spec="torch==$TORCH_VERSION+cpu"
        echo "[setup] no CUDA: installing the CPU build $spec"
        # The configured indexes first (a local wheel house may carry the CPU build);
        # otherwise PyTorch's CPU index, where the +cpu builds live.
        "${PIP[@]}" "$spec" 2>/dev/null \
            || "${PIP[@]}" "$spec" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

# torchvision, for the video processors of multimodal models (images work without it). Its PyPI wheels are
# CUDA builds that fail to import beside the CPU torch, so without CUDA: a local wheel of the matching release
# from $LATHE_WHEELHOUSE (default ../shared/wheels, where one exists), else PyTorch's CPU index.
if [ "$EXTRA" = "dev" ] || [ "$EXTRA" = "multimodal" ]; then
    if ! "$PY" -c "import torchvision" 2>/dev/null; then
        minor=$("$PY" -W ignore -c "import torch; print(torch.__version__.split('.')[1])")
        vision="0.$((minor + 15))"
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            "${PIP[@]}" -c "$constraints" "torchvision==$vision.*" || echo "[setup] torchvision not installed"
        else
            wheels="${LATHE_WHEELHOUSE:-../shared/wheels}"
            local_wheel=$(ls "$wheels"/torchvision-"$vision".*cpu*.whl 2>/dev/null | head -1 || true)
            { [ -n "$local_wheel" ] && "${PIP[@]}" --no-deps "$local_wheel"; } \
                || "${PIP[@]}" --no-deps --retries 0 --timeout 10 "torchvision==$vision.*+cpu" \
                    --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
                || echo "[setup] no CPU torchvision $vision reachable: video processors unavailable (video tests skip)"
        fi
    fi
fi

constraints="$VENV/torch-constraints.txt"
"$PY" -W ignore -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
# A working torchvision is pinned too: a package that asks for it (timm) must not swap in PyPI's CUDA-linked build.
# (the installed distribution's version: a repackaged wheel's module may report another)
"$PY" -W ignore -c "import importlib.metadata as m, torchvision; print('torchvision==' + m.version('torchvision'))" \
    >> "$constraints" 2>/dev/null || true
echo "[setup] pinned $(tr '\n' ' ' < "$constraints")"

target="."
[ -n "$EXTRA" ] && target=".[$EXTRA]"
"${PIP[@]}" -c "$constraints" -e "$target"
echo "[setup] lathe installed in $VENV"
