"""lathe eval: the multiple-choice runner on the shipped sample task, and perplexity."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lathe.cli import main
from lathe.config import build_config
from lathe.errors import LatheError
from lathe.evaluate.choice import build_messages, run_choice_eval
from lathe.evaluate.perplexity import run_perplexity
from tests.conftest import ROOT


def eval_cfg(model, **extra):
    return build_config({"model_name_or_path": str(model), "template": "chatml", "task": "lathe_sample_test",
                         "task_dir": str(ROOT / "evaluation"), "n_shot": 2, **extra}, purpose="infer")


def test_sample_task_scores_every_subject(tiny_llama, tmp_path):
    results = run_choice_eval(eval_cfg(tiny_llama, save_dir=str(tmp_path / "r")))
    assert set(results["subjects"]) == {"arithmetic", "geography", "language"}
    assert set(results["categories"]) == {"STEM", "Social Sciences", "Humanities"}
    assert 0 <= results["Average"] <= 100
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["Average"] == results["Average"]
    answers = json.loads((tmp_path / "r" / "answers.json").read_text())
    assert len(answers["geography"]) == 5 and answers["geography"][0]["predict"] in "ABCD"
    progress = [json.loads(line) for line in (tmp_path / "r" / "progress.jsonl").read_text().splitlines()]
    batches = progress[-1]["total_steps"]  # per subject, its questions in batches (the Board's progress bar)
    assert progress[0]["current_steps"] == 0 and progress[-1]["current_steps"] == batches >= 3
    assert progress[-1]["percentage"] == 100 and progress[-1]["finished"] and progress[-1]["phase"] == "benchmark"
    assert run_choice_eval(eval_cfg(tiny_llama)) == results  # deterministic: logits, no sampling


def test_few_shot_prompt_shape():
    dev = [{"question": "1+1?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "B"}]
    row = {"question": "2+2?", "A": "4", "B": "5", "C": "6", "D": "7", "answer": "A"}
    messages = build_messages(dev, row, "arithmetic", "en")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"].startswith("The following are multiple choice questions (with answers) about arithmetic.")
    assert messages[1]["content"] == "B" and messages[2]["content"].endswith("D. 7\nAnswer:")
    assert build_messages([], row, "数学", "zh")[0]["content"].endswith("答案：")


def test_eval_cli(tiny_llama, capsys):
    code = main(["eval", f"model_name_or_path={tiny_llama}", "template=chatml", "task=lathe_sample_test",
                 f"task_dir={ROOT / 'evaluation'}", "n_shot=1"])
    assert code == 0 and "Average" in capsys.readouterr().out


def test_bad_task_folders(tiny_llama, tmp_path):
    with pytest.raises(LatheError, match="mapping.json"):
        run_choice_eval(eval_cfg(tiny_llama, task_dir=str(tmp_path)))
    shutil.copytree(ROOT / "evaluation" / "lathe_sample", tmp_path / "lathe_sample")
    (tmp_path / "lathe_sample" / "test" / "geography.csv").unlink()
    with pytest.raises(LatheError, match="geography.csv"):
        run_choice_eval(eval_cfg(tiny_llama, task_dir=str(tmp_path)))
    with pytest.raises(LatheError, match="<benchmark>_<split>"):
        run_choice_eval(eval_cfg(tiny_llama, task="mmlu"))


def test_perplexity(tiny_llama, tmp_path):
    cfg = build_config({"model_name_or_path": str(tiny_llama), "stage": "pt", "dataset": "lathe_docs",
                        "dataset_dir": str(ROOT / "data"), "cutoff_len": 64, "save_dir": str(tmp_path / "p")},
                       purpose="infer")
    result = run_perplexity(cfg)
    assert result["perplexity"] == pytest.approx(math.exp(result["nll"]))
    assert 100 < result["perplexity"] < 5000  # a random model over ~1000 tokens
    rows = (tmp_path / "p" / "perplexity.jsonl").read_text().splitlines()
    assert len(rows) == result["samples"]
    sft = build_config({"model_name_or_path": str(tiny_llama), "dataset": "lathe_identity", "template": "chatml",
                        "dataset_dir": str(ROOT / "data")}, purpose="infer")
    assert run_perplexity(sft)["samples"] == 57


def test_save_dir_of_an_aborted_run_is_taken_again(tmp_path):
    """A save_dir holding only the progress of a run that stopped is reused; one holding results is refused."""
    from lathe.evaluate.choice import check_save_dir

    check_save_dir(str(tmp_path / "new"))
    (tmp_path / "progress.jsonl").write_text('{"current_steps": 1}\n')
    check_save_dir(str(tmp_path))
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(LatheError, match="exists already"):
        check_save_dir(str(tmp_path))


def test_an_unreadable_or_vanishing_save_dir(tmp_path, monkeypatch):
    """A folder that cannot be listed is a LatheError naming it; one deleted while looked at is a new folder."""
    from lathe.evaluate.choice import check_save_dir

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(LatheError, match=f"save_dir {tmp_path} cannot be read"):
        check_save_dir(str(tmp_path))

    def gone(self):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "iterdir", gone)
    check_save_dir(str(tmp_path))
