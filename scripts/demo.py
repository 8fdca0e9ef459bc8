"""`make demo`: build a tiny model, LoRA-tune it on the project's demo data, show what it learned.

Everything is local: the tokenizer is trained on data/, the model is random-init from a small
config, and training runs through the same `lathe train` command a user types. The answers
before and after training show the adapter learned the demo data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo_out"
CONFIG = ROOT / "examples" / "demo" / "lora_sft.yaml"

QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "Spell out this number in words.\n989",
    "Spell out this number in words.\n451",
]


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def load(model_dir: Path, adapter_dir: Path | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval(), tokenizer


def answers(model, tokenizer) -> list[str]:
    from lathe.data.templates import get_template
    from lathe.infer.generate import generate_reply

    template = get_template("chatml")
    return [
        generate_reply(model, tokenizer, template, [{"role": "user", "content": q}], do_sample=False, max_new_tokens=32)
        for q in QUESTIONS
    ]


def main() -> int:
    import torch

    from lathe.testing.demo_tokenizer import build_demo_tokenizer
    from lathe.testing.tiny import PRESETS, build_tiny_model

    torch.manual_seed(0)
    start = time.time()
    say("1/4 building the demo tokenizer (trained on data/) and a small random-init Llama model")
    # The demo preset: hidden 128, 2 layers, and a wider weight init (0.1) so that plain LoRA
    # can move the frozen random output head's logits far enough to learn in seconds.
    model_dir = build_tiny_model("llama", build_demo_tokenizer(), **PRESETS["demo"])
    print(f"model: {model_dir}")

    say("2/4 answers BEFORE training (random weights)")
    model, tokenizer = load(model_dir)
    before = answers(model, tokenizer)
    for q, a in zip(QUESTIONS, before):
        print(f"Q: {q!r}\nA: {a!r}")

    say(f"3/4 lathe train {CONFIG.relative_to(ROOT)} (LoRA on data/lathe_identity + data/lathe_numbers)")
    out = OUT / "lora"
    cmd = [sys.executable, "-m", "lathe", "train", str(CONFIG), f"model_name_or_path={model_dir}", f"output_dir={out}"]
    print("$ " + " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        print("demo: training failed", file=sys.stderr)
        return proc.returncode
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [r for r in log if "loss" in r]
    step = max(1, len(losses) // 8)
    print("loss: " + "  ".join(f"step {r['current_steps']}: {r['loss']:.3f}" for r in losses[::step] + losses[-1:]))

    say("4/4 answers AFTER training (base model + the saved LoRA adapter)")
    model, tokenizer = load(model_dir, out)
    after = answers(model, tokenizer)
    for q, b, a in zip(QUESTIONS, before, after):
        print(f"Q: {q!r}\n  before: {b!r}\n  after:  {a!r}")
    print(f"\nadapter: {out}\nloss plot: {out / 'training_loss.png'}\ntotal time: {time.time() - start:.0f} s")
    first, last = losses[0]["loss"], losses[-1]["loss"]
    if not last < first:
        print("demo: the loss did not go down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
