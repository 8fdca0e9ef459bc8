"""LLaMA-Factory options that lathe runs, each shown to change what it feeds.

Every test builds the object an option reaches (tokenizer, model, peft config, optimizer, the
keyword arguments of `from_pretrained`) once with the option at its default and once set to
another valid value, and compares them; options transformers 5 cannot honour are refused.
"""

from __future__ import annotations

import pytest
import torch

from lathe.config import load_config
from lathe.config.training import editable_copy
from lathe.errors import LatheError
from lathe.model.adapters import apply_method
from lathe.model.load import add_config_tokens, load_model, load_tokenizer
from lathe.train.optim import optimizer_setup


def _cfg(sft_config, **options):
    return load_config(sft_config(**options))


def _model(cfg):
    return load_model(cfg, load_tokenizer(cfg.model))


def _setup(sft_config, **options):
    """The model, tokenizer and data of a training run as `setup_run` wires them (no training)."""
    from lathe.train.base import setup_run

    return setup_run(_cfg(sft_config, **options))


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _optimizer(cfg):
    model = _model(cfg)
    optimizer, _ = optimizer_setup(model, cfg, editable_copy(cfg.training))
    return model, optimizer


def _one_step(model, optimizer) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


# ------------------------------------------------------------------ tokenizer and vocabulary


