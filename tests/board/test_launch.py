"""The Train tab's launch controls (processes, DeepSpeed, FSDP), the hub menu, and the panels that follow the
stage and the model: what the Board runs is what a shell would type."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
import yaml

from lathe.board.launch import (Launch, check_launch, current_hub, deepspeed_config, environment, hub_env,
                                outer_environ, swap_hub)
from lathe.errors import LatheError
from tests.conftest import DATA, ROOT


def _fn(app, name: str):
    found = [f for f in app.fns.values() if f.name == name]
    assert len(found) == 1, f"{len(found)} handlers named {name}"
    return found[0]


def _call(app, name: str, **values):
    """Call a handler with every input at its widget's starting value, but those given (by elem_id)."""
    fn = _fn(app, name)
    args = []
    for comp in fn.inputs:
        elem = getattr(comp, "elem_id", None) or ""
        args.append(values.get(elem.removeprefix("f-"), comp.value))
    return fn.fn(*args)


@pytest.fixture
def board(tmp_path, monkeypatch):
    from lathe.board.app import create_board

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    return create_board(tmp_path / "wd")


def test_launch_controls_turn_into_the_launchers_variables_and_a_deepspeed_file(tmp_path):
    assert Launch().env() == {} and Launch().config(tmp_path) == {}
    launch = check_launch("2", "3", True, False, gpus=0)  # CPU processes talk over gloo
    assert launch.env() == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}
    # one process on a machine of several GPUs: torchrun with one, not one per GPU
    assert check_launch("1", "none", False, False, gpus=4).env() == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "1"}
    path = Path(launch.config(tmp_path)["deepspeed"])
    assert path == tmp_path / "deepspeed" / "ds_z3_offload_config.json"
    # the same configs LLaMA-Factory's examples ship (sizes left to the Trainer: "auto")
    for stage, offload, example in ((3, True, "ds_z3_offload"), (2, False, "ds_z2"), (2, True, "ds_z2_offload"),
                                    (3, False, "ds_z3"), (0, False, "ds_z0")):
        shipped = json.loads((ROOT / "examples" / "deepspeed" / f"{example}_config.json").read_text())
        assert deepspeed_config(stage, offload) == shipped, example
    assert json.loads(path.read_text()) == deepspeed_config(3, True)
    assert check_launch("1", "none", False, True, gpus=2).config(tmp_path) == {"fsdp": "full_shard auto_wrap"}
    assert check_launch(" ", "none", False, False, gpus=0) == Launch()


@pytest.mark.parametrize("args, message", [
    (("two", "none", False, False, 0), "not a whole number"),
    (("0", "none", False, False, 0), "give 1 or more"),
    (("4", "none", False, False, 2), "at most 2"),
    (("1", "1", False, False, 0), "pick one of none, 0, 2, 3"),
    (("2", "0", True, False, 0), "pick stage 2 or 3"),
])
def test_launch_controls_refuse_what_cannot_run(args, message):
    with pytest.raises(LatheError, match=message):
        check_launch(*args[:4], gpus=args[4])


def test_a_board_started_under_torchrun_variables_runs_one_process_plainly(monkeypatch):
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    assert Launch().env() == {"FORCE_TORCHRUN": "0"}


def test_engines_that_cannot_go_together_are_refused_by_the_configs_own_check(board, tiny_llama, tmp_path):
    form = dict(model_name_or_path=str(tiny_llama), dataset_dir=str(DATA), dataset=["lathe_identity"],
                output_dir=str(tmp_path / "out"))
    message, *_ = _call(board, "on_preview", **{"ds-stage": "2", "use-fsdp": True}, **form)
    assert "both shard the model" in message
    message, *_ = _call(board, "on_preview", **{"use-fsdp": True}, **form)  # no GPU here
    assert "no GPU is visible" in message


