"""`lathe` command line: one entry point, one sub-command per job.

User mistakes (LatheError) print as one readable message and exit 1; a traceback is shown
only with `--debug` or LATHE_DEBUG=1, since anything else is a lathe bug worth reporting.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback

from . import __version__, threads
from .errors import LatheError
from .logs import setup_logging

USAGE = """usage: lathe <command> [options]

commands:
  train CONFIG [key=value ...]   fine-tune a model (CONFIG: YAML or JSON, LLaMA-Factory keys)
  chat CONFIG [--system S] [--tools F.json] [--image P] [--video P] [--audio P] [key=value ...]
                                 talk to a model (with its adapters) in the terminal, streaming
  api CONFIG [key=value ...]     serve the model with an OpenAI-compatible API (API_HOST, API_PORT, API_KEY)
  webui [--workdir DIR]          the Board: train / evaluate / chat / export in the browser (127.0.0.1:7860;
                                 GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, GRADIO_SHARE)
  webchat CONFIG [key=value ...] a browser chat page for the configured model (same host/port variables)
  export CONFIG [key=value ...]  merge adapters into the base model, save it (+ Ollama Modelfile) to export_dir
  eval CONFIG [--ppl] [k=v ...]  multiple-choice benchmark (task, task_dir, n_shot, lang), or perplexity on `dataset`
  expand --model M --num-expand N --out DIR   LLaMA Pro: add N identity blocks (then use_llama_pro)
  plan CONFIG [--device-memory 24GiB] [--devices N] [--shard zero2|zero3|fsdp] [--cutoff]
                                 memory each method needs, from the model's config alone (no weights)
  bench CONFIG [--methods full,lora,...] [--steps N] [--output DIR]
                                 train each method N steps in its own process: peak memory, tokens/s, perplexity
  data preview CONFIG [-n N]     show N samples as the model sees them, learned tokens marked
  data stats CONFIG              rows kept/skipped, token lengths, truncation, learned share
  models [QUERY]                 the model catalog: names, families, sizes, default templates and hub ids;
                                 QUERY (any case) keeps the names, ids or families that contain it
  env                            versions of python and the libraries, and the devices
  version                        the lathe version

`lathe train --help` lists every training option by group.
"""


def cmd_train(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        from .config.help import train_help

        print(train_help())
        return 0
    from . import startup

    startup.reset()
    startup.mark("python + lathe")
    import torch  # noqa: F401  (timed apart: the floor every run pays)
    import transformers  # noqa: F401

    startup.mark("torch + transformers")
    import transformers.training_args  # noqa: F401  (the Trainer's stack: peft, torch._dynamo, ...; read by the config)

    startup.mark("Trainer + peft")
    from .config.read import split_config_args

    path, overrides = split_config_args(args)
    cfg = _config(path, overrides)  # checked here, before any process is spawned
    startup.mark("config")
    from .config.engines import requested_engine
    from .distributed import ray
    from .distributed.launch import launch, should_launch

    if ray.ray_requested(cfg):  # USE_RAY=1: Ray Train starts the workers, each runs train_here
        return ray.launch(cfg, train_here)
    if should_launch(requested_engine(cfg)):
        return launch(args)
    return train_here(cfg)


def train_here(cfg) -> int:
    """Train in this process: alone, or as one rank that torchrun or Ray started."""
    from .process import is_main_process
    from .train import run_stage

    metrics = run_stage(cfg).metrics
    if "train_loss" in metrics and is_main_process():  # one line per run, not per rank
        print(f"[lathe] done: train_loss {metrics['train_loss']:.4f}; results in {cfg.training.output_dir}", flush=True)
    return 0


def _config(path, overrides, purpose: str = "train"):
    """The command's config (checked before any work), with its hub token handed to huggingface_hub."""
    from .config import load_config
    from .hub import use_token

    cfg = load_config(path, overrides, purpose=purpose)
    use_token(cfg.hub_token)
    return cfg


