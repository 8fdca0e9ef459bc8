"""Config: parsing, overrides, did-you-mean, combination errors, the resolved config."""

from __future__ import annotations

import pytest
import yaml

from lathe.config import build_config, load_config
from lathe.config.load import parse_overrides
from lathe.errors import LatheError

BASE = {"model_name_or_path": "some/model", "dataset": "identity", "output_dir": "out", "do_train": True}


def cfg(**kw):
    return build_config({**BASE, **kw})


def test_groups_and_hf_fields_are_routed():
    c = cfg(lora_rank=16, cutoff_len=512, learning_rate=1e-4, per_device_train_batch_size=2, top_p=0.5)
    assert c.finetuning.lora_rank == 16
    assert c.data.cutoff_len == 512
    assert c.training.learning_rate == 1e-4
    assert c.training.per_device_train_batch_size == 2
    assert c.generating.top_p == 0.5


def test_llamafactory_defaults():
    c = cfg()
    assert (c.finetuning.stage, c.finetuning.finetuning_type) == ("sft", "lora")
    assert c.finetuning.lora_rank == 8 and c.finetuning.lora_alpha is None
    assert c.data.cutoff_len == 2048 and c.data.dataset_dir == "data"
    assert c.model.trust_remote_code is False
    assert c.training.remove_unused_columns is False


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "lora_rank": 8, "learning_rate": 1.0e-4}))
    c = load_config(path, ["lora_rank=4", "learning_rate=2e-5", "template=qwen", "bf16=false"])
    assert c.finetuning.lora_rank == 4
    assert c.training.learning_rate == 2e-5  # `2e-5` is a string to YAML; coerced to a float
    assert c.data.template == "qwen"


def test_override_syntax_error():
    with pytest.raises(LatheError, match="key=value"):
        parse_overrides(["lora_rank"])


def test_unknown_key_did_you_mean():
    with pytest.raises(LatheError) as e:
        cfg(lora_rnak=8)
    assert "lora_rnak" in str(e.value) and "`lora_rank`" in str(e.value)


def test_unknown_hf_key_did_you_mean():
    with pytest.raises(LatheError, match="learning_rate"):
        cfg(learnig_rate=1e-4)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"finetuning_type": "full", "lora_rank": 16}, "lora_rank"),
        ({"finetuning_type": "lora", "freeze_trainable_layers": 4}, "freeze_trainable_layers"),
        ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit"),
        ({"stage": "sfft"}, "sft"),
        ({"finetuning_type": "qlora"}, "lora"),
        ({"lora_rank": "abc"}, "integer"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"cutoff_len": 0}, "cutoff_len"),
        ({"bf16": "maybe"}, "true or false"),
        ({"train_on_prompt": True, "mask_history": True}, "contradict"),
        ({"val_size": 1.5}, "val_size"),
        ({"val_size": -1}, "val_size"),
    ],
)
def test_bad_values_and_combinations(extra, needle):
    with pytest.raises(LatheError, match=needle):
        cfg(**extra)


def test_oft_is_available():  # the last LLaMA-Factory finetuning type to arrive (tests/model/test_oft.py)
    assert cfg(finetuning_type="oft").finetuning.finetuning_type == "oft"


def test_required_keys():
    with pytest.raises(LatheError, match="model_name_or_path"):
        build_config({"dataset": "x", "output_dir": "o", "do_train": True})
    with pytest.raises(LatheError, match="output_dir"):
        build_config({"model_name_or_path": "m", "dataset": "x"})
    with pytest.raises(LatheError, match="dataset"):
        build_config({"model_name_or_path": "m", "output_dir": "o", "do_train": True})


def test_pending_option_refused_unless_default():
    assert cfg(use_kt=False).finetuning.finetuning_type == "lora"  # default: accepted
    with pytest.raises(LatheError, match="lathe does not run: "):
        cfg(use_kt=True)
    with pytest.raises(LatheError, match="lathe does not run: "):
        cfg(use_mca=True)


def test_warmup_ratio_maps_to_warmup_steps():
    assert cfg(warmup_ratio=0.1).training.warmup_steps == 0.1
    with pytest.raises(LatheError, match="warmup_ratio"):
        cfg(warmup_ratio=1.5)


def test_disable_shuffling_reads_in_order():
    assert cfg(disable_shuffling=True).training.train_sampling_strategy == "sequential"


def test_resolved_config_round_trips(tmp_path):
    c = cfg(lora_rank=4, learning_rate=3e-4, hf_hub_token="secret-token")
    d = c.to_dict()
    assert "hf_hub_token" not in d
    again = build_config(d)
    assert again.to_dict() == d


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_name_or_path: x\nlora_rank: [8\n")
    with pytest.raises(LatheError, match=r"bad.yaml, line \d+"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(LatheError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(LatheError, match="folder"):
        load_config(tmp_path)


def test_yaml_no_means_the_word_for_text_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE) + "save_strategy: no\neval_strategy: no\n")
    c = load_config(path, ["logging_strategy=no", "bf16=no", "plot_loss=yes"])
    assert c.training.save_strategy == "no" and c.training.logging_strategy == "no"
    assert c.training.bf16 is False and c.finetuning.plot_loss is True
