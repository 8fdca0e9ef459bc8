"""PPO (RLHF): the policy writes answers, a reward model scores them, PPO improves the policy.

TRL no longer ships a PPO trainer (since 0.2x), so the loop is written here on lathe's own
pieces: the rollout generates with the run's template and stop words, rewards are the score
minus a KL penalty to the reference (LoRA: the base with the adapter off; or `ref_model`, with
its own adapters and quantization: `reference.py`), advantages come
from GAE over a value head on the policy, and the update is the clipped PPO objective for
`ppo_epochs` passes (`losses/ppo.py` holds every formula). The KL coefficient adapts towards
`ppo_target`.

Batch sizes: each rollout has per_device_train_batch_size x gradient_accumulation_steps x
ppo_buffer_size prompts; each optimiser step uses per_device_train_batch_size x
gradient_accumulation_steps of them.

Checkpoints (`save_steps`, `loop_checkpoints.py`, as grpo's) hold the policy, optimiser, scheduler,
the random states and the loop's generator, plus what PPO carries from step to step: the value
head, the KL coefficient and the running score moments. A run killed after step k and started
again (the same command, or `resume_from_checkpoint`) samples and logs for steps k+1.. exactly
what one never stopped would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.collate import left_pad, positions_from_mask
from ..data.processors import SUPERVISED
from ..data.processors.supervised import first_learned
from ..data.templates.base import Template
from ..errors import LatheError
from ..model.generation import generation_kwargs, stop_token_ids
from ..model.value_head import HEAD_FILE, hidden_size, make_value_head
from ..process import is_main_process
from ..registry import METHODS, REWARD_MODELS, STAGES
from .base import log_streamed_report, setup_run
from .callbacks import LOG_FILE, append_log_record, fmt_seconds
from .checkpoints import check_writable, checkpoint_bytes
from .chunked_logits import chunkable, chunked_token_logps, final_hidden
from .loop_checkpoints import (
    check_loop_saving,
    reward_metrics,
    restore_loop_checkpoint,
    save_interval,
    save_loop_checkpoint,
    trim_logs,
)
from .losses.ppo import (
    AdaptiveKLController,
    RunningMoments,
    gae_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from .reference import build_reference, check_reference_options, reference_of
from .rewards import build_reward, right_padded
from .stage import Stage, StageResult

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

GAMMA, LAM, CLIP, CLIP_VALUE, VF_COEF, INIT_KL = 1.0, 0.95, 0.2, 0.2, 0.1, 0.2


def prompt_ids(input_ids: list[int], labels: list[int]) -> list[int]:
    """The prompt part of an SFT-encoded sample: everything before the first learned token."""
    return list(input_ids[: first_learned(labels)])


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 up to and including each row's first stop token; 0 after it (generation padding)."""
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= responses == s
    ended_before = (is_stop.cumsum(-1) - is_stop.long()) > 0
    return (~ended_before).long()


def forward_response(model, head, ids, attn, prompt_len: int, temperature: float = 1.0):
    """Log-probs of the response tokens and the values of the states that emitted them: [B, R].

    Log-probs are those of the sampling distribution (logits / temperature), so the PPO
    ratio compares the policy that actually generated the tokens. Where the response logits
    would be big, the output layer runs a chunk of positions at a time (chunked_logits.py).
    """
    positions = positions_from_mask(attn)
    targets = ids[:, prompt_len:]
    chunked = chunkable(model, ids, targets.numel())
    if chunked is not None:
        hidden, _ = final_hidden(model, {"input_ids": ids, "attention_mask": attn, "position_ids": positions})
        states = hidden[:, prompt_len - 1 : -1]
        logprobs = chunked_token_logps(states, dataclasses.replace(chunked, temperature=temperature), targets)
        states = states.detach()  # the value head reads detached features (below)
        values = head(states.to(head.weight.dtype)).squeeze(-1) if head is not None else None
        return logprobs, values
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, output_hidden_states=True)
    logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    # The value head reads detached features: its regression loss, large while it learns the
    # score scale, would otherwise steer the shared backbone (with Adam, drown the policy
    # gradient) instead of the policy improving.
    hidden = out.hidden_states[-1][:, prompt_len - 1 : -1].detach()
    values = head(hidden.to(head.weight.dtype)).squeeze(-1) if head is not None else None
    return logprobs, values


