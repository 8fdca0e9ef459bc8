"""The `lathe` command as a user runs it: the issue's example config, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lathe.cli import main
from tests.conftest import DATA, shared_path

EXAMPLE = """\
model_name_or_path: {model}
trust_remote_code: true
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: identity,alpaca_en_demo
dataset_dir: {dataset_dir}
template: chatml
cutoff_len: 1024
max_samples: 100
overwrite_cache: true
preprocessing_num_workers: 2
dataloader_num_workers: 0
output_dir: {output_dir}
logging_steps: 5
save_steps: 50
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lathe", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_issue_example_config_runs_through_the_cli(tmp_path, tiny_llama):
    dataset_dir = shared_path("data")
    out = tmp_path / "saves" / "tiny" / "lora" / "sft"
    config = tmp_path / "example.yaml"
    config.write_text(EXAMPLE.format(model=tiny_llama, dataset_dir=dataset_dir, output_dir=out))
    proc = run_cli("train", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identity: " in proc.stderr and "alpaca_en_demo: " in proc.stderr  # the data report
    # identity has 91 rows, alpaca_en_demo is cut to 100: 191 samples, 96 batches of 2,
    # 48 optimizer steps with accumulation 2, a log line every 5 steps.
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log] == list(range(5, 50, 5))
    assert log[-1]["total_steps"] == 48
    assert log[-1]["loss"] < log[0]["loss"]
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "training_loss.png").exists()
    saved = yaml.safe_load((out / "lathe_config.yaml").read_text())
    assert saved["lora_rank"] == 8 and saved["warmup_steps"] == 0.1


def test_version_and_env():
    proc = run_cli("version")
    assert proc.returncode == 0 and proc.stdout.startswith("lathe ")
    proc = run_cli("env")
    assert proc.returncode == 0
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "device"):
        assert name in proc.stdout


def test_train_help_lists_groups(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for heading in ("model options:", "data options:", "finetuning options:", "training options"):
        assert heading in text
    assert "lora_rank" in text and "per_device_train_batch_size" in text


def run_main(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["lora_rnak=8"], "lora_rank"),
        (["model_name_or_path=/nonexistent/model"], "Model folder not found"),
        (["dataset=lathe_identiy"], "lathe_identity"),
        (["cutoff_len=1"], "has anything to learn"),
        (["lora_rank=abc"], "integer"),
    ],
)
def test_bad_input_gives_a_clear_error(capsys, sft_config, overrides, needle):
    code, err = run_main(capsys, "train", str(sft_config()), *overrides)
    assert code == 1
    assert needle in err
    assert "Traceback" not in err


def test_invalid_json_names_file_and_line(capsys, sft_config, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"broken": {"file_name": "broken.json"}}))
    (data / "broken.json").write_text('[\n  {"instruction": "hi", "output": "yo"},\n  {"instruction": oops}\n]\n')
    code, err = run_main(capsys, "train", str(sft_config(dataset="broken", dataset_dir=str(data))))
    assert code == 1
    assert "broken.json:3" in err and "invalid JSON" in err


def test_rows_missing_columns_are_counted_and_all_bad_fails(capsys, sft_config, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"instruction": "Who are you?", "output": "I am lathe."}] * 8 + [{"instruction": "no answer"}] * 3
    (data / "mixed.json").write_text(json.dumps(rows))
    (data / "bad.json").write_text(json.dumps([{"question": "x"}] * 4))
    (data / "dataset_info.json").write_text(
        json.dumps({"mixed": {"file_name": "mixed.json"}, "bad": {"file_name": "bad.json"}})
    )
    code, err = run_main(capsys, "train", str(sft_config(dataset="mixed", dataset_dir=str(data), max_steps=1)))
    assert code == 0, err
    assert "3" in err and "output" in err  # three rows skipped for the missing `output` column, reported
    code, err = run_main(capsys, "train", str(sft_config(dataset="bad", dataset_dir=str(data))))
    assert code == 1 and "bad" in err


def test_output_dir_with_foreign_files_is_refused(capsys, sft_config, tmp_path):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "train", str(sft_config(output_dir=str(out), overwrite_output_dir=False)))
    assert code == 1 and "overwrite_output_dir" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_debug_shows_traceback(capsys, sft_config):
    code, err = run_main(capsys, "train", str(sft_config()), "lora_rnak=8", "--debug")
    assert code == 1 and "Traceback" in err


def test_unknown_command(capsys):
    assert main(["trian"]) == 2
    assert "train" in capsys.readouterr().err


def test_demo_data_is_registered():
    info = json.loads((DATA / "dataset_info.json").read_text())
    for entry in info.values():
        assert (DATA / entry["file_name"]).exists()


def test_data_preview_needs_at_least_one_sample(capsys, sft_config):
    with pytest.raises(SystemExit) as info:
        main(["data", "preview", str(sft_config()), "-n", "0"])
    assert info.value.code == 2 and "-n must be at least 1 (got 0)" in capsys.readouterr().err


def test_data_preview_marks_learned_tokens(capsys, sft_config):
    assert main(["data", "preview", str(sft_config()), "-n", "2", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>]]" in out  # answer + end-of-turn learned
    assert "[[<|im_start|>" not in out  # the prompt is not


def test_data_stats(capsys, sft_config):
    assert main(["data", "stats", str(sft_config(cutoff_len=24))]) == 0
    out = capsys.readouterr().out
    assert "lathe_identity: 57 of 57 rows kept" in out
    assert "tokens per sample: min" in out and "p95" in out
    assert "truncated by cutoff_len:" in out and "learned (" in out


def test_plan_splits_memory_as_the_configs_deepspeed_stage_says(capsys, sft_config):
    from lathe.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["plan", str(sft_config()), f"deepspeed={root}/examples/deepspeed/ds_z3_config.json",
                 "--devices", "2"]) == 0
    assert "2 devices (zero3)" in capsys.readouterr().out


def test_train_logs_where_the_time_to_the_first_step_went(sft_config, capfd):
    """One line per run: the interpreter and lathe, torch + transformers (the floor), the Trainer's stack, the
    config, tokenizer, data, model, Trainer and the first step, each timed, summing to the whole."""
    import re

    from lathe import startup

    assert main(["train", str(sft_config(max_steps=2))]) == 0
    out = capfd.readouterr()
    line = re.search(r"start-up: .*\(s\)", out.err + out.out).group(0)
    phases = re.findall(r"([A-Za-z +]+?) (\d+\.\d)(?:,| \(s\))", line.split(": ", 2)[2])
    assert [p.strip() for p, _ in phases] == ["python + lathe", "torch + transformers", "Trainer + peft", "config",
                                              "tokenizer", "data", "model", "trainer", "first step"]
    total = float(re.search(r"start-up: (\d+\.\d) s", line).group(1))
    assert abs(sum(float(t) for _, t in phases) - total) < 0.1 * len(phases)
    assert startup.reported()
