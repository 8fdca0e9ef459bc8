"""The longest `cutoff_len` one training step fits on one GPU: lathe against plain transformers + peft (issue 20).

The GPU sibling of benchmarks/longest_cutoff.py. Models: random-init Qwen2.5-0.5B- and
Qwen2.5-7B-shaped Qwen2 models (the real shapes and vocabularies, built on the meta device,
materialized in bf16 with random weights, saved once under --work with a Qwen tokenizer). Methods:
LoRA (r16, every linear layer, bf16 base) and QLoRA (the same on a 4-bit nf4 bitsandbytes base).
Tools, one step each on one sample of exactly `cutoff_len` tokens, batch 1:

- lathe: `stage: pt` on a dataset of exactly that many tokens, through the `lathe train` code
  path (`run_stage`), everything else lathe's own defaults (attention kernel, checkpointing, ...);
- baseline: plain transformers with FlashAttention-2 (`attn_implementation="flash_attention_2"`
  when flash_attn imports, else sdpa: the JSON says which), peft LoRA on the same modules,
  gradient checkpointing on (`--baseline-checkpointing off` to drop it), the model's own loss,
  one AdamW step.

A length fits when the step finishes without CUDA running out of memory (and, with --cap-gib,
when torch.cuda.max_memory_allocated stays under the cap). Each run is a child process of its
own, so one run's peak and fragmentation never reach the next. Search per (model, method, tool):
double from --start up to --max-length, then bisect between the last fit and the first failure
to --resolution tokens. Results: <out>/long_context.{json,md}.

    scripts/setup_env.sh dev                                  # on a fresh CUDA machine, as gpu_check.sh does
    .venv/bin/python scripts/gpu_long_context.py --out long_context_results [--models 0.5b,7b] [--methods lora,qlora]
    .venv/bin/python scripts/gpu_long_context.py --dry-run     # no GPU needed: print the configs it would run
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "qwen2-instruct-boundless"

# transformers' Qwen2Config fields of the two released checkpoints (config.json of Qwen/Qwen2.5-0.5B and -7B).
SHAPES = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151_936, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18_944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152_064, "tie_word_embeddings": False},
}
COMMON_SHAPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}, "rms_norm_eps": 1e-6,
                "max_position_embeddings": 262_144, "use_sliding_window": False}
METHODS = {"lora": {}, "qlora": {"quantization_bit": 4}}
TOOLS = ("lathe", "baseline")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # `lora_target: all` here


# ---------------------------------------------------------------- models and data

def qwen_config(size: str):
    from transformers import Qwen2Config

    return Qwen2Config(**SHAPES[size], **COMMON_SHAPE)


def parameter_count(size: str) -> int:
    """Parameters of the model, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen_config(size), dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def load_tokenizer(path: Path | None):
    """The Qwen tokenizer when it is here (its real vocabulary), else lathe's offline demo tokenizer."""
    from transformers import AutoTokenizer

    if path and path.is_dir():
        return AutoTokenizer.from_pretrained(path), str(path)
    sys.path.insert(0, str(ROOT / "src"))
    from lathe.testing.demo_tokenizer import build_demo_tokenizer

    folder = build_demo_tokenizer()
    return AutoTokenizer.from_pretrained(folder), f"lathe demo tokenizer ({folder})"


def build_model(size: str, work: Path, tokenizer_path: Path | None) -> Path:
    """Build the model once: on the meta device, then real bf16 storage with random weights, saved with its tokenizer.

    Why not `from_config` on the device: at 7B that initializes fp32 weights on the CPU first
    (~30 GB and minutes); allocating empty bf16 storage and filling it in place takes seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = work / f"qwen2.5-{size}-random"
    if (folder / "config.json").exists():
        return folder
    tokenizer, _ = load_tokenizer(tokenizer_path)
    config = qwen_config(size)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, config.initializer_range, generator=generator)
            elif "norm" in name:
                param.fill_(1.0)
            else:  # the q/k/v biases
                param.zero_()
    model.tie_weights()
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)  # non-persistent buffers (RoPE's inv_freq) are not saved: loading recomputes them
    tokenizer.save_pretrained(tmp)
    del model
    tmp.rename(folder)
    return folder


def filler_text(tokenizer, length: int) -> str:
    """A text that lathe's pt encoding (its tokens with special tokens, then eos) turns into exactly `length` tokens."""
    def count(words: int) -> int:
        ids = tokenizer("the" + " the" * (words - 1), add_special_tokens=True)["input_ids"]
        return len(ids) + (tokenizer.eos_token_id is not None)

    base, per_word = count(1), count(101) - count(1)
    if per_word != 100:
        raise RuntimeError(f"{tokenizer.name_or_path}: ' the' is not one token; cannot build an exact-length sample")
    words = length - base + 1
    if count(words) != length:
        raise RuntimeError(f"filler of {words} words is {count(words)} tokens, not {length}")
    return "the" + " the" * (words - 1)