class PPORunner:
    def __init__(self, cfg: "RunConfig", run, ref, reward) -> None:
        self.cfg, self.run, self.ref, self.reward = cfg, run, ref, reward
        self.model, self.tokenizer = run.model, run.tokenizer
        self.template: Template = run.template
        self.head = make_value_head(hidden_size(self.model))
        t = cfg.training
        self.mini_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps
        self.rollout_batch = self.mini_batch * cfg.finetuning.ppo_buffer_size
        prompts = [prompt_ids(r["input_ids"], r["labels"]) for r in run.data.train]
        self.prompts = [p for p in prompts if p]
        steps_per_epoch = max(1, len(self.prompts) // self.rollout_batch)
        self.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
        self.save_every = save_interval(cfg, self.total_steps, steps_per_epoch)
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        from transformers import get_scheduler

        updates = self.total_steps * cfg.finetuning.ppo_epochs * cfg.finetuning.ppo_buffer_size
        self.scheduler = get_scheduler(
            t.lr_scheduler_type, self.optimizer, num_warmup_steps=t.get_warmup_steps(updates),
            num_training_steps=updates,
        )
        self.kl_ctl = AdaptiveKLController(INIT_KL, cfg.finetuning.ppo_target, horizon=10_000)
        self.score_moments = RunningMoments()
        self.stop_ids = stop_token_ids(self.tokenizer, self.template)
        self.generator = torch.Generator().manual_seed(t.seed)  # which prompts, in which order: checkpointed
        gen = cfg.generating
        self.temperature = gen.temperature if gen.do_sample and gen.temperature > 0 else 1.0
        self.done, self.rewards_so_far = 0, []  # steps finished (a resumed run starts past 0) and their mean rewards

    # ------------------------------------------------------------ checkpoints

    def loop_state(self, rewards: list[float]) -> dict:
        """What the loop carries from one step to the next besides the weights, optimiser and random states."""
        m = self.score_moments
        return {"value_head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
                "kl_coef": self.kl_ctl.value, "score_moments": {"mean": m.mean, "var": m.var, "count": m.count},
                "rewards": list(rewards)}

    def resume(self, checkpoint: str) -> None:
        """Continue from `checkpoint`: policy, value head, optimiser, scheduler, random states, KL coefficient
        and score moments, the generator's position in the prompts."""
        self.done, extra = restore_loop_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler,
                                                   self.generator)
        missing = [k for k in ("value_head", "kl_coef", "score_moments") if k not in extra]
        if missing:
            raise LatheError(f"{checkpoint} holds no {', '.join(missing)} in its loop state: it was not written by "
                             f"`stage: ppo`. Choose a ppo checkpoint, or set `overwrite_output_dir: true`.")
        self.head.load_state_dict(extra["value_head"])
        self.kl_ctl.value = float(extra["kl_coef"])
        moments = extra["score_moments"]
        self.score_moments.mean, self.score_moments.var = float(moments["mean"]), float(moments["var"])
        self.score_moments.count = int(moments["count"])
        self.rewards_so_far = list(extra.get("rewards", []))
        if is_main_process():
            trim_logs(self.cfg.training.output_dir, self.done)
        logger.info("ppo: resumed from %s after step %d of %d", checkpoint, self.done, self.total_steps)

    # ------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self, batch_prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        self.model.eval()
        ids, attn, _ = left_pad(batch_prompts, self.tokenizer.pad_token_id)
        gen = generation_kwargs(self.cfg.generating)
        gen["max_new_tokens"] = min(gen.get("max_new_tokens") or 64, self.cfg.data.cutoff_len)
        output = self.model.generate(
            input_ids=ids, attention_mask=attn, eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **gen,
        )
        prompt_len = ids.shape[1]
        responses = output[:, prompt_len:]
        mask = response_mask(responses, self.stop_ids)
        full_attn = torch.cat([attn, mask], dim=1)
        logprobs, values = forward_response(self.model, self.head, output, full_attn, prompt_len, self.temperature)
        with reference_of(self.model, self.ref) as ref_model:
            ref_logprobs, _ = forward_response(ref_model, None, output, full_attn, prompt_len, self.temperature)
        texts_p = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        texts_r = [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(responses, mask)]
        scored_ids, scored_attn = right_padded(output, full_attn, self.tokenizer.pad_token_id)
        scores = self.reward(scored_ids, scored_attn, texts_p, texts_r).float().cpu()
        raw_scores = scores.clone()
        if self.cfg.finetuning.ppo_score_norm:  # with the statistics of every batch so far, as TRL
            self.score_moments.update(scores)
            scores = self.score_moments.normalize(scores)
        rewards = kl_penalty_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value)
        if self.cfg.finetuning.ppo_whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages(rewards, values, mask, GAMMA, LAM)
        advantages = masked_whiten(advantages, mask) if mask.sum() > 1 else advantages
        return {
            "ids": output, "attn": full_attn, "prompt_len": torch.tensor(prompt_len), "mask": mask,
            "logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns,
            "scores": raw_scores, "kl": masked_mean(logprobs - ref_logprobs, mask),
        }

    # ------------------------------------------------------------ update

    def update(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        n = data["ids"].shape[0]
        prompt_len = int(data["prompt_len"])
        micro = self.cfg.training.per_device_train_batch_size
        stats: dict[str, list[float]] = {"loss": [], "policy_loss": [], "value_loss": [], "clipfrac": []}
        for _ in range(self.cfg.finetuning.ppo_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.mini_batch):
                chunk = order[start : start + self.mini_batch]
                self.optimizer.zero_grad()
                for m0 in range(0, len(chunk), micro):
                    idx = chunk[m0 : m0 + micro]
                    logprobs, values = forward_response(
                        self.model, self.head, data["ids"][idx], data["attn"][idx], prompt_len, self.temperature)
                    mask = data["mask"][idx]
                    pg, clipfrac, _ = ppo_policy_loss(logprobs, data["logprobs"][idx], data["advantages"][idx], mask, CLIP)
                    vf, _ = ppo_value_loss(values, data["values"][idx], data["returns"][idx], mask, CLIP_VALUE)
                    loss = pg + VF_COEF * vf
                    (loss * len(idx) / len(chunk)).backward()
                    stats["loss"].append(loss.item())
                    stats["policy_loss"].append(pg.item())
                    stats["value_loss"].append(vf.item())
                    stats["clipfrac"].append(float(clipfrac))
                if self.cfg.training.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.training.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
        return {k: sum(v) / len(v) for k, v in stats.items() if v}

    # ------------------------------------------------------------ loop

    def train(self) -> dict[str, float]:
        out = self.cfg.training.output_dir
        start, rewards = time.time(), self.rewards_so_far
        for step in range(self.done + 1, self.total_steps + 1):
            picks = torch.randint(len(self.prompts), (self.rollout_batch,), generator=self.generator).tolist()
            data = self.rollout([self.prompts[i] for i in picks])
            stats = self.update(data)
            kl = float(data["kl"])
            self.kl_ctl.update(kl, self.rollout_batch)
            reward = float(data["scores"].mean())
            rewards.append(reward)
            if is_main_process() and (step % max(1, int(self.cfg.training.logging_steps)) == 0 or step == 1):
                elapsed = time.time() - start
                append_log_record(out, {
                    "current_steps": step, "total_steps": self.total_steps, "loss": round(stats["loss"], 6),
                    "reward": round(reward, 6), "kl": round(kl, 6), "kl_coef": round(self.kl_ctl.value, 6),
                    "policy_loss": round(stats["policy_loss"], 6), "value_loss": round(stats["value_loss"], 6),
                    "clipfrac": round(stats["clipfrac"], 4), "lr": self.scheduler.get_last_lr()[0],
                    "percentage": round(100 * step / self.total_steps, 2), "elapsed_time": fmt_seconds(elapsed),
                    "remaining_time": fmt_seconds(elapsed / (step - self.done) * (self.total_steps - step)),
                })
                logger.info("ppo step %d/%d: reward %.4f, kl %.4f, loss %.4f", step, self.total_steps, reward, kl,
                            stats["loss"])
            if self.save_every and step % self.save_every == 0 and is_main_process():
                save_loop_checkpoint(self.cfg, step, self.total_steps, self.model, self.tokenizer, self.optimizer,
                                     self.scheduler, self.generator, self.loop_state(rewards))
        return reward_metrics(rewards, time.time() - start)

    def save(self) -> None:
        from safetensors.torch import save_file

        out = self.cfg.training.output_dir
        if hasattr(self.model, "peft_config"):  # the policy adapter only, not the swapped-in reward adapter
            self.model.save_pretrained(out, selected_adapters=["default"])
        else:
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, f"{out}/{HEAD_FILE}")


