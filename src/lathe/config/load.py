"""Read a run's config: a YAML/JSON file plus `key=value` overrides, into one typed tree.

The file is flat, with LLaMA-Factory's key names; each key is routed to the group that owns
it (model, data, finetuning, generating, run) or to Hugging Face's `Seq2SeqTrainingArguments`.
Everything is checked here, before any model is loaded: unknown keys (with "did you mean"),
wrong types, bad choices, options lathe does not run yet, impossible combinations.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import LatheError, did_you_mean
from .pending import PENDING
from .schema import (
    GROUPS,
    DataArguments,
    EvaluationArguments,
    ExportArguments,
    FinetuningArguments,
    GeneratingArguments,
    ModelArguments,
    RunArguments,
)

# LLaMA-Factory names that Hugging Face renamed or dropped; mapped so old configs run.
# name -> (new name, note shown when both are given)
ALIASES: dict[str, str] = {
    "warmup_ratio": "warmup_steps",  # transformers 5 takes a ratio as a float < 1 in warmup_steps
    "gradient_checkpointing": "activation_checkpointing",
}

SECRET_KEYS = frozenset({"hf_hub_token", "hub_token", "ms_hub_token", "om_hub_token"})


@dataclass
class RunConfig:
    """Every option of one run, grouped; `explicit` holds the keys the user actually set."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    generating: GeneratingArguments
    export: ExportArguments
    evaluation: EvaluationArguments
    run: RunArguments
    training: Any  # transformers.Seq2SeqTrainingArguments
    explicit: set[str] = field(default_factory=set)
    source: str = "<config>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a flat dict that `lathe train` accepts again (secrets removed)."""
        out: dict[str, Any] = {}
        for group in (self.model, self.data, self.finetuning, self.generating, self.export, self.evaluation, self.run):
            out.update(dataclasses.asdict(group))
        for key in sorted(self.explicit):
            if key in _training_fields():
                out[key] = _plain(getattr(self.training, key))
        from .validate import METHOD_KEYS

        for method, keys in METHOD_KEYS.items():
            if method != self.finetuning.finetuning_type:  # they would be refused on reload
                for key in keys:
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


