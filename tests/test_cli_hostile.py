"""Every sub-command given a wrong value, a missing file or a folder: exit 1, one message, no traceback."""

from __future__ import annotations

import pytest

from lathe.cli import main

COMMANDS = [["train"], ["chat"], ["api"], ["export"], ["eval"], ["eval", "--ppl"], ["data", "stats"],
            ["data", "preview"], ["plan"], ["bench"]]
BAD_VALUES = [("lora_rank=abc", "lora_rank"), ("learning_rate=-1", "learning_rate"), ("cutoff_len=0", "cutoff_len"),
              ("dataset=", "dataset"), ("num_train_epochs=many", "num_train_epochs"), ("template=nope", "template")]


def run(capsys, args):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_bad_values_missing_files_and_folders(command, capsys, sft_config, tmp_path):
    config = str(sft_config())
    cases = [([config, bad], key) for bad, key in BAD_VALUES]
    cases += [([str(tmp_path / "missing.yaml")], "not found"), ([str(tmp_path)], "is a folder")]
    for extra, needle in cases:
        if command in (["eval"], ["export"], ["plan"]) and needle == "template":
            continue  # export asks for export_dir first; eval and plan use no chat template
        code, err = run(capsys, command + extra)
        assert code == 1, (command, extra, err)
        assert "Traceback" not in err, err
        message = [line for line in err.splitlines() if line.startswith(f"lathe {command[0]}: error:")]
        assert message, err
        assert needle in err, (command, extra, err)


def test_debug_flag_shows_the_traceback(capsys, sft_config):
    code, err = run(capsys, ["--debug", "plan", str(sft_config()), "lora_rank=abc"])
    assert code == 1 and "Traceback" in err
