"""Dataset formats: one small converter per `formatting` name, from a raw row to a `Sample`.

A converter takes `(attr, row)` and returns a canonical sample (see `lathe.data.sample`), or
raises `RowError(reason)` when the row cannot be trained on. `convert_rows` runs a converter over
every row, keeps the good samples and counts the bad rows per reason, so a user learns that
"91 of 91 rows miss column 'output'" (a wrong `columns` mapping) instead of training on nothing.

Each format also owns its defaults: the columns and tags an entry of that format uses when its
`columns` / `tags` block is absent. `lathe.data.dataset_info` reads them from here, so adding a
format touches this file only.

The rules follow LLaMA-Factory's converters (the `alpaca`, `sharegpt` and `openai` formatting of
its `dataset_info.json`) so the same data converts the same way. Where LLaMA-Factory keeps a row
it cannot train on (a broken role order becomes an empty example, filtered later without a
reason), lathe skips it here and says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from lathe.data.sample import (
    ANSWER_ROLES,
    ASSISTANT,
    FUNCTION,
    OBSERVATION,
    PROMPT_ROLES,
    USER,
    Message,
    Sample,
)
from lathe.errors import LatheError, lookup

if TYPE_CHECKING:
    from lathe.data.dataset_info import DatasetAttr

MAX_KEPT_INDICES = 5  # row indices remembered per skip reason; the count is always exact


class RowError(Exception):
    """A row that cannot become a sample.

    `reason` is the short, stable text rows are counted by ("missing column 'output'");
    `detail` says what exactly was wrong in this row and is kept for the first row only.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Converter = Callable[["DatasetAttr", Mapping[str, Any]], Sample]


@dataclass(frozen=True)
class Format:
    """One registered `formatting`: its converter and the defaults an entry of it starts from."""

    name: str
    convert: Converter
    default_columns: Mapping[str, str]
    default_tags: Mapping[str, str]


FORMATS: dict[str, Format] = {}

SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


def register_format(name: str, *, columns: Mapping[str, str], tags: Mapping[str, str]):
    """Register the decorated converter under `name` with its default columns and tags."""

    def decorate(convert: Converter) -> Converter:
        if name in FORMATS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        FORMATS[name] = Format(name, convert, MappingProxyType(dict(columns)), MappingProxyType(dict(tags)))
        return convert

    return decorate


def get_format(name: str) -> Format:
    """Return the registered format `name`, or a LatheError listing the registered ones."""
    return lookup(FORMATS, name, "dataset formatting", plural="formats")


# ----------------------------------------------------------------------------- row helpers


