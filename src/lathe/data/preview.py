"""`lathe data preview` and `lathe data stats`: see exactly what a config trains on.

A wrong template or loss mask silently ruins a fine-tune; these commands show, before any
compute, the rendered text of each sample with the learned tokens marked, and the numbers
of the whole data set (rows kept and skipped, lengths, truncation, share of learned tokens).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from .encode import tokenize_samples
from .loader import check_template_options, run_template
from .mixing import load_mixed_samples
from .report import DataReport
from .sample import IGNORE_INDEX

if TYPE_CHECKING:
    from ..config import RunConfig

MARK = {"plain": ("[[", "]]"), "color": ("\033[42;30m", "\033[0m")}


def _setup(cfg: "RunConfig"):
    from ..model.load import add_config_tokens, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    template = run_template(cfg, tokenizer)
    template.fix_tokenizer(tokenizer)
    add_config_tokens(tokenizer, cfg.model)
    check_template_options(cfg, template)
    return tokenizer, template


def render_marked(tokenizer, input_ids: list[int], labels: list[int], style: str = "plain") -> str:
    """The decoded sample with every learned run of tokens wrapped in markers."""
    open_mark, close_mark = MARK[style]
    out, run, learning = [], [], None
    for token, label in zip(input_ids, labels):
        learned = label != IGNORE_INDEX
        if learning is not None and learned != learning:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{open_mark}{text}{close_mark}" if learning else text)
            run = []
        run.append(token)
        learning = learned
    if run:
        text = tokenizer.decode(run, skip_special_tokens=False)
        out.append(f"{open_mark}{text}{close_mark}" if learning else text)
    return "".join(out)


def preview(cfg: "RunConfig", n: int = 3, style: str = "plain") -> str:
    tokenizer, template = _setup(cfg)
    report = DataReport()
    samples = load_mixed_samples(cfg.data.dataset, cfg, report)[:n]
    data = tokenize_samples(samples, cfg, tokenizer, template, report, keep_meta=True)
    lines = [f"template: {template.name}; learned tokens are shown {MARK[style][0]}like this{MARK[style][1]}", ""]
    for i, row in enumerate(data):
        learned = sum(1 for t in row["labels"] if t != IGNORE_INDEX)
        truncated = ", truncated to cutoff_len" if row["_truncated"] else ""
        lines.append(f"--- sample {i}: {len(row['input_ids'])} tokens, {learned} learned{truncated}")
        lines.append(render_marked(tokenizer, row["input_ids"], row["labels"], style))
        lines.append("")
    dropped = [f"dropped {k} sample(s): {r}" for r, k in report.dropped.items()]
    return "\n".join(lines + dropped)


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stats(cfg: "RunConfig") -> str:
    tokenizer, template = _setup(cfg)
    report = DataReport()
    data = tokenize_samples(load_mixed_samples(cfg.data.dataset, cfg, report), cfg, tokenizer, template,
                               report, keep_meta=True)
    lengths = [len(ids) for ids in data["input_ids"]]
    lines = [f"datasets: {cfg.data.dataset} (template {template.name}, cutoff_len {cfg.data.cutoff_len})"]
    lines += report.lines()
    if lengths:
        lines.append(
            f"tokens per sample: min {min(lengths)}, median {statistics.median(lengths):g}, "
            f"p95 {_percentile(lengths, 0.95)}, max {max(lengths)}"
        )
        lines.append(f"truncated by cutoff_len: {sum(data['_truncated'])} of {len(lengths)} samples")
        bs = cfg.training.per_device_train_batch_size
        chunks = [lengths[i : i + bs] for i in range(0, len(lengths), bs)]
        computed = sum(len(c) * max(c) for c in chunks)
        lines.append(
            f"padding at batch size {bs}: {100 * (1 - sum(lengths) / computed):.0f}% of the tokens a padded batch "
            f"computes (packing: true removes it)"
        )
    return "\n".join(lines)
