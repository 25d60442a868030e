"""FLOP and byte counts per operator: pure functions of the model shapes, no hardware.

FLOPs are 2 x MACs, returned in GFLOP (1e9) as the article does; bytes are plain bytes (the timing
layer converts them with the article's MiB convention).  Formulas follow zartbot (2025-03) line for line,
including its choices: the KV-cache hit rate only discounts the KV down-projection, attention is
counted over the full q_len x kv_len rectangle (no causal halving), and in the standard MLA the
output projection ``wo`` is counted with the attention (BF16) part.
"""

from __future__ import annotations

from typing import NamedTuple

from .models import ModelConfig

__all__ = [
    "AttentionFlops",
    "mla_flops",
    "mla_absorbed_flops",
    "gqa_flops",
    "attention_flops",
    "dense_mlp_flops",
    "expert_flops",
    "tp_allreduce_bytes",
    "prefill_dispatch_bytes",
    "decode_dispatch_bytes",
    "kv_cache_bytes",
    "mla_params",
    "expert_params",
]

GFLOP = 1e9


class AttentionFlops(NamedTuple):
    """GFLOP of one attention block: ``gemm`` (projections, run in FP8 by the article) and
    ``attention`` (score/value products and, for MLA, the output projection; BF16)."""

    total: float
    gemm: float
    attention: float


def _pack(gemm_macs: float, attn_macs: float) -> AttentionFlops:
    gemm = gemm_macs * 2 / GFLOP
    attn = attn_macs * 2 / GFLOP
    return AttentionFlops(gemm + attn, gemm, attn)


def _q_in(m: ModelConfig) -> int:
    """Width feeding the query up-projection: q_lora_rank, or dim when queries are uncompressed."""
    return m.q_lora_rank if m.q_lora_rank > 0 else m.dim


def mla_flops(m: ModelConfig, q_len: float, kv_len: float, kv_cache_rate: float = 0.0) -> AttentionFlops:
    """Standard (non-absorbed) MLA, the article's ``mla_flops``: prefill's form.

    ``kv_cache_rate`` is the fraction of the kv_len keys whose latent is already cached, so only
    their down-projection (``wkv_a``) is skipped.  1 token over 1 key on DeepSeek-V3:
    0.3743 GFLOP = 0.1393 GEMM + 0.2350 attention.
    """
    h = m.n_heads
    q_down = q_len * m.dim * m.q_lora_rank if m.q_lora_rank > 0 else 0
    q_up = q_len * _q_in(m) * h * (m.qk_nope_head_dim + m.qk_rope_head_dim)
    kv_down = kv_len * m.dim * (m.kv_lora_rank + m.qk_rope_head_dim) * (1 - kv_cache_rate)
    k_up = kv_len * m.kv_lora_rank * h * m.qk_nope_head_dim
    v_up = kv_len * m.kv_lora_rank * h * m.v_head_dim
    gemm = q_down + q_up + kv_down + k_up + v_up
    mha = h * (
        q_len * m.qk_rope_head_dim * kv_len + q_len * m.qk_nope_head_dim * kv_len + q_len * kv_len * m.v_head_dim
    )
    wo = q_len * h * m.v_head_dim * m.dim
    return _pack(gemm, mha + wo)


def mla_absorbed_flops(m: ModelConfig, q_len: float, kv_len: float, kv_cache_rate: float = 0.0) -> AttentionFlops:
    """MLA with W_UK absorbed into the query and W_UV into ``wo`` (the article's
    ``mla_matabsob_flops``): decode's form, an MQA over the 576-wide latent."""
    h = m.n_heads
    q_down = q_len * m.dim * m.q_lora_rank if m.q_lora_rank > 0 else 0
    q_rope_up = q_len * _q_in(m) * h * m.qk_rope_head_dim
    q_absorb = q_len * h * _q_in(m) * m.kv_lora_rank
    kv_down = kv_len * m.dim * (m.kv_lora_rank + m.qk_rope_head_dim) * (1 - kv_cache_rate)
    gemm = q_down + q_rope_up + q_absorb + kv_down
    mqa = h * (q_len * m.qk_rope_head_dim * kv_len + q_len * m.kv_lora_rank * kv_len + q_len * kv_len * m.kv_lora_rank)
    o_absorb = q_len * h * m.kv_lora_rank * m.dim
    return _pack(gemm, mqa + o_absorb)


