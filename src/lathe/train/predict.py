"""`do_predict` with `predict_with_generate`: answer every held-out prompt, write and score them.

Each sample's prompt is the part before its first learned token (the same rendering as in
training); the reference is its learned answer, its IGNORE_INDEX positions left out (what
LLaMA-Factory gets by writing pad over them and decoding without special tokens; the stored
samples carry no padding, so `ignore_pad_token_for_loss`, which says what the collator pads
labels with, leaves the text unchanged). Generation follows the generating group (greedy with
`do_sample: false`, so the file is deterministic), with `eval_num_beams` in place of
`num_beams` when set, and stops at the template's stop words. Results: `generated_predictions.jsonl`
(prompt, predict, label per line, written batch by batch: a stopped run is taken up where it stopped)
and `predict_results.json` with BLEU-4 and ROUGE-1/2/L.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.collate import left_pad
from ..data.processors.supervised import first_learned
from ..data.sample import IGNORE_INDEX
from ..model.generation import generation_kwargs, stop_token_ids
from .callbacks import ProgressLog
from .metrics import similarity_scores

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)
PREDICTIONS_FILE = "generated_predictions.jsonl"
PREDICT_STATE_FILE = "predict_state.json"  # the fingerprint of the settings that wrote PREDICTIONS_FILE


def split_prompt_answer(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    first = first_learned(labels)
    return list(input_ids[:first]), [t for t in labels[first:] if t != IGNORE_INDEX]


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], stop_ids: list[int], kwargs: dict[str, Any]):
    pad = tokenizer.pad_token_id
    ids, attn, _ = left_pad(prompts, pad, model.device)
    out = model.generate(input_ids=ids, attention_mask=attn, eos_token_id=stop_ids, pad_token_id=pad, **kwargs)
    return [row[ids.shape[1]:].tolist() for row in out]


def predict_generation_kwargs(cfg: "RunConfig") -> dict[str, Any]:
    """`model.generate` arguments for predicting: the generating group, `eval_num_beams` overriding its beam width."""
    kwargs = generation_kwargs(cfg.generating)
    if cfg.data.eval_num_beams is not None:
        kwargs["num_beams"] = cfg.data.eval_num_beams
    kwargs["use_cache"] = True
    return kwargs


def predict_fingerprint(cfg: "RunConfig", samples: int) -> str:
    """What decides the predictions (the whole config but where they are written, and the sample count): a
    rerun with the same fingerprint may keep the answers an aborted run wrote."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "overwrite_output_dir")}
    text = json.dumps([settings, samples], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def kept_predictions(out: Path, fingerprint: str, samples: int) -> list[dict[str, Any]]:
    """The whole records an earlier run of the same predictions left in `out` (none when its fingerprint
    differs, or there is none); a half-written last line is dropped."""
    state, path = out / PREDICT_STATE_FILE, out / PREDICTIONS_FILE
    try:
        if json.loads(state.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, AttributeError):
        return []
    kept = []
    for line in lines[:samples]:
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or not {"predict", "label"} <= set(record):
            break
        kept.append(record)
    return kept


def predict(model, tokenizer, template, dataset, cfg: "RunConfig") -> dict[str, float]:
    """Answer every sample, `per_device_eval_batch_size` at a time, appending each answer to the file as it comes.

    A run stopped part way (abort, kill) is taken up where it stopped when rerun into the same output_dir with
    the same settings (`predict_state.json` holds their fingerprint); `overwrite_output_dir: true` starts over."""
    model.eval()
    kwargs = predict_generation_kwargs(cfg)
    stop_ids = stop_token_ids(tokenizer, template)
    batch = cfg.training.per_device_eval_batch_size
    out = Path(cfg.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_path = out / PREDICTIONS_FILE
    fingerprint = predict_fingerprint(cfg, len(dataset))
    kept = [] if cfg.run.overwrite_output_dir else kept_predictions(out, fingerprint, len(dataset))
    (out / PREDICT_STATE_FILE).write_text(json.dumps({"fingerprint": fingerprint}), encoding="utf-8")
    if kept:
        logger.info("Taking up the predictions in %s after %d of %d samples (overwrite_output_dir: true starts "
                    "over).", out_path, len(kept), len(dataset))
    predictions, references = [r["predict"] for r in kept], [r["label"] for r in kept]
    first = len(kept)
    progress = ProgressLog(cfg.training.output_dir, "predict",
                           first // batch + -(-(len(dataset) - first) // batch)).start()  # the Board's bar
    if first // batch:
        progress.advance(first // batch)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        f.flush()
        for start in range(first, len(dataset), batch):
            rows = dataset[start : start + batch]
            pairs = [split_prompt_answer(i, l) for i, l in zip(rows["input_ids"], rows["labels"])]
            generated = generate_batch(model, tokenizer, [p for p, _ in pairs], stop_ids, kwargs)
            for (prompt, answer), new in zip(pairs, generated):
                record = {
                    "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                    "predict": tokenizer.decode(new, skip_special_tokens=True).strip(),
                    "label": tokenizer.decode(answer, skip_special_tokens=True).strip(),
                }
                predictions.append(record["predict"])
                references.append(record["label"])
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()  # whole batches on disk: what a rerun takes up
            progress.advance()
    metrics = {f"predict_{k}": v for k, v in similarity_scores(predictions, references).items()}
    metrics["predict_samples"] = len(predictions)
    logger.info("Wrote %d predictions to %s", len(predictions), out_path)
    progress.finish()
    return metrics
