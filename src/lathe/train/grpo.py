"""GRPO / RLOO: online RL with verifiable rewards. The policy samples a group of answers per prompt,
reward functions score them, and each answer is pushed by how much better it did than its group.

Written on lathe's own pieces, as PPO is (`ppo.py`): `grpo_rollout.py` renders the prompts with the
run's template, samples `num_generations` completions per prompt with the KV cache and scores them
with `reward_funcs` (`reward_funcs.py`); this module turns each batch into an update. The advantages
are GRPO's group-normalised ones (`stage: grpo`) or RLOO's leave-one-out ones (`stage: rloo`); then
`num_iterations` optimiser steps over the batch with the clipped objective of `loss_type`
(`losses/grpo.py` holds every formula). No value head, and no reference model unless `grpo_beta` > 0
(with LoRA it is then the adapter switched off: no copy).

Batch sizes, as TRL's: each optimiser step sees per_device_train_batch_size x
gradient_accumulation_steps completions per process, `num_generations` per prompt, in micro-batches of
per_device_train_batch_size.

Under torchrun each process samples and generates its own share of the step's prompts, and DDP averages
the gradients (`loop_ranks.py`). The log and the checkpoints are written once, by rank 0, and hold every
process's numbers and random states.

Checkpoints (`save_steps`, `loop_checkpoints.py`) hold the weights, optimiser, scheduler, the random
states and the sampler's generator, so a run killed after step k and started again (the same command,
or `resume_from_checkpoint`) logs the same completions and metrics for steps k+1.. as one never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError, did_you_mean
from ..process import is_main_process
from ..registry import METHODS, OPTIMIZERS, REWARD_MODELS, STAGES
from .base import log_streamed_report, setup_run
from .callbacks import LOG_FILE, append_log_record, fmt_seconds
from .checkpoints import check_writable, checkpoint_bytes
from .grpo_rollout import PROMPTS, REWARD_MODEL, GroupSampler, Rollout, Scores, completion_logps
from .loop_checkpoints import (
    check_loop_saving,
    reward_metrics,
    restore_loop_checkpoint,
    save_interval,
    save_loop_checkpoint,
    trim_logs,
)
from .loop_ranks import Ranks, accumulating, policy_logps, shuffled
from .losses.grpo import (
    LOSS_TYPES,
    LossSettings,
    group_advantages,
    grpo_loss,
    rloo_advantages,
)
from .reference import build_reference, check_reference_options, reference_of
from .reward_funcs import (
    RewardFunction,
    build_reward_functions,
    check_reward_spec,
    keep_user_files,
    split_reward_names,
)
from .rewards import build_reward
from .stage import Stage, StageResult

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
RESULTS_FILE = "train_results.json"  # the run's metrics, named as the Trainer stages name theirs
SHOWN_COMPLETIONS = 4  # sampled completions written to completions.jsonl per logging step


def policy_gradients(scorer, r: Rollout, advantages: torch.Tensor, mask: torch.Tensor, order: torch.Tensor, micro: int,
                     settings: LossSettings, num_items: float, world: int = 1, old: torch.Tensor | None = None,
                     ref: torch.Tensor | None = None) -> dict[str, list[float]]:
    """Accumulate one optimiser step's gradients over the rows `order` of this process's rollout, `micro` rows at a
    time; each micro-batch's statistics.

    `scorer` is `loop_ranks.policy_logps`: under several processes DDP averages their gradients in the last
    micro-batch's backward. A step with several processes then gets the gradients of one process holding all their
    rows (the loss types' weights make accumulation exact; `num_items` counts every process's tokens).
    """
    loss_type = LOSS_TYPES[settings.loss_type]
    across = world if loss_type.whole_step_tokens else 1  # DDP averages; a loss over every process's tokens adds
    chunks = [order[i : i + micro] for i in range(0, len(order), micro)]
    stats: dict[str, list[float]] = {"loss": [], "clip_ratio": [], "kl": [], "entropy": []}
    for k, idx in enumerate(chunks):
        with accumulating(scorer, last=k == len(chunks) - 1):
            logps, entropy = scorer(r.ids[idx], r.attn[idx], r.prompt_len, with_entropy=True)
            old_logps = old[idx] if old is not None else logps.detach()
            result = grpo_loss(logps, old_logps, advantages[idx], mask[idx], settings,
                               ref[idx] if ref is not None else None, num_items=num_items)
            weight = loss_type.weight(len(idx), len(order), len(chunks))
            (result.loss * weight * across).backward()
        stats["loss"].append(result.loss.item())
        stats["clip_ratio"].append(result.clip_ratio)
        m = r.mask[idx].float()
        stats["entropy"].append(float((entropy * m).sum() / m.sum().clamp(min=1)))
        if result.kl is not None:
            stats["kl"].append(result.kl)
    return stats


class GRPORunner:
    """The loop: sample prompts, roll out groups, score, compute advantages, update; log each step,
    save a checkpoint every `save_steps`."""

    def __init__(self, cfg: "RunConfig", run, ref, rewards: list[RewardFunction],
                 advantages: Callable[[torch.Tensor, int, str], torch.Tensor], reward_model=None):
        f, t = cfg.finetuning, cfg.training
        self.cfg, self.run, self.ref, self.advantages = cfg, run, ref, advantages
        self.model, self.tokenizer = run.model, run.tokenizer
        self.device = run.args.device  # the run's accelerator (cuda:0, ...), or the CPU; starts torchrun's process group
        self.ranks = Ranks.current()
        if self.ranks.world > 1:  # the processes sample different tokens (rank 0's stream is the one-process run's)
            torch.manual_seed(t.seed + self.ranks.rank)
        for module in (self.model, ref, getattr(reward_model, "model", None)):
            if module is not None and not (getattr(module, "is_loaded_in_4bit", False)
                                           or getattr(module, "is_loaded_in_8bit", False)):
                module.to(self.device)  # quantized weights were placed when they loaded
        self.sampler = GroupSampler(cfg, run, rewards, reward_model, self.device, self.ranks)
        self.names, self.group = self.sampler.names, f.num_generations
        self.batch = t.per_device_train_batch_size * t.gradient_accumulation_steps  # completions per step and process
        steps_per_epoch = max(1, len(run.data.train) * self.group // (self.batch * self.ranks.world))
        self.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
        self.save_every = save_interval(cfg, self.total_steps, steps_per_epoch)
        self.settings = LossSettings(f.loss_type, f.epsilon, f.epsilon_high, f.importance_sampling_level, f.grpo_beta,
                                     f.max_completion_length)
        self.optimizer = self._optimizer()
        from transformers import get_scheduler

        updates = self.total_steps * f.num_iterations
        self.scheduler = get_scheduler(t.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=t.get_warmup_steps(updates), num_training_steps=updates)
        self.temperature = cfg.generating.temperature if cfg.generating.temperature > 0 else 1.0
        self.scorer = policy_logps(self.model, self.temperature, self.ranks, self.device)
        self.done, self.rewards_so_far = 0, []  # steps finished (a resumed run starts past 0) and their mean rewards
        self.tokens_so_far = 0  # prompt + completion tokens sampled in those steps

    def resume(self, checkpoint: str) -> None:
        """Continue from `checkpoint`: weights, optimiser, scheduler, random states, the sampler's position."""
        self.done, extra = restore_loop_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler,
                                                   self.sampler.generator, self.ranks.rank)
        self.rewards_so_far = list(extra.get("rewards", []))
        self.tokens_so_far = int(extra.get("tokens", 0))
        if self.ranks.main:
            trim_logs(self.cfg.training.output_dir, self.done,
                      {LOG_FILE: "current_steps", COMPLETIONS_FILE: "step"})
        logger.info("%s: resumed from %s after step %d of %d", self.cfg.finetuning.stage, checkpoint, self.done,
                    self.total_steps)

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

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """This process's advantages, computed over every process's rewards (`scale_rewards: batch` divides by
        the std of them all; a group never spans two processes)."""
        every = self.ranks.gather(rewards.cpu())
        start = sum(len(x) for x in every[:self.ranks.rank])
        advantages = self.advantages(torch.cat(every), self.group, self.cfg.finetuning.scale_rewards)
        return advantages[start : start + len(rewards)].to(rewards.device)

    def update(self, r: Rollout) -> dict[str, float]:
        f = self.cfg.finetuning
        advantages = self._advantages(r.rewards)
        stats: dict[str, list[float]] = {}
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
        num_items = self.ranks.total(float(mask.sum()))  # dapo divides by the tokens of the whole optimiser batch
        self.model.train()
        for _ in range(f.num_iterations):
            order = shuffled(len(r.rewards), self.batch, self.sampler.generator)
            self.optimizer.zero_grad()
            for key, values in policy_gradients(self.scorer, r, advantages, mask, order, micro, self.settings,
                                                num_items, self.ranks.world, old, ref).items():
                stats.setdefault(key, []).extend(values)
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

    def record(self, step: int, r: Scores, stats: dict[str, float], elapsed: float, tokens: int = 0,
               new_tokens: int = 0) -> dict:
        """One trainer_log.jsonl line, of every process's completions. `tokens`: prompt and completion tokens
        sampled so far (a resumed run's earlier steps too), `new_tokens` those of this run, whose rate is the
        throughput, as a Trainer stage logs them (the Board's tokens/s)."""
        lengths = r.lengths.float()
        record = {"current_steps": step, "total_steps": self.total_steps, "loss": round(stats["loss"], 6),
                  "reward": round(float(r.rewards.mean()), 6), "reward_std": round(float(r.rewards.std()), 6),
                  "completions": len(r.rewards)}
        for j, name in enumerate(self.names):
            record[f"rewards/{name}/mean"] = round(float(r.per_func[:, j].mean()), 6)
            record[f"rewards/{name}/std"] = round(float(r.per_func[:, j].std()), 6)
        record.update({
            "completion_length": round(float(lengths.mean()), 3), "completion_length_max": int(lengths.max()),
            "clipped_share": round(float(r.truncated.float().mean()), 4),
            **{k: round(v, 6) for k, v in stats.items() if k != "loss"},
            "lr": self.scheduler.get_last_lr()[0], "percentage": round(100 * step / self.total_steps, 2),
            "total_tokens": tokens, "throughput": round(new_tokens / elapsed, 2) if elapsed > 0 else None,
            "elapsed_time": fmt_seconds(elapsed),
            "remaining_time": fmt_seconds(elapsed / max(step - self.done, 1) * (self.total_steps - step)),
        })
        return record

    def samples(self, step: int, r: Scores) -> list[dict]:
        """A few completions of the step with their rewards, for completions.jsonl."""
        return [{"step": step, "prompt": r.prompts[i], "completion": r.completions[i], "reward": float(r.rewards[i]),
                 **{name: float(r.per_func[i, j]) for j, name in enumerate(self.names)}}
                for i in range(min(SHOWN_COMPLETIONS, len(r.completions)))]

    def train(self) -> dict[str, float]:
        prompts_per_step = self.batch // self.group
        start, rewards, tokens = time.time(), self.rewards_so_far, self.tokens_so_far
        for step in range(self.done + 1, self.total_steps + 1):
            batch, r, rounds = self.sampler.sample(prompts_per_step)
            # every process updates, or none: DDP's backward waits for all of them
            train = self.ranks.every(batch is not None)
            stats = self.update(batch) if train else {"loss": 0.0}
            if self.cfg.finetuning.dynamic_sampling:
                kept = len(batch.rewards) if train else 0
                stats |= {"sampling_rounds": rounds, "kept_share": kept / (prompts_per_step * self.group)}
            sums = self.ranks.gather((int(r.attn[:, :r.prompt_len].sum() + r.mask.sum()), float(r.rewards.sum()),
                                      len(r.rewards)))
            tokens += sum(x[0] for x in sums)
            rewards.append(sum(x[1] for x in sums) / sum(x[2] for x in sums))
            logging_step = step % max(1, int(self.cfg.training.logging_steps)) == 0 or step == 1
            if logging_step:
                self._log(step, r, stats, time.time() - start, tokens, tokens - self.tokens_so_far)
            if self.save_every and step % self.save_every == 0:
                save_loop_checkpoint(self.cfg, step, self.total_steps, self.model, self.tokenizer, self.optimizer,
                                     self.scheduler, self.sampler.generator, {"rewards": rewards, "tokens": tokens},
                                     self.ranks)
        return reward_metrics(rewards, time.time() - start)

    def _log(self, step: int, r: Rollout, stats: dict[str, float], elapsed: float, tokens: int, new_tokens: int
             ) -> None:
        """Rank 0 writes the step's line and sample completions, of every process's completions and statistics."""
        scores = Scores.merge(self.ranks.gather(r.scores()))
        every = self.ranks.gather(stats)
        stats = {k: sum(s[k] for s in every) / len(every) for k in stats}
        if not self.ranks.main:
            return
        out = Path(self.cfg.training.output_dir)
        record = self.record(step, scores, stats, elapsed, tokens, new_tokens)
        append_log_record(out, record)
        with open(out / COMPLETIONS_FILE, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in self.samples(step, scores))
        logger.info("%s step %d/%d: reward %.4f, loss %.4f, completion length %.1f", self.cfg.finetuning.stage, step,
                    self.total_steps, record["reward"], record["loss"], record["completion_length"])

    def save(self) -> None:
        out = self.cfg.training.output_dir
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(out, selected_adapters=["default"])
        else:
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


