"""Where PPO's scores come from (`reward_model_type`): one registered `RewardModel` per kind.

- a reward adapter (from `stage: rm` with LoRA) loaded onto the policy's own base and switched
  in only while scoring: one base model serves policy, reference and reward (`AdapterReward`);
- a separate reward model folder from `stage: rm` (`ModelReward`), loaded like the run's model with
  `reward_model_adapters` merged into it in order and `reward_model_quantization_bit` quantizing it
  (frozen, eval); its value head comes from the last of those folders that holds one;
- an HTTP endpoint: POST {"model", "messages": [full texts], "prompts", "responses"}
  -> {"scores": [float, ...]} (the shape LLaMA-Factory's API mode sends, plus the split texts; `ApiReward`).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_file

from ..errors import LatheError
from ..model.adapters.common import split_names
from ..model.adapters.lora import LORA
from ..model.value_head import HEAD_FILE, ValueHeadModel, hidden_size, make_value_head
from ..registry import REWARD_MODELS, Choice
from .reference import check_same_tokenizer, check_side_model, load_frozen_model

if TYPE_CHECKING:
    from ..config import RunConfig

REWARD_ADAPTER = "reward"


def right_padded(seqs: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the left (reward models read the last real token)."""
    rows = [seq[m.bool()] for seq, m in zip(seqs, mask)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=seqs.dtype, device=seqs.device)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        attn[i, : len(r)] = 1
    return ids, attn


class AdapterReward:
    """Scores with a reward LoRA adapter swapped onto the policy (no second copy of the base)."""

    def __init__(self, policy, path: str, tokenizer) -> None:
        folder = Path(path)
        if not (folder / "adapter_config.json").exists() or not (folder / HEAD_FILE).exists():
            raise LatheError(
                f"`reward_model: {path}` is not a LoRA reward model from `stage: rm` "
                f"(adapter_config.json and {HEAD_FILE} expected); use `reward_model_type: full` for a full one."
            )
        check_same_tokenizer(path, tokenizer, "reward_model")
        self.policy = policy
        policy.load_adapter(str(folder), adapter_name=REWARD_ADAPTER, is_trainable=False)
        policy.set_adapter("default")
        self.head = make_value_head(hidden_size(policy))
        self.head.load_state_dict(load_file(folder / HEAD_FILE))
        self.head.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, ids, attn, prompts, responses) -> torch.Tensor:
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy.set_adapter(REWARD_ADAPTER)
        try:
            out = self.policy(input_ids=ids, attention_mask=attn, output_hidden_states=True, logits_to_keep=1)
        finally:
            self.policy.set_adapter("default")
            for p in trainable:  # switching adapters resets which weights train
                p.requires_grad_(True)
        hidden = out.hidden_states[-1]
        last = attn.sum(-1) - 1
        return self.head(hidden[torch.arange(len(ids)), last].to(self.head.weight.dtype)).squeeze(-1)


def reward_layers(reward_model: str, adapters: list[str]) -> tuple[str, list[str]]:
    """(base folder, adapters in merge order) of a full reward model.

    A LoRA output of `stage: rm` as `reward_model` stands for its base with it as the first adapter.
    """
    folder = Path(reward_model)
    config = folder / "adapter_config.json"
    if config.exists():
        return json.loads(config.read_text())["base_model_name_or_path"], [str(folder), *adapters]
    return str(folder), adapters


def load_full_reward(cfg: "RunConfig", tokenizer) -> ValueHeadModel:
    """The reward model `reward_model` names, with its adapters and quantization, frozen; and its value head."""
    f = cfg.finetuning
    check_same_tokenizer(f.reward_model, tokenizer, "reward_model")
    base, adapters = reward_layers(f.reward_model, split_names(f.reward_model_adapters))
    heads = [Path(p) / HEAD_FILE for p in (f.reward_model, *adapters) if (Path(p) / HEAD_FILE).exists()]
    if not heads:  # LLaMA-Factory would score with a random head here
        raise LatheError(
            f"`reward_model: {f.reward_model}` is not a reward model: neither it nor `reward_model_adapters` holds "
            f"{HEAD_FILE} (train one with `stage: rm`)."
        )
    backbone = load_frozen_model(cfg, base, adapters, f.reward_model_quantization_bit, tokenizer,
                                 "reward_model_adapters")
    model = ValueHeadModel(backbone)
    model.v_head.load_state_dict(load_file(heads[-1]))
    model.v_head.requires_grad_(False)
    return model.eval()