def test_the_hub_menu_sets_the_hub_switch_and_swaps_catalog_ids(monkeypatch):
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    assert current_hub() == "huggingface" and hub_env("huggingface") == {}
    assert hub_env("modelscope") == {"USE_MODELSCOPE_HUB": "1"}
    assert hub_env("modelers") == {"USE_OPENMIND_HUB": "1"}
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")  # a Board started with ModelScope on
    assert current_hub() == "modelscope"
    assert hub_env("huggingface") == {"USE_MODELSCOPE_HUB": "0"}
    assert hub_env("modelers") == {"USE_MODELSCOPE_HUB": "0", "USE_OPENMIND_HUB": "1"}
    with pytest.raises(LatheError, match="pick one of huggingface, modelscope, modelers"):
        hub_env("github")
    # one model, three ids; a local folder or an unknown id is left alone
    assert swap_hub("google/gemma-2-2b-it", "modelscope") == "LLM-Research/gemma-2-2b-it"
    assert swap_hub("LLM-Research/gemma-2-2b-it", "modelers") == "LlamaFactory/gemma-2-2b-it"
    assert swap_hub("LlamaFactory/gemma-2-2b-it", "huggingface") == "google/gemma-2-2b-it"
    assert swap_hub("/models/tiny", "modelscope") is None and swap_hub("someone/unknown", "modelscope") is None
    monkeypatch.delenv("USE_MODELSCOPE_HUB")
    from lathe.hub import other_hub

    with environment({"USE_OPENMIND_HUB": "1"}):  # how the Board's own chat loads a model from the hub picked
        assert other_hub().env == "USE_OPENMIND_HUB"
        # meanwhile a run another page starts sees the Board's own environment, not this block's
        assert hub_env("huggingface") == {} and "USE_OPENMIND_HUB" not in outer_environ()
    assert other_hub() is None  # put back as it was


def test_preview_shows_the_launch_and_hub_and_start_runs_with_them(board, tiny_llama, tmp_path, monkeypatch):
    form = dict(model_name_or_path=str(tiny_llama), dataset_dir=str(DATA), dataset=["lathe_identity"],
                output_dir=str(tmp_path / "out"))
    message, text, line = _call(board, "on_preview", processes="2", **{"ds-stage": "2"}, hub="modelscope", **form)
    assert message == "", message
    assert line.startswith("FORCE_TORCHRUN=1 NPROC_PER_NODE=2 USE_MODELSCOPE_HUB=1 lathe train ")
    deepspeed = yaml.safe_load(text)["deepspeed"]
    assert json.loads(Path(deepspeed).read_text()) == deepspeed_config(2, False)
    message, _, line = _call(board, "on_preview", **form)
    assert message == "" and line.startswith("lathe train ") and "deepspeed" not in _call(board, "on_preview", **form)[1]
    message, *_ = _call(board, "on_preview", processes="x", **form)
    assert "processes" in message and "not a whole number" in message
    message, *_ = _call(board, "on_preview", **{"ds-stage": "2", "extra-yaml": "deepspeed: x.json"}, **form)
    assert "set by the launch controls" in message

    started = {}

    def fake_start(kind, raw, target, extra_args=(), env=None):
        started.update(kind=kind, raw=raw, env=env)
        raise LatheError("stopped here")

    monkeypatch.setattr(board.lathe_runner, "start", fake_start)
    message, *_ = _call(board, "on_start", processes="2", hub="modelers", **form)
    assert "stopped here" in message
    assert started["env"] == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "USE_OPENMIND_HUB": "1"}


def test_runner_gives_the_run_its_variables(tmp_path, monkeypatch):
    from lathe.board import runner as runner_module
    from lathe.board.runner import Runner

    monkeypatch.setattr(runner_module, "launch_argv",
                        lambda cmd: ["python", "-c", "import os; print(os.environ['NPROC_PER_NODE'])"])
    runner = Runner(tmp_path / "wd")
    run = runner.start("train", {"model_name_or_path": "x"}, str(tmp_path / "out"), env={"NPROC_PER_NODE": "3"})
    run.process.wait(30)
    assert run.log_tail().strip() == "3"
    assert run.line == f"NPROC_PER_NODE=3 lathe train {run.folder / 'config.yaml'}"
    from lathe.board.runner import shell_line

    assert shell_line(["lathe", "train", "/a b/c.yaml"], {"X": "1 2"}) == "X='1 2' lathe train '/a b/c.yaml'"


