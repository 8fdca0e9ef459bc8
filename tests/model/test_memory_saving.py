"""Memory for longer sequences: tiled MLP, per-layer checkpointing, offloaded checkpoints, the cgroup's free memory.

Each saving must leave the numbers alone: the loss and every gradient equal the plain
path's (1e-5, fp32); the tiled MLP is also checked by what it never holds (a whole-sequence
inner activation).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lathe.config import load_config
from lathe.errors import LatheError
from lathe.model import memory, tiled_mlp
from lathe.model.load import enable_gradient_checkpointing, load_model, load_tokenizer

SEQ = 96


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 tokens for a 2-row batch of the tiny llama (MLP 256 wide, fp32)."""
    monkeypatch.setattr(tiled_mlp, "MIN_ROWS", 1)
    monkeypatch.setattr(tiled_mlp, "TILE_BYTES", 16 * 2 * 4 * 256 * 4)


def _model(sft_config, **extra):
    cfg = load_config(sft_config(**extra))
    model = load_model(cfg, load_tokenizer(cfg.model))
    model.train()
    return cfg, model


def _loss_and_grads(model, seed: int = 0):
    torch.manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (2, SEQ))
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-5, msg=name)


class WidestInner(TorchDispatchMode):
    """The most positions any activation of the MLP's inner width covers, over forward and backward
    (weights and their gradients, [hidden, width], are not positions)."""

    def __init__(self, width: int):
        super().__init__()
        self.width, self.most = width, 0
        self.weights = {(64, width)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.width and tuple(t.shape) not in self.weights:
                self.most = max(self.most, t.numel() // self.width)
        return out


@pytest.mark.parametrize("checkpointing", [None, True, False], ids=["no-gc", "gc-reentrant", "gc-non-reentrant"])
def test_tiled_mlp_gives_the_same_loss_and_gradients(sft_config, small_tiles, checkpointing):
    _, plain = _model(sft_config, finetuning_type="full")
    _, tiled = _model(sft_config, finetuning_type="full")
    if checkpointing is not None:
        for model in (plain, tiled):
            enable_gradient_checkpointing(model, use_reentrant=checkpointing)
    assert tiled_mlp.tile_mlps(tiled, asked=True) == tiled.config.num_hidden_layers
    expected = _loss_and_grads(plain)
    with WidestInner(tiled.config.intermediate_size) as seen:
        got = _loss_and_grads(tiled)
    _same(expected, got)
    assert seen.most <= 2 * 16  # one tile of 16 positions per row, never the whole sequence
    with WidestInner(plain.config.intermediate_size) as seen:
        _loss_and_grads(plain)
    assert seen.most == 2 * SEQ


def test_tiled_mlp_under_lora_and_in_a_run(sft_config, small_tiles, caplog):
    from lathe.model.adapters import apply_method

    cfg, plain = _model(sft_config)
    _, tiled = _model(sft_config)
    tiled_mlp.tile_mlps(tiled, asked=True)
    torch.manual_seed(1)
    plain = apply_method(plain, cfg)
    torch.manual_seed(1)  # the same adapter initialisation
    tiled = apply_method(tiled, cfg)
    _same(_loss_and_grads(plain), _loss_and_grads(tiled))
    tiled.eval()  # no tiles without a backward pass
    with torch.no_grad(), WidestInner(tiled.config.intermediate_size) as seen:
        tiled(input_ids=torch.ones(2, SEQ, dtype=torch.long))
    assert seen.most == 2 * SEQ

    import logging

    from lathe.train import run_stage

    caplog.set_level(logging.INFO, logger="lathe")
    result = run_stage(load_config(sft_config(tiled_mlp=True, max_steps=2)))
    assert result.metrics["train_loss"] > 0
    assert "MLP in tiles" in caplog.text and "2 decoder-layer MLPs run over tiles" in caplog.text


def test_tiled_mlp_true_on_a_model_without_dense_mlps_is_refused():
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = Experts()

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Layer(), Layer()])
    with pytest.raises(LatheError, match="no dense MLP"):
        tiled_mlp.tile_mlps(model, asked=True)
    assert tiled_mlp.tile_mlps(model, asked=False) == 0


def test_checkpointing_decided_per_layer(sft_config, monkeypatch):
    cfg, model = _model(sft_config, cutoff_len=512)
    shape = memory.model_shape(model)
    batch = cfg.training.per_device_train_batch_size
    logits = memory.planned_logits(shape, batch, 512)

    def budget_for(layers: int, tiled: bool = False) -> int:
        return memory.activation_bytes(shape, batch, 512, 4, layers, tiled=tiled) + logits

    # free memory is twice the budget (ACTIVATION_SHARE): room for one layer checkpointed, not for none
    monkeypatch.setattr(memory, "free_memory", lambda: 2 * budget_for(1))
    plan = memory.checkpointing_plan(cfg, model)
    assert (plan.layers, plan.tiled_mlp) == (1, False)
    assert "on for 1 of 2 layers" in plan.describe()
    monkeypatch.setattr(memory, "free_memory", lambda: 2 * budget_for(0))
    assert memory.checkpointing_plan(cfg, model).layers == 0
    monkeypatch.setattr(memory, "free_memory", lambda: 2 * budget_for(2, tiled=True))
    plan = memory.checkpointing_plan(cfg, model)
    assert (plan.layers, plan.tiled_mlp) == (2, True)  # every layer was not enough: the MLP is tiled too
    assert memory.checkpointing_plan(load_config(sft_config(cutoff_len=512, tiled_mlp=False)), model).tiled_mlp is False


