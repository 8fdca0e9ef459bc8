"""Where PPO's scores come from (`reward_model_type`): one registered `RewardModel` per kind.

- a reward adapter (from `stage: rm` with LoRA) loaded onto the policy's own base and switched
  in only while scoring: one base model serves policy, reference and reward (`AdapterReward`);
- a separate reward model folder from `stage: rm` (`ModelReward`);
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
from ..model.adapters.lora import LORA
from ..registry import REWARD_MODELS, Choice
from ..model.value_head import HEAD_FILE, hidden_size, load_reward_model, make_value_head
from .reference import check_same_tokenizer

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
        check_same_tokenizer(path, tokenizer)
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


class ModelReward:
    """Scores with a separate reward model folder (full weights, or an adapter on its base)."""

    def __init__(self, path: str, tokenizer) -> None:
        check_same_tokenizer(path, tokenizer)
        self.model = load_reward_model(path)

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
    """A `reward_model_type`: `build(reward_model, policy, tokenizer)` makes the scorer PPO calls per batch."""

    build: Callable[..., Callable[..., torch.Tensor]] = field(compare=False)


def build_reward(cfg, policy, tokenizer) -> Callable[..., torch.Tensor]:
    f = cfg.finetuning
    return REWARD_MODELS[f.reward_model_type].build(f.reward_model, policy, tokenizer)


def _needs_lora_policy(cfg: "RunConfig") -> None:
    if cfg.finetuning.finetuning_type != LORA.name:
        raise LatheError(
            f"{cfg.source}: `reward_model_type: {cfg.finetuning.reward_model_type}` swaps a reward adapter onto the "
            f"policy's LoRA model; use `finetuning_type: {LORA.name}` or another `reward_model_type`."
        )


def _needs_url(cfg: "RunConfig") -> None:
    f = cfg.finetuning
    if f.reward_model and not f.reward_model.startswith(("http://", "https://")):
        raise LatheError(f"{cfg.source}: `reward_model_type: {f.reward_model_type}` needs `reward_model` to be an "
                         f"http(s) URL.")


REWARD_MODELS.register(RewardModel(
    name="lora", help="a reward adapter swapped onto the policy's own base", check=_needs_lora_policy,
    build=lambda path, policy, tokenizer: AdapterReward(policy, path, tokenizer),
))
REWARD_MODELS.register(RewardModel(
    name="full", help="a separate reward model", build=lambda path, policy, tokenizer: ModelReward(path, tokenizer),
))
REWARD_MODELS.register(RewardModel(
    name="api", help="HTTP scores", check=_needs_url, build=lambda url, policy, tokenizer: ApiReward(url),
))
