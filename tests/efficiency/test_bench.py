"""lathe bench: two methods, two steps each, on the tiny model; a method that cannot run gets a row, not a crash."""

from __future__ import annotations

import json

import pytest

from lathe.cli import main
from lathe.efficiency import bench
from lathe.efficiency.bench import parse_methods
from lathe.efficiency.variants import VARIANTS, Variant


def test_bench_two_methods(sft_config, tmp_path, monkeypatch, capsys):
    # A method whose package is missing must show up with the reason while the others run.
    monkeypatch.setitem(VARIANTS, "needs_missing", Variant("needs_missing", "test", "lora",
                                                           requires=("lathe_no_such_module",)))
    out = tmp_path / "bench"
    assert main(["bench", str(sft_config()), "--methods", "lora,full,needs_missing", "--steps", "2",
                 "--output", str(out)]) == 0
    table = (out / "bench.md").read_text()
    assert table in capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"lora", "full", "needs_missing"} <= set(rows)
    assert "not run: needs the `lathe_no_such_module` package" in rows["needs_missing"]
    results = json.loads((out / "bench.json").read_text())["results"]
    for name in ("lora", "full"):
        r = results[name]
        assert r["peak_memory"] > 0 and r["tokens"] > 0 and r["tokens_per_second"] > 0
        assert r["perplexity"] > 1
        assert json.loads((out / name / "run" / "trainer_log.jsonl").read_text().splitlines()[-1])["current_steps"] == 2
    assert results["full"]["trainable"] > 10 * results["lora"]["trainable"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_method_errors_are_reported(tmp_path, monkeypatch):
    class Failed:
        returncode = 1
        stderr = "Traceback ...\nlathe bench: error: quantization_bit 4 needs bitsandbytes\n"

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: Failed())
    record = bench.run_method("lora", None, [], 2, tmp_path)
    assert "quantization_bit 4 needs bitsandbytes" in record["error"]


def test_parse_methods():
    assert parse_methods("full, lora") == ["full", "lora"]
    with pytest.raises(Exception, match="(?i)did you mean `lora`"):
        parse_methods("lorra")


def test_a_bench_where_no_method_ran_fails(sft_config, tmp_path, monkeypatch):
    from lathe.efficiency import bench
    from lathe.errors import LatheError

    monkeypatch.setattr(bench, "run_method", lambda name, *a: {"error": f"{name} could not start"})
    with pytest.raises(LatheError, match="no method ran .*lora: lora could not start"):
        bench.run_bench(str(sft_config()), [], ["lora"], 1, str(tmp_path / "b"))
