"""The same SFT LoRA run written with the bare libraries: transformers Trainer + peft, no lathe.

    python benchmarks/plain_hf.py CONFIG.yaml        # the config compare_peer.py writes (LLaMA-Factory keys)

It reads only the keys the benchmark sets (model, dataset file, cutoff_len, batch, lr, epochs,
max_samples, lora_rank, gradient checkpointing, output_dir, and `padding_free`: batches flattened
with transformers' DataCollatorWithFlattening) and formats alpaca rows the way
the `default` template does ("Human: ...\\nAssistant: answer<eos>", the prompt masked), so it
trains on the same tokens as lathe and LLaMA-Factory. What it leaves out is what the
frameworks add: validation, templates as data, caching, packing, logging. It writes
train_results.json (train_runtime, effective_tokens_per_sec) and the adapter to output_dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithFlattening,
                          Trainer, TrainingArguments)


def main(path: str) -> None:
    cfg = yaml.safe_load(Path(path).read_text())
    info = json.loads((Path(cfg["dataset_dir"]) / "dataset_info.json").read_text())[cfg["dataset"]]
    rows = json.loads((Path(cfg["dataset_dir"]) / info["file_name"]).read_text())[: cfg.get("max_samples")]
    tok = AutoTokenizer.from_pretrained(cfg["model_name_or_path"])
    cutoff = cfg["cutoff_len"]

    def encode(row):
        prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
        source = tok.encode(f"Human: {prompt}\nAssistant:", add_special_tokens=False)
        target = tok.encode(f" {row['output']}", add_special_tokens=False) + [tok.eos_token_id]
        ids = (source + target)[:cutoff]
        labels = ([-100] * len(source) + target)[:cutoff]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    data = Dataset.from_list(rows).map(encode, remove_columns=list(rows[0]))
    model = AutoModelForCausalLM.from_pretrained(cfg["model_name_or_path"], dtype=torch.float32)
    checkpointing = not cfg.get("disable_gradient_checkpointing", False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=cfg.get("lora_rank", 8), lora_alpha=2 * cfg.get("lora_rank", 8),
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=cfg["output_dir"], per_device_train_batch_size=cfg["per_device_train_batch_size"],
        learning_rate=float(cfg["learning_rate"]), num_train_epochs=cfg["num_train_epochs"],
        lr_scheduler_type=cfg.get("lr_scheduler_type", "linear"), logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, seed=cfg.get("seed", 42), remove_unused_columns=False, disable_tqdm=True,
    )
    if cfg.get("padding_free"):  # each batch of samples flattened into one row: same batches, no padding computed
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        data = data.remove_columns("attention_mask")
    else:
        collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    metrics = trainer.train().metrics
    metrics["effective_tokens_per_sec"] = sum(len(ids) for ids in data["input_ids"]) / metrics["train_runtime"]
    trainer.save_model()
    tok.save_pretrained(cfg["output_dir"])
    Path(cfg["output_dir"], "train_results.json").write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
