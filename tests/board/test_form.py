"""The Board's form: widget values -> YAML -> config, for every field it shows."""

from __future__ import annotations

import dataclasses
import enum
import re

import pytest
import yaml

from lathe.board.form import HIDDEN, FormField, group_fields, raw_to_values, to_yaml, train_form, values_to_raw
from lathe.config.load import SECRET_KEYS, build_config, read_config_file
from lathe.config.options import GROUPS
from lathe.errors import LatheError
from lathe.train.grpo import RL_OPTIONS
from tests.conftest import DATA

BASE = {"model_name_or_path": "org/model", "dataset": "lathe_identity", "dataset_dir": str(DATA),
        "output_dir": "saves/x", "do_train": True}
# Options that only make sense next to another one: the companions that make them valid.

COMPANIONS = {
    "interleave_probs": {"mix_strategy": "interleave_under", "interleave_probs": "1.0"},
    "streaming": {"max_steps": 5},
    "tokenize_in_background": {"streaming": True, "max_steps": 5, "tokenized_path": "t"},
    "pissa_convert": {"pissa_init": True},
    "loftq_init": {"quantization_bit": 4},
    "create_new_adapter": {"adapter_name_or_path": "a"},
    "quantization_bit": {"quantization_bit": 4},
    "export_quantization_bit": {"export_quantization_bit": 4},
    "rope_scaling": {"rope_scaling": "linear"},
    "eval_on_each_dataset": {"eval_dataset": "lathe_identity"},
    "quantization_device_map": {"do_train": False},
    "offload_folder": {"quantization_device_map": "auto", "do_train": False},
    "quantization_type": {"quantization_bit": 4},
    "double_quantization": {"quantization_bit": 4},
    "init_special_tokens": {"new_special_tokens_config": "tokens.yaml"},
    "ref_model_adapters": {"stage": "dpo", "ref_model": "r"},
    "ref_model_quantization_bit": {"stage": "dpo", "ref_model": "r", "ref_model_quantization_bit": 4},
    "eval_num_beams": {"do_predict": True, "predict_with_generate": True, "eval_dataset": "lathe_identity"},
    "ref_model": {"stage": "dpo"},
    "pref_bco_weight": {"stage": "dpo"},
    "ld_alpha": {"stage": "dpo"},
    "asft_alpha": {"use_asft_loss": True},
    "eaft_alpha": {"use_eaft_loss": True},
}
# grpo / rloo options are refused under other stages (set away from their default): try them under grpo.
COMPANIONS.update({key: {"stage": "grpo", "reward_funcs": "length"} for key in RL_OPTIONS if key != "reward_funcs"})
COMPANIONS["reward_funcs"] = {"stage": "grpo", "reward_funcs": "length"}
COMPANIONS["num_generations"] = {"stage": "grpo", "reward_funcs": "length", "num_generations": 4}
COMPANIONS["loss_type"] = {"stage": "grpo", "reward_funcs": "length", "loss_type": "grpo"}
COMPANIONS["reward_weights"] = {"stage": "grpo", "reward_funcs": "length", "reward_weights": "0.5"}
METHODS = ({}, {"finetuning_type": "freeze"}, {"finetuning_type": "full"}, {"finetuning_type": "oft"})


def every_field() -> list[FormField]:
    return train_form() + group_fields("generating") + group_fields("export") + group_fields("evaluation")


def sample(f: FormField):
    """A valid value different from the default."""
    default = f.default.value if isinstance(f.default, enum.Enum) else f.default
    if f.kind == "bool":
        return not default
    if f.kind == "optbool":
        return True
    if f.kind == "choice":
        return next(c for c in f.choices if c not in (default, ""))
    if f.kind == "int":
        return 2 if default in (None, -1) else default + 1
    if f.kind == "float":
        return 0.25 if default != 0.25 else 0.5
    return "lathe_identity" if f.multi else "x"


def test_the_form_covers_the_schema_and_hides_secrets():
    names = {f.name for f in every_field()}
    for group, cls in GROUPS.items():
        for field in dataclasses.fields(cls):
            if field.name not in HIDDEN:
                assert field.name in names, f"{group}.{field.name} has no widget"
    assert not names & SECRET_KEYS
    assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "output_dir"} <= names


@pytest.mark.parametrize("f", every_field(), ids=lambda f: f.name)
def test_widget_yaml_config_round_trip(f, tmp_path):
    value = COMPANIONS.get(f.name, {}).get(f.name, sample(f))
    widget = f.to_widget(value)
    raw = values_to_raw([f], {f.name: widget})
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(raw))
    loaded = read_config_file(path)
    assert loaded == {f.name: value}
    assert raw_to_values([f], loaded)[0] == {f.name: widget}  # and back into the form

    errors: list[str] = []
    companions = dict(COMPANIONS.get(f.name, {}))
    for attempt in range(2):
        for method in METHODS:
            try:
                cfg = build_config({**BASE, **method, **companions, **loaded}, source="Board")
            except LatheError as e:
                errors.append(str(e))
                continue
            groups = [getattr(cfg, g) for g in GROUPS] + [cfg.training]
            owner = next(g for g in groups if hasattr(g, f.name))
            got = getattr(owner, f.name)
            got = got.value if isinstance(got, enum.Enum) else got
            assert got == value or (isinstance(got, list) and got == [value]), (f.name, got, value)
            return
        # "`x` ... needs `y: true`": the validator names the companion; add it and try again.
        needed = re.findall(r"needs `(\w+): true`", " ".join(errors))
        companions.update({name: True for name in needed})
    # Refused on this machine by design, by the real validator, naming the key: needs a CUDA GPU.
    assert all(f"`{f.name}`" in e or "`use_" in e for e in errors), errors
    assert any("GPU" in e for e in errors), errors


def test_defaults_are_left_out_and_always_keys_kept():
    fields = train_form()
    values = {f.name: f.to_widget(f.default) for f in fields}
    assert values_to_raw(fields, values) == {}
    values["learning_rate"] = "1e-4"
    values["dataset"] = ["lathe_identity", "lathe_numbers"]
    raw = values_to_raw(fields, values, always=("stage",))
    assert raw == {"stage": "sft", "dataset": "lathe_identity,lathe_numbers", "learning_rate": 0.0001}


def test_non_numeric_number_reaches_the_validator():
    f = next(f for f in train_form() if f.name == "learning_rate")
    raw = values_to_raw([f], {"learning_rate": "abc"})
    assert raw == {"learning_rate": "abc"}
    with pytest.raises(LatheError, match="`learning_rate` must be a number"):
        build_config({**BASE, **raw}, source="Board")


def test_extra_yaml_adds_options_and_refuses_secrets_and_duplicates():
    fields = train_form()
    raw = values_to_raw(fields, {}, "gradient_checkpointing: false\nsave_strategy: epoch\n")
    assert raw == {"gradient_checkpointing": False, "save_strategy": "epoch"}
    with pytest.raises(LatheError, match="hf_hub_token"):
        values_to_raw(fields, {}, "hf_hub_token: hf_abc")
    with pytest.raises(LatheError, match="lora_rank"):
        values_to_raw(fields, {}, "lora_rank: 4")
    with pytest.raises(LatheError, match="YAML"):
        values_to_raw(fields, {}, "a: [")


def test_loaded_config_fills_form_and_drops_secrets():
    fields = train_form()
    values, extra = raw_to_values(fields, {"lora_rank": 16, "hf_hub_token": "hf_secret", "save_strategy": "no"})
    assert values["lora_rank"] == "16"
    assert "hf_secret" not in repr(values) + extra
    assert yaml.safe_load(extra) == {"save_strategy": "no"}
