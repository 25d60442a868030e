"""Analytical budget model of LLM inference (DeepSeek-V3/R1 after zartbot, "DeepSeek-V3/R1 推理效率分析", 2025-03; dense GQA models too).

Layers, one job each:
  models   ModelConfig + loaders (shipped TOML or a Hugging Face config.json)
  gpus     GPUSpec (the article's GPU_perf) + loaders (shipped gpus.toml, user overrides)
  flops    FLOP / byte counts per operator (pure shape arithmetic)
  ops      modeled ms per operator for explicit shapes (OpCost) under a convention: complete
           (max of FLOPs and HBM bytes, the default) or zartbot-2025 (the article's FLOP-only)
  prefill  the article's prefill table (compute_prefill -> PrefillBudget)
  decode   the article's decode table (compute_decode -> DecodeBudget), memory-bound batch size
"""

from __future__ import annotations

from .decode import GROUPED_GEMM_EFFICIENCY, DecodeBudget, choose_decode_tp, compute_decode, max_decode_batch
from .flops import (
    AttentionFlops,
    attention_flops,
    decode_dispatch_bytes,
    dense_mlp_flops,
    expert_flops,
    gqa_flops,
    kv_cache_bytes,
    mla_absorbed_flops,
    mla_flops,
    prefill_dispatch_bytes,
    tp_allreduce_bytes,
)
from .gpus import GPUSpec, describe_device, get_gpu, gpu_from_device, load_gpus
from .models import ModelConfig, list_models, load_model, model_from_hf
from .ops import (
    COMPLETE,
    CONVENTIONS,
    DEFAULT_CONVENTION,
    ZARTBOT_2025,
    OpCost,
    allreduce_cost,
    alltoall_cost,
    attention_costs,
    compute_ms,
    dense_mlp_cost,
    expert_cost,
    hbm_load_ms,
    kv_load_cost,
    op_costs,
    shared_expert_cost,
    total_ms,
    transfer_ms,
)
from .prefill import PrefillBudget, compute_prefill

__all__ = [
    "COMPLETE",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "ZARTBOT_2025",
    "describe_device",
    "gpu_from_device",
    "shared_expert_cost",
    "AttentionFlops",
    "DecodeBudget",
    "GPUSpec",
    "GROUPED_GEMM_EFFICIENCY",
    "ModelConfig",
    "OpCost",
    "PrefillBudget",
    "allreduce_cost",
    "alltoall_cost",
    "attention_costs",
    "attention_flops",
    "choose_decode_tp",
    "compute_decode",
    "compute_ms",
    "compute_prefill",
    "decode_dispatch_bytes",
    "dense_mlp_cost",
    "dense_mlp_flops",
    "expert_cost",
    "expert_flops",
    "get_gpu",
    "gqa_flops",
    "hbm_load_ms",
    "kv_cache_bytes",
    "kv_load_cost",
    "list_models",
    "load_gpus",
    "load_model",
    "max_decode_batch",
    "mla_absorbed_flops",
    "mla_flops",
    "model_from_hf",
    "op_costs",
    "prefill_dispatch_bytes",
    "total_ms",
    "tp_allreduce_bytes",
    "transfer_ms",
]