def gqa_flops(m: ModelConfig, q_len: float, kv_len: float, kv_cache_rate: float = 0.0) -> AttentionFlops:
    """Grouped-query / multi-head attention (Qwen2, Baichuan), in the same shape as the MLA count.

    ``gemm`` = Q and O projections over q_len tokens plus K/V projections over the uncached part
    of kv_len; ``attention`` = QK^T and PV over the full q_len x kv_len rectangle.
    """
    hd = m.head_dim
    q_proj = q_len * m.dim * m.n_heads * hd
    kv_proj = kv_len * m.dim * 2 * m.n_kv_heads * hd * (1 - kv_cache_rate)
    o_proj = q_len * m.n_heads * hd * m.dim
    core = m.n_heads * (q_len * kv_len * hd * 2)
    return _pack(q_proj + kv_proj + o_proj, core)


def attention_flops(
    m: ModelConfig, q_len: float, kv_len: float, kv_cache_rate: float = 0.0, absorbed: bool = False
) -> AttentionFlops:
    """The model's attention block: MLA (standard or absorbed) or GQA."""
    if m.is_mla:
        fn = mla_absorbed_flops if absorbed else mla_flops
        return fn(m, q_len, kv_len, kv_cache_rate)
    return gqa_flops(m, q_len, kv_len, kv_cache_rate)


def dense_mlp_flops(m: ModelConfig, tokens: float) -> float:
    """SwiGLU MLP (w1, w3: dim->inter, w2: inter->dim): 3 * tokens * dim * inter_dim * 2 / 1e9."""
    return 3 * tokens * m.dim * m.inter_dim * 2 / GFLOP


def expert_flops(m: ModelConfig, tokens: float) -> float:
    """One expert (routed or shared) over ``tokens`` rows: 3 * tokens * dim * moe_inter_dim * 2 / 1e9.

    For routed experts pass token-expert rows (tokens x top-k), as the article does."""
    return 3 * tokens * m.dim * m.moe_inter_dim * 2 / GFLOP


def tp_allreduce_bytes(m: ModelConfig, tokens: float, bytes_per_value: int = 2) -> float:
    """Tensor-parallel all-reduce of the attention output: tokens * dim * 2 bytes (BF16)."""
    return tokens * m.dim * bytes_per_value


def prefill_dispatch_bytes(
    m: ModelConfig, seq_len: float, tp: int, dispatch_nodes: int, gpus_per_node: int = 8, bytes_per_value: int = 1
) -> float:
    """Bytes one node sends across the scale-out network for one MoE dispatch in prefill.

    The article: each of the node's gpus_per_node/tp DP groups sends its seq_len tokens (FP8) to
    the dispatch_nodes - 1 other nodes it routes to.  Combine sends 2x (BF16)."""
    return (dispatch_nodes - 1) * (gpus_per_node / tp) * seq_len * m.dim * bytes_per_value


def decode_dispatch_bytes(m: ModelConfig, batch: float, bytes_per_value: int = 1) -> float:
    """Bytes one GPU sends for one MoE dispatch in decode: batch * dim * top-k (FP8).
    Combine sends 2x (BF16)."""
    return batch * m.dim * m.n_activated_experts * bytes_per_value


def kv_cache_bytes(m: ModelConfig, kv_len: float, batch: float = 1, bytes_per_value: int = 1) -> float:
    """KV cache of one layer: kv_len * (512 + 64 for MLA) * batch values (FP8 = 1 byte)."""
    return kv_len * m.kv_values_per_token * batch * bytes_per_value