def test_add_tokens_adds_plain_tokens_and_embedding_rows(sft_config):
    cfg = _cfg(sft_config)
    tokenizer = load_tokenizer(cfg.model)
    size = len(tokenizer)
    assert add_config_tokens(tokenizer, cfg.model) == [] and len(tokenizer) == size  # add_tokens: null

    cfg = _cfg(sft_config, add_tokens="<t1>, <t2>")
    tokenizer = load_tokenizer(cfg.model)
    assert add_config_tokens(tokenizer, cfg.model) == ["<t1>", "<t2>"]
    assert len(tokenizer) == size + 2
    ids = tokenizer("a<t1>b", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<t1>") in ids  # one id, not split into characters
    assert "<t1>" in tokenizer.decode(ids, skip_special_tokens=True)  # plain, not special
    assert load_model(cfg, tokenizer).get_input_embeddings().weight.shape[0] == size + 2


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_resize_vocab_trains_the_embeddings(sft_config, method):
    default = _setup(sft_config, finetuning_type=method).model
    resized = _setup(sft_config, finetuning_type=method, resize_vocab=True).model
    embedding = {"lora": "embed_tokens.modules_to_save.default.weight", "freeze": "model.embed_tokens.weight"}[method]
    assert not any(n.endswith(embedding) for n in _trainable(default))
    assert any(n.endswith(embedding) for n in _trainable(resized))
    if method == "lora":
        assert default.peft_config["default"].modules_to_save is None
        assert set(resized.peft_config["default"].modules_to_save) == {"embed_tokens", "lm_head"}


def test_use_fast_tokenizer(sft_config):
    assert load_tokenizer(_cfg(sft_config).model).is_fast  # use_fast_tokenizer: true
    # transformers 5's AutoTokenizer drops `use_fast`: false cannot be honoured, so it is refused.
    with pytest.raises(LatheError, match="use_fast_tokenizer"):  # when the config loads
        _cfg(sft_config, use_fast_tokenizer=False)


# ------------------------------------------------------------------ from_pretrained arguments


class _Stop(Exception):
    """Raised by a spy once it has seen the arguments, so nothing heavier runs."""


def _from_pretrained_kwargs(monkeypatch, cfg) -> dict:
    from transformers import AutoModelForCausalLM

    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(_Stop):
        _model(cfg)
    return seen


def test_model_revision_reaches_every_hub_download(sft_config, tiny_llama, monkeypatch):
    """No network here: the spies read the `revision` kwarg, then load the tiny model from its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen: dict[str, list] = {}
    for cls in (AutoTokenizer, AutoConfig, AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(name, *args, _real=real, _cls=cls, **kwargs):
            if name != "someorg/tiny-llama":  # the tokenizer reads its folder's config itself
                return _real(name, *args, **kwargs)
            seen.setdefault(_cls.__name__, []).append(kwargs.pop("revision"))
            kwargs.pop("local_files_only", None)
            return _real(str(tiny_llama), *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    for revision in ("main", "v1.2"):
        options = {} if revision == "main" else {"model_revision": revision}  # main: the default
        _model(_cfg(sft_config, model_name_or_path="someorg/tiny-llama", **options))
    assert seen == {name: ["main", "v1.2"] for name in ("AutoTokenizer", "AutoConfig", "AutoModelForCausalLM")}


def test_quantization_type_and_double_quantization(sft_config, monkeypatch):
    pytest.importorskip("bitsandbytes")
    default = _from_pretrained_kwargs(monkeypatch, _cfg(sft_config, quantization_bit=4))["quantization_config"]
    assert (default.bnb_4bit_quant_type, default.bnb_4bit_use_double_quant) == ("nf4", True)
    chosen = _from_pretrained_kwargs(monkeypatch, _cfg(sft_config, quantization_bit=4, quantization_type="fp4",
                                                       double_quantization=False))["quantization_config"]
    assert (chosen.bnb_4bit_quant_type, chosen.bnb_4bit_use_double_quant) == ("fp4", False)


@pytest.mark.parametrize("options, quant_type, nested", [({}, "nf4", True),
                                                         ({"quantization_type": "fp4", "double_quantization": False},
                                                          "fp4", False)])
def test_bnb_weights_are_stored_as_asked(sft_config, options, quant_type, nested):
    """The loaded 4-bit weights themselves: their data type, and whether their scales are quantized again."""
    pytest.importorskip("bitsandbytes")
    model = _model(_cfg(sft_config, quantization_bit=4, **options))
    state = model.model.layers[0].self_attn.q_proj.weight.quant_state
    assert (state.quant_type, state.nested) == (quant_type, nested)


def test_low_cpu_mem_usage(sft_config):
    assert _model(_cfg(sft_config)) is not None  # low_cpu_mem_usage: true, what transformers 5 always does
    # transformers 5 drops the argument; false cannot be honoured, so it is refused.
    with pytest.raises(LatheError, match="low_cpu_mem_usage"):  # when the config loads
        _cfg(sft_config, low_cpu_mem_usage=False)


# ------------------------------------------------------------------ gradient checkpointing


def test_use_reentrant_gc(sft_config):
    for reentrant in (True, False):  # true: the default
        run = _setup(sft_config, disable_gradient_checkpointing=False, use_reentrant_gc=reentrant)
        layer = run.model.get_base_model().model.layers[0]
        # what each decoder layer hands torch.utils.checkpoint.checkpoint
        assert layer.gradient_checkpointing and layer._gradient_checkpointing_func.keywords == {"use_reentrant": reentrant}


# ------------------------------------------------------------------ adapters


def test_use_rslora_scales_by_the_root_of_the_rank(sft_config):
    for rslora, scale in ((False, 8 / 4), (True, 8 / 4 ** 0.5)):  # alpha / r, alpha / sqrt(r)
        cfg = _cfg(sft_config, lora_rank=4, lora_alpha=8, use_rslora=rslora)
        model = apply_method(_model(cfg), cfg)
        assert model.get_base_model().model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(scale)


@pytest.mark.parametrize("method", [{"finetuning_type": "lora"}, {"finetuning_type": "oft", "oft_block_size": 16}])
def test_additional_target_trains_modules_beside_the_adapter(sft_config, method):
    default_cfg = _cfg(sft_config, **method)
    default = apply_method(_model(default_cfg), default_cfg)
    assert not any("lm_head" in n for n in _trainable(default))
    cfg = _cfg(sft_config, additional_target="lm_head", **method)
    model = apply_method(_model(cfg), cfg)
    assert model.peft_config["default"].modules_to_save == ["lm_head"]
    assert "base_model.model.lm_head.modules_to_save.default.weight" in _trainable(model)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_additional_target_refused_without_an_adapter(sft_config, method):
    with pytest.raises(LatheError, match="additional_target"):
        _cfg(sft_config, finetuning_type=method, additional_target="lm_head")


def test_module_dropout_turns_a_share_of_oft_blocks_into_the_identity(sft_config):
    """64 inputs in blocks of 16: 4 blocks; module_dropout 0.5 keeps int(0.5 * 4) = 2 unrotated while training."""

    def unrotated_blocks(rotation, training: bool) -> int:
        rotation.train(training)
        x = torch.randn(1, 64)
        y = rotation(x)
        return sum(torch.equal(x[:, i:i + 16], y[:, i:i + 16]) for i in range(0, 64, 16))

    for dropout, in_training in ((0.0, 0), (0.5, 2)):  # 0.0: the default
        cfg = _cfg(sft_config, finetuning_type="oft", oft_block_size=16, module_dropout=dropout)
        model = apply_method(_model(cfg), cfg)
        rotation = model.get_base_model().model.layers[0].self_attn.q_proj.oft_R["default"]
        with torch.no_grad():
            rotation.weight.normal_(0, 0.1)  # a rotation away from the identity in every block
        assert unrotated_blocks(rotation, training=True) == in_training
        assert unrotated_blocks(rotation, training=False) == 0  # never at inference


# ------------------------------------------------------------------ optimizers


def test_loraplus_lr_embedding_is_the_rate_of_lora_on_embeddings(sft_config):
    """lora_target may name the embeddings (as in LLaMA-Factory); LoRA+ gives their LoRA its own rate."""
    for rate in (1e-6, 1e-4):  # 1e-6: the default
        options = {} if rate == 1e-6 else {"loraplus_lr_embedding": rate}
        cfg = _cfg(sft_config, lora_target="q_proj,embed_tokens", loraplus_lr_ratio=4.0, learning_rate=1e-3, **options)
        model = apply_method(_model(cfg), cfg)
        optimizer, _ = optimizer_setup(model, cfg, editable_copy(cfg.training))
        names = {id(p): n for n, p in model.named_parameters()}
        lr_of = {names[id(p)].split("base_model.model.")[1]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
        assert lr_of["model.embed_tokens.lora_embedding_A.default"] == rate
        assert lr_of["model.embed_tokens.lora_embedding_B.default"] == rate
        assert lr_of["model.layers.0.self_attn.q_proj.lora_B.default.weight"] == pytest.approx(4e-3)


def _projected_groups(optimizer) -> list[dict]:
    return [g for g in optimizer.param_groups if "rank" in g]


def test_galore_scale_and_target(sft_config):
    pytest.importorskip("galore_torch")
    base = {"finetuning_type": "full", "use_galore": True, "galore_rank": 4}
    model, optimizer = _optimizer(_cfg(sft_config, **base))  # galore_scale 2.0, galore_target all
    names = {id(p): n for n, p in model.named_parameters()}
    projected = {names[id(p)] for g in _projected_groups(optimizer) for p in g["params"]}
    assert {g["scale"] for g in _projected_groups(optimizer)} == {2.0}
    assert "model.layers.0.mlp.down_proj.weight" in projected and len(projected) == 14  # 7 linears x 2 layers

    model, optimizer = _optimizer(_cfg(sft_config, galore_scale=0.5, galore_target="q_proj", **base))
    names = {id(p): n for n, p in model.named_parameters()}
    projected = {names[id(p)] for g in _projected_groups(optimizer) for p in g["params"]}
    assert {g["scale"] for g in _projected_groups(optimizer)} == {0.5}
    assert projected == {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"}


def test_apollo_proj_proj_type_scale_type_and_target(sft_config):
    pytest.importorskip("apollo_torch")
    base = {"finetuning_type": "full", "use_apollo": True, "apollo_rank": 4, "learning_rate": 1e-3}
    model, optimizer = _optimizer(_cfg(sft_config, **base))
    [group] = _projected_groups(optimizer)[:1]
    assert (group["proj"], group["proj_type"], group["scale_type"]) == ("random", "std", "channel")
    names = {id(p): n for n, p in model.named_parameters()}
    assert len({names[id(p)] for g in _projected_groups(optimizer) for p in g["params"]}) == 14  # apollo_target: all
    _one_step(model, optimizer)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    projector = optimizer.state[q_proj]["projector"]
    assert type(projector).__name__ == "GradientProjector" and projector.proj_type == "std"

    chosen = {"apollo_proj": "svd", "apollo_proj_type": "left", "apollo_scale_type": "tensor", "apollo_target": "q_proj"}
    model, optimizer = _optimizer(_cfg(sft_config, **base, **chosen))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for g in _projected_groups(optimizer) for p in g["params"]} == {
        "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
    _one_step(model, optimizer)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    projector = optimizer.state[q_proj]["projector"]
    assert type(projector).__name__ == "GaLoreProjector" and projector.proj_type == "left"  # apollo_proj svd


def test_apollo_scale_type_changes_the_update(sft_config):
    """channel: one scaling factor per row of the update; tensor: one for the whole matrix."""
    pytest.importorskip("apollo_torch")
    updated = {}
    for scale_type in ("channel", "tensor"):  # channel: the default
        cfg = _cfg(sft_config, finetuning_type="full", use_apollo=True, apollo_rank=4, learning_rate=1e-2,
                   apollo_scale_type=scale_type, apollo_target="q_proj")
        model, optimizer = _optimizer(cfg)
        before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
        _one_step(model, optimizer)
        updated[scale_type] = model.model.layers[0].self_attn.q_proj.weight.detach() - before
    assert not torch.allclose(updated["channel"], updated["tensor"])


def test_badam_start_block(sft_config):
    pytest.importorskip("badam")
    base = {"finetuning_type": "full", "use_badam": True}
    for options, trained in (({}, 0), ({"badam_start_block": 1}, 1)):  # default: ascending from block 0
        model, _ = _optimizer(_cfg(sft_config, **base, **options))
        layers = {int(n.split(".")[2]) for n in _trainable(model) if n.startswith("model.layers.")}
        assert layers == {trained}
    with pytest.raises(LatheError, match="badam_start_block"):
        _optimizer(_cfg(sft_config, **base, badam_start_block=2))  # the tiny model has blocks 0 and 1


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_badam_verbose(sft_config, capsys, verbose):
    """0: quiet; 1: the block's prefix at each switch; 2: also each parameter it trains (BAdam 1.4 ignored it)."""
    pytest.importorskip("badam")
    _optimizer(_cfg(sft_config, finetuning_type="full", use_badam=True, badam_verbose=verbose))
    out = capsys.readouterr().out
    assert ("will be trainable" in out) is (verbose >= 1)
    assert ("model.layers.0.self_attn.q_proj.weight" in out) is (verbose >= 2)


@pytest.mark.parametrize("key, value", [("badam_start_block", 0), ("badam_verbose", 1)])
def test_badam_layer_options_refused_in_ratio_mode(sft_config, key, value):
    with pytest.raises(LatheError, match=key):
        _cfg(sft_config, finetuning_type="full", use_badam=True, badam_mode="ratio", max_grad_norm=0, **{key: value})


@pytest.mark.parametrize("options", [{"quantization_type": "fp4"}, {"double_quantization": False},
                                     {"quantization_type": "fp4", "quantization_bit": 8},
                                     {"quantization_type": "fp4", "quantization_bit": 4, "quantization_method": "hqq"}])
def test_bnb_4bit_options_refused_where_no_bnb_4bit_weights_load(sft_config, options):
    with pytest.raises(LatheError, match="bitsandbytes' 4-bit weights"):
        _cfg(sft_config, **options)
