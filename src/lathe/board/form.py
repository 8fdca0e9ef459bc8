"""The Board's forms, generated from the config schema instead of mapped field by field.

Every option shown in the Board is a `FormField` built from the same declaration that feeds
`lathe train --help`: lathe's own groups (`config/options.py`, type + default + help +
choices) and a chosen set of Hugging Face `Seq2SeqTrainingArguments` fields (their own type,
default and help). A field knows how to turn a widget value into a config value and back,
so the YAML the Board writes, the command it previews and the config it validates are the
same thing. Numbers are typed in text boxes on purpose: what the user typed reaches the real
validator (`build_config`), which names the key and the problem ("`learning_rate` must be a
number"), exactly as it would on the command line.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import training as trainer_options
from ..config.coercion import type_hints
from ..config.load import SECRET_KEYS
from ..config.options import GROUPS, choices_of, help_of
from ..registry import METHODS, OPTIMIZERS, STAGES

# Sections of the Train tab, in display order (`sections()`): these, with a panel per finetuning
# method that has options of its own between "extras" and "rlhf", and one per stage with options of
# its own after "rlhf" (shown while that stage is picked). A field lands in the first section whose
# rule matches it (see `section_of`); the rest of a group goes to "more".
FIXED_SECTIONS = ("top", "basic", "training", "extras", "rlhf", "multimodal", "efficient", "more")

# lathe schema fields shown in the top bar / the first rows, by name.
TOP = ("model_name_or_path", "adapter_name_or_path", "finetuning_type", "template", "quantization_bit",
       "quantization_method", "rope_scaling", "flash_attn", "enable_liger_kernel")
BASIC = ("stage", "dataset_dir", "dataset", "cutoff_len", "max_samples", "val_size", "output_dir",
         "overwrite_output_dir")
EXTRAS = ("packing", "neat_packing", "train_on_prompt", "mask_history", "resize_vocab", "use_llama_pro",
          "enable_thinking", "plot_loss", "disable_gradient_checkpointing", "default_system")
# The options of the preference and RL stages, by prefix (shared by several stages, so no stage lists them).
RLHF_PREFIXES = ("pref_", "dpo_", "simpo_", "kto_", "ref_model", "reward_model", "ppo_")
# Options that matter only for a model that takes images, video or audio (shown when the model does).
MULTIMODAL = ("media_dir", "image_max_pixels", "image_min_pixels", "image_do_pan_and_scan", "crop_to_patches",
              "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen", "use_audio_in_video",
              "audio_sampling_rate", "freeze_vision_tower", "freeze_multi_modal_projector", "freeze_language_model")

# Hugging Face training fields the Board shows (their type, default and help come from the
# library); anything else goes through the "extra options" YAML box.
TRAINING_FIELDS: dict[str, str] = {
    "output_dir": "basic",
    "learning_rate": "training", "num_train_epochs": "training", "max_steps": "training",
    "per_device_train_batch_size": "training", "gradient_accumulation_steps": "training",
    "lr_scheduler_type": "training", "warmup_steps": "training", "max_grad_norm": "training",
    "weight_decay": "training", "optim": "training", "bf16": "training", "fp16": "training", "seed": "training",
    "logging_steps": "extras", "save_steps": "extras", "save_total_limit": "extras",
    "neftune_noise_alpha": "extras", "report_to": "extras", "per_device_eval_batch_size": "more",
    # LLaMA Board's Trackio settings (report_to: trackio)
    "project": "extras", "trackio_space_id": "extras", "hub_private_repo": "extras",
}

# What the Train tab's widgets start at where it differs from the schema's default: LLaMA Board's own
# starting values, made for a first run watched in the page (a loss point every 5 steps, not every 500; a
# checkpoint every 100). The form writes them to the YAML like any value typed, so the file says what runs.
BOARD_PRESETS: dict[str, Any] = {
    "logging_steps": 5, "save_steps": 100, "lr_scheduler_type": "cosine", "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 8, "max_samples": 100000,
}

# Comma lists picked from known names (a multi-select that also takes typed values): datasets from
# dataset_info.json, adapters from the folders of past runs (`context.adapter_runs`), reward functions from
# the built-ins (a user's `file.py:function` typed in).
MULTI = ("dataset", "eval_dataset", "adapter_name_or_path", "reward_funcs")

# Groups whose fields make up the Train tab; generating/export/evaluation have their own tabs.
TRAIN_GROUPS = ("model", "data", "finetuning", "run")
# Options lathe accepts but the Board never shows: secrets (read from HF_TOKEN instead), and the
# LLaMA-Factory switches transformers 5 dropped (their only other value is refused).
HIDDEN = frozenset(SECRET_KEYS) | {"use_fast_tokenizer", "low_cpu_mem_usage"}


@dataclass(frozen=True)
class FormField:
    """One option as a widget: kind is bool | optbool (true/false/unset) | int | float | text | choice."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    optional: bool = False
    section: str = "more"
    multi: bool = False  # a comma list picked from known names (datasets, adapter folders)

    # ------------------------------------------------------------ widget <-> config

    def to_widget(self, value: Any) -> Any:
        """A config value as the widget shows it (text boxes hold text, None is empty)."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "optbool":
            return "" if value is None else str(bool(value)).lower()
        if self.multi:
            return [v.strip() for v in str(value or "").split(",") if v.strip()]
        if value is None:
            return ""
        if isinstance(value, enum.Enum):
            value = value.value
        if self.kind in ("int", "float", "text") and not isinstance(value, str):
            return _number_text(value) if isinstance(value, (int, float)) else yaml.safe_dump(value).strip()
        return value

    def to_config(self, value: Any) -> Any:
        """A widget value as the config value written to the YAML (validated later, not here)."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "optbool":
            return {"": None, "true": True, "false": False}.get(value, value) if isinstance(value, str) else value
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v).strip() for v in value if str(v).strip())
        if value is None:
            return None
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                return None
            if self.kind in ("int", "float"):
                return _parse_number(value)
        return value

    def is_default(self, config_value: Any) -> bool:
        default = self.default.value if isinstance(self.default, enum.Enum) else self.default
        if config_value == default:
            return True
        if self.kind in ("int", "float") and isinstance(config_value, (int, float)) and isinstance(default, (int, float)):
            return float(config_value) == float(default)
        return False


