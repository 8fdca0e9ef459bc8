"""`lathe eval --ppl`: how well a model fits a dataset, tokenized as a stage trains on it.

Perplexity = exp(total NLL / total scored tokens) over the tokens the stage learns (every
token for `pt`, the answers for `sft`), the measure the LlamaFactory paper uses to compare
methods on their training data. Per-sample figures go to `save_dir/perplexity.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LatheError
from ..registry import STAGES

if TYPE_CHECKING:
    from ..config import RunConfig


@torch.no_grad()
def run_perplexity(cfg: "RunConfig") -> dict:
    from transformers import DataCollatorForSeq2Seq

    from ..data.loader import get_dataset
    from ..infer.engine import load_inference_model
    from ..train.base import run_media
    from ..train.losses.logps import sequence_logps

    stage = STAGES[cfg.finetuning.stage]
    if not stage.perplexity:
        scored = ", ".join(f"`{name}`" for name, each in STAGES.items() if each.perplexity)
        raise LatheError(f"--ppl scores the data of stage {scored}, not `{stage.name}`.")
    if not cfg.data.dataset:
        raise LatheError("--ppl needs `dataset`: the data to measure the model on.")
    save_dir = Path(cfg.evaluation.save_dir) if cfg.evaluation.save_dir else None
    if save_dir is not None and save_dir.exists():
        raise LatheError(f"save_dir {save_dir} exists already; choose a new folder.")
    # Scored as the stage trains on it, but one row per sample (each its own figure) where the stage
    # would pack only on request; a stage that packs by default (pre-training) keeps its blocks.
    packing = cfg.data.packing if stage.packs_by_default else False
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, neat_packing=False, packing=packing))
    tokenizer, template, model = load_inference_model(cfg)
    media = run_media(cfg, tokenizer, template)  # a multimodal model scores its data's images too
    data = get_dataset(cfg, tokenizer, template, media).train
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    keep = ("input_ids", "labels")
    if media is not None:
        from ..data.media.collate import MediaCollator
        from ..data.media.plugins import COLUMNS

        collate, keep = MediaCollator(collate, media), keep + tuple(COLUMNS.values())
    rows, total_nll, total_tokens = [], 0.0, 0
    batch = cfg.evaluation.batch_size
    for start in range(0, len(data), batch):
        features = [{k: r[k] for k in keep} for r in data.select(range(start, min(start + batch, len(data))))]
        inputs = collate(features)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        sums, counts = sequence_logps(logits, inputs["labels"])
        for s, n in zip(sums.tolist(), counts.tolist()):
            if n:
                rows.append({"index": len(rows), "tokens": n, "nll": -s / n, "perplexity": math.exp(min(-s / n, 700))})
                total_nll -= s
                total_tokens += n
    if not total_tokens:
        raise LatheError("No scored token in the data: nothing to measure.")
    result = {"dataset": cfg.data.dataset, "stage": cfg.finetuning.stage, "samples": len(rows),
              "tokens": total_tokens, "nll": total_nll / total_tokens,
              "perplexity": math.exp(min(total_nll / total_tokens, 700))}
    if save_dir is not None:
        save_dir.mkdir(parents=True)
        with open(save_dir / "perplexity.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        (save_dir / "perplexity.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
