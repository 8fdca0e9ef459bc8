"""`eval_num_beams` reaches `model.generate` at predict; references leave IGNORE_INDEX out (ignore_pad_token_for_loss)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lathe.config import load_config
from lathe.data.loader import get_dataset
from lathe.data.sample import IGNORE_INDEX
from lathe.data.templates import resolve_template
from lathe.errors import LatheError
from lathe.model.load import load_tokenizer
from lathe.train.predict import (
    PREDICTIONS_FILE,
    predict,
    predict_generation_kwargs,
    split_prompt_answer,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def setup(sft_config, **overrides):
    cfg = load_config(sft_config(eval_dataset="lathe_numbers", max_samples=3, do_predict=True,
                                 predict_with_generate=True, do_sample=False, max_new_tokens=6,
                                 per_device_eval_batch_size=3, **overrides))
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data.template, tokenizer)
    template.fix_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.model_name_or_path)
    model.resize_token_embeddings(len(tokenizer))
    Path(cfg.training.output_dir).mkdir(parents=True, exist_ok=True)  # a run makes it before predicting
    return cfg, tokenizer, template, model, get_dataset(cfg, tokenizer, template).eval


def test_eval_num_beams_overrides_num_beams():
    from lathe.config.load import build_config

    base = {"model_name_or_path": "m", "stage": "sft", "template": "chatml", "output_dir": "o", "do_predict": True,
            "predict_with_generate": True, "eval_dataset": "e"}
    assert predict_generation_kwargs(build_config({**base, "num_beams": 2}))["num_beams"] == 2
    assert predict_generation_kwargs(build_config({**base, "num_beams": 2, "eval_num_beams": 4}))["num_beams"] == 4


def test_predict_generates_with_eval_num_beams(sft_config, monkeypatch):
    cfg, tokenizer, template, model, dataset = setup(sft_config, eval_num_beams=3)
    seen, real = [], model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    predict(model, tokenizer, template, dataset, cfg)
    assert [k["num_beams"] for k in seen] == [3]
    # The file holds exactly what beam search of width 3 writes, decoded.
    rows = [json.loads(x) for x in (Path(cfg.training.output_dir) / PREDICTIONS_FILE).read_text().splitlines()]
    for row, ids, labels in zip(rows, dataset["input_ids"], dataset["labels"]):
        prompt, _ = split_prompt_answer(ids, labels)
        out = real(input_ids=torch.tensor([prompt]), num_beams=3, do_sample=False, max_new_tokens=6,
                   eos_token_id=seen[0]["eos_token_id"], pad_token_id=tokenizer.pad_token_id)
        assert row["predict"] == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()


def test_reference_leaves_ignored_positions_out():
    # prompt [5, 6]; answer [7, 8] with a masked position between (e.g. a second turn's prompt) and after.
    ids = [5, 6, 7, 9, 8, 0]
    labels = [IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX, 8, IGNORE_INDEX]
    assert split_prompt_answer(ids, labels) == ([5, 6], [7, 8])


def test_eval_num_beams_needs_generating_predictions():
    from lathe.config.load import build_config

    with pytest.raises(LatheError, match="eval_num_beams"):
        build_config({"model_name_or_path": "m", "stage": "sft", "output_dir": "o", "eval_num_beams": 4})