def _number_text(value: float) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if value != 0 else "0"
    return repr(value)


def _parse_number(text: str) -> Any:
    """'8' -> 8, '1e-4' -> 0.0001; anything else stays text for the validator to name."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _kind(hint: Any, choices: tuple[str, ...] | None) -> tuple[str, bool, tuple[str, ...] | None]:
    """Widget kind, whether None is allowed, and choices (from an Enum when the library has one)."""
    optional = False
    members: tuple = (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        optional = type(None) in members
        members = tuple(m for m in members if m is not type(None))
    if choices:
        return "choice", optional, choices
    for member in members:
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return "choice", optional, tuple(str(e.value) for e in member)
    first = members[0] if len(members) == 1 else None
    if first is bool:
        return ("optbool", True, ("true", "false")) if optional else ("bool", False, None)
    if first is int:
        return "int", optional, None
    if first is float:
        return "float", optional, None
    return "text", optional, None


def section_of(name: str) -> str:
    if name in TOP:
        return "top"
    if name in BASIC:
        return "basic"
    if name in EXTRAS:
        return "extras"
    if name in TRAINING_FIELDS:
        return TRAINING_FIELDS[name]
    for method in METHODS.values():  # each method's options in its own panel
        if name in method.options:
            return method.name
    if name.startswith(RLHF_PREFIXES):
        return "rlhf"
    if name in MULTIMODAL:
        return "multimodal"
    for stage in stage_sections():  # a stage's own options in its panel (the first stage that lists them)
        if name in STAGES[stage].options:
            return stage
    if any(name == o.flag or name in o.options for o in OPTIMIZERS.values()):
        return "efficient"
    return "more"


def stage_sections() -> tuple[str, ...]:
    """The stages with a panel of their own options: those listing an option no earlier stage lists."""
    seen: set[str] = set()
    out = []
    for name, stage in STAGES.items():
        if set(stage.options) - seen:
            out.append(name)
        seen |= set(stage.options)
    return tuple(out)


def sections() -> tuple[str, ...]:
    """The Train tab's sections in display order."""
    methods = tuple(name for name, method in METHODS.items() if method.options)
    i = FIXED_SECTIONS.index("rlhf")
    return (*FIXED_SECTIONS[:i], *methods, FIXED_SECTIONS[i], *stage_sections(), *FIXED_SECTIONS[i + 1:])


