"""SFT end to end on a tiny model: each method learns, saves, reloads identically, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lathe.config import load_config
from lathe.train import run_stage


def logged(output_dir: Path, key: str = "loss") -> list[tuple[int, float]]:
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [(r["current_steps"], r[key]) for r in map(json.loads, lines) if key in r]


def falls(losses: list[float]) -> bool:
    """The mean of the last 3 losses is clearly below the mean of the first 3."""
    head, tail = losses[:3], losses[-3:]
    return sum(tail) / len(tail) < 0.92 * sum(head) / len(head)


def batch_for(tokenizer):
    ids = tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    return torch.tensor([ids])


@pytest.mark.parametrize(
    "method, extra",
    [
        ("full", {"learning_rate": 3e-3}),
        ("freeze", {"learning_rate": 5e-3, "freeze_trainable_layers": 1, "freeze_extra_modules": "embed_tokens,lm_head"}),
        ("lora", {"learning_rate": 5e-3, "lora_rank": 16}),
    ],
)
def test_method_learns_saves_and_reloads(sft_config, method, extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(sft_config(finetuning_type=method, plot_loss=True, max_steps=20, **extra))
    result = run_stage(cfg)
    out = Path(cfg.training.output_dir)

    losses = [loss for _, loss in logged(out)]
    assert len(losses) == 20
    assert falls(losses), [round(x, 3) for x in losses]
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert {"current_steps", "total_steps", "loss", "lr", "epoch", "total_tokens", "throughput",
            "elapsed_time", "remaining_time"} <= set(log[-1])
    assert log[-1]["total_tokens"] > 0
    assert (out / "training_loss.png").stat().st_size > 1000
    assert (out / "lathe_config.yaml").exists()

    model = result.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = batch_for(tokenizer)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    if method == "lora":
        from peft import AutoPeftModelForCausalLM

        assert (out / "adapter_model.safetensors").exists()
        reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        assert (out / "model.safetensors").exists()
        reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = reloaded.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_trainable_parameters_per_method(sft_config):
    from lathe.model.adapters import apply_method, count_parameters
    from lathe.model.load import load_model, load_tokenizer

    counts = {}
    for method, extra in [("full", {}), ("freeze", {"freeze_trainable_layers": 1}), ("lora", {"lora_rank": 4})]:
        cfg = load_config(sft_config(finetuning_type=method, **extra))
        tokenizer = load_tokenizer(cfg.model)
        model = apply_method(load_model(cfg, tokenizer), cfg)
        counts[method] = count_parameters(model)
        if method == "freeze":
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            assert trainable and all(".layers.1." in n for n in trainable)
    assert counts["full"][0] == counts["full"][1]
    assert 0 < counts["freeze"][0] < counts["full"][0]
    assert 0 < counts["lora"][0] < counts["freeze"][0]


def test_resume_continues_from_saved_step(sft_config, tmp_path):
    first = load_config(sft_config(max_steps=10, save_strategy="steps", save_steps=5))
    run_stage(first)
    out = Path(first.training.output_dir)
    full_losses = dict(logged(out))
    assert (out / "checkpoint-5").is_dir() and (out / "checkpoint-10").is_dir()

    # Mark the records up to the checkpoint: a resumed run keeps them, a restarted one would not.
    marked = [json.dumps({**json.loads(line), "loss": -1.0}) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    (out / "trainer_log.jsonl").write_text("\n".join(marked) + "\n")
    resumed = load_config(sft_config(max_steps=10, save_strategy="steps", save_steps=5,
                                     resume_from_checkpoint=str(out / "checkpoint-5")))
    run_stage(resumed)
    steps = [s for s, _ in logged(out)]
    assert steps == list(range(1, 11))  # records past the checkpoint dropped, steps 6-10 logged once
    for step, loss in logged(out):
        if step <= 5:
            assert loss == -1.0  # kept from before: training did not start over
        else:
            assert loss == pytest.approx(full_losses[step], abs=1e-4)


def test_output_dir_with_checkpoints_resumes_automatically(sft_config):
    run_stage(load_config(sft_config(max_steps=4, save_strategy="steps", save_steps=2)))
    cfg = load_config(sft_config(max_steps=6, save_strategy="steps", save_steps=2, overwrite_output_dir=False))
    run_stage(cfg)
    assert [s for s, _ in logged(Path(cfg.training.output_dir))] == [1, 2, 3, 4, 5, 6]
    state = json.loads((Path(cfg.training.output_dir) / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_saved_tokenizer_carries_the_trained_template(sft_config):
    from transformers import AutoTokenizer

    from lathe.data.templates import get_template

    cfg = load_config(sft_config(template="qwen", max_steps=1))
    run_stage(cfg)
    saved = AutoTokenizer.from_pretrained(cfg.training.output_dir)
    messages = [{"role": "user", "content": "Who are you?"}]
    ids = saved.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert list(ids) == get_template("qwen").encode_prompt(saved, messages)


def test_tool_calling_data_trains(sft_config):
    from tests.conftest import shared_path

    cfg = load_config(sft_config(dataset="glaive_toolcall_en_demo", dataset_dir=str(shared_path("data")),
                                 template="qwen", max_samples=16, cutoff_len=512, max_steps=2))
    result = run_stage(cfg)
    assert result.metrics["train_loss"] > 0


def test_defaults_flatten_batches_and_checkpoint_only_when_memory_needs_it(sft_config, monkeypatch):
    import torch

    from lathe.model import memory as plan
    from lathe.model.load import load_model, load_tokenizer
    from lathe.train.sft import padding_free

    cfg = load_config(sft_config())
    model = load_model(cfg, load_tokenizer(cfg.model))
    assert padding_free(cfg, model)  # llama builds its mask from per-sample position ids
    assert not padding_free(load_config(sft_config(padding_free=False)), model)
    assert not padding_free(cfg, torch.nn.Linear(2, 2))  # a module that cannot keep samples apart

    assert plan.checkpointing_plan(cfg, model).layers == 0
    monkeypatch.setattr(plan, "free_memory", lambda: 1024)
    assert plan.checkpointing_plan(cfg, model).layers == 2  # every layer, and the MLP tiled: it still does not fit
    assert plan.checkpointing_plan(cfg, model).tiled_mlp
    assert plan.checkpointing_plan(load_config(sft_config(disable_gradient_checkpointing=False)), model).layers == 2
    monkeypatch.setattr(plan, "free_memory", lambda: 10**12)
    assert plan.checkpointing_plan(load_config(sft_config(disable_gradient_checkpointing=True)), model).layers == 0
