"""LLaMA-Factory's example training configs, run unchanged but for the model, the data and the length.

Each config trains 2 steps on a tiny model with lathe's own CLI, or is refused by name: one
`lathe train: error:` sentence that names the option or the template and the reason, never a
traceback or an unknown key. The model path becomes a tiny
random Qwen3 (16 layers, so LLaMA Pro's 8 added blocks fit), a dataset the workplace has no
local file for becomes the local demo set of its kind, and `max_steps: 2`, `max_samples`,
`cutoff_len`, `logging_steps: 1` and the output folder are set (the Ray example runs with
USE_RAY=1 on 2 workers of a local cluster); every other key is the example's own. The whole set takes minutes, so it is marked slow (`make test-slow`); the
default suite runs one config per stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import SHARED

EXAMPLES = SHARED / "llamafactory-examples"
DATA = SHARED / "data"
# The local demo set of each stage's kind of data, for examples whose data is on the hub.
LOCAL_DATA = {"pt": "c4_demo", "sft": "alpaca_en_demo", "rm": "dpo_en_demo", "dpo": "dpo_en_demo",
              "kto": "kto_en_demo", "ppo": "alpaca_en_demo"}
# What a refusal may name: an option lathe refuses, or a multimodal template lathe has no media plugin for.
REFUSALS = ("lathe does not run: ", "is a multimodal one", "cannot run with this lathe")


def _training_configs() -> list[Path]:
    if not EXAMPLES.exists():
        return []
    return sorted(p for p in EXAMPLES.rglob("*.yaml")
                  if (raw := yaml.safe_load(p.read_text()) or {}).get("stage") and raw.get("do_train"))


CONFIGS = _training_configs()
IDS = [str(p.relative_to(EXAMPLES)) for p in CONFIGS]
# The default suite's share: sft, kto and pretraining with LoRA and a refused config; the rest (full sft and dpo
# too: tests/train covers both stages and methods) under -m slow.
QUICK = {"train_lora/qwen3_lora_sft.yaml", "train_lora/qwen3_lora_kto.yaml", "train_lora/qwen3_lora_pretrain.yaml",
         "megatron/qwen3_moe_full.yaml"}


@pytest.fixture(scope="module")
def tiny_qwen3(demo_tokenizer_dir) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("qwen3", demo_tokenizer_dir, num_layers=16)


def _local(names: str, stage: str) -> str:
    """The example's datasets, each one without a local file replaced by the local demo set of its kind."""
    info = json.loads((DATA / "dataset_info.json").read_text())

    def here(name: str) -> bool:
        entry = info.get(name, {})
        return "file_name" in entry and (DATA / entry["file_name"]).exists() and not name.startswith("mllm")

    chosen = [n if here(n) else LOCAL_DATA[stage] for n in (s.strip() for s in names.split(","))]
    return ",".join(dict.fromkeys(chosen))


def overridden(path: Path, model: Path, out: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    raw.update(model_name_or_path=str(model), dataset_dir=str(DATA), output_dir=str(out), max_steps=2,
               max_samples=16, cutoff_len=128, report_to="none", overwrite_output_dir=True, logging_steps=1)
    for key in ("dataset", "eval_dataset"):
        if raw.get(key):
            raw[key] = _local(raw[key], raw["stage"])
    if isinstance(raw.get("deepspeed"), str):  # examples/deepspeed/... in LLaMA-Factory's tree
        raw["deepspeed"] = str(EXAMPLES / "deepspeed" / Path(raw["deepspeed"]).name)
    if "ray_num_workers" in raw:  # a local Ray cluster of this machine's 2 cores (the example asks for 4 GPUs)
        raw.update(ray_num_workers=2, ray_init_kwargs={"num_cpus": 2, "include_dashboard": False},
                   ray_storage_path=str(out.parent / "ray"))
    return raw


def run_example(path: Path, model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(overridden(path, model, tmp_path / "out")))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
    if "ray_num_workers" in path.read_text():
        env["USE_RAY"] = "1"  # as LLaMA-Factory's Ray example is run
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(config)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


def check_trained_or_refused(result: subprocess.CompletedProcess, out: Path) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    if result.returncode == 0:
        steps = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").read_text().splitlines()]
        assert steps[-1] == 2, steps
        return
    errors = [line for line in output.splitlines() if line.startswith("lathe train: error:")]
    assert errors and any(r in errors[-1] for r in REFUSALS), output[-3000:]  # a worker's, under torchrun
    assert "unknown option" not in errors[-1]


def _params(names) -> list:
    return [pytest.param(p, id=i, marks=() if i in names else pytest.mark.slow) for p, i in zip(CONFIGS, IDS)]


@pytest.mark.skipif(not CONFIGS, reason="../shared/llamafactory-examples is absent (lathe workplace only)")
@pytest.mark.parametrize("path", _params(QUICK))
def test_example_trains_two_steps_or_is_refused_by_name(path, tiny_qwen3, tmp_path):
    check_trained_or_refused(run_example(path, tiny_qwen3, tmp_path), tmp_path / "out")


@pytest.mark.skipif(not EXAMPLES.exists(), reason="../shared/llamafactory-examples is absent (lathe workplace only)")
def test_every_template_an_example_names_loads_or_is_refused_as_multimodal():
    """Every text template LLaMA-Factory's examples name is lathe's; the multimodal ones say so."""
    from lathe.data.templates import get_template
    from lathe.errors import LatheError

    names = {raw["template"] for p in EXAMPLES.rglob("*.yaml")
             if (raw := yaml.safe_load(p.read_text()) or {}).get("template")}
    multimodal = set()
    for name in sorted(names):
        try:
            get_template(name)
        except LatheError as err:
            assert "is a multimodal one" in str(err), name
            multimodal.add(name)
    assert len(names - multimodal) >= 9 and "qwen3_5" in names - multimodal
