"""The prefill budget of zartbot (2025-03) (section 2): per-layer op times, the per-DP-group total with
and without communication overlap, and per-node throughput.

The article's deployment: DP groups of ``tp`` GPUs each prefill ``seq_len`` tokens; the first
``n_dense_layers`` run MLA at TP1 plus the dense MLP, the MoE layers run MLA at TP``tp`` plus the
shared and routed experts (EP over all tp x dp GPUs) and the dispatch/combine all-to-all over
the scale-out network.  As the article's tables were computed, MLA uses q_len = kv_len = seq_len
with the KV-cache hit rate discounting only the KV down-projection, and the dense MLP runs all
seq_len tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from traceview.errors import UsageError

from . import flops as F
from .gpus import GPUSpec
from .models import ModelConfig
from .ops import DEFAULT_CONVENTION, MIB, OpCost, allreduce_cost, attention_costs, check_convention, dense_mlp_cost, moe_costs

__all__ = ["PrefillBudget", "compute_prefill"]


@dataclass(frozen=True)
class PrefillBudget:
    """Every column of the article's prefill tables (times in ms, per DP group of seq_len tokens).

    ``attn_tp1_ms`` is the table's "MLA TP1", ``attn_tp_ms`` its "MLA TP<tp>" (TP1 / tp + the
    all-reduce; equal to TP1 when tp = 1).  ``sum_overlap_ms`` assumes dispatch/combine fully
    hidden; ``sum_ms`` adds them.  ``tps*`` are tokens/s per node: dp x seq_len x 1000 / sum /
    num_nodes.  ``kv_cache_mib_s*`` is the FP8 KV cache those tokens produce per node, all layers.
    """

    model: str
    gpu: str
    convention: str
    seq_len: int
    kv_cache_rate: float
    tp: int
    dp: int
    gpus_per_node: int
    num_nodes: float
    dispatch_nodes: int
    comm_sm: int
    n_dense_layers: int
    n_moe_layers: int
    attn_gemm_ms: float
    attn_core_ms: float
    attn_tp1_ms: float
    allreduce_ms: float
    attn_tp_ms: float
    dense_mlp_ms: float
    shared_expert_ms: float
    routed_experts_ms: float
    dispatch_ms: float
    combine_ms: float
    sum_overlap_ms: float
    sum_ms: float
    tps_overlap: float
    tps: float
    kv_cache_mib_s_overlap: float
    kv_cache_mib_s: float
    ops: tuple[OpCost, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), with ``phase`` and the per-layer ops."""
        d = {k: v for k, v in asdict(self).items() if k != "ops"}
        return {"phase": "prefill", **d, "ops": [op.to_dict() for op in self.ops]}


