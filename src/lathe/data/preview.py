"""`lathe data preview` and `lathe data stats`: see exactly what a config trains on.

A wrong template or loss mask silently ruins a fine-tune; these commands show, before any
compute, the rendered text of each sample with the learned tokens marked, and the numbers
of the whole data set (rows kept and skipped, lengths, truncation, share of learned tokens).

`preview_page` is the one path both views take: it reads the data set, tokenizes only the
samples of one page and returns them as data (decoded runs of tokens, each learned or not), which
`preview` prints for the shell and the Board's Train tab draws as HTML (`board/data_preview.py`).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .encode import tokenize_samples
from .loader import check_template_options, run_template
from .mixing import load_mixed_samples
from .report import DataReport
from .sample import IGNORE_INDEX

if TYPE_CHECKING:
    from ..config import RunConfig

MARK = {"plain": ("[[", "]]"), "color": ("\033[42;30m", "\033[0m")}


def _setup(cfg: RunConfig):
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


def collapse_repeats(text: str) -> str:
    """`<|image_pad|>` x 300 -> `<|image_pad|>x300`: a long run of one special token, shown once with its count."""
    return REPEATED.sub(lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text)


def marked_segments(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The sample as decoded runs of tokens, (text, learned), each run wholly learned or wholly not.

    Each run is decoded on its own, so the text of a run is exactly what `render_marked` puts
    between (or outside) its markers; media tokens are not collapsed here (`collapse_repeats`).
    """
    out, run, learning = [], [], None
    for token, label in zip(input_ids, labels):
        learned = label != IGNORE_INDEX
        if learning is not None and learned != learning:
            out.append((tokenizer.decode(run, skip_special_tokens=False), learning))
            run = []
        run.append(token)
        learning = learned
    if run:
        out.append((tokenizer.decode(run, skip_special_tokens=False), learning))
    return out


def join_marked(segments: list[tuple[str, bool]], style: str = "plain") -> str:
    """Segments as one text, every learned run wrapped in the markers of `style` (see `MARK`)."""
    open_mark, close_mark = MARK[style]
    return collapse_repeats("".join(f"{open_mark}{text}{close_mark}" if learned else text
                                    for text, learned in segments))


def render_marked(tokenizer, input_ids: list[int], labels: list[int], style: str = "plain") -> str:
    """The decoded sample with every learned run of tokens wrapped in markers (media tokens counted, not listed)."""
    return join_marked(marked_segments(tokenizer, input_ids, labels), style)


def _names(cfg: RunConfig) -> tuple[str, str]:
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
    for column, ids in row.items():
        if column.endswith("input_ids"):
            prefix = column[: -len("input_ids")]
            out.append((prefix.rstrip("_"), ids, row[prefix + "labels"]))
    return out


@dataclass(frozen=True)
class PreviewSequence:
    """One token sequence as the model sees it: a sample, or one answer of a pair (`part` chosen / rejected)."""

    index: int  # the sample's number in the data set: the page's first sample + its row on the page
    part: str  # "" for most stages; "chosen" / "rejected" for pairwise ones
    tokens: int
    learned: int  # tokens whose label is not IGNORE_INDEX (the loss is computed on these)
    truncated: bool  # cut to cutoff_len
    kto_tag: bool | None  # kto: a desirable (True) or undesirable (False) answer; None for other stages
    segments: list[tuple[str, bool]]  # decoded runs of tokens, (text, learned), in order


@dataclass(frozen=True)
class PreviewPage:
    """One page of the data a config trains on, tokenized as the run would tokenize it."""

    kind: str  # "datasets", or "eval datasets" for a predict config
    names: str  # the datasets, as the config names them
    stage: str
    template: str
    page: int  # the page shown, from 0 (a page past the end shows the last one)
    per_page: int
    total: int  # samples read from the datasets (after conversion, before tokenization)
    sequences: list[PreviewSequence]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples of this page with nothing to learn
    rows: list[dict[str, Any]] = field(default_factory=list)  # the page's samples before the template (non-empty keys)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def first(self) -> int:
        """The number of the page's first sample in the data set."""
        return self.page * self.per_page

    @property
    def header(self) -> str:
        return f"{self.kind}: {self.names}; stage {self.stage}; template: {self.template}"


def preview_page(cfg: RunConfig, page: int = 0, per_page: int = 3) -> PreviewPage:
    """Page `page` (from 0) of the data, `per_page` samples a page: only those samples are tokenized.

    The datasets are read and converted whole (to count the samples and to mix them in training
    order); tokenization, the costly part, runs on the page's samples alone. Samples with nothing
    to learn are dropped as in training and counted in `dropped`; with packing (pt), the page's
    samples come back as the packed blocks the run trains on.
    """
    from ..errors import LatheError

    if per_page < 1:
        raise LatheError(f"data preview: samples per page must be at least 1 (got {per_page}).")
    tokenizer, template, media = _setup(cfg)
    report = DataReport()
    kind, names = _names(cfg)
    samples = load_mixed_samples(names, cfg, report)
    last = max(0, math.ceil(len(samples) / per_page) - 1)
    page = min(max(0, page), last)
    first = page * per_page
    chosen = samples[first:first + per_page]
    data = tokenize_samples(chosen, cfg, tokenizer, template, report, keep_meta=True, media=media)
    shown = []
    for row in data:
        for name, ids, labels in sequences(row):
            shown.append(PreviewSequence(
                index=first + row["_index"], part=name, tokens=len(ids),
                learned=sum(1 for t in labels if t != IGNORE_INDEX),
                truncated=bool(row["_truncated"]), kto_tag=row.get("kto_tag"),
                segments=marked_segments(tokenizer, ids, labels)))
    rows = [{k: v for k, v in sample.items() if v not in (None, "", [])} for sample in chosen]
    return PreviewPage(kind=kind, names=names, stage=cfg.finetuning.stage, template=template.name, page=page,
                       per_page=per_page, total=len(samples), sequences=shown, dropped=dict(report.dropped),
                       rows=rows)


def page_text(page: PreviewPage, style: str = "plain") -> str:
    """A page as `lathe data preview` prints it: a header, then each sequence with its learned runs marked."""
    lines = [f"{page.header}; learned tokens are shown {MARK[style][0]}like this{MARK[style][1]}", ""]
    for seq in page.sequences:
        truncated = ", truncated to cutoff_len" if seq.truncated else ""
        tag = "" if seq.kto_tag is None else f", {'desirable' if seq.kto_tag else 'undesirable'}"
        part = f" {seq.part}" if seq.part else ""
        lines.append(f"--- sample {seq.index}{part}: {seq.tokens} tokens, {seq.learned} learned{tag}{truncated}")
        lines.append(join_marked(seq.segments, style))
        lines.append("")
    dropped = [f"dropped {k} sample(s): {r}" for r, k in page.dropped.items()]
    return "\n".join(lines + dropped)


def preview(cfg: RunConfig, n: int = 3, style: str = "plain") -> str:
    """The first `n` samples, learned tokens marked (`lathe data preview`)."""
    return page_text(preview_page(cfg, 0, n), style)


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stats(cfg: RunConfig) -> str:
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
