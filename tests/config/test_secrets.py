"""Hub tokens never reach the logs, the saved config or any file of the run."""

from __future__ import annotations

import logging

from lathe.cli import main

SECRET = "hf_SeCrEt0123456789abcdef"


def test_tokens_stay_out_of_logs_and_output_files(sft_config, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    config = sft_config(max_steps=2, save_steps=1, save_strategy="steps")
    assert main(["train", str(config), f"hf_hub_token={SECRET}", f"hub_token={SECRET}"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err + caplog.text
    leaked = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