# ---------------------------------------------------------------- reading


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON config file into a flat dict, naming the file and line on errors."""
    p = Path(path)
    if not p.exists():
        raise LatheError(f"Config file not found: {p}. Give the path of a .yaml or .json file.")
    if p.is_dir():
        raise LatheError(f"{p} is a folder; give the path of a .yaml or .json config file.")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise LatheError(f"{p}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LatheError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LatheError(f"{p}: a config is a mapping of `key: value` lines, got a {type(data).__name__}.")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `key=value` command-line items into a dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LatheError(f"Override `{item}` is not of the form key=value (e.g. learning_rate=1e-4).")
        if value.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
            out[key.strip()] = value.strip()  # a word, not YAML 1.1's boolean (save_strategy=no)
            continue
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


# ---------------------------------------------------------------- types


def _training_cls():
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments


_TRAINING_FIELDS: dict[str, dataclasses.Field] | None = None


def _training_fields() -> dict[str, dataclasses.Field]:
    global _TRAINING_FIELDS
    if _TRAINING_FIELDS is None:
        _TRAINING_FIELDS = {f.name: f for f in dataclasses.fields(_training_cls()) if f.init}
    return _TRAINING_FIELDS


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # library dataclasses may name types we cannot resolve; be lenient
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _accepts_bool(hint: Any) -> bool:
    if hint is bool:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and bool in typing.get_args(hint)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert `value` to the option's type, or raise a LatheError naming the key."""
    if isinstance(value, bool) and hint is not Any and not _accepts_bool(hint):
        # YAML 1.1 reads a bare `no` / `yes` as a boolean; for a text option (save_strategy: no)
        # the user meant the word.
        value = "no" if value is False else "yes"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(key, value, member)
            except LatheError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise LatheError(f"`{key}` must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, bool):
            raise LatheError(f"`{key}` must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise LatheError(f"`{key}` must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, bool):
            raise LatheError(f"`{key}` must be a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads `1e-4` (no dot) as a string
            except ValueError:
                pass
        raise LatheError(f"`{key}` must be a number, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            raise LatheError(f"`{key}` must be text, got nothing.")
        raise LatheError(f"`{key}` must be text, got {value!r}.")
    if hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict):
            return value
        raise LatheError(f"`{key}` must be a mapping (key: value pairs), got {value!r}.")
    return value  # lists, enums and library types: the library checks them


# ---------------------------------------------------------------- building


def all_option_names() -> set[str]:
    names = set(_training_fields())
    for cls in GROUPS.values():
        names.update(f.name for f in dataclasses.fields(cls))
    return names


def _owner(key: str) -> str | None:
    for name, cls in GROUPS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return name
    if key in _training_fields():
        return "training"
    return None


PURPOSES = ("train", "infer")


def build_config(raw: dict[str, Any], source: str = "<config>", purpose: str = "train") -> RunConfig:
    """Validate a flat dict of options and build the typed RunConfig.

    `purpose` "infer" (chat, api, export, eval) needs no output_dir: nothing is trained.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    from .validate import check_raw_combinations, validate

    raw = _apply_aliases(dict(raw), source)
    check_raw_combinations(raw, source)
    routed: dict[str, dict[str, Any]] = {name: {} for name in (*GROUPS, "training")}
    unknown: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise LatheError(f"{source}: option names are text, got {key!r}.")
        owner = _owner(key)
        if owner is not None:
            routed[owner][key] = value
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

    groups = {}
    for name, cls in GROUPS.items():
        hints = _hints(cls)
        values = {}
        for key, value in routed[name].items():
            values[key] = _coerce(key, value, hints[key])
            choices = cls.__dataclass_fields__[key].metadata.get("choices")
            if choices and values[key] not in choices and values[key] is not None:
                raise LatheError(
                    f"`{key}: {values[key]}` is not valid; choose one of {', '.join(choices)}."
                    + did_you_mean(str(values[key]), choices)
                )
        groups[name] = cls(**values)

    if groups["model"].enable_liger_kernel:
        routed["training"].setdefault("use_liger_kernel", True)  # the Trainer applies the kernels
    if groups["finetuning"].disable_shuffling:
        routed["training"].setdefault("train_sampling_strategy", "sequential")
    if purpose == "infer":
        routed["training"].setdefault("output_dir", "saves/lathe-infer")  # required by the library, unused
    f = groups["finetuning"]
    training = _build_training(routed["training"], groups["data"], f.stage, f.finetuning_type, source)
    if training.deepspeed:
        from ..distributed.engines import zero3_only_where_it_trains

        zero3_only_where_it_trains()
    cfg = RunConfig(
        model=groups["model"],
        data=groups["data"],
        finetuning=groups["finetuning"],
        generating=groups["generating"],
        export=groups["export"],
        evaluation=groups["evaluation"],
        run=groups["run"],
        training=training,
        explicit=set(raw),
        source=source,
    )
    validate(cfg)
    return cfg


def _apply_aliases(raw: dict[str, Any], source: str) -> dict[str, Any]:
    for old, new in ALIASES.items():
        if old in raw:
            if new in raw and raw[new] not in (None, 0, 0.0, False):
                raise LatheError(f"{source}: give either `{old}` or `{new}`, not both.")
            value = raw.pop(old)
            if old == "warmup_ratio":
                value = _coerce(old, value, float)
                if not 0.0 <= value < 1.0:
                    raise LatheError(f"`warmup_ratio` must be in [0, 1), got {value}.")
            else:  # checked under the name the user wrote
                value = _coerce(old, value, _hints(_training_cls()).get(new, Any))
            raw[new] = value
    return raw


def _check_pending(key: str, value: Any, source: str) -> None:
    default, part = PENDING[key]
    if value == default or (value is None and default in (None, False)):
        return
    raise LatheError(
        f"{source}: `{key}` is a LLaMA-Factory option that lathe does not run yet ({part}). "
        f"Remove it or set it back to {default!r}; lathe refuses it rather than ignore it."
    )


def _build_training(values: dict[str, Any], data: DataArguments, stage: str, method: str, source: str):
    cls = _training_cls()
    hints = _hints(cls)
    coerced = {k: _coerce(k, v, hints.get(k, Any)) for k, v in values.items()}
    if not coerced.get("output_dir"):
        raise LatheError(f"{source}: `output_dir` is required: the folder where the run writes its results.")
    # The Trainer pickles its arguments into every checkpoint (training_args.bin): a hub token must not
    # ride along. huggingface_hub reads HF_TOKEN, which is where the push finds it instead.
    token = coerced.pop("hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = str(token)
    # lathe's own defaults for options the Trainer would otherwise get wrong for us.
    coerced["remove_unused_columns"] = False  # our collator needs the columns it built
    coerced.setdefault("report_to", "none")
    coerced.setdefault("generation_max_length", data.cutoff_len)
    # Feeds tokens/s in the log. Packed batches hold no padding at all, so counting every
    # token is exact there (the non-padding count would miss eos tokens that double as pad).
    packed = data.packing or data.neat_packing or data.padding_free or (data.packing is None and stage == "pt")
    coerced.setdefault("include_num_input_tokens_seen", "all" if packed else "non_padding")
    if coerced.get("deepspeed"):
        from ..distributed import resolve_deepspeed

        coerced["deepspeed"] = resolve_deepspeed(coerced["deepspeed"], source)  # cwd, then the config's folder
    if not _has_accelerator():
        # transformers refuses bf16/fp16 without a GPU unless told the run is on the CPU, which it is;
        # several CPU processes (FORCE_TORCHRUN) talk over gloo.
        coerced.setdefault("use_cpu", True)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            coerced.setdefault("ddp_backend", "gloo")
        if coerced.get("deepspeed"):
            from ..distributed.engines import cpu_deepspeed_state

            cpu_deepspeed_state(coerced)
    if method == "lora":
        coerced.setdefault("ddp_find_unused_parameters", False)  # frozen base weights get no gradient
    try:
        return cls(**coerced)
    except Exception as e:  # ValueError, TypeError, OSError (a path that isn't one)...: all the user's to fix
        culprit = _culprit(cls, coerced, values)
        named = f"`{culprit}: {values[culprit]!r}`" if culprit else "training options"
        raise LatheError(f"{source}: {named} rejected by transformers: {e}") from None


def _culprit(cls, coerced: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The user's option that transformers refuses, found by trying each alone (only on the error path)."""
    base = {k: coerced[k] for k in ("output_dir", "use_cpu", "remove_unused_columns", "report_to") if k in coerced}
    for key in given:
        try:
            cls(**{**base, key: coerced[key]})
        except Exception:
            return key
    return None


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu and xpu.is_available()) or (mps and mps.is_available()))


def load_config(path: str | Path | None, overrides: list[str] | None = None, purpose: str = "train") -> RunConfig:
    """File + overrides -> validated RunConfig (overrides win)."""
    raw: dict[str, Any] = read_config_file(path) if path else {}
    raw.update(parse_overrides(overrides or []))
    return build_config(raw, source=str(path) if path else "<command line>", purpose=purpose)