def cmd_data(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lathe data", description="Inspect the data a config trains on.")
    parser.add_argument("action", choices=("preview", "stats"))
    parser.add_argument("config", help="a training config (YAML or JSON); a predict config shows its eval_dataset")
    parser.add_argument("-n", type=int, default=3, help="samples to show (preview)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("overrides", nargs="*", help="key=value options")
    ns = parser.parse_intermixed_args(args)
    from .data import preview

    if ns.n < 1:
        parser.error(f"-n must be at least 1 (got {ns.n})")
    cfg = _config(ns.config, ns.overrides, purpose="infer")  # nothing is trained: no output_dir needed
    if ns.action == "preview":
        color = ns.color == "always" or (ns.color == "auto" and sys.stdout.isatty())
        print(preview.preview(cfg, ns.n, "color" if color else "plain"))
    else:
        print(preview.stats(cfg))
    return 0


def cmd_chat(args: list[str]) -> int:
    from .infer.chat_cli import chat_main  # its parser: --system, --tools, --image / --video / --audio

    return chat_main(args)


def cmd_api(args: list[str]) -> int:
    from .infer.api import run_api

    from .config.read import split_config_args


    path, overrides = split_config_args(args)
    run_api(_config(path, overrides, purpose="infer"))
    return 0


def _need_gradio(command: str) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LatheError(f"`lathe {command}` needs gradio: pip install 'lathe[board]'.") from None


def cmd_webui(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lathe webui", description="The Board: lathe in the browser.")
    parser.add_argument("--workdir", default="lathe_board", help="folder for the Board's run configs, logs and locks")
    parser.add_argument("--lang", default=None, help="language of every page (en, zh, ru, ko, ja); default: the one "
                        "last picked in the menu, else the browser's, else English")
    ns = parser.parse_args(args)
    _need_gradio("webui")
    from .board.app import run_webui

    run_webui(ns.workdir, ns.lang)
    return 0


def cmd_webchat(args: list[str]) -> int:
    from .config.read import split_config_args

    path, overrides = split_config_args(args)
    cfg = _config(path, overrides, purpose="infer")
    _need_gradio("webchat")
    from .board.app import run_webchat

    run_webchat(cfg)
    return 0


def cmd_export(args: list[str]) -> int:
    from .export.merge import run_export

    from .config.read import split_config_args


    path, overrides = split_config_args(args)
    out = run_export(_config(path, overrides, purpose="infer"))
    print(f"[lathe] exported to {out}")
    return 0


def cmd_eval(args: list[str]) -> int:
    ppl = "--ppl" in args
    from .config.read import split_config_args

    path, overrides = split_config_args([a for a in args if a != "--ppl"])
    cfg = _config(path, overrides, purpose="infer")
    if ppl:
        from .evaluate.perplexity import run_perplexity

        result = run_perplexity(cfg)
        print(f"perplexity {result['perplexity']:.4f} over {result['tokens']:,} tokens of {result['samples']} samples")
    else:
        from .evaluate.choice import format_results, run_choice_eval

        print(format_results(run_choice_eval(cfg)))
    return 0


def cmd_expand(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lathe expand", description="LLaMA Pro: add identity-initialised blocks.")
    parser.add_argument("--model", required=True, help="model folder to expand")
    parser.add_argument("--num-expand", type=int, required=True, help="blocks to add (must divide the layer count)")
    parser.add_argument("--out", required=True, help="new folder for the expanded model")
    ns = parser.parse_args(args)
    from .model.expand import expand_model

    print(f"[lathe] expanded model in {expand_model(ns.model, ns.num_expand, ns.out)}")
    return 0


def cmd_plan(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lathe plan", description="Estimate training memory per method.")
    parser.add_argument("config")
    parser.add_argument("--device-memory", help="memory of one device, e.g. 24GiB")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--shard", choices=("none", "zero2", "zero3", "fsdp"), default="none",
                        help="how weights/optimizer are split across --devices (default: the config's deepspeed/fsdp)")
    parser.add_argument("--cutoff", action="store_true",
                        help="count every sample as cutoff_len tokens instead of reading the data for its longest")
    parser.add_argument("overrides", nargs="*")
    ns = parser.parse_intermixed_args(args)  # key=value overrides may come after the flags
    from .efficiency.plan import data_lengths, parse_memory, plan

    cfg = _config(ns.config, ns.overrides)
    memory = parse_memory(ns.device_memory) if ns.device_memory else None
    shard = ns.shard
    if shard == "none":  # the config's own engine: `deepspeed` ZeRO-2/3 or `fsdp`
        from .config.engines import deepspeed_stage, fsdp_requested

        stage = deepspeed_stage(cfg)
        shard = "fsdp" if fsdp_requested(cfg) else {2: "zero2", 3: "zero3"}.get(stage or 0, "none")
    print(plan(cfg, memory, devices=ns.devices, shard=shard, lengths=None if ns.cutoff else data_lengths(cfg)))
    return 0


def cmd_bench(args: list[str]) -> int:
    from .efficiency.bench import parse_methods, run_bench
    from .efficiency.variants import VARIANTS

    parser = argparse.ArgumentParser(prog="lathe bench", description="Compare finetuning methods on one config.")
    parser.add_argument("config")
    parser.add_argument("--methods", default=",".join(n for n, v in VARIANTS.items() if v.default),
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=20, help="training steps per method")
    parser.add_argument("--output", help="folder for bench.md/.json/.png (default: output_dir/bench)")
    parser.add_argument("overrides", nargs="*")
    ns = parser.parse_intermixed_args(args)  # key=value overrides may come after the flags
    out = run_bench(ns.config, ns.overrides, parse_methods(ns.methods), ns.steps, ns.output)
    print((out / "bench.md").read_text(encoding="utf-8"))
    print(f"[lathe] bench results in {out} (bench.md, bench.json, bench.png)")
    return 0


def cmd_env(args: list[str]) -> int:
    from .env import env_report

    print(env_report())
    return 0


def cmd_models(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lathe models", description="List and search the model catalog.",
                                     epilog="TEMPLATE*: lathe has no template of that name yet; (mm): multimodal.")
    parser.add_argument("query", nargs="?", help="part of a name, hub id or family, any case (e.g. qwen3)")
    ns = parser.parse_args(args)
    from .model.catalog import format_table, search

    found = search(ns.query)
    if not found:
        print(f"lathe: no model in the catalog matches `{ns.query}`; `lathe models` lists all of them.",
              file=sys.stderr)
        return 1
    print(format_table(found))
    return 0


def cmd_version(args: list[str]) -> int:
    print(f"lathe {__version__}")
    return 0


COMMANDS = {
    "train": cmd_train, "chat": cmd_chat, "api": cmd_api, "export": cmd_export, "webui": cmd_webui, "webchat": cmd_webchat, "eval": cmd_eval, "expand": cmd_expand, "plan": cmd_plan, "bench": cmd_bench, "data": cmd_data,
    "env": cmd_env, "version": cmd_version, "models": cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("LATHE_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from .errors import did_you_mean

        print(f"lathe: unknown command `{command}`.{did_you_mean(command, COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    threads.configure()  # before torch loads: its OpenMP runtime reads the environment once
    setup_logging()
    from .data.templates.tokenize import tokenizer_threads_off_by_default

    tokenizer_threads_off_by_default()
    try:
        return COMMANDS[command](rest)
    except LatheError as e:
        if debug:
            traceback.print_exc()
        print(f"lathe {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lathe {command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `lathe` console script and `python -m lathe`: `main`, then a quick exit.

    At shutdown the interpreter garbage-collects every object torch, transformers and peft
    created: about 1 s on a 2-core machine, after every command. Freezing the heap first skips
    that collection; exit handlers still run (logs flushed, files closed), and the OS takes back
    the memory. `main` itself leaves the heap alone, so in-process callers (tests) are unaffected.
    """
    code = main()
    _close_process_group()
    gc.freeze()
    sys.exit(code)


def _close_process_group() -> None:
    """Destroy the torch.distributed process group a training worker still holds.

    Left to exit, its communication threads outlive the objects that own them (with the heap
    frozen they are never collected) and the C++ runtime aborts the worker.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    entry()
