"""Time one tool's data preprocessing (identity + alpaca_en_demo for SFT), run by that tool's own python.

    python benchmarks/preprocess_time.py lathe|llamafactory DATA_DIR MODEL_DIR OUTPUT_DIR

Times only the call that reads, tokenizes and caches the data (imports, config parsing and the
tokenizer load are outside the timer) and prints `PREPROCESS_SECONDS s SAMPLES n`. Run twice
with the same cache folders (HF_DATASETS_CACHE, XDG_CACHE_HOME) it gives the cold and the
cached figure; compare_peer.py does that.
"""

from __future__ import annotations

import sys
import time

CONFIG = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "identity,alpaca_en_demo",
          "template": "default", "cutoff_len": 512, "overwrite_output_dir": True, "report_to": "none"}


def lathe(config: dict) -> int:
    from lathe.config import build_config
    from lathe.data.loader import get_dataset, run_template
    from lathe.data.templates.tokenize import tokenizer_threads_off_by_default
    from lathe.heap import frozen
    from lathe.model.load import load_tokenizer

    tokenizer_threads_off_by_default()  # as `lathe train` starts
    cfg = build_config(config)
    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    start = time.perf_counter()
    with frozen():  # as `lathe train` runs it (lathe/heap.py)
        data = get_dataset(cfg, tokenizer, template)
    return time.perf_counter() - start, len(data.train)


def llamafactory(config: dict) -> int:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    start = time.perf_counter()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    return time.perf_counter() - start, len(module["train_dataset"])


if __name__ == "__main__":
    tool, data_dir, model_dir, output_dir = sys.argv[1:5]
    config = {**CONFIG, "dataset_dir": data_dir, "model_name_or_path": model_dir, "output_dir": output_dir}
    seconds, samples = {"lathe": lathe, "llamafactory": llamafactory}[tool](config)
    print(f"PREPROCESS_SECONDS {seconds:.3f} SAMPLES {samples}")