def _run(cfg: "RunConfig", advantages) -> StageResult:
    from .plot import plot_loss

    run = setup_run(cfg)
    rewards = build_reward_functions(cfg, run.template)  # a missing file fails before the first rollout
    if is_main_process():
        keep_user_files(cfg)
    ref = build_reference(cfg, run.model, run.tokenizer, needed=cfg.finetuning.grpo_beta > 0)
    reward_model = build_reward(cfg, run.model, run.tokenizer) if cfg.finetuning.reward_model else None
    runner = GRPORunner(cfg, run, ref, rewards, advantages, reward_model)
    if is_main_process() and runner.save_every:
        check_writable(Path(cfg.training.output_dir), checkpoint_bytes(run.model, cfg.training.save_only_model))
    if run.resume:
        runner.resume(run.resume)  # last: the random states it restores are the ones the loop draws from
    elif is_main_process():
        for name in (LOG_FILE, COMPLETIONS_FILE):  # a fresh run, fresh logs
            Path(cfg.training.output_dir, name).unlink(missing_ok=True)
    metrics = runner.train()
    if is_main_process():
        runner.save()
        with open(Path(cfg.training.output_dir, RESULTS_FILE), "w", encoding="utf-8") as fh:  # as the Trainer's
            json.dump(metrics, fh, indent=2)
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
    check_loop_saving(cfg)
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
