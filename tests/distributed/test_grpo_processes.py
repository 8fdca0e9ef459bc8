"""`stage: grpo` / `rloo` over several processes (torchrun, gloo on the CPU).

Each process generates its own share of the step's completions and DDP averages the gradients. So:
the gradients two processes make from two halves of a rollout equal one process's over the whole
rollout, for every loss type; a two-process run logs every process's completions once; and it
resumes from a checkpoint exactly, each process with its own random states.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import DATA

ROWS, GROUP, PROMPT, COMPLETION, MICRO = 16, 4, 3, 5, 4
VARIANTS = {  # loss_type, importance_sampling_level
    "grpo": ("grpo", "token"), "bnpo": ("bnpo", "token"), "dr_grpo": ("dr_grpo", "token"),
    "dapo": ("dapo", "token"), "gspo": ("grpo", "sequence"),
}


def _rollout():
    """A fixed rollout of ROWS completions (random tokens and masks) with random advantages."""
    from lathe.train.grpo_rollout import Rollout

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 40, (ROWS, PROMPT + COMPLETION), generator=g)
    mask = (torch.rand(ROWS, COMPLETION, generator=g) > 0.3).long()
    mask[:, 0] = 1
    attn = torch.cat([torch.ones(ROWS, PROMPT, dtype=torch.long), mask], dim=1)
    rollout = Rollout(ids, attn, PROMPT, mask, torch.zeros(ROWS, dtype=torch.bool), torch.zeros(ROWS),
                      torch.zeros(ROWS, 1), [""] * ROWS, [""] * ROWS)
    return rollout, torch.randn(ROWS, generator=g)


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(config)


def _gradients(rank: int, world: int, init: str | None = None) -> dict[str, list[torch.Tensor]]:
    """Each variant's gradients, from this process's share of the rollout (all of it in one process)."""
    import torch.distributed as dist

    from lathe.train.grpo import policy_gradients
    from lathe.train.loop_ranks import Ranks, policy_logps
    from lathe.train.losses.grpo import LossSettings

    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ranks = Ranks(rank, world)
    model = _model()
    scorer = policy_logps(model, 1.0, ranks, torch.device("cpu"))
    rollout, advantages = _rollout()
    share = torch.arange(rank * ROWS // world, (rank + 1) * ROWS // world)
    mine = rollout.select(share)
    out = {}
    for name, (loss_type, level) in VARIANTS.items():
        model.zero_grad()
        settings = LossSettings(loss_type, 0.2, None, level, 0.0, COMPLETION)
        policy_gradients(scorer, mine, advantages[share], mine.mask, torch.arange(len(share)), MICRO, settings,
                         ranks.total(float(mine.mask.sum())), world)
        out[name] = [p.grad.clone() for p in model.parameters()]
    if world > 1:
        dist.destroy_process_group()
    return out


def _worker(rank: int, world: int, init: str, folder: str) -> None:
    torch.set_num_threads(1)
    torch.save(_gradients(rank, world, init), Path(folder) / f"grads-{rank}.pt")


def test_two_processes_make_one_processs_gradients_for_every_loss_type(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    one = _gradients(0, 1)
    twos = [torch.load(tmp_path / f"grads-{rank}.pt") for rank in (0, 1)]
    for name in VARIANTS:
        for want, got0, got1 in zip(one[name], twos[0][name], twos[1][name]):
            torch.testing.assert_close(got0, got1, rtol=0, atol=0)  # DDP gives each process the same gradients
            torch.testing.assert_close(got0, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------- a run


def _train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}
    return subprocess.run([sys.executable, "-m", "lathe", "train", str(config), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


@pytest.fixture
def grpo_config(tmp_path, small_vocab_tokenizer) -> Path:
    from lathe.testing.tiny import build_tiny_model

    (tmp_path / "rewards.py").write_text("def digits(prompts, completions, **columns):\n"
                                         "    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) "
                                         "for c in completions]\n")
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(build_tiny_model("llama", small_vocab_tokenizer, hidden_size=64, num_layers=2)),
        "stage": "grpo", "do_train": True, "finetuning_type": "lora", "lora_target": "all",
        "dataset": "lathe_identity", "dataset_dir": str(DATA), "template": "chatml", "cutoff_len": 128,
        "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 8, "max_steps": 4,
        "learning_rate": 0.01, "logging_steps": 1, "save_strategy": "steps", "save_steps": 2,
        "reward_funcs": "rewards.py:digits", "top_k": 0, "report_to": "none", "disable_tqdm": True,
        "overwrite_output_dir": True, "output_dir": str(tmp_path / "unused"),
    }))
    return path


def _two_process_run(config: Path, out: Path) -> list[dict]:
    proc = _train(config, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _log(out)


def test_two_processes_log_every_completion_once(grpo_config, tmp_path):
    out = tmp_path / "two"
    log = _two_process_run(grpo_config, out)
    assert [r["current_steps"] for r in log] == [1, 2, 3, 4]  # one writer
    assert {r["completions"] for r in log} == {16}  # 8 per process, both processes' in each line
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state*")) == ["rng_state.pth", "rng_state_1.pth"]
    assert (out / "adapter_model.safetensors").exists()


@pytest.mark.slow  # two more runs of two processes (about 30 s)
def test_a_two_process_run_resumes_exactly(grpo_config, tmp_path):
    out, resumed = tmp_path / "two", tmp_path / "resumed"
    log = _two_process_run(grpo_config, out)
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    proc = _train(grpo_config, f"output_dir={resumed}", "overwrite_output_dir=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tail = _log(resumed)
    assert [r["current_steps"] for r in tail] == [3, 4]
    for key in ("reward", "loss", "completion_length", "entropy"):
        assert [r[key] for r in tail] == pytest.approx([r[key] for r in log[2:]], abs=1e-6), key
