"""The typed option groups of one run, each option declared once with what makes it valid.

Each option is declared once, here, with its type, default and one line of help; that help
feeds `lathe train --help`, the docs and the Board. Names are LLaMA-Factory's where both
tools have the option, so its YAML configs run unchanged. Training options are the Hugging
Face `Seq2SeqTrainingArguments` fields, taken by their own names (see `training.py`).

An option's own constraints sit on its declaration: `choices` (a tuple, or a registry whose
members are the choices: stages, methods, preference losses) and `rule` (what a valid value
is, e.g. positive). Constraints between options of one group are the group's `check`;
constraints across groups live in `validate.py`. Every group is frozen: a loaded config is
read, never edited.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LatheError, did_you_mean
from ..registry import INFER_BACKENDS, METHODS, PREFERENCE_LOSSES, REWARD_MODELS, STAGES


@dataclass(frozen=True)
class Rule:
    """A constraint on one value: `test(value)` holds for valid values, `expected` says which those are."""

    test: Callable[[Any], bool]
    expected: str


POSITIVE = Rule(lambda v: v > 0, "positive")
NOT_NEGATIVE = Rule(lambda v: v >= 0, "0 or more")
PROBABILITY = Rule(lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def opt(default: Any, help: str, choices: tuple[str, ...] | Mapping | None = None, rule: Rule | None = None) -> Any:
    """Declare an option: its default, its help line and what a valid value is (`choices`, `rule`)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if rule is not None:
        meta["rule"] = rule
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The valid values of an option with choices (a registry's members are read now, so plugins count)."""
    choices = f.metadata.get("choices")
    return tuple(choices) if choices is not None else None


def help_of(f: dataclasses.Field) -> str:
    """The option's help line; a registry's members, with their own help, are listed after it."""
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices is not None and hasattr(choices, "describe"):
        text = f"{text.rstrip('.')}: {choices.describe()}."
    return text


def check_value(key: str, value: Any, f: dataclasses.Field, source: str) -> None:
    """Refuse a value outside the option's choices or rule, naming the key (None: not set, always valid)."""
    if value is None:
        return
    choices = f.metadata.get("choices")
    if isinstance(choices, tuple) and value not in choices:
        raise LatheError(f"`{key}: {value}` is not valid; choose one of {', '.join(choices)}." + did_you_mean(str(value), choices))
    if choices is not None and not isinstance(choices, tuple):
        choices[value]  # a registry: an unknown name fails with the close ones and the registered ones
    rule = f.metadata.get("rule")
    if rule is not None and not rule.test(value):
        raise LatheError(f"{source}: `{key}` must be {rule.expected}, got {value!r}.")


@dataclass(frozen=True)
class ModelArguments:
    model_name_or_path: str | None = opt(None, "Local model folder or hub id (required).")
    adapter_name_or_path: str | None = opt(
        None, "Comma list of LoRA adapter folders: all but the last are merged into the model; the last is trained further (or merged for inference)."
    )
    cache_dir: str | None = opt(None, "Where hub downloads are cached.")
    model_revision: str = opt("main", "Hub revision (branch, tag or commit) of the model.")
    hf_hub_token: str | None = opt(None, "Hub token for gated or private models (never logged or saved).")
    ms_hub_token: str | None = opt(None, "ModelScope token (USE_MODELSCOPE_HUB=1) for private models and datasets (never logged or saved).")
    om_hub_token: str | None = opt(None, "Modelers token (USE_OPENMIND_HUB=1) for private models and datasets (never logged or saved).")
    trust_remote_code: bool = opt(False, "Run the model repository's own Python code (off unless you trust it).")
    use_fast_tokenizer: bool = opt(True, "Use the fast (Rust) tokenizer.")
    split_special_tokens: bool = opt(False, "Tokenize special-token text as plain text.")
    add_tokens: str | None = opt(None, "Comma list of plain tokens to add to the tokenizer (embeddings resized).")
    add_special_tokens: str | None = opt(None, "Comma list of special tokens to add to the tokenizer (embeddings resized).")
    resize_vocab: bool = opt(False, "Resize the embeddings to the tokenizer and train the new rows.")
    dtype: str = opt(
        "auto",
        "Dtype the weights are loaded in; auto = bf16/fp16 when that training flag is set, else fp32.",
        ("auto", "float32", "bfloat16", "float16"),
    )
    flash_attn: str = opt(
        "auto",
        "Attention kernel: auto (best available), disabled (eager), sdpa, fa2 (flash-attn 2), fa3 (flash-attn 3, Hopper GPUs).",
        ("auto", "disabled", "sdpa", "fa2", "fa3"),
    )
    quantization_bit: int | None = opt(None, "QLoRA: load the base weights in 4 or 8 bits (finetuning_type lora).")
    quantization_method: str = opt(
        "bnb", "How to quantize on the fly: bnb (bitsandbytes), hqq, torchao, quanto (optimum-quanto) or eetq (CUDA); "
        "gptq/awq/aqlm/mxfp4/fp8 checkpoints load as saved.",
        ("bnb", "hqq", "eetq", "torchao", "quanto", "gptq", "awq", "aqlm", "mxfp4", "fp8")
    )
    quantization_device_map: str | None = opt(
        None, "Quantized loading: `auto` spreads the weights over the GPUs and the CPU (inference and export only).", ("auto",)
    )
    offload_folder: str = opt("offload", "Where weights that fit on no device are offloaded to disk (device_map auto).")
    quantization_type: str = opt("nf4", "bnb 4-bit data type: nf4 or fp4.", ("nf4", "fp4"))
    double_quantization: bool = opt(True, "bnb 4-bit: quantize the quantization constants too (saves ~0.4 bit/param).")
    rope_scaling: str | None = opt(
        None, "Stretch RoPE to cutoff_len beyond the model's positions: linear, dynamic, yarn or llama3.",
        ("linear", "dynamic", "yarn", "llama3"),
    )
    upcast_layernorm: bool = opt(False, "Keep norm layers in fp32 (computed in fp32) when the model is in half precision.")
    upcast_lmhead_output: bool = opt(False, "Compute the logits in fp32 when the model is in half precision.")
    shift_attn: bool = opt(False, "LongLoRA S2-Attn while training (llama family): attention within groups of cutoff_len/4 tokens.")
    train_from_scratch: bool = opt(False, "Start from random weights built from the model's config.")
    use_unsloth: bool = opt(False, "Load and add LoRA through unsloth's FastLanguageModel (needs unsloth and a CUDA GPU).")
    use_unsloth_gc: bool = opt(
        False, "Gradient checkpointing whose saved layer inputs wait in CPU memory (LLaMA-Factory's name; with "
        "use_unsloth, unsloth's own). Without use_unsloth it is offload_activations.")
    enable_liger_kernel: bool = opt(False, "Liger's fused Triton kernels (needs liger-kernel and a CUDA GPU).")
    disable_gradient_checkpointing: bool = opt(
        False, "true: no gradient checkpointing; false: always on. Unset: on only when a batch's activations would not fit in memory without it."
    )
    use_reentrant_gc: bool = opt(True, "Use the re-entrant variant of gradient checkpointing.")
    offload_activations: bool = opt(
        False, "GPU runs: checkpoint every layer and keep the checkpointed layer inputs in pinned host memory until the "
        "backward pass (frees layers x tokens x hidden of GPU memory; costs a copy each way per layer).")
    tiled_mlp: bool | None = opt(
        None, "Run each layer's MLP over tiles of the sequence, recomputed in the backward pass (keeps 4 x ffn values "
        "per token out of memory; the MLP's forward runs twice). Unset: on when even checkpointing every layer would "
        "not fit the memory.")
    low_cpu_mem_usage: bool = opt(True, "Load weights without building a random-init copy first.")
    adapter_folder: str | None = opt(None, "Sub-folder inside each adapter_name_or_path that holds the adapter files (peft's subfolder).")
    new_special_tokens_config: str | None = opt(
        None, "YAML file mapping each new special token to a description of it; the tokens are added to the tokenizer."
    )
    init_special_tokens: str = opt(
        "noise_init", "How the embeddings of added tokens start: noise_init (mean + noise), desc_init (mean of their "
        "description's tokens), desc_init_w_noise (that, plus noise).", ("noise_init", "desc_init", "desc_init_w_noise"),
    )
    moe_aux_loss_coef: float | None = opt(
        None, "MoE models: weight of the router's load-balancing loss added to the training loss.", rule=NOT_NEGATIVE
    )
    print_param_status: bool = opt(False, "Log every parameter's name, shape, dtype, device and whether it trains.")
    infer_backend: str = opt("huggingface", "Inference engine of chat/api/webchat.", INFER_BACKENDS)
    infer_dtype: str = opt(
        "auto", "Dtype of the weights for inference; auto = the training `dtype` rule.",
        ("auto", "float32", "bfloat16", "float16"),
    )
    use_kv_cache: bool = opt(True, "Reuse attention keys/values while generating (off only to save memory).")
    vllm_maxlen: int = opt(4096, "vllm: longest prompt + answer, in tokens.")
    vllm_gpu_util: float = opt(0.7, "vllm: share of GPU memory vLLM may take (0-1).")
    vllm_enforce_eager: bool = opt(False, "vllm: no CUDA graphs (less memory, slower).")
    vllm_max_lora_rank: int = opt(32, "vllm: largest LoRA rank served.")
    vllm_config: dict | str | None = opt(None, "vllm: further engine arguments (a dict or its JSON).")
    sglang_maxlen: int = opt(4096, "sglang: longest prompt + answer, in tokens.")
    sglang_mem_fraction: float = opt(0.7, "sglang: share of GPU memory for weights and KV cache (0-1).")
    sglang_tp_size: int = opt(-1, "sglang: tensor-parallel GPUs; -1 = all visible.")
    sglang_config: dict | str | None = opt(None, "sglang: further engine arguments (a dict or its JSON).")
    sglang_lora_backend: str = opt("triton", "sglang: LoRA kernel backend.", ("triton", "flashinfer", "csgmv"))

    def check(self, source: str) -> None:
        """Constraints between the model options, and the hardware and packages some of them need."""
        if self.quantization_bit is not None and (
                self.quantization_bit not in (1, 2, 3, 4, 8) or self.quantization_bit < 4 and self.quantization_method != "hqq"):
            raise LatheError(f"{source}: `quantization_bit` must be 4 or 8 (1, 2 and 3 with `quantization_method: hqq`), "
                             f"got {self.quantization_bit}.")
        # transformers 5 dropped these switches without a word (use_fast: the class is picked from the
        # files; low_cpu_mem_usage: always on); passing them on would parse the option and ignore it
        if not self.use_fast_tokenizer:
            raise LatheError(f"{source}: `use_fast_tokenizer: false`: transformers 5 ignores a request for the slow "
                             f"(Python) tokenizer and loads the fast (Rust) one wherever the model has it; remove it.")
        if not self.low_cpu_mem_usage:
            raise LatheError(f"{source}: `low_cpu_mem_usage: false`: transformers 5 always loads the weights without "
                             f"building a random-init copy first and has no other way; remove it.")
        if self.new_special_tokens_config is not None and self.add_special_tokens:
            raise LatheError(f"{source}: `new_special_tokens_config` lists the special tokens to add (with their "
                             f"descriptions), and `add_special_tokens` lists them too; LLaMA-Factory would drop "
                             f"`add_special_tokens`. Put every special token in the YAML file and remove `add_special_tokens`.")
        if self.init_special_tokens.startswith("desc_init") and self.new_special_tokens_config is None:
            raise LatheError(f"{source}: `init_special_tokens: {self.init_special_tokens}` starts each new token at its "
                             f"description, which comes from `new_special_tokens_config` (YAML `token: description`); "
                             f"set it, or use `init_special_tokens: noise_init`.")
        if self.offload_folder != "offload" and self.quantization_device_map is None:
            raise LatheError(f"{source}: `offload_folder: {self.offload_folder}` holds the weights a device map puts on "
                             f"disk; it needs `quantization_device_map: auto` (inference and export). Remove it, or set that too.")
        if self.quantization_device_map is not None and self.quantization_bit == 8 and self.quantization_method == "bnb":
            raise LatheError(f"{source}: `quantization_device_map: auto` with bitsandbytes needs `quantization_bit: 4` "
                             f"(8-bit weights cannot be split over devices).")
        if self.offload_activations or self.use_unsloth_gc and not self.use_unsloth:
            self._check_offload(source)
        if self.use_unsloth:
            import torch

            if not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None:
                lacks = "a CUDA GPU" if not torch.cuda.is_available() else "the unsloth package (pip install unsloth)"
                raise LatheError(f"{source}: `use_unsloth` needs a CUDA GPU and the unsloth package (its Triton kernels have "
                                 f"no CPU backend); this machine lacks {lacks}. Remove `use_unsloth` to train with "
                                 f"transformers + peft.")
        if self.enable_liger_kernel:
            import torch

            if importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available():
                raise LatheError(
                    f"{source}: `enable_liger_kernel` needs the liger-kernel package and a CUDA GPU "
                    f"(Triton has no CPU backend); pip install liger-kernel on a GPU machine, or remove it."
                )


    def _check_offload(self, source: str) -> None:
        import torch

        key = "offload_activations" if self.offload_activations else "use_unsloth_gc"
        if self.disable_gradient_checkpointing:
            raise LatheError(f"{source}: `{key}` keeps the inputs of checkpointed layers in host memory; it needs gradient "
                             f"checkpointing, which `disable_gradient_checkpointing: true` turns off. Remove one of them.")
        if not torch.accelerator.is_available():
            raise LatheError(f"{source}: `{key}` moves checkpointed activations from GPU memory to host memory; this "
                             f"machine has no GPU, so they are in host memory already. Remove it.")


@dataclass(frozen=True)
class DataArguments:
    dataset: str | None = opt(None, "Comma list of training datasets, by their names in dataset_info.json.")
    eval_dataset: str | None = opt(None, "Comma list of evaluation datasets, by their names in dataset_info.json.")
    dataset_dir: str = opt("data", "Folder holding dataset_info.json and the data files.")
    template: str | None = opt(None, "Chat template; omitted = the tokenizer's own chat template.")
    cutoff_len: int = opt(
        2048, "Maximum tokens of one sample after tokenization (longer ones are truncated).",
        rule=Rule(lambda v: v > 0, "a positive number of tokens"),
    )
    max_samples: int | None = opt(None, "Keep at most this many samples of each dataset.", rule=POSITIVE)
    val_size: float = opt(
        0.0, "Hold out this fraction (< 1) or count (>= 1) of the training data for evaluation.",
        rule=Rule(lambda v: 0 <= v < 1 or v >= 1 and float(v).is_integer(), "a fraction in [0, 1) or a whole count"),
    )
    train_on_prompt: bool = opt(False, "Learn the prompt tokens too (not only the answers).")
    mask_history: bool = opt(False, "Learn only the last answer of a multi-turn conversation.")
    default_system: str | None = opt(None, "System prompt for samples that have none (overrides the template's).")
    overwrite_cache: bool = opt(False, "Tokenize again even if a cached result exists.")
    preprocessing_num_workers: int | None = opt(None, "Processes that tokenize the data (in shards of 10,000 samples); unset: the cores available once the data has 50,000 samples, else 1.", rule=POSITIVE)
    dedup: str | None = opt(None, "Remove duplicate samples of each dataset before tokenizing: exact (identical conversations) or minhash (near-duplicates: Jaccard >= 0.9 on word 5-grams); counted in the data report.", ("exact", "minhash"))
    preprocessing_batch_size: int = opt(1000, "Samples per tokenization batch.")
    mix_strategy: str = opt(
        "concat",
        "How several datasets are combined: concat, interleave_under (stop at the shortest), "
        "interleave_over (oversample until the longest is used up), interleave_once (until every one is used up, none repeated).",
        ("concat", "interleave_under", "interleave_over", "interleave_once"),
    )
    interleave_probs: str | None = opt(None, "Comma list of sampling probabilities for the interleave strategies.")
    packing: bool | None = opt(None, "Pack several samples into each cutoff_len row (no padding); default: on for pt, off otherwise.")
    neat_packing: bool = opt(False, "Pack without attention across packed samples (per-sample position ids).")
    padding_free: bool = opt(False, "sft without packing: flatten each batch into one row (per-sample position ids): same batches and loss, no padding computed. Unset: on wherever the model masks packed rows.")
    tokenized_path: str | None = opt(
        None, "Folder of tokenized data: loaded when it exists, else written after preprocessing."
    )
    streaming: bool = opt(False, "Read and tokenize the data while training instead of up front (needs max_steps).")
    buffer_size: int = opt(16384, "streaming: samples held in the shuffle buffer.", rule=POSITIVE)
    tokenize_in_background: bool = opt(
        False, "streaming with an empty tokenized_path: start training on the first tokenized shard while a "
        "background process tokenizes the rest into the folder (one training process).")
    enable_thinking: bool = opt(True, "Reasoning templates (qwen3): think before answering; false = empty think block. gemma4: true writes <|think|> in the system turn.")
    tool_format: str | None = opt(None, "Override the template's tool-call format by name: one of the registered formats (an unknown name lists them; docs/templates.md#tool-calling).")
    preserve_thinking: bool = opt(False, "Reasoning templates: keep the thinking of earlier assistant turns in the prompt (default: dropped).")
    reasoning_effort: str | None = opt(None, "Templates with a reasoning level in their system text: gpt_oss (low, medium, high; default medium), hy3 (no_think, low, high; default no_think). Default: the template's.")
    media_dir: str | None = opt(None, "Multimodal data: folder the image / video / audio paths of the data are relative to (default: dataset_dir).")
    image_max_pixels: int = opt(768 * 768, "Images larger than this many pixels are scaled down (aspect kept) before the processor.", rule=POSITIVE)
    image_min_pixels: int = opt(32 * 32, "Images smaller than this many pixels are scaled up (aspect kept).", rule=POSITIVE)
    image_do_pan_and_scan: bool = opt(False, "Gemma 3: also feed crops of large images (the image processor's pan and scan).")
    crop_to_patches: bool = opt(False, "InternVL: split large images into tiles plus a thumbnail (the image processor's crop_to_patches).")
    video_max_pixels: int = opt(256 * 256, "Video frames larger than this many pixels are scaled down.", rule=POSITIVE)
    video_min_pixels: int = opt(16 * 16, "Video frames smaller than this many pixels are scaled up.", rule=POSITIVE)
    video_fps: float = opt(2.0, "Frames sampled per second of video.", rule=POSITIVE)
    video_maxlen: int = opt(128, "At most this many frames per video.", rule=POSITIVE)
    use_audio_in_video: bool = opt(False, "Omni models: also feed the audio track of each video.")
    audio_sampling_rate: int = opt(16000, "Audio is resampled to this rate (Hz) before the feature extractor.", rule=POSITIVE)
    ignore_pad_token_for_loss: bool = opt(True, "Padding in the labels is ignored by the loss and by the predict metrics.")
    eval_on_each_dataset: bool = opt(False, "Evaluate each eval_dataset on its own: one eval_<name>_loss per dataset.")
    eval_num_beams: int | None = opt(None, "predict_with_generate: beam width of the generation (default: num_beams).", rule=POSITIVE)
    data_shared_file_system: bool = opt(
        False, "Several machines: the data cache is on a file system all of them share, so only the global main process tokenizes."
    )

    def dataset_names(self) -> list[str]:
        return [n.strip() for n in (self.dataset or "").split(",") if n.strip()]

    def check(self, source: str) -> None:
        """Constraints between the data options."""
        if self.neat_packing and self.packing is False:
            raise LatheError(f"{source}: `neat_packing: true` packs samples; it cannot go with `packing: false`.")
        if self.mask_history and self.train_on_prompt:
            raise LatheError(f"{source}: `mask_history` and `train_on_prompt` contradict each other; set one.")
        if self.interleave_probs:
            if not self.mix_strategy.startswith("interleave"):
                raise LatheError(f"{source}: `interleave_probs` needs `mix_strategy: interleave_under`, `interleave_over` "
                                 f"or `interleave_once`.")
            try:
                probs = [float(p) for p in self.interleave_probs.split(",")]
            except ValueError:
                raise LatheError(f"{source}: `interleave_probs` must be a comma list of numbers, got "
                                 f"{self.interleave_probs!r}.") from None
            if len(probs) != len(self.dataset_names()):
                raise LatheError(f"{source}: `interleave_probs` needs one probability per dataset in `dataset`.")
            if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                raise LatheError(f"{source}: `interleave_probs` must be non-negative and sum to 1, got {self.interleave_probs}.")


@dataclass(frozen=True)
class FinetuningArguments:
    stage: str = opt("sft", "Training stage.", STAGES)
    finetuning_type: str = opt("lora", "What is trained.", METHODS)
    plot_loss: bool = opt(False, "Write training_loss.png to output_dir at the end.")
    freeze_trainable_layers: int = opt(
        2, "freeze: train the last N layers (negative N: the first N).",
        rule=Rule(lambda v: v != 0, "a layer count other than 0 (N > 0: last N layers, N < 0: first N)"),
    )
    use_llama_pro: bool = opt(False, "freeze: train only the blocks `lathe expand` added (freeze_trainable_layers = their count).")
    freeze_vision_tower: bool = opt(True, "Multimodal models: keep the vision (and audio) encoder frozen, whatever the method.")
    freeze_multi_modal_projector: bool = opt(True, "Multimodal models: keep the projector between the encoder and the language model frozen.")
    freeze_language_model: bool = opt(False, "Multimodal models: keep the language model frozen (train the encoder / projector only).")
    freeze_trainable_modules: str = opt("all", "freeze: comma list of module names inside those layers to train, or all.")
    freeze_extra_modules: str | None = opt(None, "freeze: comma list of modules outside the layers to train too (e.g. embed_tokens).")
    lora_rank: int = opt(8, "LoRA rank.", rule=Rule(lambda v: v > 0, "a positive integer"))
    lora_alpha: int | None = opt(None, "LoRA scale numerator; default 2 x lora_rank.", rule=POSITIVE)
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.", rule=PROBABILITY)
    lora_target: str = opt("all", "Comma list of module names that get LoRA, or all (every linear layer but the output head).")
    additional_target: str | None = opt(None, "Comma list of modules trained in full beside LoRA (peft modules_to_save).")
    use_rslora: bool = opt(False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank)).")
    loraplus_lr_ratio: float | None = opt(None, "LoRA+: the B matrices learn this many times faster than A.", rule=POSITIVE)
    loraplus_lr_embedding: float = opt(1e-6, "LoRA+: learning rate of LoRA on embedding layers.")
    pissa_init: bool = opt(False, "PiSSA: start LoRA from the principal singular vectors of each weight.")
    pissa_iter: int = opt(16, "PiSSA: fast-SVD iterations (-1: exact SVD).")
    pissa_convert: bool = opt(False, "PiSSA: save the final adapter as plain LoRA that applies to the original base model.")
    loftq_init: bool = opt(False, "LoftQ (lathe option): with quantization_bit 4, start LoRA at the low-rank part of the quantization error.")
    create_new_adapter: bool = opt(False, "With adapter_name_or_path: merge them all and train a new adapter on top.")
    use_dora: bool = opt(False, "Weight-decomposed LoRA (DoRA).")
    pure_bf16: bool = opt(False, "Train in bf16 without mixed precision: no fp32 master weights (half the memory, less exact).")
    oft_rank: int = opt(0, "OFT: number of diagonal blocks of the rotation (0: set by oft_block_size).", rule=NOT_NEGATIVE)
    oft_block_size: int = opt(32, "OFT: rows per block of the rotation (used when oft_rank is 0).", rule=NOT_NEGATIVE)
    oft_target: str = opt("all", "OFT: comma list of module names to rotate, or all (every linear layer but the output head).")
    module_dropout: float = opt(0.0, "OFT: probability of dropping a whole block's rotation while training.", rule=PROBABILITY)
    pref_beta: float = opt(0.1, "dpo/kto: beta, the strength of the pull towards the reference model.", rule=POSITIVE)
    pref_ftx: float = opt(0.0, "dpo: weight of an added SFT loss on the chosen answers.")
    pref_loss: str = opt("sigmoid", "dpo: the preference loss.", PREFERENCE_LOSSES)
    dpo_label_smoothing: float = opt(
        0.0, "dpo (sigmoid): probability that a preference label is flipped (cDPO), in [0, 0.5].",
        rule=Rule(lambda v: 0.0 <= v <= 0.5, "in [0, 0.5]"),
    )
    simpo_gamma: float = opt(0.5, "simpo: target reward margin.")
    kto_chosen_weight: float = opt(1.0, "kto: weight of the desirable examples' loss.", rule=NOT_NEGATIVE)
    kto_rejected_weight: float = opt(1.0, "kto: weight of the undesirable examples' loss.", rule=NOT_NEGATIVE)
    ref_model: str | None = opt(
        None, "dpo/kto/ppo/grpo/rloo: reference model folder; default: the base model (LoRA: the adapter switched off)."
    )
    ref_model_adapters: str | None = opt(
        None, "dpo/kto/ppo/grpo/rloo: comma list of LoRA adapters merged into ref_model."
    )
    ref_model_quantization_bit: int | None = opt(
        None, "dpo/kto/ppo/grpo/rloo: load ref_model in 4 or 8 bits (the run's quantization_method, bnb by default)."
    )
    pref_bco_weight: float = opt(0.0, "dpo: weight of the BCO term, mixed in as (loss + w x bco) / (1 + w); needs a loss with a reference model (0: none).", rule=NOT_NEGATIVE)
    ld_alpha: float | None = opt(
        None, "dpo: LD-DPO: weight of the tokens past the shorter answer's length in the log-probabilities, in [0, 1].",
        rule=Rule(lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    )
    reward_model: str | None = opt(
        None, "ppo (grpo/rloo: beside reward_funcs): the reward model: a folder from `stage: rm`, or a URL with "
        "reward_model_type api."
    )
    reward_model_type: str = opt("lora", "ppo/grpo/rloo: where reward_model's scores come from.", REWARD_MODELS)
    reward_model_adapters: str | None = opt(
        None, "ppo/grpo/rloo: comma list of LoRA adapters merged into a full reward_model."
    )
    reward_model_quantization_bit: int | None = opt(
        None, "ppo/grpo/rloo: load a full reward_model in 4 or 8 bits (the run's quantization_method, bnb by default)."
    )
    ppo_epochs: int = opt(4, "ppo: optimisation passes over each batch of rollouts.", rule=POSITIVE)
    ppo_buffer_size: int = opt(1, "ppo: mini-batches of rollouts collected before each optimisation phase.", rule=POSITIVE)
    ppo_target: float = opt(6.0, "ppo: target KL to the reference of the adaptive KL controller.")
    ppo_score_norm: bool = opt(False, "ppo: normalise the reward scores with the running mean and std of all scores so far (TRL's score norm).")
    ppo_whiten_rewards: bool = opt(False, "ppo: whiten the per-token rewards before computing advantages.")
    # grpo / rloo: named after TRL's GRPOConfig fields (`grpo_beta` is its `beta`), so TRL recipes carry over.
    num_generations: int = opt(8, "grpo/rloo: completions sampled per prompt (a group); at least 2.", rule=POSITIVE)
    max_completion_length: int = opt(512, "grpo/rloo: most tokens generated per completion.", rule=POSITIVE)
    grpo_beta: float = opt(
        0.0, "grpo/rloo: KL coefficient to the reference model (TRL's `beta`); 0 = no KL term and no reference model.",
        rule=NOT_NEGATIVE,
    )
    epsilon: float = opt(0.2, "grpo/rloo: lower clipping range of the importance ratio (1 - epsilon).", rule=POSITIVE)
    epsilon_high: float | None = opt(
        None, "grpo/rloo: upper clipping range (1 + epsilon_high); default epsilon. DAPO's clip-higher uses 0.28.",
        rule=POSITIVE,
    )
    loss_type: str = opt(
        "dapo", "grpo/rloo: how token losses are averaged: grpo (per sequence, then over sequences), bnpo (over the "
        "micro-batch's tokens), dr_grpo (sum / (rows x max_completion_length)), dapo (over the tokens of the whole "
        "optimiser batch).",
    )
    importance_sampling_level: str = opt(
        "token", "grpo/rloo: the importance ratio per token, or per sequence (GSPO: the geometric mean of the token "
        "ratios).", ("token", "sequence"),
    )
    scale_rewards: str = opt(
        "group", "grpo: divide the advantages by the std of the group's rewards, of the batch's, or none (Dr. GRPO).",
        ("group", "batch", "none"),
    )
    num_iterations: int = opt(
        1, "grpo/rloo: optimisation passes over each batch of completions (TRL's mu); above 1 the loss is clipped "
        "against the log-probs recorded at sampling.", rule=POSITIVE,
    )
    mask_truncated_completions: bool = opt(
        False, "grpo/rloo: completions cut at max_completion_length get no loss (DAPO's overlong filtering)."
    )
    dynamic_sampling: bool = opt(
        False, "grpo/rloo (lathe option): DAPO's dynamic sampling: groups whose rewards are all equal (no signal) are "
        "dropped from the update."
    )
    reward_funcs: str | None = opt(
        None, "grpo/rloo: comma list of reward functions: built-ins (accuracy, format, length, tool_call) and "
        "`file.py:function` (path relative to the config; fn(prompts, completions, **columns) -> list of floats)."
    )
    reward_weights: str | None = opt(
        None, "grpo/rloo: comma list of weights, one per reward function, then one for reward_model if set "
        "(default: 1 each)."
    )
    reward_format_pattern: str | None = opt(
        None, "grpo/rloo: the `format` reward's regex, matched against the whole completion (default: "
        "<think>...</think> then an answer)."
    )
    overlong_buffer_len: int | None = opt(
        None, "grpo/rloo: the `length` reward falls from 0 to -1 over this many tokens before max_completion_length "
        "(DAPO; default a quarter of it).", rule=POSITIVE,
    )
    compute_accuracy: bool = opt(False, "sft: report the token accuracy of the answers at evaluation.")
    use_dft_loss: bool = opt(False, "sft: Dynamic Fine-Tuning: each token's loss weighted by its (detached) probability.")
    use_asft_loss: bool = opt(False, "sft: Anchored SFT: the DFT loss plus asft_alpha x KL(reference || policy) per token.")
    asft_alpha: float = opt(0.1, "sft: weight of ASFT's KL term.", rule=NOT_NEGATIVE)
    use_eaft_loss: bool = opt(False, "sft: Entropy-Aware FT: each token's loss weighted by (H/3)^eaft_alpha, H the entropy over its 20 likeliest tokens.")
    eaft_alpha: float = opt(1.0, "sft: exponent of EAFT's entropy weight.", rule=NOT_NEGATIVE)
    early_stopping_steps: int | None = opt(
        None, "Stop training when eval_loss has not improved for this many evaluations in a row.", rule=POSITIVE
    )
    use_galore: bool = opt(False, "GaLore: full-parameter training with low-rank projected optimizer states.")
    galore_target: str = opt("all", "GaLore: comma list of linear module names to project, or all.")
    galore_rank: int = opt(16, "GaLore: rank of the projection.", rule=POSITIVE)
    galore_update_interval: int = opt(200, "GaLore: steps between projection updates (an SVD each).")
    galore_scale: float = opt(2.0, "GaLore: scale of the projected update.")
    galore_proj_type: str = opt("std", "GaLore: projection side.", ("std", "reverse_std", "right", "left", "full"))
    galore_layerwise: bool = opt(False, "GaLore: update layer by layer during backward (saves memory; no accumulation).")
    use_apollo: bool = opt(False, "APOLLO: full-parameter training with random-projected optimizer scaling.")
    apollo_target: str = opt("all", "APOLLO: comma list of linear module names, or all.")
    apollo_rank: int = opt(16, "APOLLO: rank of the projection.", rule=POSITIVE)
    apollo_update_interval: int = opt(200, "APOLLO: steps between projection updates.")
    apollo_scale: float = opt(32.0, "APOLLO: scale of the update.")
    apollo_proj: str = opt("random", "APOLLO: projection kind.", ("svd", "random"))
    apollo_proj_type: str = opt("std", "APOLLO: projection side.", ("std", "right", "left"))
    apollo_scale_type: str = opt("channel", "APOLLO: scaling granularity.", ("channel", "tensor"))
    apollo_layerwise: bool = opt(False, "APOLLO: update layer by layer during backward (no accumulation).")
    apollo_scale_front: bool = opt(
        False, "APOLLO: multiply by sqrt(apollo_scale) before the norm-growth limiter instead of after (the limiter "
        "compares ratios of norms, so only rounding differs).",
    )
    use_badam: bool = opt(False, "BAdam: full-parameter training one block of layers (or a share of each matrix) at a time.")
    badam_mode: str = opt("layer", "BAdam: layer (switch blocks of layers) or ratio (update a share of every matrix).", ("layer", "ratio"))
    badam_update_ratio: float = opt(
        0.05, "BAdam ratio mode: share of each matrix's entries updated per step.",
        rule=Rule(lambda v: 0 < v <= 1, "a share in (0, 1]"),
    )
    badam_mask_mode: str = opt("adjacent", "BAdam ratio mode: which entries: adjacent (a block) or scatter (random).", ("adjacent", "scatter"))
    badam_start_block: int | None = opt(None, "BAdam: the first block to train (default: by switch mode).")
    badam_switch_mode: str | None = opt(
        "ascending", "BAdam: block order (null: BAdam's own default, descending).", ("ascending", "descending", "random", "fixed")
    )
    badam_switch_interval: int = opt(50, "BAdam: steps before switching to the next block.")
    badam_verbose: int = opt(0, "BAdam: 0 quiet, 1 block switches, 2 also trainable parameters.")
    use_adam_mini: bool = opt(False, "Adam-mini: one second moment per block (attention head, neuron): about half Adam's state.")
    use_muon: bool = opt(False, "Muon (torch.optim.Muon) for hidden 2-D weights, AdamW for embeddings, head and vectors.")
    disable_shuffling: bool = opt(False, "Read the training data in order instead of shuffled.")
    include_effective_tokens_per_second: bool = opt(False, "Also report effective (non-padding) tokens per second in the final metrics.")
    use_swanlab: bool = opt(False, "Log the run to SwanLab (swanlab_mode local: offline, into swanlab_logdir).")
    swanlab_project: str = opt("llamafactory", "SwanLab: project name.")
    swanlab_workspace: str | None = opt(None, "SwanLab: workspace (team) of the project.")
    swanlab_run_name: str | None = opt(None, "SwanLab: experiment name (default: run_name).")
    swanlab_mode: str = opt("cloud", "SwanLab: cloud, local (offline files), offline or disabled.", ("cloud", "local", "offline", "disabled"))
    swanlab_api_key: str | None = opt(None, "SwanLab: API key for cloud mode (never logged or saved).")
    swanlab_logdir: str | None = opt(None, "SwanLab: folder of the local/offline logs (default: swanlog in the working folder).")
    swanlab_lark_webhook_url: str | None = opt(None, "SwanLab: Lark (Feishu) webhook notified of the run.")
    swanlab_lark_secret: str | None = opt(None, "SwanLab: secret of that Lark webhook (never logged or saved).")


@dataclass(frozen=True)
class GeneratingArguments:
    do_sample: bool = opt(True, "Sample instead of greedy decoding.")
    temperature: float = opt(0.95, "Sampling temperature.")
    top_p: float = opt(0.7, "Nucleus sampling probability mass.")
    top_k: int = opt(50, "Sample among the k most likely tokens.")
    num_beams: int = opt(1, "Beam search width (1 = no beam search).")
    max_length: int = opt(1024, "Maximum total length when max_new_tokens is not set.")
    max_new_tokens: int = opt(1024, "Maximum tokens generated (wins over max_length when > 0).")
    repetition_penalty: float = opt(1.0, "Penalty for repeated tokens (1.0 = none).")
    length_penalty: float = opt(1.0, "Beam search length penalty.")
    skip_special_tokens: bool = opt(True, "Drop special tokens from decoded output.")


@dataclass(frozen=True)
class ExportArguments:
    export_dir: str | None = opt(None, "export: folder the merged model is written to.")
    export_size: float = opt(5, "export: largest shard file, in GB (fractions allowed).")
    export_device: str = opt("cpu", "export: device used for merging (cpu or auto).", ("cpu", "auto"))
    export_legacy_format: bool = opt(False, "export: .bin (pickle) files instead of safetensors; refused (transformers 5 writes safetensors only).")
    export_hub_model_id: str | None = opt(None, "export: also push the result to this hub repository (needs the network).")
    export_quantization_bit: int | None = opt(None, "export: quantize with GPTQ to this many bits (2, 3, 4 or 8).")
    export_quantization_dataset: str | None = opt(None, "export: text file (one sample per line) to calibrate GPTQ on.")
    export_quantization_nsamples: int = opt(128, "export: calibration samples for GPTQ.")
    export_quantization_maxlen: int = opt(1024, "export: longest calibration sample, in tokens.")


@dataclass(frozen=True)
class EvaluationArguments:
    task: str | None = opt(None, "eval: benchmark and split as <task>_<split>, e.g. mmlu_test (a folder in task_dir).")
    task_dir: str = opt("evaluation", "eval: folder holding the benchmark folders.")
    batch_size: int = opt(4, "eval: questions scored per forward pass.")
    lang: str = opt("en", "eval: language of the prompt wording.", ("en", "zh"))
    n_shot: int = opt(5, "eval: solved examples from the dev split shown before each question.")
    save_dir: str | None = opt(None, "eval: folder for results.json and the per-question answers (must not exist).")


# Options that only lathe has, for the run as a whole (kept with the training group).
@dataclass(frozen=True)
class RunArguments:
    overwrite_output_dir: bool = opt(
        False, "Start fresh in output_dir instead of resuming from its last checkpoint."
    )
    # Ray Train (run with USE_RAY=1): LLaMA-Factory's RayArguments.
    ray_num_workers: int = opt(1, "USE_RAY=1: training processes Ray starts (one per GPU, or per CPU slot).", rule=POSITIVE)
    resources_per_worker: dict | str | None = opt(
        None, "USE_RAY=1: resources of each worker, e.g. {GPU: 1} (default: one GPU where there are GPUs, else one CPU)."
    )
    placement_strategy: str = opt("PACK", "USE_RAY=1: how workers are placed on the cluster's nodes.", ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"))
    ray_storage_path: str | None = opt(None, "USE_RAY=1: where Ray Train keeps its run records (default: Ray's own, ~/ray_results).")
    ray_storage_filesystem: str | None = opt(None, "USE_RAY=1: a pyarrow file system for ray_storage_path: s3 or gs (default: local).", ("s3", "gs", "gcs"))
    ray_init_kwargs: dict | str | None = opt(
        None, "USE_RAY=1: arguments of ray.init, e.g. {address: auto} to join a running cluster (default: start a local one)."
    )
    master_addr: str | None = opt(None, "USE_RAY=1: address of the rank-0 worker for torch.distributed (default: Ray's choice).")
    master_port: int | None = opt(None, "USE_RAY=1: port of the rank-0 worker for torch.distributed (default: a free one).")
    sequence_parallel_size: int = opt(1, "Split each sequence over this many processes (Ulysses attention through DeepSpeed; needs `deepspeed`); the other processes are data parallel.", rule=POSITIVE)
    # The PyTorch profiler: LLaMA-Factory's ProfilerArguments.
    enable_torch_profiler: bool = opt(False, "Profile training steps with torch.profiler; the trace opens in Perfetto or TensorBoard.")
    profiler_output_dir: str | None = opt(None, "Profiler: folder of the traces (default: output_dir/profiler).")
    profiler_wait_steps: int = opt(1, "Profiler: steps skipped before each profiling cycle.", rule=NOT_NEGATIVE)
    profiler_warmup_steps: int = opt(1, "Profiler: steps traced but discarded (warm-up) before the recorded ones.", rule=NOT_NEGATIVE)
    profiler_active_steps: int = opt(1, "Profiler: steps recorded per cycle.", rule=POSITIVE)
    profiler_repeat: int = opt(1, "Profiler: cycles (0: until training ends).", rule=NOT_NEGATIVE)
    profiler_record_shapes: bool = opt(True, "Profiler: record the input shapes of each operator.")
    profiler_profile_memory: bool = opt(True, "Profiler: record tensor memory allocation and release.")
    profiler_with_stack: bool = opt(True, "Profiler: record the Python stack of each operator.")
    profile_modules: str | None = opt(None, "Profiler: comma list of module names (or name patterns) whose forward passes are labelled in the trace.")


GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "finetuning": FinetuningArguments,
    "generating": GeneratingArguments,
    "export": ExportArguments,
    "evaluation": EvaluationArguments,
    "run": RunArguments,
}
