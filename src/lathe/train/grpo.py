"""GRPO / RLOO: online RL with verifiable rewards. The policy samples a group of answers per prompt,
reward functions score them, and each answer is pushed by how much better it did than its group.

Written on lathe's own pieces, as PPO is (`ppo.py`): prompts are rendered with the run's template
(the conversation without its last answer, which becomes the reference `answer` of the rewards),
`num_generations` completions per prompt are sampled in one batched `generate` with the KV cache
(left padding, the template's stop words), `reward_funcs` score them (`reward_funcs.py`), and the
advantages are GRPO's group-normalised ones (`stage: grpo`) or RLOO's leave-one-out ones
(`stage: rloo`). Then `num_iterations` optimiser steps over the batch with the clipped objective of
`loss_type` (`losses/grpo.py` holds every formula). No value head, and no reference model unless
`grpo_beta` > 0 (with LoRA it is then the adapter switched off: no copy).

Batch sizes, as TRL's: each optimiser step sees per_device_train_batch_size x
gradient_accumulation_steps completions, `num_generations` per prompt, in micro-batches of
per_device_train_batch_size.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.collate import left_pad, positions_from_mask
from ..data.processors import Processor
from ..errors import LatheError, did_you_mean
from ..model.generation import generation_kwargs, stop_token_ids
from ..process import is_main_process
from ..registry import METHODS, OPTIMIZERS, REWARD_MODELS, STAGES
from .base import log_streamed_report, setup_run
from .callbacks import LOG_FILE, append_log_record, fmt_seconds
from .losses.grpo import (
    LOSS_TYPES,
    LossSettings,
    constant_groups,
    group_advantages,
    grpo_loss,
    rloo_advantages,
)
from .ppo import response_mask
from .reference import build_reference, check_reference_options, reference_of
from .reward_funcs import (
    RewardFunction,
    build_reward_functions,
    call_reward,
    check_reward_spec,
    keep_user_files,
    split_reward_names,
)
from .rewards import build_reward, right_padded
from .stage import Stage, StageResult

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
SHOWN_COMPLETIONS = 4  # sampled completions written to completions.jsonl per logging step
REWARD_MODEL = "reward_model"  # the name `reward_model`'s scores are logged and weighted under
MAX_SAMPLING_ROUNDS = 4  # dynamic_sampling: rounds of prompts sampled per step to fill the batch with signal


# ---------------------------------------------------------------------------------------------- data


def encode_prompt_batch(batch: dict[str, list], *, template, tokenizer, data_args) -> dict[str, list]:
    """Rows -> the ids of the prompt to answer (the conversation without its last answer) and the
    reference `answer` the rewards compare with ("" for a row that ends with its prompt)."""
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "answer": [], "system": [], "tools": [],
                            "_truncated": [], "_drop": []}
    for messages, system, tools in zip(batch["messages"], batch["system"], batch["tools"]):
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
        out["answer"].append(messages[-1]["content"] if ends_with_answer else "")
        out["system"].append(system)
        out["tools"].append(tools or "")
        out["_truncated"].append(False)
        out["_drop"].append(drop)
    return out


def _prompt_kwargs(cfg: "RunConfig", tokenizer, template) -> dict:
    return {"template": template, "tokenizer": tokenizer, "data_args": cfg.data}


PROMPTS = Processor(encode_prompt_batch, _prompt_kwargs)  # prompts to answer, with their reference answers


# ---------------------------------------------------------------------------------------------- rollout


def completion_logps(model, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int, temperature: float,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens under the sampling distribution (logits / temperature), [B, C],
    and (asked) each position's entropy, detached."""
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions_from_mask(attn))
    logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
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


