"""The decode budget of zartbot (2025-03) (section 3): per-GPU batch ``batch`` decoding over ``kv_len``
keys with absorbed MLA, giving TPOT with and without overlap and the per-layer communication
slack ("TimeBudget") that the two-micro-batch schedule can hide the all-to-all in.

Seed conventions kept: no SMs reserved for communication (comm_sm 0); expert GEMMs derated by
a grouped-GEMM efficiency of 0.7; the MLA all-reduce term is kv_len x dim x 2 bytes as in
prefill; the KV cache (576 FP8 values per token per layer) is read in full by every TP rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from traceview.errors import UsageError

from . import flops as F
from .gpus import GPUSpec
from .models import ModelConfig
from .ops import (
    DEFAULT_CONVENTION,
    OpCost,
    check_convention,
    allreduce_cost,
    attention_costs,
    dense_mlp_cost,
    kv_load_cost,
    moe_costs,
)

__all__ = ["DecodeBudget", "compute_decode", "choose_decode_tp", "max_decode_batch", "GROUPED_GEMM_EFFICIENCY"]

GROUPED_GEMM_EFFICIENCY = 0.7


@dataclass(frozen=True)
class DecodeBudget:
    """Every column of the article's decode tables (times in ms per layer unless named otherwise).

    ``attn_tp1_ms`` = batch x (GEMM/fp8 + attention/bf16); ``attn_tp{4,8}_ms`` = TP1/n + AR;
    ``attn_tp_ms`` is the chosen ``tp``.  ``dense_mla_ms`` = TP1 + KV load (dense layers),
    ``sparse_mla_ms`` = chosen TP + KV load (MoE layers).  ``tpot*`` are per-token latency over
    all layers; ``tps*`` = 1000 / TPOT per sequence; ``total_tps*`` = tps x batch per GPU.
    ``time_budget_ms`` = sparse MLA + shared expert - (dispatch + combine).
    """

    model: str
    gpu: str
    convention: str
    batch: int
    kv_len: int
    tp: int
    comm_sm: int
    n_dense_layers: int
    n_moe_layers: int
    attn_gemm_ms: float
    attn_core_ms: float
    attn_tp1_ms: float
    attn_tp4_ms: float
    attn_tp8_ms: float
    allreduce_ms: float
    attn_tp_ms: float
    kv_load_ms: float
    kv_load_fp16_ms: float
    dense_mla_ms: float
    dense_mlp_ms: float
    sparse_mla_ms: float
    shared_expert_ms: float
    routed_experts_ms: float
    dispatch_ms: float
    combine_ms: float
    tpot_overlap_ms: float
    tpot_ms: float
    tps_overlap: float
    tps: float
    total_tps_overlap: float
    total_tps: float
    time_budget_ms: float
    ops: tuple[OpCost, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        """The article's column label, e.g. ``H20(TP4)``."""
        return f"{self.gpu}(TP{self.tp})"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), with ``phase`` and the per-layer ops (of an MoE layer)."""
        d = {k: v for k, v in asdict(self).items() if k != "ops"}
        return {"phase": "decode", **d, "ops": [op.to_dict() for op in self.ops]}


def choose_decode_tp(attn_tp1_ms: float, attn_tp4_ms: float) -> int:
    """The article's rule: TP1 unless TP4 is faster, then TP4.  (Its H20-3e TP8 is a memory choice
    made by name; pass ``tp=8`` for it.)"""
    return 4 if attn_tp1_ms > attn_tp4_ms else 1


def compute_decode(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    batch: int,
    kv_len: int = 4383,
    tp: int | None = None,
    comm_sm: int = 0,
    absorbed: bool = True,
    expert_efficiency: float = GROUPED_GEMM_EFFICIENCY,
    gemm_precision: str = "fp8",
    attn_precision: str = "bf16",
    experts_per_gpu: float = 2,
    convention: str = DEFAULT_CONVENTION,
) -> DecodeBudget:
    """The article's ``decoding_time`` for one GPU type and batch size.

    ``tp`` None applies ``choose_decode_tp``.  ``comm_sm`` defaults to 0 (decode communication
    occupies no SMs in the article), whatever the GPU's prefill reservation is.

    ``convention`` ``zartbot-2025`` gives the article's tables (FLOPs plus the KV-cache read).
    ``complete`` (default) takes each op at max(FLOPs, HBM bytes): the attention op reads the
    FP8 KV cache and its weights, the dense MLP and shared expert their weights, the routed
    experts the weights of those of the GPU's ``experts_per_gpu`` experts that receive rows
    (the article's decode deployment, section 3.2: 2 per GPU); its all-reduce moves batch x dim
    x 2 bytes (the article's expression uses kv_len).
    """
    conv = check_convention(convention)
    for key, value in (("batch", batch), ("kv_len", kv_len)):
        if not value > 0:
            raise UsageError(f"{key} must be positive (got {value})")
    if tp is not None and tp <= 0:
        raise UsageError(f"tp must be positive (got {tp})")
    if not expert_efficiency > 0:
        raise UsageError(f"expert_efficiency must be positive (got {expert_efficiency})")

    # q_len 1 per sequence, all keys cached (kv_cache_rate 1), batch sequences.
    attn = attention_costs(
        model, gpu, 1, kv_len, batch=batch, kv_cache_rate=1.0, absorbed=absorbed, comm_sm=comm_sm,
        gemm_precision=gemm_precision, attn_precision=attn_precision, convention=conv,
    )
    tp1 = attn[0].ms + attn[1].ms
    ar = allreduce_cost(gpu, F.tp_allreduce_bytes(model, kv_len if conv != "complete" else batch), convention=conv)

    def at_tp(n: int) -> tuple[float, list[OpCost]]:
        if n == 1:
            return tp1, list(attn)
        if conv != "complete":
            return tp1 / n + ar.ms, [op.scaled(1 / n) for op in attn]
        split = attention_costs(model, gpu, 1, kv_len, batch=batch, kv_cache_rate=1.0, absorbed=absorbed,
                                comm_sm=comm_sm, tp=n, gemm_precision=gemm_precision, attn_precision=attn_precision,
                                convention=conv)
        return split[0].ms + split[1].ms + ar.ms, split

    tp4, tp8 = at_tp(4)[0], at_tp(8)[0]
    chosen = choose_decode_tp(tp1, tp4) if tp is None else tp
    attn_tp, attn_ops = at_tp(chosen)
    kv = kv_load_cost(model, gpu, kv_len, batch, convention=conv)
    kv16 = kv_load_cost(model, gpu, kv_len, batch, bytes_per_value=2, convention=conv)
    mlp = dense_mlp_cost(model, gpu, batch, comm_sm=comm_sm, precision=gemm_precision, convention=conv)
    # the article adds the KV read to the attention; the complete attention op already reads it
    kv_extra = kv.ms if conv != "complete" else 0.0

    ops: list[OpCost] = attn_ops
    if chosen > 1:
        ops.append(ar)
    if conv != "complete":
        ops.append(kv)
    shared_ms = routed_ms = dispatch_ms = combine_ms = 0.0
    if model.is_moe and model.n_moe_layers > 0:
        shared, routed, dispatch, combine = moe_costs(
            model, gpu, shared_tokens=batch, routed_rows=batch * model.n_activated_experts,
            local_experts=experts_per_gpu, dispatch_bytes=F.decode_dispatch_bytes(model, batch), comm_sm=comm_sm,
            precision=gemm_precision, efficiency=expert_efficiency, convention=conv,
        )
        ops += [shared, routed, dispatch, combine]
        shared_ms, routed_ms, dispatch_ms, combine_ms = shared.ms, routed.ms, dispatch.ms, combine.ms
    else:
        ops.append(mlp)

    dense_mla = tp1 + kv_extra
    sparse_mla = attn_tp + kv_extra
    n_dense, n_moe = model.n_dense_layers, model.n_moe_layers
    tpot_o = (dense_mla + mlp.ms) * n_dense + (sparse_mla + shared_ms + routed_ms) * n_moe
    tpot = tpot_o + (dispatch_ms + combine_ms) * n_moe
    return DecodeBudget(
        model=model.name,
        gpu=gpu.name,
        convention=conv,
        batch=batch,
        kv_len=kv_len,
        tp=chosen,
        comm_sm=comm_sm,
        n_dense_layers=n_dense,
        n_moe_layers=n_moe,
        attn_gemm_ms=attn[0].ms,
        attn_core_ms=attn[1].ms,
        attn_tp1_ms=tp1,
        attn_tp4_ms=tp4,
        attn_tp8_ms=tp8,
        allreduce_ms=ar.ms if chosen > 1 else 0.0,
        attn_tp_ms=attn_tp,
        kv_load_ms=kv.ms,
        kv_load_fp16_ms=kv16.ms,
        dense_mla_ms=dense_mla,
        dense_mlp_ms=mlp.ms,
        sparse_mla_ms=sparse_mla,
        shared_expert_ms=shared_ms,
        routed_experts_ms=routed_ms,
        dispatch_ms=dispatch_ms,
        combine_ms=combine_ms,
        tpot_overlap_ms=tpot_o,
        tpot_ms=tpot,
        tps_overlap=1000 / tpot_o,
        tps=1000 / tpot,
        total_tps_overlap=1000 / tpot_o * batch,
        total_tps=1000 / tpot * batch,
        time_budget_ms=sparse_mla + shared_ms - (dispatch_ms + combine_ms),
        ops=tuple(ops),
    )


def max_decode_batch(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    kv_len: int = 4383,
    decode_len: int = 1210,
    tp: int = 1,
    experts_per_gpu: float = 2,
    absorbed: bool = True,
    kv_bytes_per_value: int = 1,
    mem_util: float = 0.9,
    other_params_gb: float | None = None,
) -> float:
    """Largest per-GPU decode batch whose KV cache fits (the article's ``_decoding_batchsize``).

    Memory left = hbm_gb x mem_util - other weights - MLA weights x n_layers / tp - expert
    weights x n_moe_layers x experts_per_gpu (FP8, 1 byte per parameter, millions / 1024 read
    as GB as in the article); each sequence holds (kv_len + decode_len) x 576 x n_layers x tp
    values (TP ranks each keep the full latent cache).  ``other_params_gb`` (embeddings, lm_head,
    dense MLPs, gates) defaults to a count from the model; the article used 2.91.  Parameter counts
    follow the article's sources: standard MLA and experts with biases (187.17M, 44.05M), absorbed
    MLA without (598.15M).
    """
    mla_m = F.mla_params(model, absorbed=absorbed, bias=not absorbed) / 1e6
    expert_m = F.expert_params(model, bias=True) / 1e6 if model.is_moe else 0.0
    if other_params_gb is None:
        other = 2 * model.vocab_size * model.dim
        other += model.n_dense_layers * 3 * model.dim * model.inter_dim
        if model.is_moe:
            other += model.n_moe_layers * (model.dim * model.n_routed_experts + model.n_routed_experts)
        other_params_gb = other / 1024**3
    kv_per_seq = (kv_len + decode_len) * model.kv_values_per_token * model.n_layers * tp * kv_bytes_per_value
    mem = gpu.hbm_gb * mem_util - other_params_gb - mla_m * model.n_layers / tp / 1024
    mem -= expert_m * model.n_moe_layers * experts_per_gpu / 1024
    return mem * 1024**3 / kv_per_seq
