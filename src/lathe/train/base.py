"""What every stage shares: the output folder, resuming, the train/save/evaluate sequence.

The Hugging Face Trainer owns the loop, optimizer, scheduler and checkpoints; this module
wraps it with lathe's conventions so a stage module only wires its data, model and loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import LatheError
from ..process import is_main_process
from ..registry import METHODS
from .plot import plot_loss

if TYPE_CHECKING:
    from transformers import Trainer

    from ..config import RunConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "lathe_config.yaml"


def prepare_output_dir(cfg: "RunConfig") -> str | None:
    """Decide where training starts; returns the checkpoint to resume from, if any.

    Like LLaMA-Factory, an output_dir holding checkpoints is resumed from its newest complete
    one unless `overwrite_output_dir: true`; an output_dir holding other files and no
    checkpoint, or another model's / stage's / method's run, is refused rather than written over.
    """
    from .checkpoints import check_same_run, last_complete_checkpoint, remove_incomplete_checkpoints

    t = cfg.training
    out = Path(t.output_dir)
    resume = t.resume_from_checkpoint
    if resume not in (None, "", False, "false", "False"):
        if resume in (True, "true", "True"):
            last = last_complete_checkpoint(out)
            if last is None:
                raise LatheError(f"`resume_from_checkpoint: true` but {out} holds no checkpoint-* folder.")
            return last
        if not Path(resume).is_dir():
            raise LatheError(f"`resume_from_checkpoint`: checkpoint folder not found: {resume}.")
        return str(resume)
    if not t.do_train or not out.is_dir() or not any(out.iterdir()):
        return None
    if cfg.run.overwrite_output_dir:
        if is_main_process():
            for old in [*out.glob("checkpoint-*"), out / ".staging"]:
                shutil.rmtree(old, ignore_errors=True)
        return None
    check_same_run(cfg, out, CONFIG_FILE)
    if is_main_process():
        remove_incomplete_checkpoints(out)
    last = last_complete_checkpoint(out)
    if last is not None:
        if is_main_process():
            logger.info("Resuming from %s (set overwrite_output_dir: true to start fresh).", last)
        return last
    raise LatheError(
        f"output_dir {out} already holds files and no checkpoint to resume from. "
        f"Set `overwrite_output_dir: true` to write over it, or choose another output_dir."
    )


def save_run_config(cfg: "RunConfig") -> None:
    """Write the resolved config so the run can be repeated with `lathe train <this file>`."""
    if not is_main_process():
        return
    out = Path(cfg.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CONFIG_FILE, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, allow_unicode=True)


@dataclass
class RunSetup:
    """What every stage starts from: the run's Trainer arguments, where to resume, the tokenizer,
    template, data and trainable model."""

    args: Any  # the run's own (editable) Seq2SeqTrainingArguments, config/training.py
    resume: str | None
    tokenizer: Any
    template: Any
    data: Any  # lathe.data.loader.DatasetBundle
    model: Any
    media: Any = None  # lathe.data.media.encode.MediaContext when the model takes images, video or audio

    def collator(self, inner, rows=None):
        """`inner`, the stage's collator, with the batch's media added when the model takes them."""
        if self.media is None:
            return inner
        from ..data.media.collate import MediaCollator, same_rows

        return MediaCollator(inner, self.media, rows or same_rows, dtype=getattr(self.model, "dtype", None))


def run_arguments(cfg: "RunConfig"):
    """The Trainer arguments of this run: the config's, plus what the engine and the data decide now."""
    from ..config.training import editable_copy
    from ..data.packing import packing_enabled
    from ..distributed import start_engine
    from ..distributed.sequence_parallel import check_sequence_parallel, launched_world_size

    check_sequence_parallel(cfg, launched_world_size())  # before the data and the model: it needs no model
    changes = start_engine(cfg)  # DeepSpeed on a CPU: its process group, before the Trainer's own setup
    if "include_num_input_tokens_seen" not in cfg.explicit:
        # Feeds tokens/s in the log. Packed batches hold no padding at all, so counting every
        # token is exact there (the non-padding count would miss eos tokens that double as pad).
        packed = packing_enabled(cfg) or cfg.data.padding_free
        changes["include_num_input_tokens_seen"] = "all" if packed else "non_padding"
    if cfg.finetuning.early_stopping_steps is not None and cfg.training.metric_for_best_model is None:
        changes["metric_for_best_model"] = "eval_loss"  # what early stopping watches (lower is better)
    report_to = list(cfg.training.report_to or [])
    if cfg.finetuning.use_swanlab and "swanlab" in report_to:
        # use_swanlab adds SwanLab's own callback, set from the swanlab_* options; transformers' would log twice
        changes["report_to"] = [name for name in report_to if name != "swanlab"] or ["none"]
    return editable_copy(cfg.training, **changes)


