"""Shared fixtures: tiny models built offline (cached on disk) and paths to test material."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# Tiny models run fastest on one thread, and torch's spinning OpenMP threads slow down
# 100-fold when another process shares the two cores; subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when this checkout has no shared material."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared test material exists only in the lathe workplace")
    return path


@pytest.fixture(scope="session")
def demo_tokenizer_dir() -> Path:
    from lathe.testing.demo_tokenizer import build_demo_tokenizer

    return build_demo_tokenizer()


@pytest.fixture(scope="session")
def small_vocab_tokenizer(tmp_path_factory) -> Path:
    """A 300-token tokenizer: a policy's samples concentrate enough for RL rewards to move in seconds."""
    import shutil

    from lathe.testing.demo_tokenizer import train_tokenizer, wrap

    corpus = tmp_path_factory.mktemp("corpus")
    shutil.copy(DATA / "lathe_identity.json", corpus)  # a fixed corpus: the same 300 tokens whatever data/ holds
    tokenizer = tmp_path_factory.mktemp("tok300")
    wrap(train_tokenizer(corpus, vocab_size=300)).save_pretrained(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llama(demo_tokenizer_dir) -> Path:
    from lathe.testing.tiny import build_tiny_model

    return build_tiny_model("llama", demo_tokenizer_dir, hidden_size=64, num_layers=2)


@pytest.fixture(scope="session")
def tiny_demo_model(demo_tokenizer_dir) -> Path:
    """The `make demo` model: wider init, so LoRA moves its output distribution quickly."""
    from lathe.testing.tiny import PRESETS, build_tiny_model

    return build_tiny_model("llama", demo_tokenizer_dir, **PRESETS["demo"])


@pytest.fixture
def sft_config(tmp_path, tiny_llama):
    """Returns a function writing an SFT config for the tiny model on the repo's demo data."""

    def make(**overrides) -> Path:
        config = {
            "model_name_or_path": str(tiny_llama),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "lathe_identity",
            "dataset_dir": str(DATA),
            "template": "chatml",
            "cutoff_len": 128,
            "output_dir": str(tmp_path / "out"),
            "overwrite_output_dir": True,
            "per_device_train_batch_size": 4,
            "learning_rate": 5e-3,
            "max_steps": 12,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
        }
        config.update(overrides)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


class Killed(Exception):
    """Stands for kill -9: the process stops between two lines, nothing after it runs."""


def die_after_log_line(monkeypatch, loop_module, step: int) -> None:
    """Make a hand-written training loop (grpo, ppo) stop like kill -9 right after it logs `step`."""
    real_append = loop_module.append_log_record

    def append_then_die(out, record):
        real_append(out, record)
        if record["current_steps"] == step:
            raise Killed

    monkeypatch.setattr(loop_module, "append_log_record", append_then_die)
