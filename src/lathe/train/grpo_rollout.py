"""The sampling half of `stage: grpo` / `rloo`: prompts in, scored groups of completions out.

Prompts are rendered with the run's template (the conversation without its last answer, which
becomes the reference `answer` of the rewards); `num_generations` completions per prompt are sampled
in one batched `generate` with the KV cache (left padding, the template's stop words); the reward
functions (`reward_funcs.py`) and an optional `reward_model` score them. `train/grpo.py` owns the
loop that turns a `Rollout` into an update.

Every random draw here comes from two streams: the sampler's own `torch.Generator` (which prompts,
in which order) and torch's global generator (the tokens `generate` samples). Both are saved in each
checkpoint (`loop_checkpoints.py`), so a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.collate import left_pad, positions_from_mask
from ..data.processors import Processor
from ..data.sample import IGNORE_INDEX
from ..model.generation import generation_kwargs, stop_token_ids
from .chunked_logits import chunkable, token_logps_and_entropy
from .loop_ranks import Ranks
from .losses.grpo import constant_groups
from .ppo import response_mask
from .reward_funcs import RewardFunction, call_reward, split_reward_names
from .rewards import right_padded

if TYPE_CHECKING:
    from ..config import RunConfig

REWARD_MODEL = "reward_model"  # the name `reward_model`'s scores are logged and weighted under
MAX_SAMPLING_ROUNDS = 4  # dynamic_sampling: rounds of prompts sampled per step to fill the batch with signal


# ---------------------------------------------------------------------------------------------- data


def encode_prompt_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    """Rows -> the ids of the prompt to answer (the conversation without its last answer) and the
    reference `answer` the rewards compare with: the dataset's `reference` column where its entry
    maps one, else the last answer ("" for a row that ends with its prompt)."""
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "answer": [], "system": [], "tools": [],
                            "_truncated": [], "_drop": []}
    references = batch.get("reference") or [""] * len(batch["messages"])
    for messages, system, tools, reference in zip(batch["messages"], batch["system"], batch["tools"], references):
        ends_with_answer = len(messages) % 2 == 0
        prompt = messages[:-1] if ends_with_answer else messages
        system = system or data_args.default_system or ""
        ids = np.asarray(template.encode_prompt(tokenizer, prompt, system, tools or ""), dtype=np.int64) if prompt \
            else np.zeros(0, dtype=np.int64)
        drop = ("no prompt turn" if not prompt else
                "prompt longer than cutoff_len (cut, it would lose its question)" if len(ids) > data_args.cutoff_len
                else "")
        out["input_ids"].append(ids)
        out["attention_mask"].append(np.ones(len(ids), dtype=np.int64))
        out["answer"].append(reference or (messages[-1]["content"] if ends_with_answer else ""))
        out["system"].append(system)
        out["tools"].append(tools or "")
        out["_truncated"].append(False)
        out["_drop"].append(drop)
    return out


def _prompt_kwargs(cfg: "RunConfig", tokenizer, template) -> dict:
    return {"template": template, "tokenizer": tokenizer, "data_args": cfg.data}


PROMPTS = Processor(encode_prompt_batch, _prompt_kwargs)  # prompts to answer, with their reference answers


# ---------------------------------------------------------------------------------------------- rollouts


def _takes_logits_to_keep(model) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (transformers' own models do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def completion_logps(model, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int, temperature: float,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens under the sampling distribution (logits / temperature), [B, C],
    and (asked) each position's entropy, detached.

    Where the completion logits would be big (`chunkable`), the output layer runs a chunk of
    positions at a time and the logits are never whole (`chunked_logits.py`); the same numbers.
    """
    completion = ids[:, prompt_len:]
    if chunkable(model, ids, completion.numel()) is not None:
        targets = torch.full_like(ids, IGNORE_INDEX)
        targets[:, prompt_len - 1 : -1] = completion  # position t predicts token t + 1
        logps, entropy = token_logps_and_entropy(model, ids, attn, targets, temperature=temperature,
                                                 extra={"position_ids": positions_from_mask(attn)},
                                                 with_entropy=with_entropy)
        return logps[:, prompt_len - 1 : -1], entropy[:, prompt_len - 1 : -1] if entropy is not None else None
    keep = ids.shape[1] - prompt_len + 1  # the logits that predict a completion token (and one past it)
    if _takes_logits_to_keep(model):  # the lm head then runs on those positions only, not on the prompt's
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions_from_mask(attn), logits_to_keep=keep)
    else:
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions_from_mask(attn))
    logits = out.logits[:, -keep:-1].float() / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, ids[:, prompt_len:].unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:  # row by row: one more [C, V] tensor at a time, not [B, C, V]
        with torch.no_grad():
            entropy = torch.stack([n - (torch.softmax(row, dim=-1) * row).sum(-1) for n, row in zip(log_norm, logits)])
    return logps, entropy


