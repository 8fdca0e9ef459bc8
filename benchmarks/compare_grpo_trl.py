"""lathe's `stage: grpo` against TRL 1.16's GRPOTrainer: the same job, alternating rounds (issue 19).

    .venv/bin/python benchmarks/compare_grpo_trl.py [--rounds 3] [--steps 20] [--threads 1] [--accuracy-probe]

The job: a random-init llama (hidden 64, 2 layers) with a 300-token byte-level BPE vocabulary
(lathe's demo-tokenizer recipe trained on data/lathe_identity.json, as tests/train/test_grpo_stage.py
builds it), LoRA rank 8 / alpha 16 on every linear layer, the prompts of the project's arithmetic word
problems (`lathe_arithmetic`, rendered with ChatML), 8 prompts x 4 generations per step (32
completions, one micro-batch), 20 steps, loss `grpo`, beta 0, epsilon 0.2, group-scaled rewards,
temperature 1.0, top_p 1.0, top_k 0, max_completion_length 16, lr 2e-2 constant, no warmup, fp32 on
the CPU, no gradient checkpointing; round r runs both tools with seed 41 + r, so the rounds show the
rewards' seed-to-seed noise.

The reward: the share of digits in the completion (`digits`), the learning test's reachable reward.
`accuracy` on arithmetic is flat on a random model (no sampled completion ever holds the right
number, so every group's rewards are equal and every advantage is 0); the script records that
once (`--accuracy-probe`) instead of timing a run that cannot learn.

lathe runs as `lathe train config.yaml` (a subprocess); TRL as this file's `trl` mode (a subprocess:
GRPOTrainer with the equivalent GRPOConfig, the same tokenizer with the same chat template, the same
stop tokens and the same reward function). Per run: whole-command wall time, the training loop's time
(train_runtime of each), the peak RSS of the process tree (psutil, sampled every 20 ms) and the mean
reward of every step. Results: benchmarks/results/compare_grpo_trl.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "grpo_trl"
RESULTS = HERE / "results"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
LATHE = [str(ROOT / ".venv" / "bin" / "lathe")]

REWARD_FILE = '''def digits(prompts, completions, **columns):
    """The share of digits in each completion: reachable by a random policy, so it can rise.
    (TRL passes a conversational row's completion as [{"role": "assistant", "content": text}].)"""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
'''
JOB = {"prompts_per_step": 8, "num_generations": 4, "max_completion_length": 16, "learning_rate": 2e-2,
       "temperature": 1.0, "seed": 42, "lora_rank": 8, "lora_alpha": 16, "epsilon": 0.2, "max_grad_norm": 1.0}


# ---------------------------------------------------------------------------------------------- set-up


def prepare(steps: int) -> dict:
    """The model, the tokenizer TRL reads (lathe's ChatML as its chat template), the prompts and the
    reward file, built once under benchmarks/work/grpo_trl."""
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoTokenizer

    from lathe.data.templates import get_template
    from lathe.model.generation import stop_token_ids
    from lathe.testing.demo_tokenizer import train_tokenizer, wrap
    from lathe.testing.tiny import build_tiny_model

    WORK.mkdir(parents=True, exist_ok=True)
    corpus = WORK / "corpus"
    corpus.mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "lathe_identity.json", corpus)
    raw_tok = WORK / "tok300"
    wrap(train_tokenizer(corpus, vocab_size=300)).save_pretrained(raw_tok)
    model = Path(build_tiny_model("llama", raw_tok, hidden_size=64, num_layers=2))
    tokenizer, template = AutoTokenizer.from_pretrained(model), get_template("chatml")
    if template.fix_tokenizer(tokenizer):
        raise SystemExit("the tokenizer lacks ChatML's tokens: lathe would resize the model, TRL would not")
    trl_tok = WORK / "trl_tokenizer"
    tokenizer.save_pretrained(trl_tok)  # the chat template lathe renders with, as TRL's processing class
    rows = json.loads((ROOT / "data" / "lathe_arithmetic" / "lathe_arithmetic.json").read_text())
    prompts = WORK / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["instruction"]}],
                                           "answer": r["answer"]}, ensure_ascii=False) + "\n" for r in rows))
    (WORK / "digits_reward.py").write_text(REWARD_FILE)
    return {"model": str(model), "trl_tokenizer": str(trl_tok), "prompts": str(prompts), "rows": len(rows),
            "stop_ids": stop_token_ids(tokenizer, template), "steps": steps}


def lathe_config(setup: dict, out: Path, seed: int) -> Path:
    per_step = JOB["prompts_per_step"] * JOB["num_generations"]
    config = {
        "model_name_or_path": setup["model"], "stage": "grpo", "do_train": True, "finetuning_type": "lora",
        "lora_rank": JOB["lora_rank"], "lora_alpha": JOB["lora_alpha"], "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "lathe_arithmetic", "dataset_dir": str(ROOT / "data"), "template": "chatml", "cutoff_len": 512,
        "output_dir": str(out), "overwrite_output_dir": True, "per_device_train_batch_size": per_step,
        "gradient_accumulation_steps": 1, "num_generations": JOB["num_generations"],
        "max_completion_length": JOB["max_completion_length"], "loss_type": "grpo", "grpo_beta": 0.0,
        "epsilon": JOB["epsilon"], "scale_rewards": "group", "learning_rate": JOB["learning_rate"],
        "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": JOB["max_grad_norm"], "max_steps": setup["steps"], "seed": seed,
        "temperature": JOB["temperature"], "top_p": 1.0, "top_k": 0, "do_sample": True,
        "reward_funcs": str(WORK / "digits_reward.py") + ":digits", "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "plot_loss": False, "bf16": False,
    }
    import yaml

    path = out.parent / "lathe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- TRL side


def trl_main(job_file: str) -> None:
    """The TRL run (a process of its own, timed from outside): GRPOTrainer with the same settings."""
    import importlib.util

    job = json.loads(Path(job_file).read_text())
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    spec = importlib.util.spec_from_file_location("digits_reward", job["reward_file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype="float32")
    model.generation_config.eos_token_id = job["stop_ids"]  # lathe stops at eos and the template's stop words
    data = load_dataset("json", data_files=job["prompts"], split="train")
    per_step = JOB["prompts_per_step"] * JOB["num_generations"]
    args = GRPOConfig(
        output_dir=job["out"], per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
        num_generations=JOB["num_generations"], max_completion_length=JOB["max_completion_length"],
        temperature=JOB["temperature"], top_p=1.0, top_k=0, beta=0.0, epsilon=JOB["epsilon"], loss_type="grpo",
        scale_rewards="group", num_iterations=1, learning_rate=JOB["learning_rate"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=JOB["max_grad_norm"], max_steps=job["steps"],
        seed=job["seed"], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, bf16=False,
        use_cpu=True, gradient_checkpointing=False, log_completions=False, dataloader_num_workers=0,
    )
    peft = LoraConfig(r=JOB["lora_rank"], lora_alpha=JOB["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=module.digits, args=args, train_dataset=data,
                          processing_class=tokenizer, peft_config=peft)
    result = trainer.train()
    trainer.save_model(job["out"])
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    Path(job["out"], "bench_result.json").write_text(json.dumps(
        {"train_runtime": result.metrics["train_runtime"], "rewards": rewards}))


# ---------------------------------------------------------------------------------------------- measuring


def measured(command: list[str], log: Path, env: dict) -> tuple[float, int, int]:
    """(wall seconds, peak RSS of the process and all its children together, return code)."""
    import psutil

    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        top, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [top, *top.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)
    return time.perf_counter() - start, peak, proc.returncode


def one_run(tool: str, setup: dict, round_: int, env: dict) -> dict:
    run_dir = WORK / "runs" / f"{tool}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir / "out"
    seed = JOB["seed"] + round_ - 1  # one seed per round, the same for both tools: the rewards' noise shows
    if tool == "lathe":
        command = [*LATHE, "train", str(lathe_config(setup, out, seed))]
    else:
        job = run_dir / "trl_job.json"
        job.write_text(json.dumps({"model": setup["model"], "tokenizer": setup["trl_tokenizer"],
                                   "prompts": setup["prompts"], "stop_ids": setup["stop_ids"],
                                   "reward_file": str(WORK / "digits_reward.py"), "steps": setup["steps"],
                                   "out": str(out), "seed": seed}))
        command = [PYTHON, str(Path(__file__).resolve()), "trl", str(job)]
    wall, rss, rc = measured(command, run_dir / "log.txt", env)
    record = {"tool": tool, "round": round_, "seed": seed, "wall_s": round(wall, 2),
              "peak_rss_mib": round(rss / 2**20, 1), "rc": rc}
    try:
        if tool == "lathe":
            log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
            record["rewards"] = [r["reward"] for r in log]
            record["loop_s"] = round(json.loads((out / "train_results.json").read_text())["train_runtime"], 2)
        else:
            result = json.loads((out / "bench_result.json").read_text())
            record["rewards"], record["loop_s"] = result["rewards"], round(result["train_runtime"], 2)
    except (OSError, ValueError, KeyError):
        record["error"] = (run_dir / "log.txt").read_text(errors="replace")[-2000:]
    return record


def accuracy_probe(setup: dict, env: dict) -> dict:
    """Two steps with `accuracy` as the reward: on a random model it is flat (0), which is why `digits` is used."""
    run_dir = WORK / "runs" / "accuracy-probe"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    import yaml

    config = lathe_config({**setup, "steps": 5}, run_dir / "out", JOB["seed"])
    settings = yaml.safe_load(config.read_text())
    settings["reward_funcs"] = "accuracy"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    subprocess.run([*LATHE, "train", str(config)], capture_output=True, env=env, cwd=ROOT, check=False)
    log = [json.loads(line) for line in (run_dir / "out" / "trainer_log.jsonl").read_text().splitlines()]
    return {"steps": len(log), "mean_accuracy_per_step": [r["reward"] for r in log]}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def reward_noise(runs: list[dict]) -> dict:
    """Each tool's mean reward over all steps and rounds, and how much one run's mean moves from seed to seed."""
    per_run = {tool: [statistics.mean(r["rewards"]) for r in runs if r["tool"] == tool and "rewards" in r]
               for tool in ("lathe", "trl")}
    spread = [statistics.stdev(v) for v in per_run.values() if len(v) > 1]
    lathe, trl = statistics.mean(per_run["lathe"]), statistics.mean(per_run["trl"])
    return {"lathe_mean": lathe, "trl_mean": trl, "difference": lathe - trl,
            "seed_std": statistics.mean(spread) if spread else float("nan"), "per_run_means": per_run}


def summarise(runs: list[dict], info: dict) -> str:
    def med(tool: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["tool"] == tool and key in r)

    def traj(tool: str) -> list[float]:
        series = [r["rewards"] for r in runs if r["tool"] == tool and "rewards" in r]
        return [round(statistics.mean(step), 4) for step in zip(*series)]

    lathe_t, trl_t = traj("lathe"), traj("trl")
    noise = reward_noise(runs)
    info["reward_noise"] = noise
    lines = [
        "# lathe `stage: grpo` vs TRL 1.16 GRPOTrainer", "",
        (f"{info['date']}, {info['cpu']} ({info['cores']} cores), OMP_NUM_THREADS={info['threads']}, "
         f"load before {info['load_before']}, after {info['load_after']} (a machine shared with other jobs)."),
        f"Job: {info['job']}", "",
        ("| tool | whole command s (median) | training loop s | peak RSS of the tree MiB | "
         "mean reward, steps 1-5 | mean reward, last 5 steps |"),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tool, t in (("lathe", lathe_t), ("trl", trl_t)):
        lines.append(f"| {tool} | {med(tool, 'wall_s'):.2f} | {med(tool, 'loop_s'):.2f} | "
                     f"{med(tool, 'peak_rss_mib'):.0f} | {statistics.mean(t[:5]):.4f} | "
                     f"{statistics.mean(t[-5:]):.4f} |")
    lines += ["", (f"Whole command: TRL / lathe = {med('trl', 'wall_s') / med('lathe', 'wall_s'):.2f}x; "
                   f"training loop: {med('trl', 'loop_s') / med('lathe', 'loop_s'):.2f}x; "
                   f"peak RSS: lathe / TRL = {med('lathe', 'peak_rss_mib') / med('trl', 'peak_rss_mib'):.2f}."),
              (f"Reward over all steps and rounds: lathe {noise['lathe_mean']:.4f}, TRL {noise['trl_mean']:.4f}; "
               f"the difference {noise['difference']:+.4f} against a seed-to-seed spread (std of one run's mean "
               f"reward over the rounds' seeds) of {noise['seed_std']:.4f}."), "",
              "Mean reward per step (mean over rounds):", "",
              "| step | " + " | ".join(str(i + 1) for i in range(len(lathe_t))) + " |",
              "|---|" + "---:|" * len(lathe_t),
              "| lathe | " + " | ".join(f"{v:.3f}" for v in lathe_t) + " |",
              "| trl | " + " | ".join(f"{v:.3f}" for v in trl_t) + " |", "",
              "Per run:", "", "| tool | round | whole s | loop s | peak RSS MiB | first-5 reward | last-5 reward |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "rewards" in r:
            lines.append(f"| {r['tool']} | {r['round']} | {r['wall_s']} | {r['loop_s']} | {r['peak_rss_mib']} | "
                         f"{statistics.mean(r['rewards'][:5]):.4f} | {statistics.mean(r['rewards'][-5:]):.4f} |")
    if info.get("accuracy_probe"):
        lines += ["", (f"`accuracy` on the same job (lathe, 5 steps): "
                       f"{info['accuracy_probe']['mean_accuracy_per_step']} - flat on a random model, hence the "
                       f"`digits` reward.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both tools (0: torch's default)")
    parser.add_argument("--accuracy-probe", action="store_true", help="also record `accuracy` on the same job")
    args = parser.parse_args()
    import platform

    env = dict(os.environ, HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    setup = prepare(args.steps)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
            "threads": args.threads or "torch default", "load_before": loadavg(), "rounds": args.rounds,
            "job": {**JOB, "steps": args.steps, "reward": "digits (share of digits in the completion)",
                    "data": f"lathe_arithmetic prompts ({setup['rows']} rows), ChatML", "model":
                    "llama hidden 64, 2 layers, vocab 300, fp32, CPU", "lora_target": "all linear layers"}}
    runs = []
    for round_ in range(1, args.rounds + 1):
        for tool in (("lathe", "trl") if round_ % 2 else ("trl", "lathe")):  # alternate who goes first
            record = one_run(tool, setup, round_, env)
            print(json.dumps({k: v for k, v in record.items() if k != "rewards"}), flush=True)
            runs.append(record)
    if args.accuracy_probe:
        info["accuracy_probe"] = accuracy_probe(setup, env)
    info["load_after"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    text = summarise(runs, info)  # (adds info["reward_noise"])
    (RESULTS / "compare_grpo_trl.json").write_text(json.dumps({"info": info, "runs": runs}, indent=2))
    (RESULTS / "compare_grpo_trl.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "trl":
        trl_main(sys.argv[2])
    else:
        main()
