"""Modeled time per operator for explicit shapes: the building blocks of the phase budgets and
what trace reconciliation asks ("MLA of 4096 tokens over 4096 keys on H200 takes how long?").

Two conventions, chosen by name (``convention=``):

``complete`` (the default): every compute op takes max(FLOPs at the effective tensor rate,
HBM bytes at the effective bandwidth), its bytes counting the weights (once per batch), the
activations read and written and the KV cache; routed experts read only the experts that
receive rows.  Bytes are SI (GB/s = 1e9 B/s).  So a modeled time is never below the roofline
of the same shapes at the datasheet peaks.

``zartbot-2025``: the convention of zartbot, "DeepSeek-V3/R1 推理效率分析" (2025-03), kept so its
tables reproduce to the printed digit: compute ops are FLOPs only; GFLOP / (TFLOP/s) read as
ms; MiB / (GB/s) read as ms for communication; KV loads from HBM as GiB / (GB/s) x 1000 ms
(its ``decode_kvcache_load_time``; the two byte conventions differ by 1000/1024, both kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from traceview.errors import UsageError

from . import flops as F
from .gpus import GPUSpec
from .models import ModelConfig

__all__ = [
    "OpCost",
    "compute_ms",
    "transfer_ms",
    "hbm_load_ms",
    "attention_costs",
    "dense_mlp_cost",
    "expert_cost",
    "allreduce_cost",
    "alltoall_cost",
    "kv_load_cost",
    "shared_expert_cost",
    "op_costs",
    "COMPLETE",
    "ZARTBOT_2025",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "check_convention",
    "total_ms",
    "MIB",
    "GIB",
]

MIB = 1024 * 1024
GIB = 1024 * 1024 * 1024
COMPLETE = "complete"
ZARTBOT_2025 = "zartbot-2025"
CONVENTIONS: tuple[str, ...] = (COMPLETE, ZARTBOT_2025)
DEFAULT_CONVENTION = COMPLETE


def check_convention(convention: str) -> str:
    """The convention's canonical name; an unknown one raises ``UsageError``."""
    c = convention.strip().lower().replace("_", "-")
    if c not in CONVENTIONS:
        raise UsageError(f"unknown convention {convention!r} (known: {', '.join(CONVENTIONS)})")
    return c


def value_bytes(precision: str) -> int:
    """Bytes per value of a GEMM operand in ``precision`` (fp8 1, bf16/fp16 2)."""
    return 1 if precision == "fp8" else 2


@dataclass(frozen=True)
class OpCost:
    """One operator's modeled cost.

    ``precision`` is the math precision for compute ops (``fp8``/``bf16``) or the payload type for
    transfers; ``resource`` says what bounds it: ``tensor`` (tensor cores), ``nvlink``,
    ``scaleout`` or ``hbm``.  ``gflop`` is 0 for transfers, ``bytes`` 0 for compute.
    """

    name: str
    gflop: float
    bytes: float
    ms: float
    precision: str
    resource: str = "tensor"

    def scaled(self, factor: float) -> "OpCost":
        """The same op repeated ``factor`` times (e.g. per layer -> per model)."""
        return OpCost(self.name, self.gflop * factor, self.bytes * factor, self.ms * factor, self.precision, self.resource)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _compute_op(name: str, gpu: GPUSpec, gflop: float, nbytes: float, precision: str, convention: str, *,
                comm_sm: int | None = None, efficiency: float = 1.0) -> OpCost:
    """A compute op under ``convention``: FLOPs only (zartbot-2025, bytes not recorded) or the
    slower of FLOPs and HBM bytes (complete; ``resource`` says which bounds it)."""
    flop_ms = compute_ms(gpu, gflop, precision, comm_sm=comm_sm, efficiency=efficiency)
    if check_convention(convention) == ZARTBOT_2025:
        return OpCost(name, gflop, 0.0, flop_ms, precision)
    mem_ms = nbytes / (gpu.hbm_rate() * 1e6)
    return OpCost(name, gflop, nbytes, max(flop_ms, mem_ms), precision, "hbm" if mem_ms > flop_ms else "tensor")


def total_ms(ops: Iterable[OpCost]) -> float:
    """Sum of the ops' times (serial execution, no overlap)."""
    return sum(op.ms for op in ops)


# --- unit conversions ---------------------------------------------------------------------
def compute_ms(
    gpu: GPUSpec, gflop: float, precision: str = "fp8", *, comm_sm: int | None = None, efficiency: float = 1.0
) -> float:
    """GFLOP over the effective TFLOP/s, read as ms; ``efficiency`` divides further (the article's
    0.7 for small grouped GEMMs in decode)."""
    if not efficiency > 0:
        raise UsageError(f"efficiency must be positive (got {efficiency})")
    return gflop / gpu.flops_rate(precision, comm_sm) / efficiency