@dataclass
class Rollout:
    ids: torch.Tensor  # [B, P + C] prompt and completion
    attn: torch.Tensor
    prompt_len: int
    mask: torch.Tensor  # [B, C] completion tokens up to and including the stop token
    truncated: torch.Tensor  # [B] bool: no stop token within max_completion_length
    rewards: torch.Tensor  # [B] weighted sum
    per_func: torch.Tensor  # [B, F]
    prompts: list[str]
    completions: list[str]

    def select(self, rows: torch.Tensor) -> "Rollout":
        keep = rows.tolist()
        return Rollout(self.ids[rows], self.attn[rows], self.prompt_len, self.mask[rows], self.truncated[rows],
                       self.rewards[rows], self.per_func[rows], [self.prompts[i] for i in keep],
                       [self.completions[i] for i in keep])

    def scores(self) -> "Scores":
        return Scores(self.rewards.cpu(), self.per_func.cpu(), self.mask.sum(-1).cpu(), self.truncated.cpu(),
                      self.prompts, self.completions)


@dataclass
class Scores:
    """What the log reads of a step's completions: small enough to gather from every process."""

    rewards: torch.Tensor  # [B]
    per_func: torch.Tensor  # [B, F]
    lengths: torch.Tensor  # [B] completion tokens
    truncated: torch.Tensor  # [B] bool
    prompts: list[str]
    completions: list[str]

    @staticmethod
    def merge(parts: list["Scores"]) -> "Scores":
        """The processes' scores as one, in rank order."""
        if len(parts) == 1:
            return parts[0]
        return Scores(*(torch.cat([getattr(p, k) for p in parts]) for k in ("rewards", "per_func", "lengths",
                                                                             "truncated")),
                      [x for p in parts for x in p.prompts], [x for p in parts for x in p.completions])


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts of several sampling rounds as one: prompts left-padded, completions right-padded to the longest."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(r.prompt_len for r in parts)
    width_c = max(r.mask.shape[1] for r in parts)
    ids, attn, mask = [], [], []
    for r in parts:
        left, right = width_p - r.prompt_len, width_c - r.mask.shape[1]
        ids.append(torch.nn.functional.pad(r.ids, (left, right), value=pad_id))
        attn.append(torch.nn.functional.pad(r.attn, (left, right), value=0))
        mask.append(torch.nn.functional.pad(r.mask, (0, right), value=0))
    return Rollout(torch.cat(ids), torch.cat(attn), width_p, torch.cat(mask), torch.cat([r.truncated for r in parts]),
                   torch.cat([r.rewards for r in parts]), torch.cat([r.per_func for r in parts]),
                   [p for r in parts for p in r.prompts], [c for r in parts for c in r.completions])


