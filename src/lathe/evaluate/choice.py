"""Multiple-choice benchmarks in the MMLU / CMMLU / C-Eval layout (`lathe eval`).

Each question is shown after `n_shot` solved dev examples, as a conversation in the model's
chat template (examples as earlier user/assistant turns), and the answer is the choice letter
whose token gets the highest logit at the start of the assistant's reply: no generation, no
answer parsing, so the score is deterministic. Accuracy is reported per subject and per
category, with the overall average.

Layout of a task folder (see evaluation/lathe_sample/README.md):
`mapping.json` (subject -> {"name", "category"}) and `<split>/<subject>.csv` files with the
header `question,A,B,C,D,answer`.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.collate import left_pad
from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

CHOICES = ("A", "B", "C", "D")
WORDING = {
    "en": {"intro": "The following are multiple choice questions (with answers) about {subject}.\n\n",
           "answer": "Answer:"},
    "zh": {"intro": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "answer": "答案："},
}


def parse_task(task: str) -> tuple[str, str]:
    name, sep, split = task.rpartition("_")
    if not sep or not name:
        raise LatheError(f"`task: {task}` must be <benchmark>_<split>, e.g. mmlu_test or ceval_validation.")
    return name, split


def read_questions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"question", *CHOICES, "answer"}
    if rows and not need <= set(rows[0]):
        raise LatheError(f"{path}: columns must be question,A,B,C,D,answer; found {', '.join(rows[0])}.")
    for i, row in enumerate(rows):
        if row["answer"].strip() not in CHOICES:
            raise LatheError(f"{path}, row {i + 2}: answer must be one of A, B, C, D, got {row['answer']!r}.")
    return rows


def load_task(task_dir: str, task: str) -> tuple[dict, str, Path]:
    name, split = parse_task(task)
    folder = Path(task_dir) / name
    mapping_file = folder / "mapping.json"
    if not mapping_file.is_file():
        raise LatheError(f"Task folder {folder} has no mapping.json (subject -> name and category).")
    mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
    for subject in mapping:
        for needed in (split, "dev"):
            if not (folder / needed / f"{subject}.csv").is_file():
                raise LatheError(f"Task {name}: {folder / needed / f'{subject}.csv'} is missing.")
    return mapping, split, folder


def format_question(row: dict[str, str]) -> str:
    return row["question"] + "".join(f"\n{c}. {row[c]}" for c in CHOICES)


def build_messages(examples: list[dict], row: dict, subject_name: str, lang: str) -> list[dict]:
    words = WORDING[lang]
    messages = []
    for i, ex in enumerate(examples + [row]):
        text = format_question(ex) + "\n" + words["answer"]
        if i == 0:
            text = words["intro"].format(subject=subject_name) + text
        messages.append({"role": "user", "content": text})
        if i < len(examples):
            messages.append({"role": "assistant", "content": ex["answer"].strip()})
    return messages


def choice_token_ids(tokenizer) -> list[int]:
    ids = []
    for c in CHOICES:
        encoded = tokenizer.encode(c, add_special_tokens=False)
        if len(encoded) != 1:
            raise LatheError(f"The tokenizer splits the answer letter {c!r} into {len(encoded)} tokens; it cannot be scored.")
        ids.append(encoded[0])
    return ids


@torch.no_grad()
def answer_batch(model, tokenizer, prompts: list[list[int]], letter_ids: list[int]) -> list[str]:
    ids, attn, positions = left_pad(prompts, tokenizer.pad_token_id, model.device)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits[:, -1, letter_ids]
    return [CHOICES[i] for i in logits.argmax(-1).tolist()]


def check_save_dir(save_dir: str | None) -> None:
    """A new folder, or the folder of a run that stopped before its results (holding only its progress.jsonl):
    no result is overwritten."""
    from ..train.callbacks import PROGRESS_FILE

    if not save_dir:
        return
    folder = Path(save_dir).expanduser()
    try:
        if not folder.exists():
            return
        held = {p.name for p in folder.iterdir()} if folder.is_dir() else None
    except FileNotFoundError:  # deleted while looked at: a new folder after all
        return
    except OSError as e:
        raise LatheError(f"save_dir {save_dir} cannot be read ({e.strerror or e}); choose a new folder, or make "
                         f"this one readable.") from e
    if held != {PROGRESS_FILE}:
        raise LatheError(f"save_dir {save_dir} exists already; choose a new folder so no result is overwritten.")


def run_choice_eval(cfg: RunConfig) -> dict:
    """Answer every question of the task; progress (a record per batch, throttled) goes to save_dir/progress.jsonl."""
    from ..infer.engine import load_inference_model
    from ..train.callbacks import ProgressLog

    e = cfg.evaluation
    if not e.task:
        raise LatheError("`task` is required, e.g. `task: mmlu_test` (a folder in task_dir plus the split).")
    check_save_dir(e.save_dir)
    if e.n_shot < 0 or e.batch_size <= 0:
        raise LatheError("`n_shot` must be >= 0 and `batch_size` > 0.")
    mapping, split, folder = load_task(e.task_dir, e.task)
    subjects = [(subject, info, read_questions(folder / "dev" / f"{subject}.csv")[: e.n_shot],
                 read_questions(folder / split / f"{subject}.csv")) for subject, info in mapping.items()]
    tokenizer, template, model = load_inference_model(cfg)
    letter_ids = choice_token_ids(tokenizer)
    batches = sum(-(-len(questions) // e.batch_size) for *_, questions in subjects)
    progress = ProgressLog(e.save_dir, "benchmark", batches).start() if e.save_dir else None
    per_subject: dict[str, float] = {}
    by_category: dict[str, list[bool]] = {}
    answers: dict[str, list[dict]] = {}
    for subject, info, dev, questions in subjects:
        prompts = [template.encode_prompt(tokenizer, build_messages(dev, q, info.get("name", subject), e.lang))
                   for q in questions]
        predicted: list[str] = []
        for start in range(0, len(prompts), e.batch_size):
            predicted += answer_batch(model, tokenizer, prompts[start : start + e.batch_size], letter_ids)
            if progress is not None:
                progress.advance()
        right = [p == q["answer"].strip() for p, q in zip(predicted, questions)]
        per_subject[subject] = 100 * sum(right) / max(len(right), 1)
        by_category.setdefault(info.get("category", "Other"), []).extend(right)
        answers[subject] = [{"question": q["question"], "answer": q["answer"].strip(), "predict": p}
                            for q, p in zip(questions, predicted)]
    all_right = [r for rights in by_category.values() for r in rights]
    results = {
        "task": e.task, "n_shot": e.n_shot, "lang": e.lang,
        "Average": 100 * sum(all_right) / max(len(all_right), 1),
        "categories": {c: 100 * sum(r) / len(r) for c, r in by_category.items()},
        "subjects": per_subject,
    }
    if e.save_dir:
        out = Path(e.save_dir)
        out.mkdir(parents=True, exist_ok=True)  # progress.jsonl made it
        (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
        (out / "answers.json").write_text(json.dumps(answers, indent=2, ensure_ascii=False), encoding="utf-8")
        progress.finish()  # after the results: a finished record means the results are there
    return results


def format_results(results: dict) -> str:
    lines = [f"{'Average':>18}: {results['Average']:.2f}"]
    lines += [f"{name:>18}: {acc:.2f}" for name, acc in results["categories"].items()]
    return "\n".join(lines)
