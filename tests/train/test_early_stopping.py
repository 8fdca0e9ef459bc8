"""early_stopping_steps: training ends after K evaluations without a better eval_loss, and says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage


def test_stops_after_k_evaluations_without_improvement(sft_config, caplog):
    # learning_rate 0: the weights never move, so eval_loss is the same at every evaluation.
    # Evaluations at steps 1 (the best), 2 and 3 (no better, twice): stop at step 3 of 12.
    cfg = load_config(sft_config(learning_rate=0.0, val_size=8, eval_strategy="steps", eval_steps=1,
                                 early_stopping_steps=2, max_steps=12))
    with caplog.at_level(logging.INFO, logger="lathe"):
        result = run_stage(cfg)
    out = Path(cfg.training.output_dir)

    evals = [r for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["current_steps"] for r in evals][:3] == [1, 2, 3]  # then the final evaluation (val_size: do_eval)
    assert max(r["current_steps"] for r in evals) == 3
    assert len({r["eval_loss"] for r in evals}) == 1
    best = evals[0]["eval_loss"]
    assert f"Stopped early at step 3: eval_loss has not improved for 2 evaluations (best {best:.6g} at step 1)" \
        in caplog.text

    assert result.metrics["early_stopped_at_step"] == 3
    assert result.metrics["early_stopping_best_step"] == 1
    assert result.metrics["early_stopping_best_metric"] == pytest.approx(best)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["max_steps"] == 12
    stop = state["stateful_callbacks"]["LatheEarlyStoppingCallback"]
    assert stop["attributes"]["stopped_at"] == 3 and stop["args"]["early_stopping_patience"] == 2
    assert json.loads((out / "train_results.json").read_text())["early_stopped_at_step"] == 3


def test_improving_run_is_not_stopped(sft_config):
    # A learning run lowers eval_loss at each early evaluation: patience 3 is never used up.
    cfg = load_config(sft_config(val_size=8, eval_strategy="steps", eval_steps=2, early_stopping_steps=3, max_steps=6))
    result = run_stage(cfg)
    assert "early_stopped_at_step" not in result.metrics
    assert json.loads((Path(cfg.training.output_dir) / "trainer_state.json").read_text())["global_step"] == 6


def test_refused_without_evaluation(sft_config):
    cfg = load_config(sft_config(early_stopping_steps=2))
    with pytest.raises(LatheError, match="early_stopping_steps.*eval_strategy: steps"):
        run_stage(cfg)


def test_refused_where_the_stage_runs_its_own_loop(sft_config, tiny_llama):
    from lathe.train.base import check_run_callbacks

    cfg = load_config(sft_config(stage="ppo", reward_model=str(tiny_llama), reward_model_type="full",
                                 val_size=8, eval_strategy="steps", early_stopping_steps=2))
    with pytest.raises(LatheError, match="early_stopping_steps.*stage: ppo. runs its own loop"):
        check_run_callbacks(cfg)
