"""LLaMA-Factory options that lathe recognises but does not run (yet, or here), by feature.

A config that sets one of these to anything but LLaMA-Factory's default is refused with a
message naming the option and the feature, instead of being parsed and silently ignored. Left
at its default it is accepted: it changes nothing. That matters because LLaMA Board saves every
key it knows, so a config it wrote names all of these. When an option is implemented it moves
into `options.py` and leaves here.

Every key of LLaMA-Factory's option dataclasses is either an option of lathe or listed here
(tests/config/test_llamafactory_options.py holds lathe to its inventory in ../shared/notes).
"""

from __future__ import annotations

from typing import Any


def _feature(why: str, **defaults: Any) -> dict[str, tuple[Any, str]]:
    return {key: (default, why) for key, default in defaults.items()}


# name -> (LLaMA-Factory's default, the feature and why lathe does not run it yet)
PENDING: dict[str, tuple[Any, str]] = {
    # LLaMA-Factory converts or loads with the mixture-of-depth package; see docs/methods.md.
    **_feature("Mixture-of-Depths: its library, mixture-of-depth 1.2.0 (the last release), is written for transformers 4 "
               "and fails on transformers 5 (its import and its decoder-layer calls)", mixture_of_depths=None),
    **_feature("re-downloading hub datasets is not supported yet (lathe reuses the datasets cache)", download_mode="reuse_dataset_if_exists"),
    **_feature("KTransformers backend: an inference engine for CPU/GPU hybrid MoE models, not a target of lathe",
               use_kt=False, kt_config=None, kt_cpu_activation=None, kt_weight_path=None, kt_non_expert_weight_path=None,
               kt_expert_checkpoint_path=None, kt_use_lora_experts=None, kt_lora_expert_num=None,
               kt_lora_expert_intermediate_size=None),
    **_feature("HyperParallel: MindSpore / Ascend parallelism, not a target of lathe", use_hyper_parallel=False,
               hyper_parallel_args=None, hyper_parallel_cp_size=1),
    **_feature("Ascend NPU kernels, not a target of lathe", use_v1_kernels=False),
    # TRL GRPOConfig's name (LLaMA-Factory has no grpo stage): refused by name rather than unknown.
    **_feature("vLLM generation for grpo/rloo needs a CUDA GPU and vLLM; lathe generates with transformers' KV cache",
               use_vllm=False),
    **_feature("fp8 training: needs Hopper-class GPUs (H100 and newer) with FP8 kernels", fp8=False, fp8_backend="auto",
               fp8_enable_fsdp_float8_all_gather=False),
    # LLaMA-Factory's Megatron backends (USE_MCA / USE_MEGATRON_BRIDGE): multi-GPU Megatron-core training.
    **_feature("Megatron backend: Megatron-core training across many GPUs, not a target of lathe", use_mca=False,
               use_megatron_bridge=False, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
               expert_model_parallel_size=1, context_parallel_size=1, virtual_pipeline_model_parallel_size=None,
               sequence_parallel=False, recompute_granularity=None, recompute_method=None, recompute_num_layers=None,
               account_for_embedding_in_pipeline_split=None, account_for_loss_in_pipeline_split=None,
               bias_activation_fusion=None, apply_rope_fusion=None, masked_softmax_fusion=None,
               cross_entropy_loss_fusion=None, moe_grouped_gemm=None, moe_token_dispatcher_type=None,
               calculate_per_token_loss=None, use_distributed_optimizer=True, overlap_param_gather=True,
               overlap_grad_reduce=True, use_packed_sequences=False, mixed_precision="bf16_mixed",
               megatron_pretrained_checkpoint=None, export_hf_on_finish=False, extra_config=None),
}
