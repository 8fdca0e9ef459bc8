#!/usr/bin/env bash
# lathe as a user installs it (`pip install lathe`, no optional extras), for benchmarks/compare_peer.py:
# the dev environment carries hqq, torchao and deepspeed, which transformers imports at start-up.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/work/venv-lathe bash scripts/setup_env.sh
