"""Modeled time per operator for explicit shapes: the building blocks of the phase budgets and
what trace reconciliation asks ("MLA of 4096 tokens over 4096 keys on H200 takes how long?").

Units, as in the seed so that its tables reproduce: GFLOP / (TFLOP/s) read as ms; MiB / (GB/s)
read as ms for communication; KV loads from HBM as GiB / (GB/s) x 1000 ms (the seed's
``decode_kvcache_load_time``; the two byte conventions differ by 1000/1024 and both are kept).
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
    "op_costs",
    "total_ms",
    "MIB",
    "GIB",
]

MIB = 1024 * 1024
GIB = 1024 * 1024 * 1024


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


def total_ms(ops: Iterable[OpCost]) -> float:
    """Sum of the ops' times (serial execution, no overlap)."""
    return sum(op.ms for op in ops)


# --- unit conversions ---------------------------------------------------------------------
def compute_ms(
    gpu: GPUSpec, gflop: float, precision: str = "fp8", *, comm_sm: int | None = None, efficiency: float = 1.0
) -> float:
    """GFLOP over the effective TFLOP/s, read as ms; ``efficiency`` divides further (the seed's
    0.7 for small grouped GEMMs in decode)."""
    if not efficiency > 0:
        raise UsageError(f"efficiency must be positive (got {efficiency})")
    return gflop / gpu.flops_rate(precision, comm_sm) / efficiency


def transfer_ms(gpu: GPUSpec, nbytes: float, link: str = "scaleout", *, n_gpus: int = 1) -> float:
    """MiB over the effective GB/s of ``link`` (times ``n_gpus`` links in parallel), read as ms."""
    if n_gpus <= 0:
        raise UsageError(f"n_gpus must be positive (got {n_gpus})")
    if link == "hbm":
        return hbm_load_ms(gpu, nbytes)
    return nbytes / MIB / (gpu.link_rate(link) * n_gpus)


def hbm_load_ms(gpu: GPUSpec, nbytes: float) -> float:
    """GiB over the effective HBM GB/s, x 1000 -> ms (the seed's KV-cache load)."""
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
) -> list[OpCost]:
    """The attention block for ``batch`` sequences of ``q_len`` queries over ``kv_len`` keys.

    Two ops: ``<kind>.gemm`` (projections, FP8 by default) and ``<kind>.attn`` (BF16), kind
    ``mla`` or ``gqa``.  With ``tp > 1`` the work is split evenly (the all-reduce is a separate
    op, ``allreduce_cost``)."""
    if tp <= 0:
        raise UsageError(f"tp must be positive (got {tp})")
    fl = F.attention_flops(model, q_len, kv_len, kv_cache_rate, absorbed)
    kind = "mla" if model.is_mla else "gqa"
    share = batch / tp
    gemm = fl.gemm * share
    attn = fl.attention * share
    return [
        OpCost(f"{kind}.gemm", gemm, 0.0, compute_ms(gpu, gemm, gemm_precision, comm_sm=comm_sm), gemm_precision),
        OpCost(f"{kind}.attn", attn, 0.0, compute_ms(gpu, attn, attn_precision, comm_sm=comm_sm), attn_precision),
    ]


def dense_mlp_cost(
    model: ModelConfig,
    gpu: GPUSpec,
    tokens: float,
    *,
    comm_sm: int | None = None,
    precision: str = "fp8",
    efficiency: float = 1.0,
) -> OpCost:
    """The dense MLP over ``tokens`` rows."""
    g = F.dense_mlp_flops(model, tokens)
    return OpCost("dense_mlp", g, 0.0, compute_ms(gpu, g, precision, comm_sm=comm_sm, efficiency=efficiency), precision)


def expert_cost(
    model: ModelConfig,
    gpu: GPUSpec,
    rows: float,
    *,
    name: str = "routed_experts",
    comm_sm: int | None = None,
    precision: str = "fp8",
    efficiency: float = 1.0,
) -> OpCost:
    """Expert GEMMs over ``rows`` token-expert rows (routed: tokens x top-k landing on this GPU;
    shared: tokens).  ``efficiency`` 0.7 is the seed's grouped-GEMM factor for decode."""
    if not model.is_moe:
        raise UsageError(f"model {model.name!r} has no experts")
    g = F.expert_flops(model, rows)
    return OpCost(name, g, 0.0, compute_ms(gpu, g, precision, comm_sm=comm_sm, efficiency=efficiency), precision)


def allreduce_cost(
    gpu: GPUSpec, nbytes: float, *, name: str = "tp_allreduce", link: str = "nvlink", precision: str = "bf16"
) -> OpCost:
    """A tensor-parallel all-reduce of ``nbytes`` (the seed: size / NVLink bandwidth, independent
    of the TP degree).  Use ``flops.tp_allreduce_bytes(model, tokens)`` for the attention output."""
    return OpCost(name, 0.0, nbytes, transfer_ms(gpu, nbytes, link), precision, link)


