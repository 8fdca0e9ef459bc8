"""BLEU-4 and ROUGE-1/2/L between generated and reference answers, Chinese-aware.

The libraries of the field do the scoring (nltk's sentence BLEU with smoothing method 3 on
characters; rouge-chinese on jieba words, which also splits English on spaces), the same
choices as LLaMA-Factory's predict path, so numbers are comparable across the two tools.
Scores are x100, averaged over samples.
"""

from __future__ import annotations

import logging

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
