"""The Train tab's data preview: the data the form would train on, page by page, the learned tokens marked.

It is `lathe data preview` drawn as HTML: the same `data.preview.preview_page` reads the data set,
tokenizes the samples of one page with the model's tokenizer and the template, stage and cutoff_len
of the form, and returns each sample as runs of text, learned or not. A learned run is a `<mark
class="lathe-learned">`; every piece of text is HTML-escaped. The form is validated first as Start
validates it (`check_config`), so a preview and a run read the data alike, and a form that
cannot run says why in the status line instead of showing data it would never train on.

Pages are numbered from 1 here (from 0 in `preview_page`); sample numbers are those the shell
command prints (from 0). The HTML's outer `<div id="lathe-data-preview">` carries `data-page`,
`data-pages`, `data-total` (samples read) and `data-per-page`, for scripts and the browser test.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import LatheError
from .checks import check_config
from .context import BoardContext, error_md
from .launch import environment
from .locales import t

PER_PAGE = 3  # samples a page shows at first
MAX_PER_PAGE = 20
LEARNED_STYLE = "background:#bbf7d0;color:inherit;border-radius:2px;padding:0"
TEXT_STYLE = "white-space:pre-wrap;word-break:break-word;margin:0 0 12px 0"


def _segments_html(segments: list[tuple[str, bool]]) -> str:
    from ..data.preview import collapse_repeats

    parts = []
    for text, learned in segments:
        shown = html.escape(collapse_repeats(text))
        parts.append(f'<mark class="lathe-learned" style="{LEARNED_STYLE}">{shown}</mark>' if learned else shown)
    return "".join(parts)


def page_html(page, lang: str = "en") -> str:
    """A `PreviewPage` as HTML, its words in `lang`: a summary line, then each sample's numbers and text."""
    e = html.escape
    shown_first, shown_last = page.first + 1, min(page.first + page.per_page, page.total)
    head = " · ".join([
        e(page.names), f"{e(t('preview_stage', lang))} {e(page.stage)}",
        f"{e(t('preview_template', lang))} {e(page.template)}",
        f"{e(t('preview_page', lang))} {page.page + 1}/{page.pages}",
        f"{e(t('preview_samples', lang))} {shown_first}-{shown_last}/{page.total}" if page.total else
        f"{e(t('preview_samples', lang))} 0",
        f'<mark class="lathe-learned" style="{LEARNED_STYLE}">{e(t("preview_learned_legend", lang))}</mark>',
    ])
    out = [(f'<div id="lathe-data-preview" data-page="{page.page + 1}" data-pages="{page.pages}" '
            f'data-total="{page.total}" data-per-page="{page.per_page}" data-sequences="{len(page.sequences)}">'),
           f'<div class="lathe-preview-head" style="margin-bottom:8px">{head}</div>']
    for seq in page.sequences:
        words = [f"<b>{e(t('preview_sample', lang))} {seq.index}</b>"]
        if seq.part:
            words[0] = f"<b>{e(t('preview_sample', lang))} {seq.index} · {e(t('preview_' + seq.part, lang))}</b>"
        words += [f"{seq.tokens} {e(t('preview_tokens', lang))}", f"{seq.learned} {e(t('preview_learned', lang))}"]
        if seq.kto_tag is not None:
            words.append(e(t("preview_desirable" if seq.kto_tag else "preview_undesirable", lang)))
        if seq.truncated:
            words.append(e(t("preview_truncated", lang)))
        out.append(f'<div class="lathe-sample" data-index="{seq.index}" data-part="{e(seq.part)}" '
                   f'data-tokens="{seq.tokens}" data-learned="{seq.learned}" style="margin-bottom:14px">'
                   f'<div class="lathe-sample-head">{" · ".join(words)}</div>'
                   f'<pre class="lathe-sample-text" style="{TEXT_STYLE}">{_segments_html(seq.segments)}</pre></div>')
    if not page.sequences:
        out.append(f'<div class="lathe-preview-empty">{e(t("preview_empty", lang))}</div>')
    for reason, n in page.dropped.items():
        out.append(f'<div class="lathe-preview-dropped">{e(t("preview_dropped", lang))}: {n} ({e(reason)})</div>')
    out.append("</div>")
    return "".join(out)