# ---------------------------------------------------------------- the two tools' configs

def lathe_config(model: str, method: str, length: int, data_dir: str, out: str) -> dict:
    return {
        "model_name_or_path": model, "stage": "pt", "do_train": True, "finetuning_type": "lora",
        "lora_rank": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "lora_target": "all",
        "dataset": f"filler_{length}", "dataset_dir": data_dir, "cutoff_len": length, "bf16": True,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1, "learning_rate": 1e-4,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "overwrite_output_dir": True,
        "disable_tqdm": True, "output_dir": out, **METHODS[method],
    }


def attention_kernel() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def baseline_config(method: str, length: int, checkpointing: bool) -> dict:
    return {"attn_implementation": attention_kernel(), "dtype": "bfloat16", "length": length,
            "lora": {**LORA, "target_modules": LINEAR}, "gradient_checkpointing": checkpointing,
            "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                             "bnb_4bit_compute_dtype": "bfloat16"} if method == "qlora" else None,
            "optimizer": "AdamW lr 1e-4", "batch": 1, "steps": 1}


# ---------------------------------------------------------------- one run (child process)

def run_lathe(model: str, method: str, length: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from lathe.config import build_config
    from lathe.train import run_stage

    tokenizer, _ = load_tokenizer(Path(model))
    with tempfile.TemporaryDirectory(prefix="lathe-longctx-") as work:
        data = Path(work) / "data"
        data.mkdir()
        (data / "filler.jsonl").write_text(json.dumps({"text": filler_text(tokenizer, length)}) + "\n")
        (data / "dataset_info.json").write_text(json.dumps(
            {f"filler_{length}": {"file_name": "filler.jsonl", "columns": {"prompt": "text"}}}))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = run_stage(build_config(lathe_config(model, method, length, str(data), str(Path(work) / "out"))))
    return {"loss": round(float(result.metrics.get("train_loss", float("nan"))), 4)}


def run_baseline(model: str, method: str, length: int, checkpointing: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    settings = baseline_config(method, length, checkpointing)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for checking this code on a tiny model
    kwargs = {"attn_implementation": settings["attn_implementation"], "dtype": torch.bfloat16, "device_map": device}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    net.config.use_cache = False
    if method == "qlora":
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=checkpointing,
                                              gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.enable_input_require_grads()
    net = get_peft_model(net, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                         target_modules=LINEAR, task_type="CAUSAL_LM"))
    net.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, net.config.vocab_size, (1, length), generator=generator).to(device)
    loss = net(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"loss": round(loss.detach().item(), 4), "attn_implementation": settings["attn_implementation"]}


def run_one(tool: str, model: str, method: str, length: int, checkpointing: bool) -> dict:
    """One step; the peak of torch.cuda.max_memory_allocated, or `oom` when CUDA ran out."""
    import torch

    start = time.perf_counter()
    row = {"tool": tool, "method": method, "length": length}
    try:
        row.update(run_lathe(model, method, length) if tool == "lathe" else
                   run_baseline(model, method, length, checkpointing))
        row["status"] = "ok"
    except torch.OutOfMemoryError as err:
        row.update(status="oom", error=str(err).splitlines()[0][:300])
    except Exception as err:  # noqa: BLE001 - a library may wrap CUDA's OOM; any other failure is a row too
        oom = "out of memory" in str(err).lower()
        row.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {str(err)[:500]}")
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


# ---------------------------------------------------------------- the search (parent process)