def _required(row: Mapping[str, Any], column: str) -> Any:
    """The value of a column the sample cannot do without; absent or null is a RowError.

    Null counts as absent because `datasets` fills keys a row lacks with null.
    """
    value = row.get(column)
    if value is None:
        raise RowError(f"missing column {column!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError("non-string content", f"{what} is {type(value).__name__}, not text")
    return value


def _optional_text(row: Mapping[str, Any], column: str | None, *, json_ok: bool = False) -> str:
    """A mapped side column (system, tools): the column must exist, a null value is empty.

    With `json_ok` a list or object (tool schemas stored as JSON rather than JSON text) is
    written back as JSON text, which is what `Sample.tools` holds.
    """
    if column is None:
        return ""
    if column not in row:
        raise RowError(f"missing column {column!r}")
    value = row[column]
    if value is None:
        return ""
    if json_ok and isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return _text(value, f"column {column!r}")


def _check_turns(messages: list[Message]) -> None:
    """Prompt and answer turns must alternate, starting with a prompt; answers must not be empty."""
    for turn, message in enumerate(messages):
        expected = PROMPT_ROLES if turn % 2 == 0 else ANSWER_ROLES
        if message["role"] not in expected:
            raise RowError(
                "wrong role order",
                f"turn {turn} is {message['role']!r} where {' or '.join(expected)} was expected",
            )
        if message["role"] in ANSWER_ROLES and not message["content"].strip():
            raise RowError("empty assistant turn", f"turn {turn} is empty")


def _answer(attr: DatasetAttr, row: Mapping[str, Any], column: str) -> list[Message]:
    """A preference answer (chosen / rejected): a message object in the entry's tags, or text."""
    value = _required(row, column)
    if isinstance(value, str):
        message: Message = {"role": ASSISTANT, "content": value}
    elif isinstance(value, Mapping):
        tag = value.get(attr.tags.role_tag)
        role = _roles(attr).get(tag) if isinstance(tag, str) else None
        if role not in ANSWER_ROLES:
            raise RowError("wrong role order", f"column {column!r} is not an answer message")
        message = {"role": role, "content": _content(value.get(attr.tags.content_tag), role, column)}
    else:
        raise RowError("non-string content", f"column {column!r} is {type(value).__name__}")
    if not message["content"].strip():
        raise RowError("empty assistant turn", f"column {column!r} is empty")
    return [message]


def _content(value: Any, role: str, where: str) -> str:
    if role == FUNCTION and isinstance(value, (list, dict)):  # a tool call given as JSON
        return json.dumps(value, ensure_ascii=False)
    return _text(value, f"content of {where}")


def _finish(attr: DatasetAttr, row: Mapping[str, Any], messages: list[Message], system: str) -> Sample:
    """Check the turns, add tools, preference answers and the KTO label, check the turn count."""
    _check_turns(messages)
    tools = _optional_text(row, attr.columns.tools, json_ok=True)
    sample: Sample = {"messages": messages, "system": system, "tools": tools}
    if attr.ranking:
        if len(messages) % 2 == 0:
            raise RowError("ranking conversation must end with a prompt turn", f"it has {len(messages)} turns")
        # schema.Sample does not declare the preference and KTO keys yet (hence the type: ignore)
        chosen = _answer(attr, row, attr.columns.chosen or "chosen")
        rejected = _answer(attr, row, attr.columns.rejected or "rejected")
        sample["chosen"], sample["rejected"] = chosen, rejected  # type: ignore[typeddict-unknown-key]
    elif len(messages) % 2 == 1:
        raise RowError("conversation ends with a prompt turn", f"it has {len(messages)} turns")
    if attr.columns.kto_tag:
        label = _required(row, attr.columns.kto_tag)
        if not isinstance(label, bool):
            raise RowError("kto_tag is not a boolean", f"column {attr.columns.kto_tag!r} is {label!r}")
        sample["kto_tag"] = label  # type: ignore[typeddict-unknown-key]
    if attr.columns.reference:  # grpo/rloo: e.g. the bare number where the answer column holds a solution
        sample["reference"] = str(_required(row, attr.columns.reference))  # type: ignore[typeddict-unknown-key]
    _add_media(attr, row, sample)
    return sample


MEDIA_KINDS = (("images", "<image>"), ("videos", "<video>"), ("audios", "<audio>"))


def _media_paths(value: Any, column: str) -> list[str]:
    """A media column's value as a list of paths: one path, a list of them, or datasets' {"path": ...} records."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    paths = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("path"), str):
            item = item["path"]
        if not isinstance(item, str) or not item:
            raise RowError("malformed media column", f"column {column!r} holds {item!r}, not a path")
        paths.append(item)
    return paths


def _add_media(attr: DatasetAttr, row: Mapping[str, Any], sample: Sample) -> None:
    """The row's media paths (resolved against the entry's media_dir), with LLaMA-Factory's placeholder rules:
    a row with media and no placeholder gets them at the start of its first user turn; otherwise the counts
    must match. A local file that does not exist skips the row here, where its index is known. An entry without
    that media column has no media of the kind, so its placeholder is plain text (documentation that mentions
    `<image>`); a multimodal model's run still refuses it where the processor would expand it (media/encode.py)."""
    from lathe.data.media.load import resolve_path
    from lathe.data.media.placement import Misplaced, answer_holding, place

    media: dict[str, list[str]] = {}
    for key, placeholder in MEDIA_KINDS:
        column = getattr(attr.columns, key)
        if not column:
            continue
        media[key] = [resolve_path(p, attr.media_dir) for p in _media_paths(row.get(column), column)]
        for path in media[key]:
            if "://" not in path and not path.startswith("data:") and not Path(path).is_file():
                raise RowError("missing media file", path)
    placeholders = dict(MEDIA_KINDS)
    try:
        sample["messages"] = place(sample["messages"], {placeholders[key]: len(paths) for key, paths in media.items()})
    except Misplaced as e:
        key = next(k for k, p in MEDIA_KINDS if p == e.placeholder)
        if e.reason == "no_user_turn":
            raise RowError("no user turn for the media", f"{e.items} {key} and no user turn to put them in") from None
        raise RowError("placeholders and media differ", f"{e.found} {e.placeholder} for {e.items} {key}") from None
    answers = (sample.get("chosen") or []) + (sample.get("rejected") or [])
    if answer_holding(answers, [placeholders[key] for key in media]):
        raise RowError("media placeholder in an answer", "a media placeholder in a chosen/rejected answer")
    if not any(media.values()):
        return
    if answer_holding(sample["messages"], placeholders.values()):
        raise RowError("media placeholder in an answer", "media belong to user turns")
    for key, paths in media.items():
        if paths:
            sample[key] = paths  # type: ignore[literal-required]