def test_checkpointing_some_layers_keeps_the_gradients(sft_config):
    _, plain = _model(sft_config, finetuning_type="full")
    _, some = _model(sft_config, finetuning_type="full")
    enable_gradient_checkpointing(some, use_reentrant=False, layers=1)
    flags = [layer.gradient_checkpointing for layer in some.model.layers]
    assert flags == [True, False]
    _same(_loss_and_grads(plain), _loss_and_grads(some))


def test_offloaded_checkpoints_keep_the_gradients(sft_config, monkeypatch):
    """transformers' offload runs here too (the host is the CPU); the run refuses it without a GPU, as pointless."""
    _, plain = _model(sft_config, finetuning_type="full")
    _, offloaded = _model(sft_config, finetuning_type="full")
    saved = []
    real = torch.autograd.graph.save_on_cpu

    def spy(*args, **kwargs):
        saved.append(kwargs)
        return real(*args, **{**kwargs, "pin_memory": False})  # pinning needs a GPU

    monkeypatch.setattr("transformers.modeling_utils.save_on_cpu", spy)
    enable_gradient_checkpointing(offloaded, use_reentrant=False, offload=True)
    _same(_loss_and_grads(plain), _loss_and_grads(offloaded))
    assert len(saved) == offloaded.config.num_hidden_layers  # one offloaded checkpoint per layer


@pytest.mark.parametrize("key", ["offload_activations", "use_unsloth_gc"])
def test_offload_needs_a_gpu_and_checkpointing(sft_config, monkeypatch, key):
    if torch.accelerator.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LatheError, match=f"`{key}` moves checkpointed activations from GPU memory"):
        load_config(sft_config(**{key: True}))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    cfg = load_config(sft_config(**{key: True}))
    assert memory.offloads_activations(cfg) and memory.checkpointing_choice(cfg) is True
    with pytest.raises(LatheError, match="disable_gradient_checkpointing: true"):
        load_config(sft_config(**{key: True, "disable_gradient_checkpointing": True}))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_free_memory_counts_the_cgroup_limit(tmp_path, version):
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    if version == "v1":
        proc.write_text("5:cpu:/\n4:memory:/jobs/run1\n")
        for folder, limit, usage in ((root / "memory", str(2**63 - 4096), 10**9), (root / "memory/jobs", str(4 * 2**30), 3 * 2**30),
                                     (root / "memory/jobs/run1", str(8 * 2**30), 2**30)):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "memory.limit_in_bytes").write_text(limit)
            (folder / "memory.usage_in_bytes").write_text(str(usage))
            (folder / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {2**29}\n")
        # the parent's 4 GiB limit with 3 GiB used (half a GiB of it reclaimable cache) is the tightest
        assert memory.cgroup_available(proc, root) == 4 * 2**30 - 3 * 2**30 + 2**29
    else:
        proc.write_text("0::/job\n")
        (root / "job").mkdir(parents=True)
        (root / "memory.max").write_text("max\n")
        (root / "job/memory.max").write_text(str(2**30))
        (root / "job/memory.current").write_text(str(2**29))
        (root / "job/memory.stat").write_text("anon 1\ninactive_file 0\n")
        assert memory.cgroup_available(proc, root) == 2**29
    assert memory.cgroup_available(tmp_path / "absent", root) is None


def test_sequence_parallel_processes_plan_for_their_slice(sft_config, monkeypatch):
    """Each of N processes holding a slice of the sequence needs the memory of seq / N tokens, not seq."""
    cfg, model = _model(sft_config, cutoff_len=512)
    split = load_config(sft_config(cutoff_len=512, sequence_parallel_size=2, deepspeed=str(
        memory.Path(__file__).parents[2] / "examples/deepspeed/ds_z0_config.json")))
    shape = memory.model_shape(model)
    batch = cfg.training.per_device_train_batch_size
    half = memory.activation_bytes(shape, batch, 256, 4, 0) + memory.planned_logits(shape, batch, 256)
    monkeypatch.setattr(memory, "free_memory", lambda: 2 * half)
    assert memory.checkpointing_plan(split, model).layers == 0  # its half fits
    assert memory.checkpointing_plan(cfg, model).layers > 0  # the whole sequence does not
