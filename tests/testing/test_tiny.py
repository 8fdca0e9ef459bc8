"""Tiny models and the demo tokenizer: deterministic, cached safely, and usable by every arch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lathe.errors import LatheError
from lathe.testing import tiny
from lathe.build_cache import MANIFEST, is_complete
from lathe.testing.demo_tokenizer import build_demo_tokenizer, default_data_dir
from lathe.testing.tiny import ARCHS, build_tiny_model
from tests.conftest import SHARED

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2}
QWEN2_TOKENIZER = SHARED / "tokenizers" / "qwen2-instruct-boundless"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="module")
def demo_tok_dir(cache) -> Path:
    return build_demo_tokenizer(cache_dir=cache / "tokenizers")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    # Cloned: safetensors may map the file, and some tests overwrite it afterwards.
    return {k: v.clone() for k, v in load_file(str(folder / "model.safetensors")).items()}


# --- tiny models -------------------------------------------------------------------------


def test_same_arguments_give_the_same_folder_and_weights(cache, tmp_path):
    first = build_tiny_model("llama", cache_dir=cache, **SMALL)
    assert build_tiny_model("llama", cache_dir=cache, **SMALL) == first
    # A fresh cache builds again from scratch: same name, bit-identical weights.
    again = build_tiny_model("llama", cache_dir=tmp_path, **SMALL)
    assert again.name == first.name
    a, b = _weights(first), _weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_other_arguments_give_other_folders_and_weights(cache):
    base = build_tiny_model("llama", cache_dir=cache, **SMALL)
    other_seed = build_tiny_model("llama", cache_dir=cache, seed=1, **SMALL)
    assert other_seed != base
    w0, w1 = _weights(base), _weights(other_seed)
    assert not torch.equal(w0["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])
    assert build_tiny_model("llama", cache_dir=cache, rms_norm_eps=1e-5, **SMALL) != base


def test_seeding_does_not_touch_the_callers_random_stream(cache, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("llama", cache_dir=tmp_path, **SMALL)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_arch_builds_loads_and_runs(arch, cache, demo_tok_dir):
    folder = build_tiny_model(arch, cache_dir=cache, **SMALL)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tok) == len(AutoTokenizer.from_pretrained(demo_tok_dir))
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.max_position_embeddings == 2048
    assert model.config.tie_word_embeddings == (arch in {"gemma", "gemma2"})
    batch = tok(["Who are you?", "Spell out 247."], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_tokenizer_object_and_real_tokenizer_folder(cache, demo_tok_dir):
    demo = AutoTokenizer.from_pretrained(demo_tok_dir)
    folder = build_tiny_model("qwen2", demo, cache_dir=cache, **SMALL)
    assert AutoModelForCausalLM.from_pretrained(folder).config.vocab_size == len(demo)
    if not QWEN2_TOKENIZER.is_dir():
        pytest.skip(f"{QWEN2_TOKENIZER} not present")
    folder = build_tiny_model("qwen2", QWEN2_TOKENIZER, cache_dir=cache, hidden_size=8, num_layers=1,
                              num_heads=2, num_kv_heads=1)
    tok = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == len(tok) == 151646
    assert config["eos_token_id"] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template == AutoTokenizer.from_pretrained(QWEN2_TOKENIZER).chat_template


def test_half_written_folder_is_never_reused(cache, tmp_path):
    folder = build_tiny_model("llama", cache_dir=tmp_path, **SMALL)
    good = _weights(folder)

    # A crash mid-copy: weights cut short. The manifest's sizes no longer match.
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not is_complete(folder)
    assert build_tiny_model("llama", cache_dir=tmp_path, **SMALL) == folder
    assert all(torch.equal(good[k], v) for k, v in _weights(folder).items())

    # A folder without a manifest (never finished, or copied by hand) is rebuilt too.
    (folder / MANIFEST).unlink()
    (folder / "model.safetensors").unlink()
    build_tiny_model("llama", cache_dir=tmp_path, **SMALL)
    assert is_complete(folder)
    assert AutoModelForCausalLM.from_pretrained(folder) is not None
    # No temporary folders are left behind.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_failed_build_leaves_nothing_reusable(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", explode)
    with pytest.raises(RuntimeError, match="killed"):
        build_tiny_model("llama", cache_dir=tmp_path, **SMALL)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("llama-")] == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_bad_arguments_fail_with_a_useful_message(cache):
    with pytest.raises(LatheError, match="Did you mean `llama`"):
        build_tiny_model("lama", cache_dir=cache)
    with pytest.raises(LatheError, match="rms_norm_eps"):
        build_tiny_model("llama", cache_dir=cache, rms_norm_esp=1e-5, **SMALL)
    with pytest.raises(LatheError, match="divisible"):
        build_tiny_model("llama", cache_dir=cache, hidden_size=30, num_heads=4)
    with pytest.raises(LatheError, match="does not exist"):
        build_tiny_model("llama", cache / "no-such-tokenizer", cache_dir=cache)


def test_cli_copies_the_model_to_out(cache, tmp_path, capsys):
    out = tmp_path / "model"
    tiny.main(["--arch", "mistral", "--out", str(out), "--cache-dir", str(cache), "--hidden-size", "32",
               "--num-layers", "1", "--set", "rms_norm_eps=1e-5"])
    assert capsys.readouterr().out.strip() == str(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "mistral" and model.config.rms_norm_eps == 1e-5
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1


def test_cli_demo_preset(cache, capsys):
    tiny.main(["--preset", "demo", "--num-layers", "1", "--cache-dir", str(cache)])
    config = json.loads((Path(capsys.readouterr().out.strip()) / "config.json").read_text())
    assert config["hidden_size"] == 128 and config["initializer_range"] == 0.1
    assert config["num_hidden_layers"] == 1  # an explicit flag beats the preset


def test_tokenizer_that_reloads_differently_is_refused(cache):
    llama3 = SHARED / "tokenizers" / "llama3.2-instruct"
    if not llama3.is_dir():
        pytest.skip(f"{llama3} not present")
    # Next to a qwen2 config transformers loads it as Qwen2Tokenizer, which splits text differently.
    with pytest.raises(LatheError, match="encodes text differently"):
        build_tiny_model("qwen2", llama3, cache_dir=cache, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tiny.default_cache_dir() == tmp_path / "lathe" / "tiny-models"


# --- demo tokenizer ----------------------------------------------------------------------

TEXTS = [
    "Who are you? I am Lathe Assistant, a small model fine-tuned with lathe.",
    "Spell out this number in words.\n247",
    "你好，世界！这是一个中文句子，包含标点符号。",
    "Mixed: naïve café, emoji 🙂, tabs\tand  double  spaces, code `x = f(1) + 2;`",
]


@pytest.mark.parametrize("text", TEXTS)
def test_demo_tokenizer_round_trips_any_text(demo_tok_dir, text):
    tok = AutoTokenizer.from_pretrained(demo_tok_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_demo_tokenizer_specials_and_chat_template(demo_tok_dir):
    tok = AutoTokenizer.from_pretrained(demo_tok_dir)
    assert 900 <= len(tok) <= 4000
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Lathe Assistant."},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\nLathe Assistant.<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Digits are single tokens, so numbers share ten tokens.
    assert tok.tokenize("247") == ["2", "4", "7"]


def test_demo_tokenizer_is_deterministic_and_keyed_by_the_data(tmp_path, demo_tok_dir):
    again = build_demo_tokenizer(cache_dir=tmp_path / "a")
    assert again.name == demo_tok_dir.name
    assert (again / "tokenizer.json").read_bytes() == (demo_tok_dir / "tokenizer.json").read_bytes()
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([{"instruction": "hello there", "output": "general kenobi"}]))
    assert build_demo_tokenizer(cache_dir=tmp_path / "a", data_dir=data).name != demo_tok_dir.name
    with pytest.raises(LatheError, match="No demo data files"):
        build_demo_tokenizer(cache_dir=tmp_path / "a", data_dir=tmp_path / "a")


# --- demo data ---------------------------------------------------------------------------


def test_demo_data_registry_loads_every_row():
    from lathe.data.formats import convert_rows
    from lathe.data.readers import read_rows
    from lathe.data.dataset_info import load_registry

    data_dir = default_data_dir()
    registry = load_registry(data_dir)
    assert {"lathe_identity", "lathe_numbers", "lathe_pairs", "lathe_feedback", "lathe_docs"} <= set(registry)
    for name, attr in registry.items():
        result = convert_rows(attr, read_rows(attr, data_dir))
        assert result.samples and not result.skip_counts, result.report()
        if attr.ranking:
            assert all(s["chosen"] and s["rejected"] for s in result.samples), name


def test_preference_data_is_what_the_script_writes(tmp_path):
    import shutil
    import subprocess
    import sys

    data_dir = default_data_dir()
    for name in ("make_preferences.py", "make_synthetic.py", "lathe_identity.json", "lathe_numbers.json"):
        shutil.copy(data_dir / name, tmp_path / name)
    subprocess.run([sys.executable, "make_preferences.py"], cwd=tmp_path, check=True)
    for name in ("lathe_pairs.json", "lathe_feedback.json"):
        assert (tmp_path / name).read_text() == (data_dir / name).read_text()


def test_synthetic_data_is_what_the_script_writes():
    data_dir = default_data_dir()
    spec = importlib.util.spec_from_file_location("make_synthetic", data_dir / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads((data_dir / "lathe_numbers.json").read_text()) == module.rows()
    assert module.in_words(0) == "zero" and module.in_words(115) == "one hundred fifteen"
    assert module.in_words(990) == "nine hundred ninety" and module.in_words(47) == "forty-seven"


# --- the demo recipe ---------------------------------------------------------------------


@pytest.mark.slow
def test_demo_preset_learns_the_demo_data_with_plain_lora(tmp_path):
    """The settings `make demo` uses (PRESETS["demo"] + LoRA r16) must visibly learn; ~30 s on 2 CPU cores."""
    import random

    from peft import LoraConfig, get_peft_model

    folder = build_tiny_model("llama", cache_dir=tmp_path, **tiny.PRESETS["demo"])
    tok = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    data_dir = default_data_dir()
    rows = json.loads((data_dir / "lathe_identity.json").read_text())
    rows += json.loads((data_dir / "lathe_numbers.json").read_text())

    def prompt_ids(row):
        query = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
        messages = [{"role": "user", "content": query}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    samples = []
    for row in rows:
        prompt, answer = prompt_ids(row), tok(row["output"], add_special_tokens=False)["input_ids"] + [im_end]
        samples.append((prompt + answer, [-100] * len(prompt) + answer))
    epochs, batch_size = 30, 16
    steps = epochs * -(-len(samples) // batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.02)
    order, losses, rng = [], [], random.Random(0)
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order = list(range(len(samples)))
            rng.shuffle(order)
        batch = [samples[order.pop()] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 5 and sum(losses[-20:]) / 20 < 0.1
    model.eval()
    for row in rows[:3] + rows[-3:]:
        prompt = torch.tensor([prompt_ids(row)])
        out = model.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=im_end,
                             pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True) == row["output"]
