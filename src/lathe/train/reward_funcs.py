"""The reward functions of `stage: grpo` / `rloo` (`reward_funcs`): built-ins and the user's own.

A reward function takes the batch's prompts (the rendered prompt texts, special tokens removed) and
completions (the generated texts, up to their stop token) and the rows' columns, and returns one
float per completion:

    def score(prompts: list[str], completions: list[str], **columns) -> list[float]

`columns` are lists as long as `completions`: `answer` (the reference: the dataset's `reference` column where
its entry maps one, else the row's last answer),
`system`, `tools` (JSON text, "" when none), `completion_length` (tokens generated) and `truncated`
(True where the completion hit max_completion_length); accept `**columns` to ignore the rest.

`reward_funcs: accuracy,format,my_rewards.py:score` mixes built-ins (by name) with functions of a
Python file (`file.py:function`, the path relative to the config file), weighted by `reward_weights`.
Every score is checked: a wrong length, NaN or an exception fails the step with a `LatheError` naming
the function (its traceback logged once), never a silent 0.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.templates.base import THINK_CLOSE, THINK_OPEN
from ..data.templates.tool_calls import load_tools
from ..errors import LatheError, did_you_mean

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

Score = Callable[..., list[float]]


# ---------------------------------------------------------------------------------------------- accuracy

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` in `text` (nested braces kept), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def final_answer(text: str) -> str | None:
    r"""What a solution answers: its last `\boxed{}`, else its last number, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def _normalised(text: str) -> str:
    return re.sub(r"\s+", "", text).strip(".").lower()


def same_answer(predicted: str, reference: str) -> bool:
    """Numbers compare as numbers (1,000 = 1000.0 = 2000/2); anything else as text without spaces or case."""
    a, b = _as_number(predicted), _as_number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return _normalised(predicted) == _normalised(reference)


def _math_verify() -> Callable[[str, str], bool] | None:
    """math-verify's comparison (LaTeX, sets, intervals, symbolic equality) where it is installed."""
    if importlib.util.find_spec("math_verify") is None:
        return None
    from math_verify import parse, verify

    return lambda completion, reference: bool(verify(parse(reference), parse(completion)))


