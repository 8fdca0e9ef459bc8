"""ref_model / reward_model with their own adapters and quantization bits (LLaMA-Factory's
`ref_model_adapters`, `ref_model_quantization_bit`, `reward_model_adapters`,
`reward_model_quantization_bit`): the adapters take effect, the bits quantize, runs work.

bitsandbytes quantizes on this CPU (4-bit Linear4bit, 8-bit Linear8bitLt), and so does hqq
through `quantization_method: hqq`, which the side models inherit from the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model.load import load_tokenizer
from lathe.train import run_stage
from lathe.train.reference import build_reference
from lathe.train.rewards import build_reward
from tests.train.test_dpo import pairwise_dir  # noqa: F401  (fixture)

IDS = torch.tensor([[5, 17, 42, 99, 7, 300], [8, 8, 120, 64, 33, 2]])


def make_adapter(base: Path, folder: Path, seed: int) -> str:
    """A LoRA adapter with random (non-zero) A and B: it changes the model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def adapters(tmp_path, tiny_llama) -> list[str]:
    return [make_adapter(tiny_llama, tmp_path / f"adapter{i}", seed=i) for i in (1, 2)]


def merged(base: Path, adapters: list[str]):
    """What the reference should be: the base with each adapter merged, in order, by peft itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(input_ids=IDS).logits


def reference(sft_config, **options):
    cfg = load_config(sft_config(stage="dpo", **options))
    return build_reference(cfg, None, load_tokenizer(cfg.model))


def linear_weight_bytes(model) -> int:
    """Bytes of the decoder's projection weights (every linear layer but the output head)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if hasattr(m, "weight") and "Linear" in type(m).__name__ and m is not head)


def test_reference_merges_its_adapters_in_order(sft_config, tiny_llama, adapters):
    ref = reference(sft_config, ref_model=str(tiny_llama), ref_model_adapters=",".join(adapters))
    torch.testing.assert_close(logits(ref), logits(merged(tiny_llama, adapters)), atol=1e-5, rtol=1e-5)
    # both adapters took effect: the reference is neither the base nor the base with the first one
    assert (logits(ref) - logits(merged(tiny_llama, adapters[:1]))).abs().max() > 1e-3
    assert (logits(ref) - logits(merged(tiny_llama, []))).abs().max() > 1e-3
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert not any("lora" in name for name, _ in ref.named_modules())  # merged, not stacked


@pytest.mark.parametrize("bits, layer, at_most", [(4, "Linear4bit", 1 / 6), (8, "Linear8bitLt", 1 / 3)])
def test_quantized_reference_is_bitsandbytes_and_frozen(sft_config, tiny_llama, adapters, bits, layer, at_most):
    full = reference(sft_config, ref_model=str(tiny_llama))
    ref = reference(sft_config, ref_model=str(tiny_llama), ref_model_quantization_bit=bits)
    assert layer in {type(m).__name__ for m in ref.modules()}
    assert linear_weight_bytes(ref) <= at_most * linear_weight_bytes(full)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    # quantized, not broken: next-token scores track the full-precision model's closely
    assert torch.corrcoef(torch.stack([logits(ref).flatten(), logits(full).flatten()]))[0, 1] > 0.95

    with_adapter = reference(sft_config, ref_model=str(tiny_llama), ref_model_adapters=adapters[0],
                             ref_model_quantization_bit=bits)
    assert any("lora_A" in name for name, _ in with_adapter.named_modules())  # kept beside the low-bit weights
    assert not with_adapter.training and not any(p.requires_grad for p in with_adapter.parameters())
    assert (logits(with_adapter) - logits(ref)).abs().max() > 1e-3  # the adapter took effect


def test_quantized_reference_follows_quantization_method(sft_config, tiny_llama):
    ref = reference(sft_config, ref_model=str(tiny_llama), ref_model_quantization_bit=4, quantization_method="hqq")
    assert "HQQLinear" in {type(m).__name__ for m in ref.modules()}
    assert not any(p.requires_grad for p in ref.parameters())


def test_dpo_scores_against_the_adapted_reference(sft_config, pairwise_dir, tiny_llama, adapters):  # noqa: F811
    """At the first step the LoRA policy is still the base: its reward is 0 against the plain base
    as reference, and not 0 once the reference carries the adapters."""
    firsts = {}
    for name, extra in (("plain", {}), ("adapted", {"ref_model_adapters": ",".join(adapters)})):
        cfg = load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir), max_steps=1,
                                     ref_model=str(tiny_llama), **extra))
        result = run_stage(cfg)
        firsts[name] = json.loads(Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()[0])
    assert abs(firsts["plain"]["rewards/chosen"]) < 1e-4
    assert abs(firsts["adapted"]["rewards/chosen"]) > 1e-3
    torch.testing.assert_close(logits(result.extras["ref_model"]), logits(merged(tiny_llama, adapters)),
                               atol=1e-5, rtol=1e-5)


