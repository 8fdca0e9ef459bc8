"""Tiny random-weight causal LMs, built offline and cached on disk.

Why: tests and the demo need real transformers models of the families lathe supports (so
templates, adapters and patches meet the real module names and config quirks), but they must
run without a network and in seconds. A 2-layer, 64-wide model with a real tokenizer's
vocabulary is a genuine `LlamaForCausalLM` / `Qwen2ForCausalLM` / ... that loads with
`from_pretrained` like any hub model.

The same arguments always give the same folder and the same weights: the folder name is a
hash of every argument, the tokenizer's files and the library versions, and the weights come
from a fixed seed. Folders are written atomically (see `lathe.build_cache`).

    python -m lathe.testing.tiny --arch llama --out DIR [--tokenizer PATH] [--hidden-size 64 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lathe.build_cache import build_once, default_cache_root, hash_files, short_hash
from lathe.errors import LatheError, did_you_mean, lookup

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Bump when the recipe below changes, so folders built by an older recipe are not reused.
RECIPE_VERSION = 2
MAX_POSITIONS = 2048
# Text that must encode the same with the tokenizer as given and as it reloads from the model folder.
PROBE_TEXT = "Hello, world! (It's 3.14.) Don't   panic:\n\tcafé naïve 你好，世界。"


@dataclass(frozen=True)
class Arch:
    """How to configure one model family: its transformers config class and its own defaults."""

    config_class: str
    defaults: dict[str, Any] = field(default_factory=dict)


# One entry per family. `defaults` hold only what differs from the shared recipe in
# `_config_kwargs`; a family whose real checkpoints tie embeddings keeps them tied.
ARCHS: dict[str, Arch] = {
    "llama": Arch("LlamaConfig"),
    "mistral": Arch("MistralConfig", {"sliding_window": None}),  # v0.3 has no sliding window
    "qwen2": Arch("Qwen2Config"),
    "qwen3": Arch("Qwen3Config"),
    "gemma": Arch("GemmaConfig", {"tie_word_embeddings": True}),
    "gemma2": Arch("Gemma2Config", {"tie_word_embeddings": True}),
    "phi3": Arch("Phi3Config", {"original_max_position_embeddings": MAX_POSITIONS}),
    # Mixture-of-experts families (router, load-balancing loss): 4 small experts, 2 per token.
    "mixtral": Arch("MixtralConfig", {"sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": Arch("Qwen2MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                                         "shared_expert_intermediate_size": 64}),
    "qwen3_moe": Arch("Qwen3MoeConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}),
    "gpt_oss": Arch("GptOssConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 16}),
}


# Named settings for `--preset`. "demo" is the model `make demo` fine-tunes with plain LoRA.
# Why initializer_range 0.1 (transformers' default is 0.02): LoRA leaves the final norm and the
# random lm_head frozen, and with 0.02 weights the largest reachable logit is ~2.5, so the loss
# cannot fall much below ~4.5 however well the model learns; 0.1 lets it reach ~0.03.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "initializer_range": 0.1},
}


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lathe/tiny-models` (or `~/.cache/lathe/tiny-models`)."""
    return default_cache_root() / "tiny-models"


def _arch(name: str) -> Arch:
    return lookup(ARCHS, name, "tiny-model arch")


def _check_args(arch: Arch, hidden_size: int, num_heads: int, num_kv_heads: int, overrides: dict[str, Any]) -> None:
    """Fail before any work on an override the config does not have or on impossible head counts."""
    known = _config_fields(arch)
    for key in overrides:
        if key not in known:
            raise LatheError(
                f"`{key}` is not a field of transformers.{arch.config_class}." + did_you_mean(key, known)
            )
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise LatheError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}), and num_heads "
            f"by num_kv_heads ({num_kv_heads})."
        )


def _config_fields(arch: Arch) -> set[str]:
    import transformers

    config_cls = getattr(transformers, arch.config_class)
    return set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))


def _config_kwargs(
    arch: Arch, tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int, num_heads: int,
    num_kv_heads: int, intermediate_size: int | None, overrides: dict[str, Any],
) -> dict[str, Any]:
    """The config values shared by every family, then the family's defaults, then the caller's."""
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if "head_dim" in _config_fields(arch):  # families whose default head_dim is not hidden/heads (gemma: 256)
        kwargs["head_dim"] = hidden_size // num_heads
    kwargs.update(arch.defaults)
    kwargs.update(overrides)
    return kwargs


def _tokenizer_source(
    tokenizer: str | Path | PreTrainedTokenizerBase | None, cache_dir: Path | None, scratch: Path
) -> Path:
    """A folder holding the tokenizer's files: a given path, the demo tokenizer, or a saved object."""
    if tokenizer is None:
        from lathe.testing.demo_tokenizer import build_demo_tokenizer

        return build_demo_tokenizer(cache_dir=cache_dir / "tokenizers" if cache_dir else None)
    if isinstance(tokenizer, (str, Path)):
        folder = Path(tokenizer).expanduser()
        if not folder.is_dir():
            raise LatheError(f"Tokenizer folder {folder} does not exist (expected a folder from save_pretrained).")
        return folder
    tokenizer.save_pretrained(scratch)
    return scratch


