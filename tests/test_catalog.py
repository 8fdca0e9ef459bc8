"""The model catalog (lathe/model/catalog.yaml): its data, `lathe models`, the template a run picks from it
for a tokenizer without a chat template, and the Board's model picker."""

from __future__ import annotations

import logging
import re

import pytest

from lathe.cli import main
from lathe.data.templates import list_templates
from lathe.model.catalog import CATALOG_FILE, EXTRA_FILE, for_model_id, load_catalog, lookup, parse_size, search
from tests.conftest import shared_path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


def test_every_template_is_registered_or_marked_missing():
    known = set(list_templates())
    unmarked = sorted({m.template for m in load_catalog().values()
                       if m.template and m.template not in known and not m.template_missing})
    stale = sorted({m.template for m in load_catalog().values() if m.template_missing and m.template in known})
    assert not unmarked, f"templates lathe lacks without `template_missing: true`: {unmarked}"
    assert not stale, f"marked missing but registered now: {stale}; rerun scripts/build_model_catalog.py"
    missing = [m for m in load_catalog().values() if m.template_missing]
    names = sorted({m.template for m in missing})
    print(f"{len(missing)} of {len(load_catalog())} models default to one of {len(names)} templates lathe lacks: "
          f"{', '.join(names)}")
    # LLaMA-Factory's 634 names are all here, each with a known template or a marked one
    assert len(load_catalog()) >= 634 and len(missing) < len(load_catalog()) / 2


def test_entries_are_well_formed():
    text = CATALOG_FILE.read_text(encoding="utf-8") + EXTRA_FILE.read_text(encoding="utf-8")
    names = re.findall(r"^  (\S[^:]*): \{", text, flags=re.MULTILINE)
    assert len(names) == len(set(names)) == len(load_catalog())  # YAML would hide a repeated name
    for model in load_catalog().values():
        assert model.ids and all(HUB_ID.match(i) for i in model.ids), model
        assert model.name and model.family and model.name.lower().startswith(model.family.lower()[:3]), model
        if model.size:
            assert model.params > 0, model
    assert sum(m.ms is not None for m in load_catalog().values()) >= 600


def test_releases_beyond_llama_factorys_list_come_from_the_extra_file():
    """Hand-written entries load after the generated ones; no model (by id) is in both files."""
    extra = [m for m in load_catalog().values() if m.name in EXTRA_FILE.read_text(encoding="utf-8")]
    assert len(extra) >= 30 and lookup("Kimi-K2-Thinking").hf == "moonshotai/Kimi-K2-Thinking"
    assert for_model_id("inclusionAI/Ling-mini-2.0").template == "bailing_v2"
    assert lookup("Qwen3-Coder-30B-A3B-Instruct").template is None  # its tokenizer's own template is used
    hf_ids = [m.hf.lower() for m in load_catalog().values()]
    assert len(hf_ids) == len(set(hf_ids)), sorted(i for i in set(hf_ids) if hf_ids.count(i) > 1)


def test_sizes_are_read_as_the_name_writes_them():
    assert parse_size("7B") == 7e9 and parse_size("0.5B") == 5e8 and parse_size("560M") == 5.6e8
    assert parse_size("8x7B") == 5.6e10 and parse_size("1.5B") == 1.5e9
    assert lookup("Qwen2.5-0.5B-Instruct").size == "0.5B" and lookup("Qwen2.5-0.5B-Instruct").params == 5e8
    assert lookup("Mixtral-8x7B-v0.1-Instruct").size == "8x7B"
    assert lookup("BLOOM-7B1").size == "7.1B"  # BLOOM writes 7.1B as 7B1
    assert lookup("Gemma-3n-E4B-Instruct").size is None  # an effective size, not a count
    assert lookup("Qwen3-30B-A3B-Thinking").size == "30B" and lookup("Qwen3-30B-A3B-Thinking").family == "Qwen3"


def test_lookup_by_name_and_by_hub_id():
    qwen = lookup("Qwen2.5-0.5B-Instruct")
    assert (qwen.family, qwen.hf, qwen.ms, qwen.template) == ("Qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct",
                                                              "Qwen/Qwen2.5-0.5B-Instruct", "qwen")
    assert lookup("nope") is None
    assert for_model_id("qwen/qwen2.5-0.5b-instruct") is qwen  # hub ids ignore case
    assert for_model_id("LLM-Research/Meta-Llama-3-8B-Instruct").name == "Llama-3-8B-Instruct"  # ModelScope id
    assert for_model_id("lmsys/vicuna-7b-v1.5").template == "vicuna"
    assert for_model_id("/models/Qwen2.5-0.5B-Instruct") is None and for_model_id(None) is None
    assert lookup("Qwen2-VL-7B-Instruct").multimodal and not qwen.multimodal


def test_search_matches_name_id_or_family_in_any_case():
    assert [m.name for m in search("MIXTRAL-8x7b")] == ["Mixtral-8x7B-v0.1", "Mixtral-8x7B-v0.1-Instruct"]
    assert {m.family for m in search("deepseek-ai/DeepSeek-R1-Distill-Qwen")} == {"DeepSeek-R1"}  # by id
    assert len(search(None)) == len(load_catalog())


