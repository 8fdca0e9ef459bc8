"""SFT prediction: generated_predictions.jsonl, BLEU/ROUGE deterministic with greedy decoding, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.train.metrics import similarity_scores
from lathe.train import run_stage


def test_similarity_scores_by_hand():
    same = similarity_scores(["the cat sat"], ["the cat sat"])
    assert same["bleu-4"] == pytest.approx(100.0) and same["rouge-l"] == pytest.approx(100.0, abs=1e-3)
    none = similarity_scores(["xyz"], ["abc"])
    assert none["rouge-1"] == 0.0 and none["bleu-4"] < 5
    zh = similarity_scores(["我喜欢机器学习"], ["我喜欢机器学习"])  # jieba word split for Chinese
    assert zh["rouge-2"] == pytest.approx(100.0, abs=1e-3)


def test_predict_with_generate_writes_and_scores_deterministically(sft_config, tiny_demo_model):
    def run(out: str) -> tuple[list[dict], dict]:
        cfg = load_config(sft_config(
            model_name_or_path=str(tiny_demo_model), output_dir=out, dataset="lathe_identity",
            eval_dataset="lathe_numbers", max_samples=8, max_steps=3, do_predict=True, predict_with_generate=True,
            do_sample=False, max_new_tokens=8, per_device_eval_batch_size=4,
        ))
        run_stage(cfg)
        lines = (Path(out) / "generated_predictions.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines], json.loads((Path(out) / "predict_results.json").read_text())

    rows, metrics = run(str(Path(sft_config().parent) / "a"))
    assert len(rows) == 8 and {"prompt", "predict", "label"} <= set(rows[0])
    assert rows[0]["label"] and "<|im_start|>assistant" in rows[0]["prompt"]
    for key in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"):
        assert key in metrics
    rows2, metrics2 = run(str(Path(sft_config().parent) / "b"))
    assert rows2 == rows and metrics2 == metrics


def test_compute_accuracy_at_evaluation(sft_config):
    cfg = load_config(sft_config(compute_accuracy=True, do_eval=True, val_size=8, max_steps=2))
    metrics = run_stage(cfg).metrics
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_predict_needs_an_eval_set(sft_config):
    from lathe.errors import LatheError

    with pytest.raises(LatheError, match="eval_dataset"):
        load_config(sft_config(do_predict=True, predict_with_generate=True))


def test_a_stopped_prediction_is_taken_up_where_it_stopped(sft_config, tiny_demo_model, caplog):
    """Rerun into the same folder with the same settings: the answers on disk are kept, the rest generated,
    and the file and scores equal a run that never stopped; other settings, or overwrite_output_dir, start over."""
    from lathe.train import predict as predict_module

    def cfg(out: Path, **extra):
        settings = dict(model_name_or_path=str(tiny_demo_model), output_dir=str(out), eval_dataset="lathe_numbers",
                        max_samples=8, do_train=False, do_predict=True, predict_with_generate=True, do_sample=False,
                        max_new_tokens=8, per_device_eval_batch_size=2, overwrite_output_dir=False)
        return load_config(sft_config(**{**settings, **extra}))

    whole = Path(sft_config().parent) / "whole"
    run_stage(cfg(whole))
    expected = (whole / "generated_predictions.jsonl").read_text()
    scores = json.loads((whole / "predict_results.json").read_text())

    out = Path(sft_config().parent) / "stopped"
    run_stage(cfg(out))
    lines = expected.splitlines()
    (out / "generated_predictions.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed mid-line
    calls = []
    real = predict_module.generate_batch
    predict_module.generate_batch = lambda model, tok, prompts, *a: calls.append(len(prompts)) or real(
        model, tok, prompts, *a)
    try:
        with caplog.at_level("INFO"):
            run_stage(cfg(out))
    finally:
        predict_module.generate_batch = real
    assert "after 3 of 8 samples" in caplog.text
    assert calls == [2, 2, 1]  # samples 3-7 only
    assert (out / "generated_predictions.jsonl").read_text() == expected
    assert json.loads((out / "predict_results.json").read_text()) == scores

    run_stage(cfg(out, max_new_tokens=4))  # other settings: the old answers are not theirs
    assert len((out / "generated_predictions.jsonl").read_text().splitlines()) == 8
    assert (out / "generated_predictions.jsonl").read_text() != expected
