"""A run's config: the flat options routed to their groups, typed, checked and frozen.

The file is flat, with LLaMA-Factory's key names; each key is routed to the group that owns
it (model, data, finetuning, generating, export, evaluation, run) or to Hugging Face's
`Seq2SeqTrainingArguments`. Everything is checked before any model is loaded: unknown keys
(with "did you mean"), wrong types, bad choices, LLaMA-Factory options lathe does not run, impossible
combinations (`validate.py`). Loading only reads: it sets no environment variable, global or
process group, and the `RunConfig` it returns cannot be edited.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LatheError, did_you_mean
from ..registry import METHODS
from .coercion import coerce, type_hints
from .engines import resolve_deepspeed
from .options import (
    GROUPS,
    DataArguments,
    EvaluationArguments,
    ExportArguments,
    FinetuningArguments,
    GeneratingArguments,
    ModelArguments,
    RunArguments,
    check_value,
)
from .pending import PENDING
from .read import parse_overrides, read_config_file
from .training import TOKEN_KEY, build_training_arguments, on_cpu_only, training_class, training_fields

# LLaMA-Factory names that Hugging Face renamed; mapped so old configs run.
ALIASES: dict[str, str] = {
    "warmup_ratio": "warmup_steps",  # transformers 5 takes a ratio as a float < 1 in warmup_steps
    "gradient_checkpointing": "activation_checkpointing",
}

SECRET_KEYS = frozenset({"hf_hub_token", TOKEN_KEY, "ms_hub_token", "om_hub_token", "swanlab_api_key", "swanlab_lark_secret",
                         "swanlab_lark_webhook_url"})  # the webhook URL carries its token


@dataclass(frozen=True)
class RunConfig:
    """Every option of one run, grouped and frozen; `explicit` holds the keys the user actually set."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    generating: GeneratingArguments
    export: ExportArguments
    evaluation: EvaluationArguments
    run: RunArguments
    training: Any  # transformers.Seq2SeqTrainingArguments, frozen (config/training.py)
    explicit: frozenset[str] = frozenset()
    source: str = "<config>"
    hub_token: str | None = field(default=None, repr=False)  # kept out of `training` (pickled into checkpoints)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a flat dict that `lathe train` accepts again (secrets removed)."""
        out: dict[str, Any] = {}
        for group in (self.model, self.data, self.finetuning, self.generating, self.export, self.evaluation, self.run):
            out.update(dataclasses.asdict(group))
        for key in sorted(self.explicit):
            if key in training_fields():
                out[key] = _plain(getattr(self.training, key))
        for method in METHODS.values():
            if method.name != self.finetuning.finetuning_type:  # they would be refused on reload
                for key in method.options:
                    out.pop(key, None)
        for key in SECRET_KEYS:
            out.pop(key, None)
        return out


def _plain(value: Any) -> Any:
    """Enum and other library values as YAML-friendly builtins."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def all_option_names() -> set[str]:
    names = set(training_fields())
    for cls in GROUPS.values():
        names.update(f.name for f in dataclasses.fields(cls))
    return names


def owner(key: str) -> str | None:
    """The group that holds option `key` (a RunConfig attribute: model, data, ..., training), or None."""
    for name, cls in GROUPS.items():
        if key in cls.__dataclass_fields__:
            return name
    if key in training_fields():
        return "training"
    return None


PURPOSES = ("train", "infer")


def build_config(raw: dict[str, Any], source: str = "<config>", purpose: str = "train") -> RunConfig:
    """Validate a flat dict of options and build the frozen RunConfig.

    `purpose` "infer" (chat, api, export, eval) needs no output_dir: nothing is trained.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    from .validate import check_raw_combinations, validate

    raw = _apply_aliases(dict(raw), source)
    check_raw_combinations(raw, source)
    routed = _route(raw, source)
    groups = {name: _build_group(cls, routed[name], source) for name, cls in GROUPS.items()}
    training = routed["training"]
    hub_token = training.pop(TOKEN_KEY, None)
    if groups["model"].enable_liger_kernel:
        training.setdefault("use_liger_kernel", True)  # the Trainer applies the kernels
    if groups["finetuning"].disable_shuffling:
        training.setdefault("train_sampling_strategy", "sequential")
    if purpose == "infer":
        training.setdefault("output_dir", "saves/lathe-infer")  # required by the library, unused
    cfg = RunConfig(
        **groups,
        training=_build_training(training, groups["data"], groups["finetuning"], source),
        explicit=frozenset(raw),
        source=source,
        hub_token=str(hub_token) if hub_token else None,
    )
    validate(cfg)
    return cfg