class GRPORunner:
    """The loop: sample prompts, roll out groups, score, compute advantages, update; log each step."""

    def __init__(self, cfg: "RunConfig", run, ref, rewards: list[RewardFunction],
                 advantages: Callable[[torch.Tensor, int, str], torch.Tensor], reward_model=None):
        f, t = cfg.finetuning, cfg.training
        self.cfg, self.run, self.ref, self.rewards, self.advantages = cfg, run, ref, rewards, advantages
        self.reward_model = reward_model  # `reward_model` (as PPO's), scored after the functions, named reward_model
        self.names = [fn.name for fn in rewards] + ([REWARD_MODEL] if reward_model is not None else [])
        self.model, self.tokenizer, self.template = run.model, run.tokenizer, run.template
        self.device = run.args.device  # the run's accelerator (cuda:0, ...), or the CPU
        for module in (self.model, ref, getattr(reward_model, "model", None)):
            if module is not None and not (getattr(module, "is_loaded_in_4bit", False)
                                           or getattr(module, "is_loaded_in_8bit", False)):
                module.to(self.device)  # quantized weights were placed when they loaded
        self.weights = ([float(w) for w in split_reward_names(f.reward_weights)] if f.reward_weights
                        else [1.0] * len(self.names))
        self.group = f.num_generations
        self.batch = t.per_device_train_batch_size * t.gradient_accumulation_steps  # completions per step
        self.rows = run.data.train
        steps_per_epoch = max(1, len(self.rows) * self.group // self.batch)
        self.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
        self.settings = LossSettings(f.loss_type, f.epsilon, f.epsilon_high, f.importance_sampling_level, f.grpo_beta,
                                     f.max_completion_length)
        self.optimizer = self._optimizer()
        from transformers import get_scheduler

        updates = self.total_steps * f.num_iterations
        self.scheduler = get_scheduler(t.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=t.get_warmup_steps(updates), num_training_steps=updates)
        self.stop_ids = stop_token_ids(self.tokenizer, self.template)
        self.generator = torch.Generator().manual_seed(t.seed)
        self.temperature = cfg.generating.temperature if cfg.generating.temperature > 0 else 1.0

    def _optimizer(self) -> torch.optim.Optimizer:
        """LoRA+ groups where asked (lathe's optim code), else AdamW with the run's betas, eps and decay."""
        from .optim import optimizer_setup

        optimizer, _ = optimizer_setup(self.model, self.cfg, self.run.args)
        if optimizer is not None:
            return optimizer
        t = self.cfg.training
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                                 weight_decay=t.weight_decay)

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
        with a signal are found; None when none was.
        """
        rounds, kept = [], []
        for _ in range(MAX_SAMPLING_ROUNDS if self.cfg.finetuning.dynamic_sampling else 1):
            picks = torch.randint(len(self.rows), (prompts,), generator=self.generator).tolist()
            rounds.append(self.rollout(picks))
            if not self.cfg.finetuning.dynamic_sampling:
                return rounds[0], rounds[0], 1
            signal = ~constant_groups(rounds[-1].rewards, self.group).repeat_interleave(self.group)
            if signal.any():
                kept.append(rounds[-1].select(signal.nonzero().squeeze(-1)))
            if sum(len(r.rewards) for r in kept) >= prompts * self.group:
                break
        pad = self.tokenizer.pad_token_id
        everything = concat_rollouts(rounds, pad)
        if not kept:
            return None, everything, len(rounds)
        batch = concat_rollouts(kept, pad)
        return batch.select(torch.arange(min(len(batch.rewards), prompts * self.group))), everything, len(rounds)

    def update(self, r: Rollout) -> dict[str, float]:
        f = self.cfg.finetuning
        advantages = self.advantages(r.rewards, self.group, f.scale_rewards)
        stats: dict[str, list[float]] = {"loss": [], "clip_ratio": [], "kl": [], "entropy": []}
        mask = r.mask.clone()
        if f.mask_truncated_completions:
            mask[r.truncated] = 0
        micro = self.cfg.training.per_device_train_batch_size
        old = ref = None
        if f.num_iterations > 1:  # the ratio's denominator: the policy that sampled, recorded once
            old = self._logps_no_grad(self.model, r)
        if f.grpo_beta > 0:
            with reference_of(self.model, self.ref) as ref_model:
                ref = self._logps_no_grad(ref_model, r)
        num_items = float(mask.sum())  # dapo divides by the tokens of the whole optimiser batch
        self.model.train()
        for _ in range(f.num_iterations):
            order = torch.randperm(len(r.rewards), generator=self.generator)
            chunks = [order[i : i + micro] for i in range(0, len(order), micro)]
            self.optimizer.zero_grad()
            for idx in chunks:
                logps, entropy = completion_logps(self.model, r.ids[idx], r.attn[idx], r.prompt_len, self.temperature,
                                                  with_entropy=True)
                old_logps = old[idx] if old is not None else logps.detach()
                result = grpo_loss(logps, old_logps, advantages[idx], mask[idx], self.settings,
                                   ref[idx] if ref is not None else None, num_items=num_items)
                weight = LOSS_TYPES[f.loss_type].weight(len(idx), len(order), len(chunks))
                (result.loss * weight).backward()
                stats["loss"].append(result.loss.item())
                stats["clip_ratio"].append(result.clip_ratio)
                m = r.mask[idx].float()
                stats["entropy"].append(float((entropy * m).sum() / m.sum().clamp(min=1)))
                if result.kl is not None:
                    stats["kl"].append(result.kl)
            if self.cfg.training.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               self.cfg.training.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
        return {k: sum(v) / len(v) for k, v in stats.items() if v}

    @torch.no_grad()
    def _logps_no_grad(self, model, r: Rollout) -> torch.Tensor:
        micro = self.cfg.training.per_device_train_batch_size
        parts = [completion_logps(model, r.ids[i : i + micro], r.attn[i : i + micro], r.prompt_len, self.temperature)[0]
                 for i in range(0, len(r.ids), micro)]
        return torch.cat(parts)

    def record(self, step: int, r: Rollout, stats: dict[str, float], elapsed: float) -> dict:
        lengths = r.mask.sum(-1).float()
        record = {"current_steps": step, "total_steps": self.total_steps, "loss": round(stats["loss"], 6),
                  "reward": round(float(r.rewards.mean()), 6), "reward_std": round(float(r.rewards.std()), 6)}
        for j, name in enumerate(self.names):
            record[f"rewards/{name}/mean"] = round(float(r.per_func[:, j].mean()), 6)
            record[f"rewards/{name}/std"] = round(float(r.per_func[:, j].std()), 6)
        record.update({
            "completion_length": round(float(lengths.mean()), 3), "completion_length_max": int(lengths.max()),
            "clipped_share": round(float(r.truncated.float().mean()), 4),
            **{k: round(v, 6) for k, v in stats.items() if k != "loss"},
            "lr": self.scheduler.get_last_lr()[0], "percentage": round(100 * step / self.total_steps, 2),
            "elapsed_time": fmt_seconds(elapsed),
            "remaining_time": fmt_seconds(elapsed / step * (self.total_steps - step)),
        })
        return record

    def samples(self, step: int, r: Rollout) -> list[dict]:
        """A few completions of the step with their rewards, for completions.jsonl."""
        return [{"step": step, "prompt": r.prompts[i], "completion": r.completions[i], "reward": float(r.rewards[i]),
                 **{name: float(r.per_func[i, j]) for j, name in enumerate(self.names)}}
                for i in range(min(SHOWN_COMPLETIONS, len(r.completions)))]

    def train(self) -> dict[str, float]:
        out = Path(self.cfg.training.output_dir)
        prompts_per_step = self.batch // self.group
        start, rewards = time.time(), []
        for step in range(1, self.total_steps + 1):
            batch, r, rounds = self.sample(prompts_per_step)
            stats = self.update(batch) if batch is not None else {"loss": 0.0}
            if self.cfg.finetuning.dynamic_sampling:
                kept = 0 if batch is None else len(batch.rewards)
                stats |= {"sampling_rounds": rounds, "kept_share": kept / (prompts_per_step * self.group)}
            rewards.append(float(r.rewards.mean()))
            logging_step = step % max(1, int(self.cfg.training.logging_steps)) == 0 or step == 1
            if is_main_process() and logging_step:
                record = self.record(step, r, stats, time.time() - start)
                append_log_record(out, record)
                with open(out / COMPLETIONS_FILE, "a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in self.samples(step, r))
                logger.info("%s step %d/%d: reward %.4f, loss %.4f, completion length %.1f",
                            self.cfg.finetuning.stage, step, self.total_steps, record["reward"], record["loss"],
                            record["completion_length"])
        return {"train_reward_first": rewards[0], "train_reward_last": rewards[-1],
                "train_reward_mean": sum(rewards) / len(rewards), "train_runtime": time.time() - start}

    def save(self) -> None:
        out = self.cfg.training.output_dir
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(out, selected_adapters=["default"])
        else:
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


def _run(cfg: "RunConfig", advantages) -> StageResult:
    import os

    from .plot import plot_loss

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would train on its own, unsynchronised
        raise LatheError(f"`stage: {cfg.finetuning.stage}` runs in one process: its loop does not share gradients "
                         f"between processes yet. Make one GPU visible (e.g. CUDA_VISIBLE_DEVICES=0).")

    run = setup_run(cfg)
    rewards = build_reward_functions(cfg, run.template)  # a missing file fails before the first rollout
    if is_main_process():
        keep_user_files(cfg)
    ref = build_reference(cfg, run.model, run.tokenizer, needed=cfg.finetuning.grpo_beta > 0)
    reward_model = build_reward(cfg, run.model, run.tokenizer) if cfg.finetuning.reward_model else None
    runner = GRPORunner(cfg, run, ref, rewards, advantages, reward_model)
    if is_main_process():
        for name in (LOG_FILE, COMPLETIONS_FILE):  # a fresh run, fresh logs
            Path(cfg.training.output_dir, name).unlink(missing_ok=True)
    metrics = runner.train()
    if is_main_process():
        runner.save()
        after_save = METHODS[cfg.finetuning.finetuning_type].after_save
        if after_save is not None:
            after_save(run.model, cfg)
        if cfg.finetuning.plot_loss:
            plot_loss(cfg.training.output_dir, keys=("loss", "reward"))
    log_streamed_report(run.data)
    return StageResult(metrics, run.model, run.tokenizer, extras={"ref_model": ref})


def run_grpo(cfg: "RunConfig") -> StageResult:
    return _run(cfg, group_advantages)


def run_rloo(cfg: "RunConfig") -> StageResult:
    return _run(cfg, lambda rewards, group, scale: rloo_advantages(rewards, group))


def _check(cfg: "RunConfig") -> None:
    f, t, g, src, stage = cfg.finetuning, cfg.training, cfg.generating, cfg.source, cfg.finetuning.stage
    names = split_reward_names(f.reward_funcs)
    if not names and not f.reward_model:
        raise LatheError(f"{src}: `stage: {stage}` needs `reward_funcs`: built-ins (accuracy, format, length, "
                         f"tool_call) and/or `file.py:function`, comma separated (or a `reward_model`).")
    for name in names:
        check_reward_spec(name)
    for key in ("reward_model_adapters", "reward_model_quantization_bit"):
        if getattr(f, key) is not None and not f.reward_model:
            raise LatheError(f"{src}: `{key}` shapes the model `reward_model` names, which is not set; remove it.")
    if f.reward_model:
        names = [*names, REWARD_MODEL]
        reward = REWARD_MODELS[f.reward_model_type]
        if reward.check is not None:
            reward.check(cfg)
    if f.reward_weights is not None:
        try:
            weights = [float(w) for w in split_reward_names(f.reward_weights)]
        except ValueError:
            raise LatheError(f"{src}: `reward_weights` must be a comma list of numbers, "
                             f"got {f.reward_weights!r}.") from None
        if len(weights) != len(names):
            raise LatheError(f"{src}: `reward_weights` gives {len(weights)} weights for {len(names)} reward functions "
                             f"({', '.join(names)}); give one each.")
    if f.num_generations < 2:
        raise LatheError(f"{src}: `num_generations` must be at least 2: the advantage compares answers to the same "
                         f"prompt with each other.")
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if per_step % f.num_generations:
        raise LatheError(f"{src}: each step trains per_device_train_batch_size x gradient_accumulation_steps = "
                         f"{per_step} completions, which must be a multiple of `num_generations` "
                         f"({f.num_generations}).")
    if f.loss_type not in LOSS_TYPES:  # (its choices live here, beside the formulas, not in config/options.py)
        raise LatheError(f"{src}: `loss_type: {f.loss_type}` is not valid; choose one of {', '.join(LOSS_TYPES)}."
                         + did_you_mean(f.loss_type, list(LOSS_TYPES)))
    if not g.do_sample or g.num_beams != 1:
        raise LatheError(f"{src}: `stage: {stage}` samples its completions: set `do_sample: true` and `num_beams: 1`.")
    defaults = type(g).__dataclass_fields__  # (lathe_config.yaml writes them at their defaults: accepted)
    if any(getattr(g, k) != defaults[k].default for k in ("max_new_tokens", "max_length")):
        raise LatheError(f"{src}: `stage: {stage}` generates up to `max_completion_length` tokens; remove "
                         f"`max_new_tokens` / `max_length` and set `max_completion_length`.")
    if cfg.model.use_kv_cache is False:
        raise LatheError(f"{src}: `stage: {stage}` generates with the KV cache; remove `use_kv_cache: false`.")
    if t.resume_from_checkpoint:
        raise LatheError(f"{src}: `stage: {stage}` does not resume from checkpoints yet; start it again.")
    if cfg.data.streaming:
        raise LatheError(f"{src}: `stage: {stage}` samples prompts at random and cannot stream them.")
    chosen = [o.flag for o in OPTIMIZERS.values() if getattr(f, o.flag)]
    if chosen:
        raise LatheError(f"{src}: `{chosen[0]}` is wired into the Trainer's optimiser; `stage: {stage}` runs its own "
                         f"loop with AdamW. Remove it.")
    if f.grpo_beta == 0 and f.ref_model:
        raise LatheError(f"{src}: `ref_model` is the KL reference, and `grpo_beta` is 0 (no KL term): set `grpo_beta` "
                         f"> 0 or remove `ref_model`.")
    check_reference_options(cfg)


def _check_rloo(cfg: "RunConfig") -> None:
    _check(cfg)
    if cfg.finetuning.scale_rewards != "group":
        raise LatheError(f"{cfg.source}: `scale_rewards` shapes GRPO's advantage; RLOO's leave-one-out advantage is "
                         f"not scaled. Remove it, or use `stage: grpo`.")


# The options of both stages (scale_rewards too: rloo's own check refuses it with the reason).
RL_OPTIONS = ("num_generations", "max_completion_length", "grpo_beta", "epsilon", "epsilon_high", "loss_type",
              "importance_sampling_level", "scale_rewards", "num_iterations", "mask_truncated_completions",
              "dynamic_sampling", "reward_funcs", "reward_weights", "reward_format_pattern", "overlong_buffer_len")
GRPO = STAGES.register(Stage(
    name="grpo", help="online RL: groups of sampled answers scored by reward functions (GRPO, DAPO, Dr. GRPO, GSPO)",
    run=run_grpo, processor=PROMPTS, trainer=False, check=_check, options=RL_OPTIONS,
))
RLOO = STAGES.register(Stage(
    name="rloo", help="online RL with reward functions and RLOO's leave-one-out baseline", run=run_rloo,
    processor=PROMPTS, trainer=False, check=_check_rloo, options=RL_OPTIONS,
))
