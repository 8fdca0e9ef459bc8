#!/usr/bin/env bash
# Real multi-GPU runs of each distributed engine lathe offers: a few steps of DDP, DeepSpeed
# ZeRO-2, ZeRO-3 and FSDP/FSDP2 on a small random model, each printing how the weights were held
# ("[lathe] sharding: ...") and every rank's peak GPU memory. Then the FSDP tests that CPUs skip.
# Called by scripts/gpu_check.sh; on its own: bash scripts/gpu_check_distributed.sh
# Needs >= 2 CUDA GPUs (exits 0 with a note otherwise) and deepspeed for the ZeRO runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPU=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" -lt 2 ]; then
  echo "gpu_check_distributed: needs at least 2 CUDA GPUs, found $NGPU; nothing run."
  exit 0
fi
N=${NPROC_PER_NODE:-$NGPU}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MODEL=$($PY - <<'PY'
from lathe.testing.demo_tokenizer import build_demo_tokenizer
from lathe.testing.tiny import build_tiny_model
print(build_tiny_model("llama", build_demo_tokenizer(), hidden_size=512, num_layers=4))
PY
)
cat > "$WORK/run.yaml" <<YAML
model_name_or_path: $MODEL
dataset: lathe_identity
dataset_dir: data
template: chatml
cutoff_len: 128
do_train: true
finetuning_type: full
max_steps: 5
logging_steps: 1
per_device_train_batch_size: 2
learning_rate: 1.0e-4
bf16: true
save_strategy: "no"
overwrite_output_dir: true
disable_tqdm: true
report_to: none
output_dir: $WORK/unused
YAML

failed=0
run() {  # name, command...
  local name=$1; shift
  echo "=== $name ($N processes)"
  if "$@" > "$WORK/$name.log" 2>&1; then
    grep -E "\[lathe\] (sharding|peak GPU memory|done)" "$WORK/$name.log" | sort -u
  else
    echo "FAILED: $name (last lines of its log:)"; tail -25 "$WORK/$name.log"; failed=1
  fi
}
run ddp env FORCE_TORCHRUN=1 NPROC_PER_NODE="$N" $PY -m lathe train "$WORK/run.yaml" output_dir="$WORK/ddp"
if $PY -c "import deepspeed" 2>/dev/null; then
  run zero2 env NPROC_PER_NODE="$N" $PY -m lathe train "$WORK/run.yaml" output_dir="$WORK/z2" \
    deepspeed=examples/deepspeed/ds_z2_config.json
  run zero3 env NPROC_PER_NODE="$N" $PY -m lathe train "$WORK/run.yaml" output_dir="$WORK/z3" \
    deepspeed=examples/deepspeed/ds_z3_config.json
  run zero3_offload env NPROC_PER_NODE="$N" $PY -m lathe train "$WORK/run.yaml" output_dir="$WORK/z3o" \
    deepspeed=examples/deepspeed/ds_z3_offload_config.json
else
  echo "=== deepspeed not installed: ZeRO runs skipped (pip install lathe[deepspeed])"
fi
for cfg in fsdp_config fsdp2_config fsdp_config_offload; do
  run "$cfg" $PY -m accelerate.commands.launch --config_file "examples/accelerate/$cfg.yaml" --num_processes "$N" \
    -m lathe train "$WORK/run.yaml" output_dir="$WORK/$cfg"
done
run qlora_fsdp2 $PY -m accelerate.commands.launch --config_file examples/accelerate/fsdp2_config.yaml \
  --num_processes "$N" -m lathe train "$WORK/run.yaml" output_dir="$WORK/qlora_fsdp2" finetuning_type=lora \
  quantization_bit=4 learning_rate=1.0e-3
echo "=== FSDP tests (skipped on CPU machines)"
$PY -m pytest -q -p no:cacheprovider tests/distributed/test_fsdp.py -k two_gpus || failed=1
exit $failed
