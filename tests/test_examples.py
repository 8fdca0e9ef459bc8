"""Every shipped example config loads and validates (no model is loaded)."""

from __future__ import annotations

import math

import pytest
import yaml

from lathe.config import load_config
from tests.conftest import ROOT

# examples/accelerate holds launcher configs, not lathe configs (tests/distributed/test_fsdp.py reads them).
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if "accelerate" not in p.parts)


def test_examples_exist():
    assert len(EXAMPLES) >= 4


TRAINING = [p for p in EXAMPLES if "eval" not in p.parts]


@pytest.mark.parametrize("path", TRAINING, ids=[str(p.relative_to(ROOT)) for p in TRAINING])
def test_example_loads(path):
    overrides = ["model_name_or_path=/some/model"] if "demo" in path.parts else []
    cfg = load_config(path, overrides)
    assert cfg.training.output_dir
    assert cfg.data.dataset


def test_eval_example_runs_on_a_tiny_model(tiny_llama, tmp_path):
    from lathe.evaluate.choice import run_choice_eval

    cfg = load_config(ROOT / "examples/eval/sample_mmlu.yaml",
                      [f"model_name_or_path={tiny_llama}", "template=chatml", f"task_dir={ROOT / 'evaluation'}",
                       f"save_dir={tmp_path / 'eval'}"], purpose="infer")
    assert 0 <= run_choice_eval(cfg)["Average"] <= 100


# *_ds* configs need a distributed launch; tests/distributed/test_deepspeed.py trains ZeRO-3 through one.
# grpo / rloo examples log rewards, not a train_loss: tests/train/test_grpo_stage.py runs each of them.
RUNNABLE = [p for p in TRAINING if "demo" not in p.parts and "ppo" not in p.name and "_ds" not in p.stem
            and yaml.safe_load(p.read_text()).get("stage") not in ("grpo", "rloo")]


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_example_trains_on_a_tiny_model(path, tiny_llama, tmp_path):
    """Each example runs as shipped, with only the model swapped for a tiny one and 2 steps."""
    from lathe.train import run_stage

    cfg = load_config(path, [f"model_name_or_path={tiny_llama}", f"output_dir={tmp_path / 'out'}", "max_steps=2",
                             "cutoff_len=128", f"dataset_dir={ROOT / 'data'}", "gradient_accumulation_steps=1",
                             "disable_tqdm=true", "report_to=none"])
    loss = run_stage(cfg).metrics["train_loss"]
    assert math.isfinite(loss) and loss > 0
    saved = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_model.safetensors", "model.safetensors"} & saved, saved  # the trained weights were written


def test_ppo_example_trains_with_the_reward_example(tiny_llama, tmp_path):
    from lathe.train import run_stage

    common = [f"model_name_or_path={tiny_llama}", "max_steps=2", "cutoff_len=128", f"dataset_dir={ROOT / 'data'}",
              "gradient_accumulation_steps=1", "disable_tqdm=true"]
    run_stage(load_config(ROOT / "examples/train_lora/qwen2_5_lora_reward.yaml", [*common, f"output_dir={tmp_path / 'rm'}"]))
    cfg = load_config(ROOT / "examples/train_lora/qwen2_5_lora_ppo.yaml",
                      [*common, f"output_dir={tmp_path / 'ppo'}", f"reward_model={tmp_path / 'rm'}", "max_new_tokens=8"])
    metrics = run_stage(cfg).metrics
    assert {"train_reward_first", "train_reward_last", "train_reward_mean"} <= set(metrics)