def check_run_callbacks(cfg: "RunConfig") -> None:
    """Options carried out by Trainer callbacks: refused before any work when they cannot act."""
    from ..registry import STAGES
    from .callbacks import check_early_stopping
    from .profiler import check_profiler
    from .tracking import check_tracking

    if not STAGES[cfg.finetuning.stage].trainer:
        for group, key in (("finetuning", "early_stopping_steps"), ("finetuning", "use_swanlab"),
                           ("run", "enable_torch_profiler")):
            if getattr(getattr(cfg, group), key) not in (None, False):
                raise LatheError(f"{cfg.source}: `{key}` works through the Hugging Face Trainer's callbacks; "
                                 f"`stage: {cfg.finetuning.stage}` runs its own loop: remove `{key}`.")
    check_early_stopping(cfg)
    check_profiler(cfg)
    check_tracking(cfg)


def log_param_status(model) -> None:
    """`print_param_status`: every parameter's name, shape, dtype, device and whether it trains (main process)."""
    if not is_main_process():
        return
    for name, param in model.named_parameters():
        logger.info("param %s: shape %s, dtype %s, device %s, trainable %s",
                    name, tuple(param.shape), str(param.dtype).removeprefix("torch."), param.device, param.requires_grad)


@dataclass
class RunData:
    """The tokenizer as the run uses it, its template, the tokens it added, its media context and its data."""

    tokenizer: Any
    template: Any
    added: int
    media: Any
    data: Any  # lathe.data.loader.DatasetBundle


def read_data(cfg: "RunConfig", args=None) -> RunData:
    """Tokenizer -> template -> data, as a run reads them (`lathe plan` too, for the samples' real lengths).

    `args`: the run's Trainer arguments; with them, one process per machine (or per shared file
    system) tokenizes and the others read its cache."""
    from .. import startup
    from ..data.loader import get_dataset, run_template, warn_template_mismatch
    from ..model.load import add_config_tokens, check_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    check_causal_lm(cfg.model)  # before the data: a model that cannot be built fails in seconds
    startup.mark("tokenizer")
    template = run_template(cfg, tokenizer)
    from_template = template.fix_tokenizer(tokenizer)
    warn_template_mismatch(cfg, template, from_template)
    added = from_template + add_config_tokens(tokenizer, cfg.model)
    media = run_media(cfg, tokenizer, template)
    # Others then read the cache: with a file system all machines share, only the global main
    # process writes it (local=False); otherwise each machine's own main process does.
    first = (args.main_process_first(desc="preprocessing", local=not cfg.data.data_shared_file_system)
             if args is not None else contextlib.nullcontext())
    with first:
        data = get_dataset(cfg, tokenizer, template, media)
    startup.mark("data")
    return RunData(tokenizer, template, added, media, data)


def setup_run(cfg: "RunConfig") -> RunSetup:
    """Tokenizer -> template -> data -> model -> method, in the order that fails cheapest first.

    The data is read and tokenized before the weights load, so a data problem costs seconds.
    The run's Trainer arguments are made first: with ZeRO-3 they make the model load partitioned.
    """
    from .. import startup
    from ..data.lengths import longest_sample, rows_per_sample
    from ..model.adapters import apply_method
    from ..model.load import enable_gradient_checkpointing, load_model
    from ..model.memory import checkpointing_plan
    from ..model.tiled_mlp import tile_mlps

    check_run_callbacks(cfg)
    args = run_arguments(cfg)
    resume = prepare_output_dir(cfg)
    read = read_data(cfg, args)
    tokenizer, data = read.tokenizer, read.data
    save_run_config(cfg)
    model = load_model(cfg, tokenizer)
    if cfg.training.do_train:
        plan = checkpointing_plan(cfg, model, seq=longest_sample(data.train), rows=rows_per_sample(data.train))
        logger.info("%s; `disable_gradient_checkpointing` and `tiled_mlp` decide it yourself.", plan.describe())
        if plan.layers:
            enable_gradient_checkpointing(model, cfg.model.use_reentrant_gc,
                                          plan.layers if plan.layers < plan.total else None, plan.offload)
        if plan.tiled_mlp:
            tile_mlps(model, asked=bool(cfg.model.tiled_mlp))
    model = apply_method(model, cfg, new_token_rows=bool(read.added) or cfg.model.resize_vocab)
    if cfg.model.print_param_status:
        log_param_status(model)
    startup.mark("model")
    return RunSetup(args, resume, tokenizer, read.template, data, model, read.media)


def run_media(cfg: "RunConfig", tokenizer, template):
    """The media context of a run whose model takes images, video or audio (data/media); None for a text model."""
    from ..data.media.encode import media_for_run

    return media_for_run(cfg, tokenizer, template)


