"""Merge LoRA adapters into their base model and save it: sharded weights, tokenizer, Modelfile.

The merged model reloads with plain `AutoModelForCausalLM.from_pretrained` and gives the
same outputs as base + adapters; the saved tokenizer carries the chat template that was
trained. Merging into a quantized base is refused: the low-bit weights cannot hold the sum.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LatheError
from .ollama import modelfile

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)


def check_not_quantized(model) -> None:
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise LatheError(
            f"The base model is quantized ({method}): adapters cannot be merged into low-bit weights. "
            f"Export from the unquantized base model (the same weights in 16/32-bit) instead."
        )


def check_gptq(cfg: "RunConfig") -> None:
    """`export_quantization_bit` needs GPTQ's packages, valid bits and a calibration file: checked first."""
    e = cfg.export
    missing = [p for p in ("optimum", "gptqmodel") if importlib.util.find_spec(p) is None]
    if missing:
        raise LatheError(
            f"`export_quantization_bit` quantizes with GPTQ, which needs {' and '.join(missing)}: "
            f"pip install optimum gptqmodel (a CUDA GPU is needed to calibrate)."
        )
    if e.export_quantization_bit not in (2, 3, 4, 8):
        raise LatheError(f"`export_quantization_bit` must be 2, 3, 4 or 8, got {e.export_quantization_bit}.")
    if not e.export_quantization_dataset or not Path(e.export_quantization_dataset).is_file():
        raise LatheError("`export_quantization_bit` needs `export_quantization_dataset`: a text file, one sample per line.")


def check_hub_push() -> None:
    """`export_hub_model_id` needs the hub: found out before the merge, not after minutes of it."""
    from ..hub import endpoint, hub_reachable, offline_requested

    if offline_requested():
        raise LatheError("`export_hub_model_id` pushes to the hub, but HF_HUB_OFFLINE is set: unset it, or drop "
                         "`export_hub_model_id` and upload export_dir later with `hf upload`.")
    if not hub_reachable():
        raise LatheError(f"`export_hub_model_id` pushes to the hub, but {endpoint()} cannot be reached from here: "
                         "drop `export_hub_model_id` and upload export_dir later with `hf upload`.")


def calibration_samples(cfg: "RunConfig", tokenizer) -> list[dict[str, list[list[int]]]]:
    """The first `export_quantization_nsamples` non-empty lines of the dataset file, tokenized and cut
    to `export_quantization_maxlen` tokens.

    Handed to GPTQ already tokenized (optimum then skips its own tokenization): given plain
    strings it would tokenize each whole line, whatever `model_seqlen` says, so the length
    limit would not hold. Lists, not tensors, since the config is saved as JSON.
    """
    e = cfg.export
    lines = [x for x in Path(e.export_quantization_dataset).read_text(encoding="utf-8").splitlines() if x.strip()]
    samples = []
    for line in lines[: e.export_quantization_nsamples]:
        ids = tokenizer(line, add_special_tokens=True)["input_ids"][: e.export_quantization_maxlen]
        samples.append({"input_ids": [ids], "attention_mask": [[1] * len(ids)]})
    if len(samples) < e.export_quantization_nsamples:
        logger.warning("export_quantization_nsamples is %d, but %s has %d non-empty lines: GPTQ calibrates on %d.",
                       e.export_quantization_nsamples, e.export_quantization_dataset, len(lines), len(samples))
    return samples


def gptq_config(cfg: "RunConfig", tokenizer):
    """GPTQ through transformers/optimum, calibrated on `calibration_samples`."""
    from transformers import GPTQConfig

    e = cfg.export
    return GPTQConfig(bits=e.export_quantization_bit, dataset=calibration_samples(cfg, tokenizer), tokenizer=tokenizer,
                      model_seqlen=e.export_quantization_maxlen)


def merge_placement(cfg: "RunConfig") -> "RunConfig":
    """`export_device`: where the model is loaded and the adapters merged, as in LLaMA-Factory.

    `cpu` (the default) loads on the CPU, as a plain `from_pretrained` does; `auto` loads with
    accelerate's device map (the GPUs first, then the CPU and `offload_folder`), which merges
    faster when the model fits a GPU. An explicit `quantization_device_map` is left as set.
    """
    if cfg.export.export_device != "auto" or cfg.model.quantization_device_map is not None:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization_device_map="auto"))


def save_processor(cfg: "RunConfig", model, tokenizer, out: Path) -> None:
    """A multimodal model's processor beside it, so the export loads with AutoProcessor.

    Its chat template stays the model's own where it has one: that template renders image and video parts,
    which lathe's text templates (saved with the tokenizer) do not."""
    from ..model.multimodal import is_multimodal, load_processor

    if not is_multimodal(model.config):
        return
    processor = load_processor(cfg.model, tokenizer)
    processor.save_pretrained(out)


def run_export(cfg: "RunConfig") -> Path:
    from ..infer.engine import load_inference_model

    e = cfg.export
    if not e.export_dir:
        raise LatheError("`export_dir` is required: the folder the merged model is written to.")
    if e.export_legacy_format:
        raise LatheError(
            "`export_legacy_format: true` asks for pickle .bin files; transformers 5 writes safetensors only, and "
            "pickle files can run code when loaded. Leave it false: every current tool reads safetensors."
        )
    out = Path(e.export_dir)
    if out.exists() and any(out.iterdir()):
        raise LatheError(f"export_dir {out} is not empty; choose a new folder so nothing is overwritten.")
    if e.export_quantization_bit:
        check_gptq(cfg)  # before the slow part
    if e.export_hub_model_id:
        check_hub_push()
    tokenizer, template, model = load_inference_model(merge_placement(cfg), before_merge=check_not_quantized)
    if e.export_device == "cpu":
        model = model.to("cpu")  # a no-op unless something placed it elsewhere (unsloth, quantization_device_map)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out, max_shard_size=f"{e.export_size}GB")
    tokenizer.save_pretrained(out)
    save_processor(cfg, model, tokenizer, out)
    max_length = getattr(model.config, "max_position_embeddings", None)
    (out / "Modelfile").write_text(modelfile(template, tokenizer, max_length), encoding="utf-8")
    logger.info("Exported the merged model to %s", out)
    if e.export_quantization_bit:
        from transformers import AutoModelForCausalLM

        quantized = AutoModelForCausalLM.from_pretrained(out, quantization_config=gptq_config(cfg, tokenizer), device_map="auto")
        quantized.save_pretrained(out, max_shard_size=f"{e.export_size}GB")
        logger.info("Quantized the export to %d-bit GPTQ", e.export_quantization_bit)
    if e.export_hub_model_id:
        model.push_to_hub(e.export_hub_model_id, token=cfg.model.hf_hub_token or cfg.hub_token, max_shard_size=f"{e.export_size}GB")
        tokenizer.push_to_hub(e.export_hub_model_id, token=cfg.model.hf_hub_token or cfg.hub_token)
    return out
