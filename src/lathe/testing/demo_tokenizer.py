"""A small byte-level BPE tokenizer trained offline on lathe's own demo data.

Why train one instead of shipping a real tokenizer: tests and the demo must run with no
network, and a real vocabulary (32k-150k tokens) makes a tiny model mostly embedding table,
which is slow on CPU and hard to train from random weights. A ~1k vocabulary trained on the
demo data (capped at VOCAB_SIZE; the small corpus runs out of merges near 1,000) keeps the
model small and the demo words short in tokens. It is byte-level (every
byte has a token), so any text, Chinese included, encodes without unknowns and decodes back
exactly (NFC text). It splits text and carries a ChatML chat template like the Qwen family,
so it exercises the same chat path as a real instruct tokenizer.

    python -m lathe.testing.demo_tokenizer [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Iterator

from lathe.errors import LatheError
from lathe.build_cache import build_once, default_cache_root, hash_files, short_hash

# Bump when the recipe below changes, so cached tokenizers built by an older recipe are not reused.
RECIPE_VERSION = 2
VOCAB_SIZE = 2048
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]

# The standard ChatML template (as the Qwen instruct models ship it, without a default system).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the tokenizer should see even if the data never contains it: the ChatML role names.
EXTRA_TEXT = ["system", "user", "assistant", "\n"]


def default_data_dir() -> Path:
    """The repository's `data/` folder: src/lathe/testing/demo_tokenizer.py -> parents[3] / data."""
    return Path(__file__).resolve().parents[3] / "data"


def _data_files(data_dir: Path) -> list[Path]:
    """The text-bearing data files (registry excluded: its keys are not language)."""
    files = [
        p
        for p in sorted(data_dir.iterdir())
        if p.is_file() and p.suffix in {".json", ".jsonl", ".txt"} and p.name != "dataset_info.json"
    ]
    if not files:
        raise LatheError(
            f"No demo data files (*.json, *.jsonl, *.txt) in {data_dir}: the demo tokenizer is trained "
            "on them. Pass data_dir= pointing at lathe's `data/` folder."
        )
    return files


def _strings(value: object) -> Iterator[str]:
    """Every string inside a JSON value, in document order."""
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def iter_corpus(data_dir: Path) -> Iterator[str]:
    """The training text, in a fixed order (files sorted by name, rows in file order)."""
    yield from EXTRA_TEXT
    for path in _data_files(data_dir):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            yield from _strings(json.loads(text))
        elif path.suffix == ".jsonl":
            for line in text.splitlines():
                if line.strip():
                    yield from _strings(json.loads(line))
        else:
            yield from (line for line in text.splitlines() if line.strip())


def train_tokenizer(data_dir: Path, vocab_size: int = VOCAB_SIZE):
    """Train the raw `tokenizers.Tokenizer` (byte-level BPE) on the demo data."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Exactly the pipeline transformers' Qwen2Tokenizer builds (NFC, Qwen's split pattern with
    # single digits, byte-level). AutoTokenizer substitutes that class when this tokenizer sits
    # next to a qwen2 config; an identical pipeline means it still encodes the same.
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_corpus(data_dir), trainer=trainer)
    return tok


def wrap(raw_tokenizer):
    """Wrap a trained `tokenizers.Tokenizer` as a transformers fast tokenizer with ChatML."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_demo_tokenizer(cache_dir: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """Build (or reuse) the demo tokenizer and return its folder.

    The folder is keyed by the data files' bytes and the recipe version, so editing the demo
    data gives a new tokenizer, and the same data always gives the same one.
    `cache_dir` defaults to `$XDG_CACHE_HOME/lathe/tokenizers`; `data_dir` to the repo's `data/`.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    files = _data_files(data_dir)
    key = short_hash({"recipe": RECIPE_VERSION, "vocab": VOCAB_SIZE, "data": hash_files(files, root=data_dir)})
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "tokenizers"

    def build(folder: Path) -> None:
        wrap(train_tokenizer(data_dir)).save_pretrained(folder)

    info = {"recipe": RECIPE_VERSION, "data_dir": str(data_dir), "files": [p.name for p in files]}
    return build_once(root / f"demo-{key}", build, info)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build lathe's demo tokenizer and print its folder.")
    parser.add_argument("--out", type=Path, help="copy the tokenizer here (default: print the cache folder)")
    parser.add_argument("--data-dir", type=Path, help="demo data folder (default: the repo's data/)")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: $XDG_CACHE_HOME/lathe/tokenizers)")
    args = parser.parse_args(argv)
    path = build_demo_tokenizer(cache_dir=args.cache_dir, data_dir=args.data_dir)
    if args.out is not None:
        shutil.copytree(path, args.out, dirs_exist_ok=True)
        path = args.out
    print(path)


if __name__ == "__main__":
    main()