def test_a_stages_panel_shows_while_that_stage_is_picked(board):
    from lathe.board.form import stage_sections

    on_stage = _fn(board, "on_stage")
    shown = dict(zip(stage_sections(), [u["visible"] for u in on_stage.fn("grpo")]))
    assert shown["grpo"] and not shown["sft"]
    shown = dict(zip(stage_sections(), [u["visible"] for u in on_stage.fn("rloo")]))
    assert shown["grpo"]  # RLOO takes the same sampling and reward options
    shown = dict(zip(stage_sections(), [u["visible"] for u in on_stage.fn("sft")]))
    assert shown["sft"] and not shown["grpo"]
    w = board.lathe_widgets
    assert "reward_funcs" in w.components and "num_generations" in w.components and "image_max_pixels" in w.components
    rewards = w.components["reward_funcs"]  # the reward function picker: the built-ins, or one's own typed in
    offered = [c[1] if isinstance(c, tuple) else c for c in rewards.choices]
    assert rewards.multiselect and rewards.allow_custom_value and {"accuracy", "format", "length", "tool_call"} <= set(offered)


def test_the_multimodal_panel_follows_the_model(board, tiny_llama):
    from lathe.board.train_tab import takes_media
    from lathe.testing.tiny_vlm import build_tiny_vlm

    assert takes_media(str(build_tiny_vlm("qwen2_vl")))
    assert not takes_media(str(tiny_llama)) and not takes_media("")
    assert takes_media("Qwen/Qwen2-VL-2B-Instruct")  # the catalog says so
    assert not takes_media("Qwen/Qwen2.5-0.5B")
    assert takes_media("someone/unknown-model")  # cannot tell: the options stay in reach
    assert _fn(board, "on_model").fn(str(tiny_llama)) == gr.update(visible=False)


def test_the_catalog_pick_uses_the_hub_picked(board, tmp_path):
    from lathe.model.catalog import load_catalog

    pick = _fn(board, "pick").fn
    assert pick("Gemma-2-2B-Instruct", "modelscope")[0] == "LLM-Research/gemma-2-2b-it"
    assert pick("Gemma-2-2B-Instruct", "huggingface")[0] == "google/gemma-2-2b-it"
    hf_only = next(m for m in load_catalog().values() if not m.ms and not m.om)
    assert pick(hf_only.name, "modelscope") == (hf_only.hf, pick(hf_only.name, "huggingface")[1], "huggingface")
    message, *_ = _call(board, "on_preview", hub="modelscope", model_name_or_path=hf_only.hf, dataset_dir=str(DATA),
                        dataset=["lathe_identity"], output_dir=str(tmp_path / "out"))
    assert "is not on modelscope: pick another hub" in message
    on_hub = _fn(board, "on_hub").fn
    assert on_hub("modelers", "google/gemma-2-2b-it") == "LlamaFactory/gemma-2-2b-it"
    assert isinstance(on_hub("modelscope", "/models/tiny"), type(gr.skip()))


def test_the_chat_tab_loads_with_its_dtype_extra_options_and_hub(board, monkeypatch):
    """LLaMA Board's chat has an inference dtype and extra engine arguments; lathe's takes any `lathe chat` key."""
    import os

    loaded = []
    load = next(f for f in board.fns.values() if f.name == "load")
    from lathe.board import chat

    def fake_load(self, cfg):
        loaded.append((cfg, os.environ.get("USE_MODELSCOPE_HUB")))
        return cfg.model.model_name_or_path

    monkeypatch.setattr(chat.ChatSession, "load_config", fake_load)
    values = {c.elem_id: c.value for c in load.inputs if getattr(c, "elem_id", None)}
    args = []
    for comp in load.inputs:
        elem = getattr(comp, "elem_id", None)
        args.append({"f-model_name_or_path": "google/gemma-2-2b-it", "f-chat-infer_dtype": "bfloat16",
                     "chat-extra": "vllm_enforce_eager: true\nmax_new_tokens: 7", "hub": "modelscope"}.get(
                         elem, values.get(elem, comp.value)))
    status = load.fn(*args)
    cfg, switch = loaded[-1]
    assert "google/gemma-2-2b-it" in status and switch == "1"  # loaded under the hub picked
    assert cfg.model.infer_dtype == "bfloat16" and cfg.model.vllm_enforce_eager and cfg.generating.max_new_tokens == 7
    args[[getattr(c, "elem_id", None) for c in load.inputs].index("chat-extra")] = "model_name_or_path: x"
    assert "has its own field" in load.fn(*args)