def build_tiny_model(
    arch: str = "llama",
    tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> Path:
    """Build (or reuse) a random-init causal LM of family `arch` and return its folder.

    The folder holds the model (safetensors, float32) and the tokenizer, and loads with
    `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`. The vocabulary is
    `len(tokenizer)` and bos/eos/pad ids come from the tokenizer. `tokenizer` is a tokenizer
    folder, a tokenizer object, or None for lathe's demo tokenizer. `intermediate_size`
    defaults to 4 * hidden_size. `overrides` are extra fields of the family's transformers
    config (e.g. `rope_parameters=...`, `tie_word_embeddings=True`); unknown names are an error.
    """
    spec = _arch(arch)
    _check_args(spec, hidden_size, num_heads, num_kv_heads, overrides)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    with tempfile.TemporaryDirectory(prefix="lathe-tok-") as scratch:
        tok_dir = _tokenizer_source(tokenizer, cache_dir, Path(scratch))
        tok_files = [p for p in tok_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
        if not tok_files:
            raise LatheError(f"Tokenizer folder {tok_dir} holds no files.")
        args = {
            "arch": arch, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
            "num_kv_heads": num_kv_heads, "intermediate_size": intermediate_size, "seed": seed,
            "overrides": overrides,
        }
        key = short_hash({"args": args, "tokenizer": hash_files(tok_files), "versions": _versions(),
                          "recipe": RECIPE_VERSION})
        target = (cache_dir or default_cache_dir()) / f"{arch}-{key}"

        def build(folder: Path) -> None:
            _build(spec, tok_dir, folder, hidden_size, num_layers, num_heads, num_kv_heads,
                   intermediate_size, seed, overrides)

        return build_once(target, build, {**args, "tokenizer": _describe(tokenizer)})


def _describe(tokenizer: object) -> str:
    if tokenizer is None:
        return "lathe demo tokenizer"
    return str(tokenizer) if isinstance(tokenizer, (str, Path)) else f"{type(tokenizer).__name__} object"


def _versions() -> dict[str, str]:
    """Library versions that decide the initial weights: a new version may init differently."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _build(spec: Arch, tok_dir: Path, folder: Path, hidden_size: int, num_layers: int, num_heads: int,
           num_kv_heads: int, intermediate_size: int | None, seed: int, overrides: dict[str, Any]) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_cls = getattr(transformers, spec.config_class)
    try:
        source = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as err:  # transformers raises many types here; all mean "not a usable tokenizer"
        raise LatheError(f"Could not load a tokenizer from {tok_dir}: {err}") from err
    source.save_pretrained(folder)
    # AutoTokenizer picks the tokenizer class from the folder's config.json when the tokenizer
    # does not pin one, and that class may rebuild the pipeline or add tokens (a llama3
    # tokenizer next to a qwen2 config gains `<|endoftext|>`). Size the model for the tokenizer
    # as it loads from this folder, and refuse a pairing that changes how text is encoded.
    config_cls().save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok(PROBE_TEXT)["input_ids"] != source(PROBE_TEXT)["input_ids"]:
        raise LatheError(
            f"Next to a {spec.config_class} config, transformers loads the tokenizer in {tok_dir} as "
            f"{type(tok).__name__}, which encodes text differently from the tokenizer itself. Use a "
            "tokenizer of the same family as the arch (or the demo tokenizer, tokenizer=None)."
        )
    kwargs = _config_kwargs(spec, tok, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, overrides)
    config = config_cls(**kwargs)
    # fork_rng: seeding here must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)  # replaces the placeholder config.json


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight model and print its folder.")
    parser.add_argument("--arch", default="llama", choices=sorted(ARCHS))
    parser.add_argument("--out", type=Path, help="copy the model folder here (default: print the cache folder)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: lathe's demo tokenizer)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named settings (flags below override them)")
    parser.add_argument("--hidden-size", type=int, help="default: 64")
    parser.add_argument("--num-layers", type=int, help="default: 2")
    parser.add_argument("--num-heads", type=int, help="default: 4")
    parser.add_argument("--num-kv-heads", type=int, help="default: 2")
    parser.add_argument("--intermediate-size", type=int, help="default: 4 x hidden size")
    parser.add_argument("--seed", type=int, help="default: 0")
    parser.add_argument("--cache-dir", type=Path, help="default: $XDG_CACHE_HOME/lathe/tiny-models")
    parser.add_argument("--set", dest="overrides", type=_parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="extra config field (value parsed as JSON when it can be)")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "seed"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs.update(args.overrides)
    try:
        path = build_tiny_model(args.arch, args.tokenizer, cache_dir=args.cache_dir, **kwargs)
    except LatheError as err:
        parser.exit(2, f"error: {err}\n")
    print_folder(path, args.out)


def print_folder(path: Path, out: Path | None) -> None:
    """The command lines' last step: copy the cached folder to `out` when asked, and print where it is."""
    if out is not None:
        shutil.copytree(path, out, dirs_exist_ok=True)
        path = out
    print(path)


if __name__ == "__main__":
    main()