def build_and_train(cfg: "RunConfig", run: RunSetup, trainer_cls, collator, eval_perplexity: bool = False,
                    **trainer_kwargs):
    """Make the stage's Trainer (a `trainers.LatheTrainer`) with lathe's shared arguments, train, save, evaluate.

    Returns (trainer, metrics). Every stage that runs on the Hugging Face Trainer goes
    through here, so logging, checkpoints and saving behave the same in all of them.
    `eval_perplexity` adds exp(eval_loss) to the evaluation metrics.
    """
    from .. import startup
    from ..config.engines import requested_engine
    from ..distributed import ShardingCallback
    from ..distributed.sequence_parallel import prepare as prepare_sequence_parallel
    from ..distributed.sequence_parallel import sequence_parallel_size
    from .callbacks import JsonlLogCallback, StartupCallback, early_stopping_callbacks
    from .checkpoints import check_writable, checkpoint_bytes
    from .optim import optimizer_setup
    from .profiler import profiler_callbacks
    from .tracking import add_config_reporter, swanlab_callbacks
    from .trainers import LatheTrainer

    if not issubclass(trainer_cls, LatheTrainer):  # its checkpoints must be atomic, as every stage's are
        raise TypeError(f"{trainer_cls.__name__} must derive from lathe.train.trainers.LatheTrainer")
    model = trainer_kwargs.pop("model", run.model)
    if cfg.training.do_train and is_main_process():
        saves = cfg.training.save_strategy != "no"  # a str enum: equal to its value
        check_writable(Path(cfg.training.output_dir),
                       checkpoint_bytes(model, cfg.training.save_only_model) if saves else None)
    optimizer, args = optimizer_setup(model, cfg, run.args)
    if sequence_parallel_size(cfg) > 1:  # each sequence cut over a group of processes (Ulysses, DeepSpeed)
        collator = prepare_sequence_parallel(cfg, model, args, collator, run.tokenizer.pad_token_id)
    if optimizer is not None:
        trainer_kwargs["optimizers"] = (optimizer, None)  # the Trainer still builds the lr scheduler
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=run.data.train,
        eval_dataset=run.data.eval,
        data_collator=collator,
        # a multimodal model's processor (with the run's tokenizer) is saved beside it, so the output loads with
        # AutoProcessor; the Trainer pads nothing itself (every stage passes its collator)
        processing_class=run.media.processor if run.media is not None else run.tokenizer,
        callbacks=[JsonlLogCallback(), StartupCallback(), ShardingCallback(requested_engine(cfg)),
                   *early_stopping_callbacks(cfg),
                   *profiler_callbacks(cfg, model), *swanlab_callbacks(cfg)],
        **trainer_kwargs,
    )
    add_config_reporter(trainer, cfg)  # after the trackers' callbacks, which start their runs first
    startup.mark("trainer")
    metrics = train_and_save(trainer, cfg, run.resume, eval_perplexity)
    log_streamed_report(run.data)
    return trainer, metrics


def log_streamed_report(data) -> None:
    """A stream's data report is complete only once training has read it."""
    if data.streaming:
        for line in data.report.lines():
            logger.info("data (streamed): %s", line)


def save_final_model(trainer: "Trainer", cfg: "RunConfig") -> None:
    """The save sequence at the end of training: the model (or adapter) with its tokenizer, then the method's own step."""
    trainer.save_model()
    after_save = METHODS[cfg.finetuning.finetuning_type].after_save
    if after_save is not None:
        after_save(trainer.model, cfg)  # e.g. PiSSA's conversion to a plain LoRA adapter


def train_and_save(trainer: "Trainer", cfg: "RunConfig", resume: str | None, eval_perplexity: bool = False) -> dict[str, Any]:
    """Train, save the model (or adapter) with its tokenizer, metrics and plots; then evaluate."""
    metrics: dict[str, Any] = {}
    t = cfg.training
    if t.do_train:
        from .callbacks import LatheEarlyStoppingCallback
        from .checkpoints import disk_full_error, is_disk_full

        try:
            result = trainer.train(resume_from_checkpoint=resume)
            save_final_model(trainer, cfg)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(Path(t.output_dir)) from e
            raise
        train_metrics = dict(result.metrics)
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, LatheEarlyStoppingCallback):
                train_metrics.update(callback.stop_summary())
        tokens = trainer.state.num_input_tokens_seen or 0
        if cfg.finetuning.include_effective_tokens_per_second and train_metrics.get("train_runtime"):
            train_metrics["effective_tokens_per_sec"] = round(tokens / train_metrics["train_runtime"], 2)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
        if cfg.finetuning.plot_loss and trainer.is_world_process_zero():
            for path in plot_loss(t.output_dir):
                logger.info("Wrote %s", path)
    if t.do_eval:
        eval_metrics = trainer.evaluate(metric_key_prefix="eval")
        if eval_perplexity:  # eval_loss, or eval_<name>_loss per dataset with eval_on_each_dataset
            for key in [k for k in eval_metrics if k.startswith("eval_") and k.endswith("_loss")]:
                eval_metrics[key[:-len("loss")] + "perplexity"] = math.exp(min(eval_metrics[key], 700.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics
