"""LLaMA-Factory options that lathe recognises but does not run yet.

A config that sets one of these to anything but its LLaMA-Factory default is refused with a
message naming the option, instead of being parsed and silently ignored. Left at its
default (as example configs often do, e.g. `quantization_bit: null`) it is accepted: it
changes nothing. When an option is implemented it moves into `schema.py` and leaves here.
"""

from __future__ import annotations

# name -> (LLaMA-Factory default, the part of lathe that will bring it)
PENDING: dict[str, tuple[object, str]] = {
    # model loading
    "adapter_folder": (None, "adapters"),
    "new_special_tokens_config": (None, "tokenizer"),
    "init_special_tokens": ("noise_init", "tokenizer"),
    "mixture_of_depths": (None, "efficient methods"),
    "moe_aux_loss_coef": (None, "efficient methods"),
    "quantization_device_map": (None, "quantization"),
    "offload_folder": ("offload", "inference"),
    "print_param_status": (False, "model loading"),
    "use_v1_kernels": (False, "efficient methods"),
    "use_kt": (False, "KTransformers backend"),
    "kt_config": (None, "KTransformers backend"),
    "kt_cpu_activation": (None, "KTransformers backend"),
    "kt_weight_path": (None, "KTransformers backend"),
    "kt_non_expert_weight_path": (None, "KTransformers backend"),
    "image_max_pixels": (589824, "multimodal"),
    "image_min_pixels": (1024, "multimodal"),
    "video_max_pixels": (65536, "multimodal"),
    "video_min_pixels": (256, "multimodal"),
    "video_fps": (2.0, "multimodal"),
    "video_maxlen": (128, "multimodal"),
    # data
    "media_dir": (None, "multimodal"),
    "eval_num_beams": (None, "prediction"),
    "ignore_pad_token_for_loss": (True, "data worker"),
    "eval_on_each_dataset": (False, "evaluation"),
    "preserve_thinking": (False, "data worker"),
    "data_shared_file_system": (False, "distributed training"),
    # finetuning
    "use_dft_loss": (False, "training stages"),
    "use_asft_loss": (False, "training stages"),
    "use_eaft_loss": (False, "training stages"),
    "freeze_vision_tower": (True, "multimodal"),
    "freeze_multi_modal_projector": (True, "multimodal"),
    "freeze_language_model": (False, "multimodal"),
    "early_stopping_steps": (None, "training stages"),
    "pref_bco_weight": (0.0, "training stages"),
    "ld_alpha": (None, "training stages"),
    "ref_model_adapters": (None, "training stages"),
    "ref_model_quantization_bit": (None, "training stages"),
    "reward_model_adapters": (None, "training stages"),
    "reward_model_quantization_bit": (None, "training stages"),
    "apollo_scale_front": (False, "efficient methods"),
    "use_swanlab": (False, "experiment tracking"),
    "use_mca": (False, "distributed training"),
    "use_megatron_bridge": (False, "distributed training"),
    "ray_num_workers": (1, "distributed training"),
    "fp8": (False, "efficient methods"),
}

# Options of LLaMA-Factory's Megatron backends (USE_MCA / USE_MEGATRON_BRIDGE): recognised so
# such configs get a clear refusal instead of a list of unknown keys.
MEGATRON_KEYS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
    "expert_model_parallel_size", "sequence_parallel", "use_distributed_optimizer",
    "overlap_param_gather", "overlap_grad_reduce", "bias_activation_fusion", "apply_rope_fusion",
    "recompute_granularity", "moe_token_dispatcher_type", "moe_grouped_gemm", "mixed_precision",
    "use_packed_sequences", "export_hf_on_finish",
)
PENDING.update({key: (None, "Megatron backend") for key in MEGATRON_KEYS})