class GroupSampler:
    """Draws prompts, samples `num_generations` completions of each and scores them.

    `generator` is the sampler's position in the data: which prompts come next (and, in the loop, the
    order of the micro-batches); its state is part of every checkpoint. It is seeded alike in every
    process: each draws the prompts of all processes and takes its own share, so they never repeat one.
    """

    def __init__(self, cfg: "RunConfig", run, rewards: list[RewardFunction], reward_model, device,
                 ranks: Ranks = Ranks()) -> None:
        f = cfg.finetuning
        self.cfg, self.model, self.tokenizer, self.device = cfg, run.model, run.tokenizer, device
        self.rewards, self.reward_model = rewards, reward_model  # `reward_model` scored last, named reward_model
        self.names = [fn.name for fn in rewards] + ([REWARD_MODEL] if reward_model is not None else [])
        self.weights = ([float(w) for w in split_reward_names(f.reward_weights)] if f.reward_weights
                        else [1.0] * len(self.names))
        self.group = f.num_generations
        self.rows = run.data.train
        self.stop_ids = stop_token_ids(self.tokenizer, run.template)
        self.generator = torch.Generator().manual_seed(cfg.training.seed)
        self.ranks = ranks

    @torch.no_grad()
    def rollout(self, picks: list[int]) -> Rollout:
        self.model.eval()
        rows = [self.rows[i] for i in picks]
        prompts = [list(r["input_ids"]) for r in rows for _ in range(self.group)]  # a group's rows side by side
        ids, attn, _ = left_pad(prompts, self.tokenizer.pad_token_id, device=self.device)
        gen = generation_kwargs(self.cfg.generating)
        gen["max_new_tokens"] = self.cfg.finetuning.max_completion_length
        gen.pop("max_length", None)
        output = self.model.generate(input_ids=ids, attention_mask=attn, eos_token_id=self.stop_ids,
                                     pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **gen)
        prompt_len = ids.shape[1]
        completion = output[:, prompt_len:]
        mask = response_mask(completion, self.stop_ids)
        stopped = torch.zeros(len(completion), dtype=torch.bool, device=completion.device)
        for s in self.stop_ids:
            stopped |= (completion == s).any(dim=1)
        texts_p = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        texts_c = [self.tokenizer.decode(c[m.bool()], skip_special_tokens=True) for c, m in zip(completion, mask)]
        columns = {
            "answer": [r["answer"] for r in rows for _ in range(self.group)],
            "system": [r["system"] for r in rows for _ in range(self.group)],
            "tools": [r["tools"] for r in rows for _ in range(self.group)],
            "completion_length": mask.sum(-1).tolist(), "truncated": (~stopped).tolist(),
        }
        functions = list(self.rewards)
        if self.reward_model is not None:  # reads the last real token: prompt and completion without padding inside
            scored_ids, scored_attn = right_padded(output, torch.cat([attn, mask], dim=1), self.tokenizer.pad_token_id)
            functions.append(RewardFunction(REWARD_MODEL, lambda prompts, completions, **_: self.reward_model(
                scored_ids, scored_attn, prompts, completions).float().tolist()))
        scores = [call_reward(fn, texts_p, texts_c, columns) for fn in functions]
        per_func = torch.tensor(scores, dtype=torch.float32, device=self.device).T
        rewards = (per_func * torch.tensor(self.weights, device=self.device)).sum(-1)
        return Rollout(output, torch.cat([attn, mask], dim=1), prompt_len, mask, ~stopped, rewards, per_func,
                       texts_p, texts_c)

    def sample(self, prompts: int) -> tuple[Rollout | None, Rollout, int]:
        """(the completions to train on, every completion sampled, sampling rounds).

        With `dynamic_sampling` (DAPO), groups whose rewards are all equal carry no signal: they are
        dropped, and more prompts are sampled, up to MAX_SAMPLING_ROUNDS rounds, until `prompts` groups
        with a signal are found; None when none was. Several processes sample rounds together until each
        has its `prompts` groups, so their generators stay in step.
        """
        dynamic = self.cfg.finetuning.dynamic_sampling
        rounds, kept = [], []
        mine = slice(self.ranks.rank * prompts, (self.ranks.rank + 1) * prompts)
        for _ in range(MAX_SAMPLING_ROUNDS if dynamic else 1):
            picks = torch.randint(len(self.rows), (prompts * self.ranks.world,), generator=self.generator)[mine]
            rounds.append(self.rollout(picks.tolist()))
            if not dynamic:
                return rounds[0], rounds[0], 1
            signal = ~constant_groups(rounds[-1].rewards, self.group).repeat_interleave(self.group)
            if signal.any():
                kept.append(rounds[-1].select(signal.nonzero().squeeze(-1)))
            if self.ranks.every(sum(len(r.rewards) for r in kept) >= prompts * self.group):
                break
        pad = self.tokenizer.pad_token_id
        everything = concat_rollouts(rounds, pad)
        if not kept:
            return None, everything, len(rounds)
        batch = concat_rollouts(kept, pad)
        return batch.select(torch.arange(min(len(batch.rewards), prompts * self.group))), everything, len(rounds)