def transfer_ms(gpu: GPUSpec, nbytes: float, link: str = "scaleout", *, n_gpus: int = 1,
                convention: str = ZARTBOT_2025) -> float:
    """Bytes over the effective GB/s of ``link`` (times ``n_gpus`` links in parallel) in ms:
    MiB / GB/s (zartbot-2025) or bytes / 1e9 B/s (complete)."""
    if n_gpus <= 0:
        raise UsageError(f"n_gpus must be positive (got {n_gpus})")
    if check_convention(convention) == COMPLETE:
        return nbytes / (gpu.link_rate(link) * n_gpus * 1e6)
    if link == "hbm":
        return hbm_load_ms(gpu, nbytes)
    return nbytes / MIB / (gpu.link_rate(link) * n_gpus)


def hbm_load_ms(gpu: GPUSpec, nbytes: float) -> float:
    """GiB over the effective HBM GB/s, x 1000 -> ms (the article's KV-cache load)."""
    return nbytes / GIB / gpu.hbm_rate() * 1000


# --- per-op helpers -----------------------------------------------------------------------
def attention_costs(
    model: ModelConfig,
    gpu: GPUSpec,
    q_len: float,
    kv_len: float,
    *,
    batch: float = 1,
    kv_cache_rate: float = 0.0,
    absorbed: bool = False,
    tp: int = 1,
    comm_sm: int | None = None,
    gemm_precision: str = "fp8",
    attn_precision: str = "bf16",
    kv_bytes: int = 1,
    convention: str = DEFAULT_CONVENTION,
) -> list[OpCost]:
    """The attention block for ``batch`` sequences of ``q_len`` queries over ``kv_len`` keys.

    Two ops: ``<kind>.gemm`` (projections, FP8 by default) and ``<kind>.attn`` (BF16), kind
    ``mla`` or ``gqa``.  With ``tp > 1`` the work is split evenly (the all-reduce is a separate
    op, ``allreduce_cost``), except that every TP rank reads the whole MLA latent cache of its
    sequences.  ``kv_bytes`` is the cache's bytes per value (complete convention only)."""
    if tp <= 0:
        raise UsageError(f"tp must be positive (got {tp})")
    fl = F.attention_flops(model, q_len, kv_len, kv_cache_rate, absorbed)
    kind = "mla" if model.is_mla else "gqa"
    share = batch / tp
    gemm = fl.gemm * share
    attn = fl.attention * share
    by = F.attention_bytes(model, q_len, kv_len, batch=batch, kv_cache_rate=kv_cache_rate, absorbed=absorbed,
                           weight=value_bytes(gemm_precision), act=value_bytes(gemm_precision), kv=kv_bytes)
    latent = (kv_bytes * batch * kv_len * (model.kv_values_per_token + model.kv_lora_rank)
              if model.is_mla and absorbed else 0.0)  # every TP rank reads its sequences' whole latent
    attn_bytes = (by.attention - latent) / tp + latent
    gemm_bytes = by.gemm / tp
    if tp > 1 and check_convention(convention) == COMPLETE:  # wq_a / wkv_a are replicated, not split
        down_f, down_b = F.mla_down_projections(model, q_len, kv_len, batch=batch, kv_cache_rate=kv_cache_rate,
                                                weight=value_bytes(gemm_precision), act=value_bytes(gemm_precision))
        gemm += down_f * (1 - 1 / tp)
        gemm_bytes += down_b * (1 - 1 / tp)
    return [
        _compute_op(f"{kind}.gemm", gpu, gemm, gemm_bytes, gemm_precision, convention, comm_sm=comm_sm),
        _compute_op(f"{kind}.attn", gpu, attn, attn_bytes, attn_precision, convention, comm_sm=comm_sm),
    ]


def dense_mlp_cost(
    model: ModelConfig,
    gpu: GPUSpec,
    tokens: float,
    *,
    comm_sm: int | None = None,
    precision: str = "fp8",
    efficiency: float = 1.0,
    tp: int = 1,
    convention: str = DEFAULT_CONVENTION,
) -> OpCost:
    """The dense MLP over ``tokens`` rows (``tp`` ranks each doing 1/tp of it)."""
    g = F.dense_mlp_flops(model, tokens) / tp
    b = F.dense_mlp_bytes(model, tokens, weight=value_bytes(precision), act=value_bytes(precision)) / tp
    return _compute_op("dense_mlp", gpu, g, b, precision, convention, comm_sm=comm_sm, efficiency=efficiency)