def _roles(attr: DatasetAttr) -> dict[Any, str]:
    """The entry's role tags mapped to lathe roles (the system tag is handled separately)."""
    tags = attr.tags
    pairs = ((tags.user_tag, USER), (tags.assistant_tag, ASSISTANT), (tags.observation_tag, OBSERVATION),
             (tags.function_tag, FUNCTION))
    return {tag: role for tag, role in pairs if tag is not None}


def _raw_messages(attr: DatasetAttr, row: Mapping[str, Any]) -> tuple[str, list[Mapping[str, Any]]]:
    """The messages column as a list of objects, with a leading system message split off."""
    column = attr.columns.messages or "conversations"
    raw = _required(row, column)
    if not isinstance(raw, list) or not all(isinstance(m, Mapping) for m in raw):
        raise RowError("malformed messages", f"column {column!r} is not a list of message objects")
    tags = attr.tags
    if tags.system_tag is not None and raw and raw[0].get(tags.role_tag) == tags.system_tag:
        system = _text(raw[0].get(tags.content_tag), "the system message")
        raw = raw[1:]
    else:
        system = _optional_text(row, attr.columns.system)
    if not raw:
        raise RowError("empty conversation")
    return system, raw


def _role_of(attr: DatasetAttr, roles: Mapping[Any, str], message: Mapping[str, Any], turn: int) -> str:
    tag = message.get(attr.tags.role_tag)
    if tag is None:
        raise RowError(f"missing message key {attr.tags.role_tag!r}", f"turn {turn}")
    if not isinstance(tag, str) or tag not in roles:
        if tag == attr.tags.system_tag:
            raise RowError("wrong role order", f"turn {turn}: a system message is only allowed first")
        raise RowError(f"unknown role tag {tag!r}", f"the entry's tags are {sorted(map(str, roles))}")
    return roles[tag]


# ----------------------------------------------------------------------------- converters


@register_format("alpaca", columns={"prompt": "instruction", "query": "input", "response": "output"},
                 tags=SHAREGPT_TAGS)