def test_lathe_models_qwen3_lists_the_qwen3_line(capsys):
    assert main(["models", "qwen3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "SIZE", "TEMPLATE", "HUGGING", "FACE", "MODELSCOPE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["Qwen3-0.6B-Base"] == ["Qwen3-0.6B-Base", "Qwen3", "0.6B", "qwen3", "Qwen/Qwen3-0.6B-Base",
                                       "Qwen/Qwen3-0.6B-Base"]
    assert rows["Qwen3-4B-Instruct-2507"][3] == "qwen3_nothink"
    assert rows["Qwen3-235B-A22B-Thinking"][2] == "235B"
    assert all("qwen3" in line.lower() for line in lines[1:])
    assert "Qwen2.5-7B-Instruct" not in rows and len(rows) >= 30


def test_lathe_models_marks_what_lathe_lacks_and_says_when_nothing_matches(capsys):
    assert main(["models", "Qwen2-VL-7B-Instruct"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    template = lookup("Qwen2-VL-7B-Instruct").template
    assert f"{template}{'*' if template not in list_templates() else ''} (mm)" in row
    assert main(["models", "no-such-model"]) == 1
    assert "no model in the catalog matches `no-such-model`" in capsys.readouterr().err


# --- the default template of a run ----------------------------------------------------------------------


@pytest.fixture
def hub_model(tmp_path, tiny_llama):
    """The tiny llama as `lmsys/vicuna-7b-v1.5` in a Hugging Face cache (the layout huggingface_hub writes),
    its tokenizer stripped of its chat template, as a base model's tokenizer comes (Vicuna's has none)."""
    import json
    import shutil

    repo = tmp_path / "hub" / "models--lmsys--vicuna-7b-v1.5"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_llama, snapshot)
    (snapshot / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((snapshot / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (snapshot / "tokenizer_config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot, tmp_path / "hub"


def _preview(capsys, sft_config, **overrides) -> tuple[str, str]:
    """`lathe data preview` of the first sample: (the sample, lathe's log lines)."""
    config = sft_config(**{"template": None, **overrides})
    assert main(["data", "preview", str(config), "-n", "1", "--color", "never"]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_a_run_without_template_takes_the_catalogs_default_for_its_hub_id(monkeypatch, capsys, sft_config, hub_model):
    from transformers import AutoTokenizer

    folder, cache = hub_model
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = {"model_name_or_path": "lmsys/vicuna-7b-v1.5", "cache_dir": str(cache)}  # the catalog's Vicuna-v1.5-7B-Chat
    out, log = _preview(capsys, sft_config, **hub)
    assert "USER: " in out and "ASSISTANT:" in out  # vicuna's turns
    assert "[lathe] template: `vicuna`, the catalog's default for `lmsys/vicuna-7b-v1.5`" in log

    # the same model from a local folder: not in the catalog, so the `empty` template as before
    out, log = _preview(capsys, sft_config, model_name_or_path=str(folder))
    assert "USER: " not in out and "the catalog's default" not in log and "using the `empty` template" in log

    # a template that is set wins over the catalog
    out, _ = _preview(capsys, sft_config, **hub, template="chatml")
    assert "<|im_start|>user" in out and "USER: " not in out


def test_a_tokenizer_with_its_own_chat_template_keeps_it(monkeypatch, caplog):
    from transformers import AutoTokenizer

    from lathe.data.loader import catalog_template

    monkeypatch.setattr(logging.getLogger("lathe"), "handlers", [caplog.handler])  # a CLI run may have set them

    tokenizer = AutoTokenizer.from_pretrained(shared_path("tokenizers", "llama3.2-instruct"))
    assert tokenizer.chat_template and catalog_template("meta-llama/Llama-3.2-1B-Instruct", tokenizer) is None
    tokenizer.chat_template = None
    assert catalog_template("meta-llama/Llama-3.2-1B-Instruct", tokenizer) == "llama3"
    missing = next(m for m in load_catalog().values() if m.template and m.template not in list_templates())
    with caplog.at_level(logging.WARNING, logger="lathe"):
        assert catalog_template(missing.hf, tokenizer) is None
    assert f"is `{missing.template}`, which lathe has no template for yet" in caplog.text


# --- the Board -------------------------------------------------------------------------------------------


def test_the_boards_model_picker_offers_the_whole_catalog_and_fills_path_and_template(tmp_path):
    from lathe.board.app import create_board

    app = create_board(tmp_path / "wd")
    picker = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "catalog")
    offered = [c[1] if isinstance(c, tuple) else c for c in picker.choices]
    assert offered == ["", *load_catalog()] and picker.filterable
    pick = next(f.fn for f in app.fns.values() if [b._id for b in f.inputs][:1] == [picker._id])  # (name, hub)
    assert pick("Qwen3-4B-Instruct-2507", "huggingface")[:2] == ("Qwen/Qwen3-4B-Instruct-2507", "qwen3_nothink")
    missing = next(m for m in load_catalog().values() if m.template and m.template not in list_templates())
    assert pick(missing.name, "huggingface")[:2] == (missing.hf, "")  # a template lathe lacks: the tokenizer's own
    no_modelers = next(m for m in load_catalog().values() if not m.om)
    assert pick(no_modelers.name, "modelers")[0] == no_modelers.hf  # a hub without it: Hugging Face's id