def stage_shows(section: str, stage: str | None, fields: list[FormField]) -> bool:
    """Whether a stage's panel is shown for the stage picked: it is, when that stage takes one of its options."""
    picked = STAGES.get(stage or "")
    return picked is not None and any(f.name in picked.options for f in fields)


def group_fields(group: str) -> list[FormField]:
    """The fields of one lathe schema group (model, data, finetuning, generating, ...)."""
    cls = GROUPS[group]
    hints = type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in HIDDEN:
            continue
        kind, optional, choices = _kind(hints[f.name], choices_of(f))
        optional = optional or f.default is None
        out.append(FormField(f.name, kind, f.default, help_of(f), choices, optional,
                             section_of(f.name), f.name in MULTI))
    return out


def training_fields() -> list[FormField]:
    """The chosen Hugging Face training fields, typed and documented by the library itself."""
    fields = trainer_options.training_fields()
    hints = type_hints(trainer_options.training_class())
    out = []
    for name in TRAINING_FIELDS:
        f = fields[name]
        kind, optional, choices = _kind(hints[name], None)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = " ".join((f.metadata.get("help") or "").split())
        out.append(FormField(name, kind, default, help_text, choices, optional or default is None, section_of(name)))
    return out


def train_form() -> list[FormField]:
    """Every field of the Train tab (lathe's groups + chosen training fields), unique by name."""
    fields: list[FormField] = []
    for group in TRAIN_GROUPS:
        fields.extend(group_fields(group))
    fields.extend(training_fields())
    return fields


# ---------------------------------------------------------------- values <-> raw config


def values_to_raw(fields: list[FormField], values: dict[str, Any], extra_yaml: str = "",
                  always: tuple[str, ...] = ()) -> dict[str, Any]:
    """Widget values -> the flat config dict the Board writes: non-default options (and the
    `always` ones, for a readable file), then the extra-options YAML (any key `lathe train` takes)."""
    from ..errors import LatheError

    raw: dict[str, Any] = {}
    for f in fields:
        if f.name not in values:
            continue
        value = f.to_config(values[f.name])
        if not f.is_default(value) or (f.name in always and value is not None):
            raw[f.name] = value
    extra = parse_extra(extra_yaml)
    shown = {f.name for f in fields}
    both = sorted(shown & set(extra))
    if both:
        raise LatheError(f"extra options: {', '.join(both)} has its own field in the form; set it there.")
    raw.update(extra)
    return raw


def parse_extra(text: str) -> dict[str, Any]:
    """The free-form `key: value` YAML box; hub tokens are refused (use HF_TOKEN)."""
    from ..errors import LatheError

    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LatheError(f"extra options: invalid YAML: {getattr(e, 'problem', e)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LatheError("extra options: write `key: value` lines (a YAML mapping).")
    secrets = sorted(set(data) & SECRET_KEYS)
    if secrets:
        raise LatheError(f"extra options: {', '.join(secrets)} is a secret; the Board does not take it. "
                         "Set the HF_TOKEN environment variable before starting `lathe webui`.")
    return data


def raw_to_values(fields: list[FormField], raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A loaded config -> widget values for the form fields + the rest as extra-options YAML.

    Secrets in the file are dropped: the Board never shows them.
    """
    values = {f.name: f.to_widget(raw.get(f.name, f.default)) for f in fields}
    names = {f.name for f in fields}
    rest = {k: v for k, v in raw.items() if k not in names and k not in SECRET_KEYS}
    return values, (yaml.safe_dump(rest, sort_keys=False, allow_unicode=True) if rest else "")


def to_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
