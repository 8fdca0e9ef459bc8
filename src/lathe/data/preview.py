"""`lathe data preview` and `lathe data stats`: see exactly what a config trains on.

A wrong template or loss mask silently ruins a fine-tune; these commands show, before any
compute, the rendered text of each sample with the learned tokens marked, and the numbers
of the whole data set (rows kept and skipped, lengths, truncation, share of learned tokens).
"""

from __future__ import annotations

import re

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
    from .media.encode import media_for_run

    return tokenizer, template, media_for_run(cfg, tokenizer, template)


# A special token repeated many times in a row (an image's hundreds of pad tokens) is shown once with its count.
REPEATED = re.compile(r"(<[^<>\s]{1,40}>|\[IMG\])\1{3,}")


def _collapse(text: str) -> str:
    return REPEATED.sub(lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text)


def render_marked(tokenizer, input_ids: list[int], labels: list[int], style: str = "plain") -> str:
    """The decoded sample with every learned run of tokens wrapped in markers (media tokens counted, not listed)."""
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
    return _collapse("".join(out))


def _names(cfg: "RunConfig") -> tuple[str, str]:
    """(which datasets, their names): the training data, else the evaluation data (a predict config)."""
    from ..errors import LatheError

    if cfg.data.dataset:
        return "datasets", cfg.data.dataset
    if cfg.data.eval_dataset:
        return "eval datasets", cfg.data.eval_dataset
    raise LatheError(f"{cfg.source} names no `dataset` (nor `eval_dataset`): there is no data to show. "
                     f"Is it an inference or merge config?")


def sequences(row: dict) -> list[tuple[str, list[int], list[int]]]:
    """The token sequences of a tokenized row, as (name, ids, labels): one for most stages, the chosen
    and the rejected answer for pairwise ones (`chosen_input_ids`, ...)."""
    out = []
    for column in row:
        if column.endswith("input_ids"):
            prefix = column[: -len("input_ids")]
            out.append((prefix.rstrip("_"), row[column], row[prefix + "labels"]))
    return out


def preview(cfg: "RunConfig", n: int = 3, style: str = "plain") -> str:
    tokenizer, template, media = _setup(cfg)
    report = DataReport()
    kind, names = _names(cfg)
    samples = load_mixed_samples(names, cfg, report)[:n]
    data = tokenize_samples(samples, cfg, tokenizer, template, report, keep_meta=True, media=media)
    lines = [f"{kind}: {names}; stage {cfg.finetuning.stage}; template: {template.name}; learned tokens are shown "
             f"{MARK[style][0]}like this{MARK[style][1]}", ""]
    for i, row in enumerate(data):
        truncated = ", truncated to cutoff_len" if row["_truncated"] else ""
        tag = "" if row.get("kto_tag") is None else f", {'desirable' if row['kto_tag'] else 'undesirable'}"
        for name, ids, labels in sequences(row):
            learned = sum(1 for t in labels if t != IGNORE_INDEX)
            part = f" {name}" if name else ""
            lines.append(f"--- sample {i}{part}: {len(ids)} tokens, {learned} learned{tag}{truncated}")
            lines.append(render_marked(tokenizer, ids, labels, style))
            lines.append("")
    dropped = [f"dropped {k} sample(s): {r}" for r, k in report.dropped.items()]
    return "\n".join(lines + dropped)


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stats(cfg: "RunConfig") -> str:
    tokenizer, template, media = _setup(cfg)
    report = DataReport()
    kind, names = _names(cfg)
    data = tokenize_samples(load_mixed_samples(names, cfg, report), cfg, tokenizer, template, report, keep_meta=True,
                            media=media)
    rows = [sequences(row) for row in data]
    lines = [f"{kind}: {names} (stage {cfg.finetuning.stage}, template {template.name}, cutoff_len {cfg.data.cutoff_len})"]
    lines += report.lines()
    if not rows:
        return "\n".join(lines)
    for k, (name, _, _) in enumerate(rows[0]):
        lengths = [len(row[k][1]) for row in rows]
        what = f" ({name})" if name else ""
        lines.append(f"tokens per sample{what}: min {min(lengths)}, median {statistics.median(lengths):g}, "
                     f"p95 {_percentile(lengths, 0.95)}, max {max(lengths)}")
    lines.append(f"truncated by cutoff_len: {sum(data['_truncated'])} of {len(rows)} samples")
    bs = cfg.training.per_device_train_batch_size
    # a batch holds every sequence of its samples (a pair: the chosen and the rejected answer), padded alike
    batches = [[len(ids) for row in rows[i : i + bs] for _, ids, _ in row] for i in range(0, len(rows), bs)]
    computed = sum(len(b) * max(b) for b in batches)
    real = sum(sum(b) for b in batches)
    lines.append(f"padding at batch size {bs}: {100 * (1 - real / computed):.0f}% of the tokens a padded batch "
                 f"computes (packing: true removes it)")
    return "\n".join(lines)
