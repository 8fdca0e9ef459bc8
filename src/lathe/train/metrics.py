"""The metrics of sft's evaluation and prediction: token accuracy, BLEU-4 and ROUGE-1/2/L.

Token accuracy (`compute_accuracy`) runs in the Trainer's evaluation loop: only argmax ids
leave each step (`preprocess_logits_for_metrics`), not the [B, T, vocab] logits, so evaluating
a large vocabulary does not hold every logit in memory.

BLEU/ROUGE score generated against reference answers (`predict_with_generate`), Chinese-aware.
The libraries of the field do the scoring (nltk's sentence BLEU with smoothing method 3 on
characters; rouge-chinese on jieba words, which also splits English on spaces), the same
choices as LLaMA-Factory's predict path, so numbers are comparable across the two tools.
Scores are x100, averaged over samples.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.sample import IGNORE_INDEX
from ..errors import LatheError

INSTALL = "pip install nltk jieba rouge-chinese (or `pip install lathe[metrics]`)"


def _libraries():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as e:
        raise LatheError(f"BLEU/ROUGE need the metric packages ({e.name} is missing): {INSTALL}.") from None
    jieba.setLogLevel(logging.WARNING)
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def check_available() -> None:
    """Fail before training when predict_with_generate will need the metric packages."""
    _libraries()


def similarity_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    jieba, sentence_bleu, smoothing, rouge = _libraries()
    totals = {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    for pred, ref in zip(predictions, references):
        hyp_words, ref_words = list(jieba.cut(pred)), list(jieba.cut(ref))
        if not " ".join(hyp_words).split() or not " ".join(ref_words).split():
            scores = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            scores = rouge.get_scores(" ".join(hyp_words), " ".join(ref_words))[0]
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            totals[key] += scores[key]["f"] * 100
        totals["bleu-4"] += sentence_bleu([list(ref)], list(pred), smoothing_function=smoothing) * 100
    n = max(len(predictions), 1)
    return {key: round(value / n, 4) for key, value in totals.items()}


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(eval_pred) -> dict[str, float]:
    """Share of answer tokens the model predicts right (position t predicts token t+1)."""
    predictions, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
    predictions, labels = predictions[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    total = int(mask.sum())
    return {"accuracy": float((predictions[mask] == labels[mask]).sum() / total) if total else 0.0}
