"""Loading a config only reads: no environment variable, library global or process group changes,
and the config it returns cannot be edited (so `lathe_config.yaml` is what ran)."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from lathe.config import load_config
from lathe.errors import LatheError

ROOT = Path(__file__).resolve().parents[2]
ZERO3 = ROOT / "examples" / "deepspeed" / "ds_z3_config.json"


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _process_state():
    """What a config load could touch outside itself: the environment, transformers' ZeRO-3 switch,
    accelerate's process-wide state and torch.distributed."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState
    from transformers.integrations import deepspeed as hf_deepspeed

    return {
        "environ": dict(os.environ),
        "zero3 switch": hf_deepspeed._hf_deepspeed_config_weak_ref,
        "partial state": dict(PartialState._shared_state),
        "accelerator state": dict(AcceleratorState._shared_state),
        "process group": dist.is_available() and dist.is_initialized(),
    }


@pytest.fixture
def launched(monkeypatch):
    """This process as torchrun's rank 0 of 2 would see it: building transformers' arguments here
    used to start accelerate's state, and with it a process group waiting for rank 1."""
    import lathe.train  # noqa: F401  (libraries set their own variables when imported; not the config's doing)

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _free_port()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_a_zero3_config_under_a_launcher_touches_nothing(launched, sft_config):
    pytest.importorskip("deepspeed")
    before = _process_state()
    cfg = load_config(sft_config(deepspeed=str(ZERO3), hub_token="hf_secret", finetuning_type="full"))
    assert _process_state() == before
    assert cfg.training.deepspeed == str(ZERO3) and cfg.hub_token == "hf_secret"
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    assert not is_deepspeed_zero3_enabled()  # a later from_pretrained in this process loads whole weights


def test_a_refused_config_leaves_nothing_behind(launched, sft_config):
    """transformers writes FSDP's variables while building the arguments; the refusal comes after."""
    before = _process_state()
    with pytest.raises(LatheError, match="FSDP"):
        load_config(sft_config(fsdp="full_shard auto_wrap", finetuning_type="full"))
    assert _process_state() == before


def test_the_loaded_config_is_read_only(sft_config):
    cfg = load_config(sft_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.dtype = "bfloat16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.learning_rate = 1.0
    with pytest.raises(AttributeError, match="run's copy"):
        cfg.training.device  # devices belong to the run


def test_the_loaded_config_pickles_as_it_is(sft_config):
    """A worker process that receives the config (spawned data loaders) gets the same frozen copy."""
    import pickle

    cfg = load_config(sft_config(learning_rate=3e-4))
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and type(again.training) is type(cfg.training)
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.training.learning_rate = 1.0


def test_the_run_gets_its_own_editable_arguments(sft_config):
    from lathe.config.training import editable_copy

    cfg = load_config(sft_config(learning_rate=3e-4))
    args = editable_copy(cfg.training, optim="adamw_torch")
    args.learning_rate = 1e-3  # the Trainer may adjust its own copy
    assert cfg.training.learning_rate == 3e-4 and args.optim == "adamw_torch"
    assert type(args).__name__ == "Seq2SeqTrainingArguments"