def convert_alpaca(attr: DatasetAttr, row: Mapping[str, Any]) -> Sample:
    """Instruction data: `prompt` + "\\n" + `query` is the user turn, `response` the answer.

    `history` ([[question, answer], ...]) becomes earlier turns. With no `response` column
    mapped (pretraining text, PPO prompts) the sample is the user turn alone. A missing or
    null `query` / `history` is empty, as in alpaca data that has no `input` at all.
    """
    cols = attr.columns
    messages: list[Message] = []
    history = row.get(cols.history) if cols.history else None
    if history is not None:
        if not isinstance(history, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in history):
            raise RowError("malformed history", f"column {cols.history!r} is not a list of [question, answer]")
        for question, answer in history:
            messages.append({"role": USER, "content": _text(question, "a history question")})
            messages.append({"role": ASSISTANT, "content": _text(answer, "a history answer")})
    parts = [_text(_required(row, cols.prompt), f"column {cols.prompt!r}")] if cols.prompt else []
    query = row.get(cols.query) if cols.query else None
    if query is not None:
        parts.append(_text(query, f"column {cols.query!r}"))
    prompt = "\n".join(part for part in parts if part)
    if not prompt:
        raise RowError("empty prompt")
    messages.append({"role": USER, "content": prompt})

    system = _optional_text(row, cols.system)
    if attr.ranking:
        response = row.get(cols.response) if cols.response else None
        if not (cols.chosen or cols.rejected) and isinstance(response, list) and len(response) == 2:
            row = {**row, "chosen": response[0], "rejected": response[1]}  # older style: output = [chosen, rejected]
        return _finish(attr, row, messages, system)
    if cols.response is None:  # pretraining text or prompts: the user turn alone
        _check_turns(messages)
        sample: Sample = {"messages": messages, "system": system, "tools": _optional_text(row, cols.tools, json_ok=True)}
        _add_media(attr, row, sample)
        return sample
    response = _text(_required(row, cols.response), f"column {cols.response!r}")
    messages.append({"role": ASSISTANT, "content": response})
    return _finish(attr, row, messages, system)


@register_format("sharegpt", columns={"messages": "conversations"}, tags=SHAREGPT_TAGS)
def convert_sharegpt(attr: DatasetAttr, row: Mapping[str, Any]) -> Sample:
    """Conversations: role tags map to lathe roles; a leading system message becomes `system`."""
    system, raw = _raw_messages(attr, row)
    roles = _roles(attr)
    messages: list[Message] = []
    for turn, message in enumerate(raw):
        role = _role_of(attr, roles, message, turn)
        content = _content(message.get(attr.tags.content_tag), role, f"turn {turn}")
        messages.append({"role": role, "content": content})
    return _finish(attr, row, messages, system)


TOOL_RESPONSE_JOIN = "\n</tool_response>\n<tool_response>\n"


@register_format("openai", columns={"messages": "messages"}, tags=OPENAI_TAGS)
def convert_openai(attr: DatasetAttr, row: Mapping[str, Any]) -> Sample:
    """OpenAI chat messages: `tool_calls` become a function turn, tool results an observation.

    Consecutive tool results are merged into one observation joined by
    `TOOL_RESPONSE_JOIN`, as LLaMA-Factory does, so templates that wrap an observation in
    <tool_response> tags render each result in its own pair.
    """
    system, raw = _raw_messages(attr, row)
    roles, tags = _roles(attr), attr.tags
    messages: list[Message] = []
    results: list[str] = []
    for turn, message in enumerate(raw):
        tag, content = message.get(tags.role_tag), message.get(tags.content_tag)
        if tag in (tags.assistant_tag, tags.function_tag) and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not all(
                isinstance(call, Mapping) and isinstance(call.get("function"), Mapping) for call in calls
            ):
                raise RowError("malformed tool_calls", f"turn {turn}: each call needs a 'function' object")
            tag, content = tags.function_tag, json.dumps([dict(call["function"]) for call in calls], ensure_ascii=False)
        if tag is not None and tag == tags.observation_tag:
            results.append(_text(content, f"content of turn {turn}"))
            continue
        if results:
            messages.append({"role": OBSERVATION, "content": TOOL_RESPONSE_JOIN.join(results)})
            results = []
        role = _role_of(attr, roles, {**message, tags.role_tag: tag}, turn)
        messages.append({"role": role, "content": _content(content, role, f"turn {turn}")})
    if results:
        messages.append({"role": OBSERVATION, "content": TOOL_RESPONSE_JOIN.join(results)})
    return _finish(attr, row, messages, system)


# ----------------------------------------------------------------------------- running a converter