def make_accuracy(cfg: "RunConfig", template) -> Score:
    verifier = _math_verify()

    def accuracy(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        scores = []
        for i, (completion, reference) in enumerate(zip(completions, answer)):
            if not reference:
                raise LatheError(f"reward `accuracy`: row {i} of the batch has no reference answer (its prompt: "
                                 f"{prompts[i][-200:]!r}); the dataset's last assistant turn is the reference, so each "
                                 f"row needs one.")
            if verifier is not None:
                scores.append(float(verifier(completion, reference)))
                continue
            predicted, gold = final_answer(completion), final_answer(reference) or reference
            scores.append(float(predicted is not None and same_answer(predicted, gold)))
        return scores

    return accuracy


# ---------------------------------------------------------------------------------------------- format


def make_format(cfg: "RunConfig", template) -> Score:
    """1 when the completion matches `reward_format_pattern` (a regex, matched in full), else the
    template's thinking layout: `<think>...</think>` and then an answer."""
    pattern = cfg.finetuning.reward_format_pattern
    regex = (re.compile(pattern, re.DOTALL) if pattern
             else re.compile(rf"^\s*{re.escape(THINK_OPEN)}.*?{re.escape(THINK_CLOSE)}\s*\S.*$", re.DOTALL))

    def format(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float(regex.fullmatch(c) is not None) for c in completions]

    return format


# ---------------------------------------------------------------------------------------------- length


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer, then falling linearly to -1 at
    max_length (and -1 beyond)."""
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length >= max_length or buffer <= 0:
        return -1.0
    return (start - length) / buffer


def make_length(cfg: "RunConfig", template) -> Score:
    f = cfg.finetuning
    buffer = f.overlong_buffer_len if f.overlong_buffer_len is not None else f.max_completion_length // 4

    def length(prompts: list[str], completions: list[str], completion_length: list[int], **_: Any) -> list[float]:
        return [overlong_penalty(n, f.max_completion_length, buffer) for n in completion_length]

    return length


# ---------------------------------------------------------------------------------------------- tool_call


def _schema(tool: Any) -> dict:
    return tool.get("function", tool) if isinstance(tool, dict) else {}


def valid_calls(calls, tools_json: str) -> bool:
    """Every call names one of the row's tools and gives a JSON object with that tool's required arguments."""
    if not calls or not tools_json:
        return False
    schemas = {s.get("name"): s for s in map(_schema, load_tools(tools_json))}
    for call in calls:
        schema = schemas.get(call.name)
        if schema is None:
            return False
        try:
            args = call.args
        except json.JSONDecodeError:
            return False
        required = (schema.get("parameters") or {}).get("required") or []
        if not isinstance(args, dict) or any(key not in args for key in required):
            return False
    return True


def make_tool_call(cfg: "RunConfig", template) -> Score:
    def tool_call(prompts: list[str], completions: list[str], tools: list[str], **_: Any) -> list[float]:
        scores = []
        for completion, row_tools in zip(completions, tools):
            try:
                calls = template.parse_tool_calls(completion)
            except (LatheError, ValueError):
                calls = None
            scores.append(float(valid_calls(calls, row_tools)))
        return scores

    return tool_call


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class BuiltinReward:
    name: str
    help: str
    make: Callable[["RunConfig", Any], Score]  # (config, template) -> the scoring function


BUILTIN_REWARDS: dict[str, BuiltinReward] = {r.name: r for r in (
    BuiltinReward("accuracy", "1 when the final answer (last \\boxed{} or number) equals the row's reference answer "
                  "(math-verify where installed)", make_accuracy),
    BuiltinReward("format", "1 when the completion matches reward_format_pattern, else <think>...</think> then an "
                  "answer", make_format),
    BuiltinReward("length", "DAPO's soft overlong punishment: 0, falling to -1 over the last overlong_buffer_len "
                  "tokens before max_completion_length", make_length),
    BuiltinReward("tool_call", "1 when the completion is a valid call of the row's tools in the template's tool format",
                  make_tool_call),
)}


@dataclass(frozen=True)
class RewardFunction:
    name: str  # as written in reward_funcs
    score: Score


def split_reward_names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def config_folder(cfg: "RunConfig") -> Path:
    """Where relative reward files are looked up: the config file's folder (the working folder without one)."""
    source = Path(cfg.source)
    return source.parent if source.suffix in (".yaml", ".yml", ".json") else Path.cwd()


def load_user_function(spec: str, base: Path) -> Score:
    """`path.py:function` loaded from its file (relative to `base`), with a LatheError for each way it can be wrong."""
    path_text, _, func_name = spec.rpartition(":")
    path = Path(path_text) if Path(path_text).is_absolute() else base / path_text
    if not path.is_file():
        raise LatheError(f"reward_funcs `{spec}`: file not found: {path} (a path relative to the config's folder "
                         f"{base}).")
    module_spec = importlib.util.spec_from_file_location(f"lathe_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any error it raises is theirs to see
        raise LatheError(f"reward_funcs `{spec}`: importing {path} failed: {type(err).__name__}: {err}") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise LatheError(f"reward_funcs `{spec}`: {path} has no function `{func_name}`."
                         + did_you_mean(func_name, names))
    return func


def keep_user_files(cfg: "RunConfig") -> None:
    """Copy each user reward file (a relative path inside the config's folder) into output_dir at the same
    relative path, so that `lathe train output_dir/lathe_config.yaml` finds the code that ran."""
    import shutil

    base, out = config_folder(cfg), Path(cfg.training.output_dir)
    for spec in split_reward_names(cfg.finetuning.reward_funcs):
        if spec in BUILTIN_REWARDS:
            continue
        relative = Path(spec.rpartition(":")[0])
        if relative.is_absolute() or ".." in relative.parts:
            continue  # an absolute path works from anywhere; one outside the config's folder is left where it is
        target = out / relative
        if target.resolve() != (base / relative).resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / relative, target)


def check_reward_spec(spec: str) -> None:
    """A name in `reward_funcs` is a built-in or `file.py:function` (checked at load time, before any model loads)."""
    if ":" in spec and spec.rpartition(":")[0].endswith(".py") and spec.rpartition(":")[2]:
        return
    if spec not in BUILTIN_REWARDS:
        raise LatheError(f"reward_funcs: `{spec}` is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor "
                         f"`file.py:function`." + did_you_mean(spec, list(BUILTIN_REWARDS)))


def build_reward_functions(cfg: "RunConfig", template) -> list[RewardFunction]:
    base = config_folder(cfg)
    out = []
    for spec in split_reward_names(cfg.finetuning.reward_funcs):
        check_reward_spec(spec)
        score = BUILTIN_REWARDS[spec].make(cfg, template) if spec in BUILTIN_REWARDS else load_user_function(spec, base)
        out.append(RewardFunction(spec, score))
    return out


def call_reward(func: RewardFunction, prompts: list[str], completions: list[str],
                columns: dict[str, list]) -> list[float]:
    """`func`'s scores, checked: one finite float per completion; an exception fails the step, naming `func`."""
    try:
        scores = func.score(prompts, completions, **columns)
    except LatheError:
        raise
    except Exception as err:  # the user's code: shown once, then the step fails
        logger.error("reward function `%s` raised:\n%s", func.name, traceback.format_exc())
        raise LatheError(f"reward function `{func.name}` raised {type(err).__name__}: {err} "
                         f"(traceback above).") from err
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError) as err:
        raise LatheError(f"reward function `{func.name}` must return a list of numbers, got {scores!r:.200}.") from err
    if len(scores) != len(completions):
        raise LatheError(f"reward function `{func.name}` returned {len(scores)} scores for {len(completions)} "
                         f"completions; it must return one per completion.")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise LatheError(f"reward function `{func.name}` returned {scores[bad[0]]} for completion {bad[0]} "
                         f"({completions[bad[0]][:200]!r}); scores must be finite numbers.")
    return scores