class ModelReward:
    """Scores with a separate reward model (full weights, or an adapter on its base)."""

    def __init__(self, cfg: "RunConfig", tokenizer) -> None:
        self.model = load_full_reward(cfg, tokenizer)

    @torch.no_grad()
    def __call__(self, ids, attn, prompts, responses) -> torch.Tensor:
        return self.model(ids, attn)


class ApiReward:
    """Scores from an HTTP endpoint, one POST per batch."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url, self.timeout = url, timeout

    def __call__(self, ids, attn, prompts, responses) -> torch.Tensor:
        body = json.dumps({
            "model": "lathe", "messages": [p + r for p, r in zip(prompts, responses)],
            "prompts": prompts, "responses": responses,
        }).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                scores = json.loads(reply.read())["scores"]
        except (OSError, ValueError, KeyError) as error:
            raise LatheError(f"reward API {self.url} failed: {error}. It must answer {{\"scores\": [...]}}.") from error
        if len(scores) != len(prompts):
            raise LatheError(f"reward API {self.url} returned {len(scores)} scores for {len(prompts)} texts.")
        return torch.tensor([float(s) for s in scores])


@dataclass(frozen=True, kw_only=True)
class RewardModel(Choice):
    """A `reward_model_type`: `build(cfg, policy, tokenizer)` makes the scorer PPO calls per batch."""

    build: Callable[..., Callable[..., torch.Tensor]] = field(compare=False)


def build_reward(cfg, policy, tokenizer) -> Callable[..., torch.Tensor]:
    return REWARD_MODELS[cfg.finetuning.reward_model_type].build(cfg, policy, tokenizer)


def _own_weights_only(cfg: "RunConfig") -> None:
    """reward_model_adapters / _quantization_bit shape a separate reward model: refused for lora and api.

    LLaMA-Factory ignores them there; lathe refuses an option that would have no effect.
    """
    f = cfg.finetuning
    for key in ("reward_model_adapters", "reward_model_quantization_bit"):
        if getattr(f, key) is not None:
            raise LatheError(
                f"{cfg.source}: `{key}` applies to a separate reward model (`reward_model_type: full`), not to "
                f"`reward_model_type: {f.reward_model_type}`; remove `{key}` or use `reward_model_type: full`."
            )


def _needs_lora_policy(cfg: "RunConfig") -> None:
    _own_weights_only(cfg)
    if cfg.finetuning.finetuning_type != LORA.name:
        raise LatheError(
            f"{cfg.source}: `reward_model_type: {cfg.finetuning.reward_model_type}` swaps a reward adapter onto the "
            f"policy's LoRA model; use `finetuning_type: {LORA.name}` or another `reward_model_type`."
        )


def _needs_url(cfg: "RunConfig") -> None:
    _own_weights_only(cfg)
    f = cfg.finetuning
    if f.reward_model and not f.reward_model.startswith(("http://", "https://")):
        raise LatheError(f"{cfg.source}: `reward_model_type: {f.reward_model_type}` needs `reward_model` to be an "
                         f"http(s) URL.")


def _full_options(cfg: "RunConfig") -> None:
    f = cfg.finetuning
    check_side_model(cfg.source, "reward_model", f.reward_model_adapters, f.reward_model_quantization_bit)


REWARD_MODELS.register(RewardModel(
    name="lora", help="a reward adapter swapped onto the policy's own base", check=_needs_lora_policy,
    build=lambda cfg, policy, tokenizer: AdapterReward(policy, cfg.finetuning.reward_model, tokenizer),
))
REWARD_MODELS.register(RewardModel(
    name="full", help="a separate reward model (+ reward_model_adapters, reward_model_quantization_bit)",
    check=_full_options, build=lambda cfg, policy, tokenizer: ModelReward(cfg, tokenizer),
))
REWARD_MODELS.register(RewardModel(
    name="api", help="HTTP scores", check=_needs_url,
    build=lambda cfg, policy, tokenizer: ApiReward(cfg.finetuning.reward_model),
))