def mla_params(m: ModelConfig, absorbed: bool = False, bias: bool = False) -> float:
    """Parameters of one attention block (MLA; GQA falls back to q/k/v/o).

    The article quotes 187.17M for standard MLA (ptflops with bias=True Linear layers) and
    598.147M for the absorbed form (no bias)."""
    if not m.is_mla:
        hd = m.head_dim
        return m.dim * hd * (2 * m.n_heads + 2 * m.n_kv_heads) + (
            (m.n_heads + 2 * m.n_kv_heads) * hd + m.dim if bias else 0
        )
    h = m.n_heads
    qi = _q_in(m)
    if absorbed:
        return (
            (m.dim * m.q_lora_rank if m.q_lora_rank > 0 else 0)
            + qi * h * m.qk_rope_head_dim
            + h * qi * m.kv_lora_rank
            + m.dim * (m.kv_lora_rank + m.qk_rope_head_dim)
            + h * m.kv_lora_rank * m.dim
        )
    layers = [
        (m.dim, m.q_lora_rank) if m.q_lora_rank > 0 else None,
        (qi, h * (m.qk_nope_head_dim + m.qk_rope_head_dim)),
        (m.dim, m.kv_lora_rank + m.qk_rope_head_dim),
        (m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim)),
        (h * m.v_head_dim, m.dim),
    ]
    return sum(i * o + (o if bias else 0) for i, o in (x for x in layers if x))


def expert_params(m: ModelConfig, bias: bool = False) -> float:
    """Parameters of one expert: 3 * dim * moe_inter_dim (the article: 44.05M with biases)."""
    p = 3 * m.dim * m.moe_inter_dim
    return p + (2 * m.moe_inter_dim + m.dim if bias else 0)


# --- bytes moved to and from HBM (the complete convention) -----------------------------------
# Each GEMM of ``rows`` x ``k`` -> ``n`` reads its weight (k x n), its input (rows x k) and
# writes its output (rows x n).  Weights are read once per batch, whatever the batch size: at
# small batches that read, not the FLOPs, bounds a step (what the article's decode model omits).


class AttentionBytes(NamedTuple):
    """HBM bytes of one attention block, split like ``AttentionFlops``: ``gemm`` (projection
    weights and their activations) and ``attention`` (the KV cache read, queries, outputs and,
    for MLA, the output projection)."""

    total: float
    gemm: float
    attention: float


def gemm_bytes(rows: float, k: float, n: float, *, weight: float = 2, act: float = 2, out: float = 2) -> float:
    """One GEMM: weight k x n, input rows x k, output rows x n (bytes per value given)."""
    return weight * k * n + act * rows * k + out * rows * n


def attention_bytes(
    m: ModelConfig, q_len: float, kv_len: float, *, batch: float = 1, kv_cache_rate: float = 0.0,
    absorbed: bool = False, weight: float = 2, act: float = 2, kv: float = 2,
) -> AttentionBytes:
    """Bytes of the attention block for ``batch`` sequences of q_len queries over kv_len keys.

    The GEMMs match ``attention_flops`` (absorbed MLA reads the weights as stored, applying
    wkv_b per head, as decode kernels do; its FLOPs stay the article's materialised count).  The core reads each sequence's cache: absorbed MLA as the article's two
    products (scores over the 576-wide latent, values over its 512 values: the latent is read
    twice, and the score matrix written and read), GQA the K and V heads once (a fused kernel);
    the standard (prefill) MLA reads the up-projected K and V."""
    q, k, b = q_len * batch, kv_len * batch, batch
    w = dict(weight=weight, act=act)
    kv_new = k * (1 - kv_cache_rate)  # keys whose projection is computed now
    h = m.n_heads
    if m.is_mla:
        qi = _q_in(m)
        lat = m.kv_lora_rank + m.qk_rope_head_dim
        g = gemm_bytes(q, m.dim, m.q_lora_rank, **w) if m.q_lora_rank > 0 else 0.0
        g += gemm_bytes(kv_new, m.dim, lat, **w)
        if absorbed:
            # weights as stored (wq_b, and wkv_b applied per head: W_UK to the query, W_UV to the
            # output), as absorbed decode kernels use them; not the materialised products
            g += gemm_bytes(q, qi, h * (m.qk_nope_head_dim + m.qk_rope_head_dim), **w)
            g += weight * m.kv_lora_rank * h * m.qk_nope_head_dim + act * q * h * m.qk_nope_head_dim
            g += 2 * q * h * m.kv_lora_rank
            # the article's two products, each reading its operand: scores over the 576-wide
            # latent, values over its 512-wide part; the score matrix written then read (bf16)
            core = kv * b * kv_len * (lat + m.kv_lora_rank) + act * q * h * lat + 2 * q * h * m.kv_lora_rank
            core += 2 * 2 * q * h * kv_len
            core += weight * m.kv_lora_rank * h * m.v_head_dim + act * q * h * m.kv_lora_rank + 2 * q * h * m.v_head_dim
            core += gemm_bytes(q, h * m.v_head_dim, m.dim, **w)
        else:
            g += gemm_bytes(q, qi, h * (m.qk_nope_head_dim + m.qk_rope_head_dim), **w)
            g += gemm_bytes(k, m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim), **w)
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            core = act * (q * h * qk + k * h * (qk + m.v_head_dim)) + 2 * q * h * m.v_head_dim
            core += gemm_bytes(q, h * m.v_head_dim, m.dim, **w)
        return AttentionBytes(g + core, g, core)
    hd = m.head_dim
    g = (gemm_bytes(q, m.dim, h * hd, **w) + gemm_bytes(kv_new, m.dim, 2 * m.n_kv_heads * hd, **w)
         + gemm_bytes(q, h * hd, m.dim, **w))
    core = kv * k * 2 * m.n_kv_heads * hd + act * q * h * hd + 2 * q * h * hd
    return AttentionBytes(g + core, g, core)