def run_ppo(cfg: "RunConfig") -> StageResult:
    import os

    from .plot import plot_loss

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would train on its own, unsynchronised
        raise LatheError("`stage: ppo` runs in one process: its loop does not share gradients between processes "
                         "yet (grpo and rloo do). Start one process (e.g. CUDA_VISIBLE_DEVICES=0).")

    run = setup_run(cfg)
    ref = build_reference(cfg, run.model, run.tokenizer)
    reward = build_reward(cfg, run.model, run.tokenizer)
    runner = PPORunner(cfg, run, ref, reward)
    if is_main_process() and runner.save_every:
        check_writable(Path(cfg.training.output_dir), checkpoint_bytes(run.model, cfg.training.save_only_model))
    if run.resume:
        runner.resume(run.resume)  # last: the random states it restores are the ones the loop draws from
    elif is_main_process():
        Path(cfg.training.output_dir, LOG_FILE).unlink(missing_ok=True)  # a fresh run, a fresh log
    metrics = runner.train()
    if is_main_process():
        runner.save()
        after_save = METHODS[cfg.finetuning.finetuning_type].after_save
        if after_save is not None:
            after_save(run.model, cfg)  # e.g. PiSSA's conversion of the saved adapter
        if cfg.finetuning.plot_loss:
            plot_loss(cfg.training.output_dir, keys=("loss", "reward"))
    log_streamed_report(run.data)
    return StageResult(metrics, run.model, run.tokenizer, extras={"ref_model": ref, "value_head": runner.head})


def _check(cfg: "RunConfig") -> None:
    f, src = cfg.finetuning, cfg.source
    if not f.reward_model:
        raise LatheError(f"{src}: `stage: ppo` needs `reward_model` (a folder from `stage: rm`, or an API URL).")
    check_loop_saving(cfg)
    if cfg.data.streaming:
        raise LatheError(f"{src}: `stage: ppo` samples prompts at random and cannot stream them.")
    check_reference_options(cfg)
    reward = REWARD_MODELS[f.reward_model_type]
    if reward.check is not None:
        reward.check(cfg)


PPO = STAGES.register(Stage(
    name="ppo", help="RLHF: a reward model scores the policy's answers", run=run_ppo, processor=SUPERVISED,
    trainer=False, check=_check,
))
