"""lathe export: the merged model equals base + adapter, reloads with plain transformers, carries a Modelfile."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lathe.cli import main
from lathe.config import build_config, load_config
from lathe.errors import LatheError
from lathe.export.merge import check_not_quantized, run_export
from lathe.train import run_stage


@pytest.fixture
def adapter(sft_config):
    cfg = load_config(sft_config(max_steps=3, lora_rank=8, learning_rate=1e-2))
    result = run_stage(cfg)
    return cfg.training.output_dir, result


def test_merged_logits_equal_base_plus_adapter(adapter, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, result = adapter
    out = tmp_path / "merged"
    cfg = build_config({"model_name_or_path": str(tiny_llama), "adapter_name_or_path": adapter_dir,
                        "template": "chatml", "export_dir": str(out), "export_size": 1}, purpose="infer")
    run_export(cfg)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        expected = result.model.eval()(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert list(out.glob("*.safetensors")) and tokenizer.chat_template
    text = (out / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in text and "{{ .Content }}" in text and "FROM ." in text


def test_export_through_the_cli_shards(adapter, tiny_llama, tmp_path, capsys):
    adapter_dir, _ = adapter
    out = tmp_path / "cli"
    code = main(["export", f"model_name_or_path={tiny_llama}", f"adapter_name_or_path={adapter_dir}",
                 "template=chatml", f"export_dir={out}", "export_size=0.0005"])
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("model-*.safetensors"))) > 1  # 0.5 MB shards of a ~0.4M-parameter model
    code = main(["export", f"model_name_or_path={tiny_llama}", f"export_dir={tmp_path / 'legacy'}",
                 "export_legacy_format=true"])
    assert code == 1 and "safetensors" in capsys.readouterr().err


def test_export_refusals(tiny_llama, tmp_path):
    with pytest.raises(LatheError, match="export_dir"):
        run_export(build_config({"model_name_or_path": str(tiny_llama)}, purpose="infer"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    with pytest.raises(LatheError, match="not empty"):
        run_export(build_config({"model_name_or_path": str(tiny_llama), "export_dir": str(busy)}, purpose="infer"))
    with pytest.raises(LatheError, match="GPTQ|gptq|optimum"):
        run_export(build_config({"model_name_or_path": str(tiny_llama), "export_dir": str(tmp_path / "q"),
                                 "export_quantization_bit": 4}, purpose="infer"))


def test_hub_push_without_the_hub_fails_before_merging(tiny_llama, tmp_path, monkeypatch):
    cfg = build_config({"model_name_or_path": str(tiny_llama), "export_dir": str(tmp_path / "h"),
                        "export_hub_model_id": "me/tiny"}, purpose="infer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LatheError, match="HF_HUB_OFFLINE"):
        run_export(cfg)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("lathe.hub.hub_reachable", lambda: False)
    with pytest.raises(LatheError, match="cannot be reached"):
        run_export(cfg)
    assert not (tmp_path / "h").exists()


def test_merging_into_a_quantized_base_is_refused():
    fake = SimpleNamespace(config=SimpleNamespace(quantization_config={"quant_method": "bitsandbytes"}))
    with pytest.raises(LatheError, match="quantized"):
        check_not_quantized(fake)