def expert_cost(
    model: ModelConfig,
    gpu: GPUSpec,
    rows: float,
    *,
    name: str = "routed_experts",
    experts: float | None = None,
    comm_sm: int | None = None,
    precision: str = "fp8",
    efficiency: float = 1.0,
    convention: str = DEFAULT_CONVENTION,
) -> OpCost:
    """Routed-expert GEMMs over ``rows`` token-expert rows landing on this GPU.  ``experts`` is
    how many experts' weights are read (those that received rows); default: the expected number
    hit when the rows spread uniformly over all routed experts.  ``efficiency`` 0.7 is the
    article's grouped-GEMM factor for decode (it derates the FLOPs, not the bytes)."""
    if not model.is_moe:
        raise UsageError(f"model {model.name!r} has no experts")
    hit = F.expected_experts_hit(model.n_routed_experts, rows) if experts is None else experts
    g = F.expert_flops(model, rows)
    b = F.expert_bytes(model, rows, hit, weight=value_bytes(precision), act=value_bytes(precision))
    return _compute_op(name, gpu, g, b, precision, convention, comm_sm=comm_sm, efficiency=efficiency)


def shared_expert_cost(
    model: ModelConfig,
    gpu: GPUSpec,
    tokens: float,
    *,
    comm_sm: int | None = None,
    precision: str = "fp8",
    efficiency: float = 1.0,
    convention: str = DEFAULT_CONVENTION,
) -> OpCost:
    """The shared expert(s) over every token: one FFN of the shared width (n_shared x
    moe_intermediate for DeepSeek, ``shared_expert_intermediate_size`` for Qwen2-MoE)."""
    if not model.is_moe:
        raise UsageError(f"model {model.name!r} has no experts")
    if not model.shared_inter_dim:  # Qwen3-MoE, Mixtral, GPT-OSS: no shared expert
        return OpCost("shared_expert", 0.0, 0.0, 0.0, precision)
    g = F.shared_expert_flops(model, tokens)
    b = F.expert_bytes(model, tokens, 1, width=model.shared_inter_dim, weight=value_bytes(precision),
                       act=value_bytes(precision))
    return _compute_op("shared_expert", gpu, g, b, precision, convention, comm_sm=comm_sm, efficiency=efficiency)


def allreduce_cost(
    gpu: GPUSpec, nbytes: float, *, name: str = "tp_allreduce", link: str = "nvlink", precision: str = "bf16",
    convention: str = DEFAULT_CONVENTION,
) -> OpCost:
    """A tensor-parallel all-reduce of ``nbytes`` (the article: size / NVLink bandwidth, independent
    of the TP degree).  Use ``flops.tp_allreduce_bytes(model, tokens)`` for the attention output."""
    return OpCost(name, 0.0, nbytes, transfer_ms(gpu, nbytes, link, convention=convention), precision, link)


def alltoall_cost(
    gpu: GPUSpec,
    nbytes: float,
    *,
    name: str = "dispatch",
    link: str = "scaleout",
    n_gpus: int = 1,
    precision: str = "fp8",
    convention: str = DEFAULT_CONVENTION,
) -> OpCost:
    """An all-to-all (MoE dispatch/combine) moving ``nbytes`` over ``n_gpus`` parallel ``link`` s."""
    return OpCost(name, 0.0, nbytes, transfer_ms(gpu, nbytes, link, n_gpus=n_gpus, convention=convention),
                  precision, link)


def moe_costs(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    shared_tokens: float,
    routed_rows: float,
    local_experts: float,
    dispatch_bytes: float,
    comm_sm: int | None,
    precision: str,
    efficiency: float,
    n_gpus: int = 1,
    convention: str = DEFAULT_CONVENTION,
) -> tuple[OpCost, OpCost, OpCost, OpCost]:
    """One MoE layer's shared expert, routed experts (``routed_rows`` rows over the GPU's
    ``local_experts``), dispatch (FP8) and combine (BF16, twice the bytes): the block prefill
    and decode budgets share."""
    shared = shared_expert_cost(model, gpu, shared_tokens, comm_sm=comm_sm, precision=precision,
                                efficiency=efficiency, convention=convention)
    routed = expert_cost(model, gpu, routed_rows, name="routed_experts", comm_sm=comm_sm, precision=precision,
                         efficiency=efficiency, experts=F.expected_experts_hit(local_experts, routed_rows),
                         convention=convention)
    dispatch = alltoall_cost(gpu, dispatch_bytes, name="dispatch", n_gpus=n_gpus, precision="fp8",
                             convention=convention)
    combine = alltoall_cost(gpu, 2 * dispatch_bytes, name="combine", n_gpus=n_gpus, precision="bf16",
                            convention=convention)
    return shared, routed, dispatch, combine