def dense_mlp_bytes(m: ModelConfig, tokens: float, *, weight: float = 2, act: float = 2) -> float:
    """SwiGLU MLP: the gate/up GEMM (dim -> 2 x inter) and the down GEMM (inter -> dim)."""
    return (gemm_bytes(tokens, m.dim, 2 * m.inter_dim, weight=weight, act=act)
            + gemm_bytes(tokens, m.inter_dim, m.dim, weight=weight, act=act))


def expert_bytes(m: ModelConfig, rows: float, experts: float, *, width: int | None = None, weight: float = 2,
                 act: float = 2) -> float:
    """``experts`` experts (the ones that received rows) over ``rows`` token-expert rows in all:
    each expert's weights once (3 x dim x width) plus the rows' activations."""
    w = m.moe_inter_dim if width is None else width
    return (experts * 3 * m.dim * w * weight
            + gemm_bytes(rows, m.dim, 2 * w, weight=0, act=act) + gemm_bytes(rows, w, m.dim, weight=0, act=act))


def shared_expert_flops(m: ModelConfig, tokens: float) -> float:
    """The shared expert(s) over ``tokens``: 3 * tokens * dim * shared width * 2 / 1e9 (equal to
    ``expert_flops(tokens * n_shared_experts)`` when the shared width is n_shared x moe width)."""
    return 3 * tokens * m.dim * m.shared_inter_dim * 2 / GFLOP


def expected_experts_hit(experts: float, rows: float) -> float:
    """Expected number of ``experts`` that receive at least one of ``rows`` rows routed uniformly
    at random: E x (1 - (1 - 1/E)^rows).  Without per-expert counts in the trace this is how
    many experts' weights a grouped GEMM must read (at 1024 rows over 128 experts: 127.97)."""
    if experts <= 0 or rows <= 0:
        return 0.0
    if experts <= 1:  # one expert, or a share of one (more GPUs than experts): all of it is read
        return float(experts)
    return experts * (1 - (1 - 1 / experts) ** rows)


def mla_down_projections(m: ModelConfig, q_len: float, kv_len: float, *, batch: float = 1,
                         kv_cache_rate: float = 0.0, weight: float = 2, act: float = 2) -> tuple[float, float]:
    """(GFLOP, bytes) of MLA's query and KV down-projections (``wq_a``, ``wkv_a``): plain
    (replicated) linears under tensor parallelism, so every TP rank does all of them.  (0, 0)
    for non-MLA models."""
    if not m.is_mla:
        return 0.0, 0.0
    q, kv_new = q_len * batch, kv_len * batch * (1 - kv_cache_rate)
    lat = m.kv_lora_rank + m.qk_rope_head_dim
    macs = kv_new * m.dim * lat + (q * m.dim * m.q_lora_rank if m.q_lora_rank > 0 else 0)
    nbytes = gemm_bytes(kv_new, m.dim, lat, weight=weight, act=act)
    if m.q_lora_rank > 0:
        nbytes += gemm_bytes(q, m.dim, m.q_lora_rank, weight=weight, act=act)
    return macs * 2 / GFLOP, nbytes
