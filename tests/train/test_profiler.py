"""enable_torch_profiler: a short run writes a Chrome trace of the scheduled step, with the labelled modules in it."""

from __future__ import annotations

import json

import pytest
import torch

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.train import run_stage
from lathe.train.profiler import matching_modules


def test_trace_of_the_active_step_with_module_labels(sft_config, tmp_path):
    # wait 1 + warmup 1 + active 1, one cycle: only optimizer step 3 is recorded, in one trace file.
    cfg = load_config(sft_config(enable_torch_profiler=True, profiler_output_dir=str(tmp_path / "prof"),
                                 profiler_wait_steps=1, profiler_warmup_steps=1, profiler_active_steps=1,
                                 profiler_repeat=1, profiler_with_stack=False,
                                 profile_modules="layers.0.mlp, *.layers.1.self_attn", max_steps=5))
    run_stage(cfg)

    traces = list((tmp_path / "prof" / "rank_0").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    # torch marks the recorded step: ProfilerStep#2 is the third (0-based) call of profiler.step()'s schedule
    assert [n for n in names if n.startswith("ProfilerStep#")] == ["ProfilerStep#2"]
    assert "aten::mm" in names or "aten::addmm" in names or "aten::linear" in names
    labels = {n for n in names if n.startswith("module: ")}
    # under LoRA every name gains the PEFT prefix; the tail pattern still finds it
    assert labels == {"module: base_model.model.model.layers.0.mlp",
                      "module: base_model.model.model.layers.1.self_attn"}


def test_matching_modules_by_tail_or_pattern():
    net = torch.nn.Sequential()
    net.add_module("block", torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    assert set(matching_modules(net, "block")) == {"block"}
    assert set(matching_modules(net, "0")) == {"block.0"}
    assert set(matching_modules(net, "block.*")) == {"block.0", "block.1"}
    with pytest.raises(LatheError, match="matches no module.*block"):
        matching_modules(net, "mlp")


def test_profile_modules_needs_the_profiler(sft_config):
    with pytest.raises(LatheError, match="profile_modules.*enable_torch_profiler: true"):
        run_stage(load_config(sft_config(profile_modules="mlp")))