def kv_load_cost(
    model: ModelConfig, gpu: GPUSpec, kv_len: float, batch: float = 1, *, bytes_per_value: int = 1,
    convention: str = ZARTBOT_2025,
) -> OpCost:
    """Reading one layer's KV cache for ``batch`` sequences of ``kv_len`` keys from HBM (GiB
    convention of the article; SI under ``complete``, where the attention op already counts it)."""
    nbytes = F.kv_cache_bytes(model, kv_len, batch, bytes_per_value)
    precision = "fp8" if bytes_per_value == 1 else "bf16"
    ms = hbm_load_ms(gpu, nbytes) if check_convention(convention) == ZARTBOT_2025 else nbytes / (gpu.hbm_rate() * 1e6)
    return OpCost("kv_load", 0.0, nbytes, ms, precision, "hbm")


def op_costs(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    q_len: float,
    kv_len: float | None = None,
    batch: float = 1,
    kv_cache_rate: float = 0.0,
    absorbed: bool = False,
    tp: int = 1,
    moe: bool | None = None,
    shared_tokens: float | None = None,
    routed_rows: float | None = None,
    local_experts: float | None = None,
    dispatch_bytes: float | None = None,
    combine_bytes: float | None = None,
    a2a_link: str = "scaleout",
    load_kv: bool = False,
    comm_sm: int | None = None,
    gemm_precision: str = "fp8",
    attn_precision: str = "bf16",
    expert_efficiency: float = 1.0,
    convention: str = DEFAULT_CONVENTION,
) -> list[OpCost]:
    """Every op of ONE layer on ONE GPU, for explicit shapes.

    ``batch`` sequences of ``q_len`` new tokens over ``kv_len`` keys (default ``q_len``);
    tokens = q_len x batch.  ``moe`` (default: the model is MoE) picks experts over the dense
    MLP.  MoE defaults: shared expert over all tokens, routed experts over tokens x top-k rows
    spread over ``local_experts`` (default all routed experts), dispatch = tokens x dim x top-k
    bytes (FP8), combine = 2 x dispatch (BF16), as in decode; pass the trace's numbers instead
    where known.  ``tp > 1`` splits attention and adds the all-reduce of tokens x dim x 2 bytes.
    ``load_kv`` adds the FP8 KV-cache read as its own op (zartbot-2025; the complete convention
    always counts it in the attention op).
    """
    conv = check_convention(convention)
    kv = q_len if kv_len is None else kv_len
    tokens = q_len * batch
    ops = attention_costs(
        model, gpu, q_len, kv, batch=batch, kv_cache_rate=kv_cache_rate, absorbed=absorbed, tp=tp,
        comm_sm=comm_sm, gemm_precision=gemm_precision, attn_precision=attn_precision, convention=conv,
    )
    if tp > 1:
        ops.append(allreduce_cost(gpu, F.tp_allreduce_bytes(model, tokens), convention=conv))
    if load_kv and conv == ZARTBOT_2025:
        ops.append(kv_load_cost(model, gpu, kv, batch))
    is_moe = model.is_moe if moe is None else moe
    if not is_moe:
        ops.append(dense_mlp_cost(model, gpu, tokens, comm_sm=comm_sm, precision=gemm_precision, convention=conv))
        return ops
    shared = tokens if shared_tokens is None else shared_tokens
    routed = tokens * model.n_activated_experts if routed_rows is None else routed_rows
    if model.n_shared_experts and shared:
        ops.append(shared_expert_cost(model, gpu, shared, comm_sm=comm_sm, precision=gemm_precision,
                                      efficiency=expert_efficiency, convention=conv))
    experts = model.n_routed_experts if local_experts is None else local_experts
    ops.append(expert_cost(model, gpu, routed, name="routed_experts", comm_sm=comm_sm, precision=gemm_precision,
                           efficiency=expert_efficiency, experts=F.expected_experts_hit(experts, routed),
                           convention=conv))
    d_bytes = F.decode_dispatch_bytes(model, tokens) if dispatch_bytes is None else dispatch_bytes
    c_bytes = 2 * d_bytes if combine_bytes is None else combine_bytes
    ops.append(alltoall_cost(gpu, d_bytes, name="dispatch", link=a2a_link, precision="fp8", convention=conv))
    ops.append(alltoall_cost(gpu, c_bytes, name="combine", link=a2a_link, precision="bf16", convention=conv))
    return ops
