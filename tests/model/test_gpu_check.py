"""scripts/gpu_check.sh and its Python part, checked on CPU at tiny size (the real run needs CUDA)."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shell_script_runs_the_checks_with_options_they_take():
    """The script is bash (syntax checked) that calls gpu_check.py with options its parser accepts, then the
    distributed checks, which exist; a GPU machine then gets no argument error after minutes of set-up."""
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    calls = [shlex.split(line) for line in script.read_text().splitlines() if "scripts/gpu_check.py" in line]
    assert calls, "gpu_check.sh no longer runs scripts/gpu_check.py"
    for words in calls:
        options = words[words.index("scripts/gpu_check.py") + 1:]
        options = [w for w in options if w not in ('"$@"', "$@", "||") and not w.startswith("status=")]
        _module().build_parser().parse_args(options)  # SystemExit (fails the test) on an unknown option
    assert "gpu_check_distributed.sh" in script.read_text() and (ROOT / "scripts" / "gpu_check_distributed.sh").is_file()


def test_one_method_measures_on_a_tiny_model(tmp_path):
    gc = _module()
    model = gc.build_model("smoke")
    row = gc.run_one("lora_sdpa", str(model), steps=2, seq=64, batch=2, out=str(tmp_path / "out"), cpu=True)
    assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["train_loss"] > 0
    assert gc.skip_reason("lora_fa2", cpu=True) == "needs CUDA"
    text = gc.table([row, {"method": "liger", "status": "skipped (needs CUDA)"}])
    assert "| lora_sdpa | ok |" in text and "| liger | skipped (needs CUDA) |" in text


def test_full_sizes_are_about_half_a_billion_parameters():
    s = _module().MODEL_SIZES["gpu"]
    h, layers, inter = s["hidden_size"], s["num_layers"], s["intermediate_size"]
    kv = h // s["num_heads"] * s["num_kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    assert 0.4e9 < layers * per_layer < 0.6e9


@pytest.mark.slow
def test_cpu_smoke_end_to_end():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-smoke",
                           "--methods", "lora_sdpa,qlora_4bit,liger"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lora_sdpa | ok |" in proc.stdout and "| liger | skipped" in proc.stdout