def alltoall_cost(
    gpu: GPUSpec,
    nbytes: float,
    *,
    name: str = "dispatch",
    link: str = "scaleout",
    n_gpus: int = 1,
    precision: str = "fp8",
) -> OpCost:
    """An all-to-all (MoE dispatch/combine) moving ``nbytes`` over ``n_gpus`` parallel ``link`` s."""
    return OpCost(name, 0.0, nbytes, transfer_ms(gpu, nbytes, link, n_gpus=n_gpus), precision, link)


def moe_costs(
    model: ModelConfig,
    gpu: GPUSpec,
    *,
    shared_rows: float,
    routed_rows: float,
    dispatch_bytes: float,
    comm_sm: int | None,
    precision: str,
    efficiency: float,
    n_gpus: int = 1,
) -> tuple[OpCost, OpCost, OpCost, OpCost]:
    """One MoE layer's shared expert, routed experts, dispatch (FP8) and combine (BF16, twice the
    bytes): the block prefill and decode budgets share."""
    shared = expert_cost(model, gpu, shared_rows, name="shared_expert", comm_sm=comm_sm,
                         precision=precision, efficiency=efficiency)
    routed = expert_cost(model, gpu, routed_rows, name="routed_experts", comm_sm=comm_sm,
                         precision=precision, efficiency=efficiency)
    dispatch = alltoall_cost(gpu, dispatch_bytes, name="dispatch", n_gpus=n_gpus, precision="fp8")
    combine = alltoall_cost(gpu, 2 * dispatch_bytes, name="combine", n_gpus=n_gpus, precision="bf16")
    return shared, routed, dispatch, combine


def kv_load_cost(
    model: ModelConfig, gpu: GPUSpec, kv_len: float, batch: float = 1, *, bytes_per_value: int = 1
) -> OpCost:
    """Reading one layer's KV cache for ``batch`` sequences of ``kv_len`` keys from HBM."""
    nbytes = F.kv_cache_bytes(model, kv_len, batch, bytes_per_value)
    precision = "fp8" if bytes_per_value == 1 else "bf16"
    return OpCost("kv_load", 0.0, nbytes, hbm_load_ms(gpu, nbytes), precision, "hbm")


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
    dispatch_bytes: float | None = None,
    combine_bytes: float | None = None,
    a2a_link: str = "scaleout",
    load_kv: bool = False,
    comm_sm: int | None = None,
    gemm_precision: str = "fp8",
    attn_precision: str = "bf16",
    expert_efficiency: float = 1.0,
) -> list[OpCost]:
    """Every op of ONE layer on ONE GPU, for explicit shapes.

    ``batch`` sequences of ``q_len`` new tokens over ``kv_len`` keys (default ``q_len``);
    tokens = q_len x batch.  ``moe`` (default: the model is MoE) picks experts over the dense
    MLP.  MoE defaults: shared expert over all tokens, routed experts over tokens x top-k rows,
    dispatch = tokens x dim x top-k bytes (FP8), combine = 2 x dispatch (BF16), as in decode;
    pass the trace's numbers instead where known.  ``tp > 1`` splits attention and adds the
    all-reduce of tokens x dim x 2 bytes.  ``load_kv`` adds the FP8 KV-cache read.
    """
    kv = q_len if kv_len is None else kv_len
    tokens = q_len * batch
    ops = attention_costs(
        model, gpu, q_len, kv, batch=batch, kv_cache_rate=kv_cache_rate, absorbed=absorbed, tp=tp,
        comm_sm=comm_sm, gemm_precision=gemm_precision, attn_precision=attn_precision,
    )
    if tp > 1:
        ops.append(allreduce_cost(gpu, F.tp_allreduce_bytes(model, tokens)))
    if load_kv:
        ops.append(kv_load_cost(model, gpu, kv, batch))
    is_moe = model.is_moe if moe is None else moe
    if not is_moe:
        ops.append(dense_mlp_cost(model, gpu, tokens, comm_sm=comm_sm, precision=gemm_precision))
        return ops
    shared = tokens if shared_tokens is None else shared_tokens
    routed = tokens * model.n_activated_experts if routed_rows is None else routed_rows
    if model.n_shared_experts and shared:
        ops.append(
            expert_cost(
                model, gpu, shared * model.n_shared_experts, name="shared_expert", comm_sm=comm_sm,
                precision=gemm_precision, efficiency=expert_efficiency,
            )
        )
    ops.append(
        expert_cost(
            model, gpu, routed, name="routed_experts", comm_sm=comm_sm, precision=gemm_precision,
            efficiency=expert_efficiency,
        )
    )
    d_bytes = F.decode_dispatch_bytes(model, tokens) if dispatch_bytes is None else dispatch_bytes
    c_bytes = 2 * d_bytes if combine_bytes is None else combine_bytes
    ops.append(alltoall_cost(gpu, d_bytes, name="dispatch", link=a2a_link, precision="fp8"))
    ops.append(alltoall_cost(gpu, c_bytes, name="combine", link=a2a_link, precision="bf16"))
    return ops
