"""`lathe data preview` / `stats` for every stage, for predict configs, and for configs with no data at all."""

from __future__ import annotations

import pytest
import yaml

from lathe.cli import main
from tests.conftest import shared_path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pairs_show_the_chosen_and_the_rejected_answer(capsys, sft_config):
    code, out, _ = run(capsys, "data", "preview", str(sft_config(stage="dpo", dataset="lathe_pairs")), "-n", "2",
                       "--color", "never")
    assert code == 0
    assert "--- sample 0 chosen:" in out and "--- sample 0 rejected:" in out and "--- sample 1 rejected:" in out
    assert out.count("[[") >= 4  # each answer has learned tokens


def test_kto_shows_each_answer_with_its_label(capsys, sft_config):
    code, out, _ = run(capsys, "data", "preview", str(sft_config(stage="kto", dataset="lathe_feedback")), "-n", "4",
                       "--color", "never")
    assert code == 0 and "desirable" in out and "undesirable" in out


def test_pretraining_shows_its_blocks(capsys, sft_config):
    code, out, _ = run(capsys, "data", "preview", str(sft_config(stage="pt", dataset="lathe_docs", cutoff_len=32)),
                       "-n", "2", "--color", "never")
    assert code == 0 and "--- sample 0: 32 tokens, 32 learned" in out  # packed: every token learned


@pytest.mark.parametrize("stage, dataset, parts", [("rm", "lathe_pairs", ["(chosen)", "(rejected)"]),
                                                   ("kto", "lathe_feedback", ["tokens per sample: "]),
                                                   ("pt", "lathe_docs", ["tokens per sample: ", "packed into"])])
def test_stats_for_every_stage(capsys, sft_config, stage, dataset, parts):
    code, out, _ = run(capsys, "data", "stats", str(sft_config(stage=stage, dataset=dataset)))
    assert code == 0 and f"stage {stage}" in out
    for part in parts:
        assert part in out


def test_a_predict_config_shows_its_eval_dataset(capsys, sft_config):
    config = sft_config(dataset=None, do_train=False, do_predict=True, eval_dataset="lathe_numbers")
    code, out, _ = run(capsys, "data", "preview", str(config), "-n", "1", "--color", "never")
    assert code == 0 and out.startswith("eval datasets: lathe_numbers")


def test_a_config_without_data_says_so_in_one_sentence(capsys, sft_config):
    config = sft_config()
    settings = yaml.safe_load(config.read_text())
    for key in ("dataset", "do_train", "output_dir"):  # an inference config, as LLaMA-Factory's inference/*.yaml
        settings.pop(key)
    config.write_text(yaml.safe_dump(settings))
    code, _, err = run(capsys, "data", "preview", str(config))
    assert code == 1 and "names no `dataset` (nor `eval_dataset`)" in err and "Traceback" not in err


def test_overrides_may_follow_the_flags(capsys, sft_config, monkeypatch):
    code, out, _ = run(capsys, "data", "stats", str(sft_config()), "--color", "never", "cutoff_len=16")
    assert code == 0 and "cutoff_len 16" in out
    code, out, _ = run(capsys, "plan", str(sft_config()), "--device-memory", "1GiB", "cutoff_len=64")
    assert code == 0 and "(cutoff_len 64)" in out  # the data's longest sample, read under this cutoff
    code, out, _ = run(capsys, "plan", str(sft_config()), "--device-memory", "1GiB", "--cutoff", "cutoff_len=64")
    assert code == 0 and "x 64 tokens" in out
    from lathe.efficiency import bench

    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda config, overrides, *rest: seen.setdefault("overrides", overrides))
    with pytest.raises(Exception):  # the fake bench writes no table; only the parsed arguments matter here
        main(["bench", str(sft_config()), "--methods", "lora", "--steps", "2", "max_samples=16"])
    assert seen["overrides"] == ["max_samples=16"]


@pytest.mark.parametrize("name", ["train_lora/qwen3_lora_dpo.yaml", "train_lora/qwen3_lora_reward.yaml"])
def test_llamafactory_pairwise_examples(capsys, name):
    """LLaMA-Factory's own configs, with a Qwen3 tokenizer folder in place of the 4B model and its demo data."""
    config = shared_path("llamafactory-examples", name)
    overrides = [f"model_name_or_path={shared_path('tokenizers', 'qwen3-4b-thinking-2507-assembled')}",
                 f"dataset_dir={shared_path('data')}", "max_samples=4"]
    code, out, _ = run(capsys, "data", "preview", str(config), "-n", "1", "--color", "never", *overrides)
    assert code == 0 and "--- sample 0 chosen:" in out and "--- sample 0 rejected:" in out
    code, out, _ = run(capsys, "data", "stats", str(config), *overrides)
    assert code == 0 and "tokens per sample (chosen)" in out and "4 of 4 rows kept" in out


def test_samples_keep_their_numbers_when_earlier_ones_are_dropped(tmp_path, sft_config):
    """A dpo page whose first samples have no pair: the kept ones are numbered as in the data, not from 0."""
    import json

    from lathe.config import load_config
    from lathe.data.preview import preview_page
    from tests.conftest import DATA

    pairs = json.loads((DATA / "dataset_info.json").read_text())["lathe_pairs"]
    (tmp_path / "plain.json").write_text(json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(3)]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"plain": {"file_name": "plain.json"}, "pairs": {**pairs, "file_name": str(DATA / pairs["file_name"])}}))
    cfg = load_config(sft_config(stage="dpo", dataset="plain,pairs", dataset_dir=str(tmp_path)))
    page = preview_page(cfg, 0, 5)
    assert page.dropped == {"no chosen/rejected pair (pairwise stages need ranking data)": 3}
    assert [(s.index, s.part) for s in page.sequences] == [(3, "chosen"), (3, "rejected"), (4, "chosen"),
                                                           (4, "rejected")]