@dataclass
class ConversionResult:
    """The samples of one dataset and what was skipped, per reason."""

    name: str
    num_rows: int
    samples: list[Sample] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> first row indices
    skip_counts: dict[str, int] = field(default_factory=dict)  # reason -> number of rows
    details: dict[str, str] = field(default_factory=dict)  # reason -> what was wrong in the first row
    notes: list[str] = field(default_factory=list)  # things read but not used (media columns)

    @property
    def num_skipped(self) -> int:
        return sum(self.skip_counts.values())

    def add_skip(self, index: int, error: RowError) -> None:
        rows = self.skipped.setdefault(error.reason, [])
        if len(rows) < MAX_KEPT_INDICES:
            rows.append(index)
        self.skip_counts[error.reason] = self.skip_counts.get(error.reason, 0) + 1
        if error.detail and error.reason not in self.details:
            self.details[error.reason] = f"row {index}: {error.detail}"

    def report(self) -> str:
        """One line a user can act on, e.g.
        "identity: skipped 3 of 91 rows: missing column 'output' (rows 4, 17, 30)".

        Row numbers count from 0, as `dataset[i]` does (for .jsonl and .txt files, row i is line i + 1).
        """
        if not self.skip_counts:
            text = f"{self.name}: converted all {self.num_rows} rows"
        else:
            parts = []
            for reason, count in self.skip_counts.items():
                shown = ", ".join(map(str, self.skipped[reason]))
                if count > len(self.skipped[reason]):
                    rows = f"{count} rows: {shown}, ..."
                else:
                    rows = f"{'row' if count == 1 else 'rows'} {shown}"
                detail = f"; e.g. {self.details[reason]}" if reason in self.details else ""
                parts.append(f"{reason} ({rows}{detail})")
            text = f"{self.name}: skipped {self.num_skipped} of {self.num_rows} rows: " + "; ".join(parts)
        return text + "".join(f"; note: {note}" for note in self.notes)


def convert_rows(attr: DatasetAttr, rows: Iterable[Mapping[str, Any]]) -> ConversionResult:
    """Convert every row with the entry's format; bad rows are counted, not fatal.

    `rows` is anything that yields row dicts: a list or a `datasets.Dataset` from `read_rows`.
    Raises LatheError when no row is left, naming the reasons and the entry to fix.
    """
    if isinstance(rows, Mapping):  # `dataset[:n]` is a dict of columns, not n rows
        raise TypeError(
            "convert_rows takes rows (a list of dicts or a datasets.Dataset), not a dict of columns; "
            "take the first n rows of a Dataset with `dataset.select(range(n))`, not `dataset[:n]`."
        )
    convert = get_format(attr.formatting).convert
    result = ConversionResult(name=attr.name, num_rows=0)
    for index, row in enumerate(rows):
        result.num_rows += 1
        try:
            result.samples.append(convert(attr, row))
        except RowError as error:
            result.add_skip(index, error)
    where = f" (entry {attr.name!r} in {attr.source})" if attr.source else ""
    if result.num_rows == 0:
        raise LatheError(f"Dataset {attr.name!r}{where} has no rows.")
    if not result.samples:
        raise LatheError(
            f"No usable rows in dataset {attr.name!r}{where}:\n  {result.report()}\n"
            f"Check the entry's `formatting` ({attr.formatting!r}), `columns` and `tags` against the data."
        )
    return result


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def fill_placeholders(sample: Sample, mapping: Mapping[str, str]) -> Sample:
    """Return a copy of `sample` with `{{key}}` replaced by `mapping[key]` in every text.

    The identity dataset says "I am {{name}}, developed by {{author}}"; a run fills in its
    own model's name. Placeholders whose key is not in `mapping` are left as they are.
    """

    def fill(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: str(mapping[m.group(1)]) if m.group(1) in mapping else m.group(0), text)

    def fill_messages(messages: list[Message]) -> list[Message]:
        return [{**message, "content": fill(message["content"])} for message in messages]

    filled: dict[str, Any] = dict(sample)
    for key in ("messages", "chosen", "rejected"):
        if key in filled:
            filled[key] = fill_messages(filled[key])
    if "system" in filled:
        filled["system"] = fill(filled["system"])
    return filled  # type: ignore[return-value]