@pytest.fixture
def full_reward_model(tmp_path, tiny_llama) -> Path:
    """A full reward model folder as `stage: rm` with `finetuning_type: full` saves it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lathe.model.value_head import ValueHeadModel

    torch.manual_seed(0)
    model = ValueHeadModel(AutoModelForCausalLM.from_pretrained(tiny_llama))
    torch.nn.init.normal_(model.v_head.weight, std=0.5)
    folder = tmp_path / "rm_full"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    return folder


def expected_scores(tiny_llama, full_reward_model, adapters) -> torch.Tensor:
    from safetensors.torch import load_file

    from lathe.model.value_head import HEAD_FILE, ValueHeadModel

    model = ValueHeadModel(merged(full_reward_model, adapters))
    model.v_head.load_state_dict(load_file(full_reward_model / HEAD_FILE))
    with torch.no_grad():
        return model(IDS, torch.ones_like(IDS))


def scorer(sft_config, **options):
    cfg = load_config(sft_config(stage="ppo", reward_model_type="full", **options))
    return build_reward(cfg, None, load_tokenizer(cfg.model))


def test_full_reward_model_merges_its_adapters(sft_config, tiny_llama, full_reward_model, adapters):
    plain = scorer(sft_config, reward_model=str(full_reward_model))(IDS, torch.ones_like(IDS), [], [])
    adapted = scorer(sft_config, reward_model=str(full_reward_model), reward_model_adapters=",".join(adapters))
    scores = adapted(IDS, torch.ones_like(IDS), [], [])
    torch.testing.assert_close(scores, expected_scores(tiny_llama, full_reward_model, adapters), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected_scores(tiny_llama, full_reward_model, []), atol=1e-5, rtol=1e-5)
    assert (scores - plain).abs().max() > 1e-3
    assert not adapted.model.training and not any(p.requires_grad for p in adapted.model.parameters())

    quantized = scorer(sft_config, reward_model=str(full_reward_model), reward_model_adapters=adapters[0],
                       reward_model_quantization_bit=4)
    assert "Linear4bit" in {type(m).__name__ for m in quantized.model.modules()}
    assert not any(p.requires_grad for p in quantized.model.parameters())


def test_ppo_with_a_full_reward_model_and_its_adapters(sft_config, tiny_llama, full_reward_model, adapters,
                                                       monkeypatch):
    import lathe.train.ppo as ppo

    built = []
    monkeypatch.setattr(ppo, "build_reward", lambda *a: built.append(build_reward(*a)) or built[-1])
    cfg = load_config(sft_config(stage="ppo", reward_model=str(full_reward_model), reward_model_type="full",
                                 reward_model_adapters=",".join(adapters), max_steps=2,
                                 per_device_train_batch_size=4, max_new_tokens=4, ppo_epochs=1))
    run_stage(cfg)
    log = [json.loads(line) for line in Path(cfg.training.output_dir, "trainer_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all("reward" in row for row in log)
    with torch.no_grad():
        scores = built[0](IDS, torch.ones_like(IDS), [], [])
    torch.testing.assert_close(scores, expected_scores(tiny_llama, full_reward_model, adapters), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options, match", [
    ({"stage": "ppo", "reward_model": "/x", "ref_model_adapters": "/a"}, "`ref_model_adapters` applies to the model `ref_model`"),
    ({"stage": "ppo", "reward_model": "/x", "ref_model_quantization_bit": 4}, "`ref_model_quantization_bit` applies"),
    ({"stage": "ppo", "reward_model": "/x", "ref_model": "/r", "ref_model_quantization_bit": 3}, "must be 4 or 8"),
    ({"stage": "ppo", "reward_model": "/x", "ref_model": "/r", "ref_model_quantization_bit": 4,
      "ref_model_adapters": "/a,/b"}, "not merged into quantized weights"),
    ({"stage": "ppo", "reward_model": "/x", "reward_model_adapters": "/a"}, "reward_model_type: full"),
    ({"stage": "ppo", "reward_model": "http://127.0.0.1:1/s", "reward_model_type": "api",
      "reward_model_quantization_bit": 8}, "reward_model_type: full"),
    ({"stage": "ppo", "reward_model": "/x", "reward_model_type": "full", "reward_model_quantization_bit": 2},
     "must be 4 or 8"),
    ({"stage": "ppo", "reward_model": "/x", "reward_model_type": "full", "reward_model_quantization_bit": 8,
      "reward_model_adapters": "/a,/b"}, "not merged into quantized weights"),
])
def test_refused_when_loading_the_config(sft_config, options, match):
    with pytest.raises(LatheError, match=match):
        load_config(sft_config(**options))


def test_dpo_refuses_reference_options_without_ref_model(sft_config, pairwise_dir, adapters):  # noqa: F811
    with pytest.raises(LatheError, match="`ref_model` is not set"):  # when the config loads (dpo's check)
        load_config(sft_config(stage="dpo", dataset="pairs", dataset_dir=str(pairwise_dir),
                               ref_model_adapters=adapters[0]))


def test_reward_model_without_a_value_head_is_refused(sft_config, tiny_llama, adapters):
    with pytest.raises(LatheError, match="value_head.safetensors"):
        scorer(sft_config, reward_model=str(tiny_llama), reward_model_adapters=adapters[0])