def child(args, tool: str, model: Path, method: str, length: int) -> dict:
    cmd = [sys.executable, __file__, "--one", tool, "--model", str(model), "--methods", method,
           "--start", str(length), "--baseline-checkpointing", args.baseline_checkpointing]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"tool": tool, "method": method, "length": length, "status": "error",
                "error": f"timed out after {args.timeout} s"}
    found = [line for line in proc.stdout.splitlines() if line.startswith("LONG_CONTEXT_ROW ")]
    if found:
        return json.loads(found[-1].split(" ", 1)[1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-3:]
    status = "oom" if "out of memory" in proc.stderr.lower() else "error"
    return {"tool": tool, "method": method, "length": length, "status": status,
            "error": f"exit code {proc.returncode}: {' | '.join(tail)[:500]}"}


def try_length(args, doc: dict, save, size: str, folder: Path, method: str, tool: str, length: int) -> bool:
    """Whether `tool` fits `length` (a run already in `doc` is not repeated); each new run is saved at once."""
    known = next((r for r in doc["runs"] if (r["model"], r["method"], r["tool"], r["length"]) ==
                  (size, method, tool, length)), None)
    row = known or {"model": size, **child(args, tool, folder, method, length)}
    if known is None:
        doc["runs"].append(row)
        save()
        print(f"gpu_long_context: {size} {method} {tool} {length}: {row['status']} {row.get('peak_gib', '-')} GiB "
              f"{row.get('error', '')[:200]}", flush=True)
    return fits(row, args.cap_gib)


def fits(row: dict, cap_gib: float | None) -> bool:
    return row["status"] == "ok" and (cap_gib is None or row.get("peak_gib", 0) <= cap_gib)


def search(try_length, start: int, top: int, resolution: int) -> int | None:
    """Double from `start` to `top`, then bisect between the last fit and the first failure to `resolution`."""
    fit, fail, length = None, None, start
    while length <= top:
        if try_length(length):
            fit, length = length, length * 2
        else:
            fail = length
            break
    if fail is None:
        return fit  # fits all the way to the top
    if fit is None:  # the start already fails: halve until something fits
        length = fail // 2
        while length >= resolution and not try_length(length):
            fail, length = length, length // 2
        if length < resolution:
            return None
        fit = length
    while fail - fit > resolution:
        mid = (fit + fail) // 2 // resolution * resolution
        if try_length(mid):
            fit = mid
        else:
            fail = mid
    return fit


def markdown(doc: dict) -> str:
    head = (f"device: {doc['device']}; baseline attention: {doc['baseline_attention']}; baseline gradient "
            f"checkpointing: {doc['baseline_checkpointing']}; tokenizer: {doc['tokenizer']}")
    columns = ("| model | method | lathe longest | baseline longest | ratio | lathe peak at baseline's longest GiB | "
               "baseline peak there GiB | memory ratio |")
    lines = [head, "", columns, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in doc["summary"]:
        lines.append(f"| {s['model']} | {s['method']} | {s.get('lathe_longest') or '-'} | "
                     f"{s.get('baseline_longest') or '-'} | {s.get('ratio', '-')} | {s.get('lathe_peak_there', '-')} | "
                     f"{s.get('baseline_peak_there', '-')} | {s.get('memory_ratio', '-')} |")
    lines += ["", "| model | method | tool | length | status | peak GiB | loss | wall s | error |",
              "|---|---|---|---:|---|---:|---:|---:|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r['model']} | {r['method']} | {r['tool']} | {r['length']} | {r['status']} | "
                     f"{r.get('peak_gib', '-')} | {r.get('loss', '-')} | {r.get('wall_s', '-')} | "
                     f"{r.get('error', '')[:160]} |")
    return "\n".join(lines) + "\n"


def summarize(runs: list[dict], model: str, method: str, cap: float | None) -> dict:
    out = {"model": model, "method": method}
    mine = [r for r in runs if r["model"] == model and r["method"] == method]
    for tool in TOOLS:
        ok = [r["length"] for r in mine if r["tool"] == tool and fits(r, cap)]
        out[f"{tool}_longest"] = max(ok) if ok else None
    if out["lathe_longest"] and out["baseline_longest"]:
        out["ratio"] = round(out["lathe_longest"] / out["baseline_longest"], 2)
        at = {r["tool"]: r for r in mine if r["length"] == out["baseline_longest"] and fits(r, cap)}
        if "lathe" in at and "baseline" in at:
            out["lathe_peak_there"], out["baseline_peak_there"] = at["lathe"]["peak_gib"], at["baseline"]["peak_gib"]
            out["memory_ratio"] = round(at["lathe"]["peak_gib"] / at["baseline"]["peak_gib"], 3)
    return out


def dry_run(args, models: list[str], methods: list[str], tools: list[str]) -> int:
    """Print what a real run would do: each model's shape and size, and each tool's config at the first length."""
    print(f"search: double from {args.start} to {args.max_length}, then bisect to {args.resolution} tokens; "
          f"limit: CUDA OOM{f' or max_memory_allocated > {args.cap_gib} GiB' if args.cap_gib else ''}")
    print(f"baseline attention: {attention_kernel()} (flash_attn "
          f"{'importable' if attention_kernel() == 'flash_attention_2' else 'not importable: sdpa'})")
    for size in models:
        folder = args.work / f"qwen2.5-{size}-random"
        print(f"\n# model {size}: {folder} ({parameter_count(size) / 1e9:.3f}B parameters, bf16)")
        print(json.dumps({**SHAPES[size], **COMMON_SHAPE}))
        for method in methods:
            for tool in tools:
                print(f"\n## {size} {method} {tool} (cutoff_len {args.start})")
                if tool == "lathe":
                    print(yaml.safe_dump(lathe_config(str(folder), method, args.start, "<per-run data dir>",
                                                      "<per-run output dir>"), sort_keys=False).rstrip())
                else:
                    print(json.dumps(baseline_config(method, args.start, args.baseline_checkpointing == "on")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("long_context_results"), help="folder for the JSON and md")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "gpu-longctx",
                        help="where the random models are built (7B: ~15 GB)")
    parser.add_argument("--models", default="0.5b,7b", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--methods", default="lora,qlora", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--start", type=int, default=4096, help="first length of the doubling")
    parser.add_argument("--max-length", type=int, default=262_144, help="the doubling stops here")
    parser.add_argument("--resolution", type=int, default=512, help="bisection step (tokens)")
    parser.add_argument("--cap-gib", type=float, help="also a failure: max_memory_allocated above this (GiB)")
    parser.add_argument("--baseline-checkpointing", choices=("on", "off"), default="on")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="tokenizer folder (else lathe's demo one)")
    parser.add_argument("--dry-run", action="store_true", help="print the configs it would run, run nothing")
    parser.add_argument("--one", choices=TOOLS, help=argparse.SUPPRESS)  # child: one tool at --start
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser


def parse_list(text: str, known, option: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown or not items:
        raise SystemExit(f"{option}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    return items


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    models = parse_list(args.models, SHAPES, "--models")
    methods = parse_list(args.methods, METHODS, "--methods")
    tools = parse_list(args.tools, TOOLS, "--tools")
    if args.start < args.resolution or args.start > args.max_length:
        raise SystemExit(f"--start {args.start} must lie between --resolution {args.resolution} and --max-length")
    if args.one:
        row = run_one(args.one, args.model, methods[0], args.start, args.baseline_checkpointing == "on")
        print("LONG_CONTEXT_ROW " + json.dumps(row), flush=True)
        return 0
    if args.dry_run:
        return dry_run(args, models, methods, tools)

    import torch

    if not torch.cuda.is_available():
        print("gpu_long_context: no CUDA device; --dry-run prints the configs without one", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"device": torch.cuda.get_device_name(0), "baseline_attention": attention_kernel(),
           "baseline_checkpointing": args.baseline_checkpointing, "tokenizer": load_tokenizer(args.tokenizer)[1],
           "cap_gib": args.cap_gib, "runs": [], "summary": []}

    def save() -> None:
        (args.out / "long_context.json").write_text(json.dumps(doc, indent=1))
        (args.out / "long_context.md").write_text(markdown(doc))

    for size in models:
        folder = build_model(size, args.work, args.tokenizer)
        for method in methods:
            longest = {}
            for tool in tools:
                attempt = functools.partial(try_length, args, doc, save, size, folder, method, tool)
                longest[tool] = search(attempt, args.start, args.max_length, args.resolution)
            if set(tools) == set(TOOLS) and longest["baseline"] and longest["lathe"]:
                try_length(args, doc, save, size, folder, method, "lathe", longest["baseline"])  # lathe's peak there
            doc["summary"] = [s for s in doc["summary"] if (s["model"], s["method"]) != (size, method)]
            doc["summary"].append(summarize(doc["runs"], size, method, args.cap_gib))
            save()
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
