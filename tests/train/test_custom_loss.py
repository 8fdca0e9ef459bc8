"""docs/architecture.md's worked example: a preference loss defined and registered in one module
trains through `lathe train` with `pref_loss: <its name>`, and nothing else in lathe had to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lathe.cli import main
from lathe.errors import LatheError
from lathe.registry import PREFERENCE_LOSSES
from lathe.train.losses.preference import PreferenceLoss, PreferenceOutput


def squared_hinge(chosen, rejected, ref_chosen, ref_rejected, args) -> PreferenceOutput:
    """max(0, 1 - beta * h)^2 on the log-ratio margin h: like RSO's hinge, with a smooth gradient near the margin."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    losses = torch.relu(1 - args.pref_beta * (chosen_ratio - rejected_ratio)) ** 2
    return PreferenceOutput(losses, args.pref_beta * chosen_ratio.detach(), args.pref_beta * rejected_ratio.detach())


SQUARED_HINGE = PreferenceLoss(name="squared_hinge", help="squared hinge on the log-ratio margin", compute=squared_hinge)


@pytest.fixture
def registered():
    """A plugin module registers at import (`PREFERENCE_LOSSES.register(...)`); the test undoes it afterwards."""
    PREFERENCE_LOSSES.register(SQUARED_HINGE)
    yield SQUARED_HINGE
    PREFERENCE_LOSSES.unregister(SQUARED_HINGE.name)


def test_a_loss_registered_in_one_module_trains_through_lathe_train(registered, sft_config, capsys):
    config = sft_config(stage="dpo", dataset="lathe_pairs", pref_loss="squared_hinge", pref_beta=0.5,
                        max_steps=8, learning_rate=1e-2, lora_rank=16)
    assert main(["train", str(config)]) == 0
    out = Path(config).parent / "out"
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in log if "rewards/margins" in r]
    assert len(margins) == 8 and sum(margins[-3:]) > sum(margins[:3]), margins  # it learns the preference
    assert "pref_loss: squared_hinge" in (out / "lathe_config.yaml").read_text()
    assert "done: train_loss" in capsys.readouterr().out


def test_the_new_name_is_checked_like_the_built_in_ones(registered, sft_config):
    from lathe.config import load_config

    with pytest.raises(LatheError, match="squared_hinge"):  # the miss lists the plugin among the choices
        load_config(sft_config(stage="dpo", dataset="lathe_pairs", pref_loss="squared_hing"))
    assert "squared_hinge (squared hinge on the log-ratio margin)" in PREFERENCE_LOSSES.describe()