def _route(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Each key to the group that owns it; unknown keys fail together, LLaMA-Factory's pending ones by name."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in (*GROUPS, "training")}
    unknown: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise LatheError(f"{source}: option names are text, got {key!r}.")
        group = owner(key)
        if group is not None:
            routed[group][key] = value
        elif key in PENDING:
            _check_pending(key, value, source)
        else:
            unknown.append(key)
    if unknown:
        lines = [f"`{k}`.{did_you_mean(k, all_option_names() | set(PENDING))}" if k.strip()
                 else f"an option with an empty name ({k!r}): a line starting with `:`?" for k in unknown]
        raise LatheError(
            f"{source}: unknown option(s):\n  " + "\n  ".join(lines)
            + "\nRun `lathe train --help` for the list of options."
        )
    return routed


def _build_group(cls: type, values: dict[str, Any], source: str):
    """One option group from its raw values: each coerced to its type and checked against its declaration."""
    hints = type_hints(cls)
    typed = {}
    for key, value in values.items():
        typed[key] = coerce(key, value, hints[key])
        check_value(key, typed[key], cls.__dataclass_fields__[key], source)
    return cls(**typed)


def _apply_aliases(raw: dict[str, Any], source: str) -> dict[str, Any]:
    for old, new in ALIASES.items():
        if old in raw:
            if new in raw and raw[new] not in (None, 0, 0.0, False):
                raise LatheError(f"{source}: give either `{old}` or `{new}`, not both.")
            value = raw.pop(old)
            if old == "warmup_ratio":
                value = coerce(old, value, float)
                if not 0.0 <= value < 1.0:
                    raise LatheError(f"`warmup_ratio` must be in [0, 1), got {value}.")
            else:  # checked under the name the user wrote
                value = coerce(old, value, type_hints(training_class()).get(new, Any))
            raw[new] = value
    return raw


def _check_pending(key: str, value: Any, source: str) -> None:
    default, part = PENDING[key]
    if value == default or (value is None and default in (None, False)):
        return
    raise LatheError(
        f"{source}: `{key}` is a LLaMA-Factory option that lathe does not run: {part}. "
        f"Remove it or set it back to {default!r}; lathe refuses it rather than ignore it."
    )


def _build_training(values: dict[str, Any], data: DataArguments, finetuning: FinetuningArguments, source: str):
    """The Trainer's arguments: the user's values, typed, plus lathe's defaults for what the Trainer would get wrong."""
    hints = type_hints(training_class())
    coerced = {k: coerce(k, v, hints.get(k, Any)) for k, v in values.items()}
    if not coerced.get("output_dir"):
        raise LatheError(f"{source}: `output_dir` is required: the folder where the run writes its results.")
    coerced["remove_unused_columns"] = False  # our collator needs the columns it built
    coerced.setdefault("report_to", "none")
    coerced.setdefault("generation_max_length", data.cutoff_len)
    if coerced.get("deepspeed"):
        coerced["deepspeed"] = resolve_deepspeed(coerced["deepspeed"], source)  # cwd, then the config's folder
    if on_cpu_only():
        # transformers refuses bf16/fp16 without a GPU unless told the run is on the CPU, which it is;
        # several CPU processes (FORCE_TORCHRUN) talk over gloo.
        import os

        coerced.setdefault("use_cpu", True)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            coerced.setdefault("ddp_backend", "gloo")
    for key, value in METHODS[finetuning.finetuning_type].trainer_defaults.items():
        coerced.setdefault(key, value)
    return build_training_arguments(coerced, source, given=set(values))


def load_config(path: str | Path | None, overrides: list[str] | None = None, purpose: str = "train") -> RunConfig:
    """File + overrides -> validated, frozen RunConfig (overrides win)."""
    raw: dict[str, Any] = read_config_file(path) if path else {}
    raw.update(parse_overrides(overrides or []))
    return build_config(raw, source=str(path) if path else "<command line>", purpose=purpose)