@dataclass
class DataPreview:
    """The preview's widgets, built where the Train tab places them; `wire` connects them once the form exists."""

    ctx: BoardContext
    box: Any  # the column holding everything below, hidden until the first preview
    prev: Any
    page: Any  # the page number, from 1
    next: Any
    per_page: Any
    raw_rows: Any  # show the page's samples as JSON too
    html: Any
    rows: Any

    def wire(self, button: Any, inputs: list[Any],
             collect: Callable[[tuple[Any, ...]], tuple[dict[str, Any], dict[str, str]]],
             status: Any) -> None:
        """`button` (the tab's Preview data) shows the page picked; prev / next step through the pages.

        `collect(values of inputs)` is the Train tab's form as (raw config keys, the variables a run of it
        gets: the hub's); the language menu's value comes last, as for every handler.
        """

        def show(number, per_page, raw_rows, args, code):
            from ..data.preview import preview_page

            try:
                raw, env = collect(tuple(args))
                with environment(env):  # a hub id's tokenizer from the hub the top bar picked
                    cfg = check_config(raw, purpose="train")
                    page = preview_page(cfg, int(number or 1) - 1, int(per_page or PER_PAGE))
            except (LatheError, OSError, ValueError) as e:
                return gr.update(visible=False), gr.skip(), gr.skip(), gr.skip(), error_md(code, e)
            return (gr.update(visible=True), page_html(page, code), page.page + 1,
                    gr.update(value=page.rows, visible=bool(raw_rows)), "")

        def on_data_preview(number, per_page, raw_rows, *args):
            *args, code = args
            return show(number, per_page, raw_rows, args, code)

        def on_preview_page(number, per_page, raw_rows, *args):  # Enter in the page number
            *args, code = args
            return show(number, per_page, raw_rows, args, code)

        def on_preview_prev(number, per_page, raw_rows, *args):
            *args, code = args
            return show(max(1, int(number or 1) - 1), per_page, raw_rows, args, code)

        def on_preview_next(number, per_page, raw_rows, *args):
            *args, code = args
            return show(int(number or 1) + 1, per_page, raw_rows, args, code)

        controls = [self.page, self.per_page, self.raw_rows]
        outputs = [self.box, self.html, self.page, self.rows, status]
        every = [*controls, *inputs, self.ctx.lang_pick]
        button.click(on_data_preview, every, outputs)
        self.page.submit(on_preview_page, every, outputs)
        self.prev.click(on_preview_prev, every, outputs)
        self.next.click(on_preview_next, every, outputs)
        self.raw_rows.change(lambda on: gr.update(visible=bool(on)), self.raw_rows, self.rows, show_progress="hidden")


def build_data_preview(ctx: BoardContext) -> DataPreview:
    """The preview's widgets, placed where this is called (hidden until the first preview)."""
    w, lang = ctx.w, ctx.w.lang
    with gr.Column(visible=False, elem_id="data-preview-box") as box:
        with gr.Row(equal_height=True):
            prev = w.ui(gr.Button(t("preview_prev", lang), elem_id="preview-prev", size="sm", scale=0),
                        "preview_prev", "value")
            page = w.ui(gr.Number(value=1, precision=0, minimum=1, label=t("preview_page", lang),
                                  elem_id="preview-page", scale=1), "preview_page")
            nxt = w.ui(gr.Button(t("preview_next", lang), elem_id="preview-next", size="sm", scale=0),
                       "preview_next", "value")
            per_page = w.ui(gr.Slider(1, MAX_PER_PAGE, value=PER_PAGE, step=1, label=t("preview_per_page", lang),
                                      elem_id="preview-per-page", scale=2), "preview_per_page")
            raw_rows = w.ui(gr.Checkbox(False, label=t("preview_raw", lang), elem_id="preview-raw", scale=1),
                            "preview_raw")
            close = w.ui(gr.Button(t("preview_close", lang), elem_id="preview-close", size="sm", scale=0),
                         "preview_close", "value")
        view = gr.HTML("", elem_id="data-preview-html")
        rows = w.ui(gr.JSON(label=t("preview_rows", lang), visible=False, elem_id="data-rows"), "preview_rows")
    close.click(lambda: gr.update(visible=False), None, box, show_progress="hidden")
    return DataPreview(ctx, box, prev, page, nxt, per_page, raw_rows, view, rows)