def compute_prefill(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    seq_len: int = 4383,
    kv_cache_rate: float = 0.563,
    tp: int = 4,
    dp: int = 8,
    gpus_per_node: int = 8,
    num_nodes: float | None = None,
    dispatch_nodes: int | None = None,
    comm_sm: int | None = None,
    gemm_precision: str = "fp8",
    attn_precision: str = "bf16",
    expert_efficiency: float = 1.0,
    convention: str = DEFAULT_CONVENTION,
) -> PrefillBudget:
    """The article's ``prefill_time_sum`` for one GPU type (defaults: its TP4 x DP8 case).

    ``num_nodes`` defaults to tp x dp / gpus_per_node (4 in the article; fractional when the
    deployment is smaller than a node, i.e. per-node throughput of a node filled with such
    groups).  ``dispatch_nodes`` - the nodes one token's experts span - defaults to
    min(topk_group, nodes) (4 in the article: node-limited routing).  ``comm_sm`` defaults to the
    GPU's prefill reservation (H800 24, H20 10).  ``convention`` ``zartbot-2025`` gives the
    article's tables; ``complete`` (default) also counts each op's HBM bytes (``ops`` module).
    """
    conv = check_convention(convention)
    _check_positive(seq_len=seq_len, tp=tp, dp=dp, gpus_per_node=gpus_per_node)
    if not 0 <= kv_cache_rate <= 1:
        raise UsageError(f"kv_cache_rate must be within 0..1 (got {kv_cache_rate})")
    if tp > gpus_per_node:
        raise UsageError(f"tp ({tp}) larger than gpus_per_node ({gpus_per_node})")
    nodes = tp * dp / gpus_per_node if num_nodes is None else num_nodes
    if not nodes > 0:
        raise UsageError(f"num_nodes must be positive (got {num_nodes})")
    if dispatch_nodes is None:
        limit = model.n_limited_groups or 4
        dispatch_nodes = max(1, min(limit, math.ceil(nodes)))
    if dispatch_nodes < 1:
        raise UsageError(f"dispatch_nodes must be at least 1 (got {dispatch_nodes})")
    reserved = gpu.comm_sm if comm_sm is None else comm_sm

    attn = attention_costs(
        model, gpu, seq_len, seq_len, kv_cache_rate=kv_cache_rate, comm_sm=reserved,
        gemm_precision=gemm_precision, attn_precision=attn_precision, convention=conv,
    )
    attn_tp1 = attn[0].ms + attn[1].ms
    ar = allreduce_cost(gpu, F.tp_allreduce_bytes(model, seq_len), convention=conv)
    if tp == 1:
        attn_tp = attn_tp1
    elif conv == "complete":  # each rank: 1/tp of the heads' work and weights (op by op), then the AR
        split = attention_costs(model, gpu, seq_len, seq_len, kv_cache_rate=kv_cache_rate, comm_sm=reserved, tp=tp,
                                gemm_precision=gemm_precision, attn_precision=attn_precision, convention=conv)
        attn_tp = split[0].ms + split[1].ms + ar.ms
    else:
        attn_tp = attn_tp1 / tp + ar.ms
    mlp = dense_mlp_cost(model, gpu, seq_len, comm_sm=reserved, precision=gemm_precision, convention=conv)

    ops: list[OpCost] = [*attn]
    if tp > 1:
        ops.append(ar)
    ops.append(mlp)
    shared_ms = routed_ms = dispatch_ms = combine_ms = 0.0
    if model.is_moe and model.n_moe_layers > 0:
        n_device = tp * dp
        shared_tokens = dp * seq_len / n_device
        routed_rows = seq_len * dp * model.n_activated_experts / n_device
        shared, routed, dispatch, combine = moe_costs(
            model, gpu, shared_tokens=shared_tokens, routed_rows=routed_rows,
            local_experts=model.n_routed_experts / n_device,
            dispatch_bytes=F.prefill_dispatch_bytes(model, seq_len, tp, dispatch_nodes, gpus_per_node),
            comm_sm=reserved, precision=gemm_precision, efficiency=expert_efficiency, n_gpus=gpus_per_node,
            convention=conv,
        )
        ops += [shared, routed, dispatch, combine]
        shared_ms, routed_ms, dispatch_ms, combine_ms = shared.ms, routed.ms, dispatch.ms, combine.ms

    n_dense, n_moe = model.n_dense_layers, model.n_moe_layers
    sum_overlap = n_dense * (attn_tp1 + mlp.ms) + n_moe * (attn_tp + shared_ms + routed_ms)
    sum_all = sum_overlap + n_moe * (dispatch_ms + combine_ms)
    tps_o = dp * seq_len * 1000 / sum_overlap / nodes
    tps = dp * seq_len * 1000 / sum_all / nodes
    kv_per_token = model.kv_values_per_token * model.n_layers  # FP8 bytes, all layers
    return PrefillBudget(
        model=model.name,
        gpu=gpu.name,
        convention=conv,
        seq_len=seq_len,
        kv_cache_rate=kv_cache_rate,
        tp=tp,
        dp=dp,
        gpus_per_node=gpus_per_node,
        num_nodes=nodes,
        dispatch_nodes=dispatch_nodes,
        comm_sm=reserved,
        n_dense_layers=n_dense,
        n_moe_layers=n_moe,
        attn_gemm_ms=attn[0].ms,
        attn_core_ms=attn[1].ms,
        attn_tp1_ms=attn_tp1,
        allreduce_ms=ar.ms if tp > 1 else 0.0,
        attn_tp_ms=attn_tp,
        dense_mlp_ms=mlp.ms,
        shared_expert_ms=shared_ms,
        routed_experts_ms=routed_ms,
        dispatch_ms=dispatch_ms,
        combine_ms=combine_ms,
        sum_overlap_ms=sum_overlap,
        sum_ms=sum_all,
        tps_overlap=tps_o,
        tps=tps,
        kv_cache_mib_s_overlap=tps_o * kv_per_token / MIB,
        kv_cache_mib_s=tps * kv_per_token / MIB,
        ops=tuple(ops),
    )


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise UsageError(f"{key} must be positive (got {value})")
