#!/usr/bin/env python3
"""Capture real PyTorch-profiler (Kineto/Chrome) traces of LLM inference for traceview's fixtures.

Parts
-----
--part multi   N ranks (one process per GPU, NCCL; gloo on --cpu; N = --world, default: every GPU
               visible, 2 on --cpu): a "DeepSeek-V3-mini" with real DeepSeek-V3 widths (MLA, 256
               routed experts split by expert parallelism, EP2 = 128 / EP4 = 64 local experts, grouped
               top-k sigmoid gate, shared expert, 1 dense + 3 MoE layers). Dispatch/combine are real
               torch.distributed.all_to_all_single calls on a separate communication stream.
               Scenarios: prefill_tbo, prefill_serial, prefill_tbo_nolabels, decode_tbo,
               decode_serial, prefill_dbo_threads, prefill_dbo_threads_defaultprof, tp2_dense,
               tp2_dense_decode (the tp2_* scenarios use TP = N under the same names).
               prefill_dbo_threads: vLLM-style dual-batch overlap, each micro-batch driven by its own
               Python thread (own compute stream, own comm stream, own process group), no
               record_function labels: micro-batches are told apart only by the launching CPU thread.
--part single  one GPU: a Qwen2-7B-shaped dense decoder (4 layers), prefill + 16 decode steps at
               several context lengths, plus one decode replayed through a CUDA graph.
--part copyengine  ONE process driving 2 GPUs, no torch.distributed: the same DeepSeek-V3-mini with
               expert parallelism 2 emulated in-process (128/128 experts on cuda:0/cuda:1, each GPU
               with its own tokens); dispatch/combine are peer-to-peer copies (Tensor.copy_ across
               GPUs = cudaMemcpyAsync on the copy engine, "Memcpy PtoP" in the trace, no kernel) on
               one copy stream per GPU direction. Scenarios: decode_tbo_copyengine,
               decode_serial_copyengine, prefill_tbo_copyengine (optional: prefill_serial_copyengine).
               One trace per scenario holds both GPUs (pid 0 and pid 1).
--pack DIR     merge the per-rank manifest lines into MANIFEST.json and pack traces for transport.
--selftest     CPU correctness checks (tiny widths, gloo): all_to_all dispatch/combine against a
               single-process reference, TBO == serial, absorbed MLA == plain MLA, TP2 == TP1.

Every trace is written with torch.profiler.profile(activities=[CPU, CUDA], record_shapes=True)
and prof.export_chrome_trace(). See README.md next to this file.
"""
import os

# NVLink multicast must stay off on the shared GPU hosts (also for spawned children).
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"
os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")

import argparse
import contextlib
import dataclasses
import datetime
import glob
import json
import math
import shutil
import queue
import subprocess
import sys
import threading
import time
import traceback
import zlib
from types import SimpleNamespace as NS

import torch
import torch.distributed as dist
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except Exception:  # pragma: no cover
    SDPBackend = sdpa_kernel = None


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ----------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DSCfg:
    hidden: int = 7168
    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_heads: int = 128
    n_routed_experts: int = 256
    n_group: int = 8
    topk_group: int = 4
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 2048
    n_shared_experts: int = 1
    intermediate_size: int = 18432  # dense MLP
    n_dense_layers: int = 1
    n_moe_layers: int = 3
    routed_scaling_factor: float = 2.5
    rms_eps: float = 1e-6
    # workload
    prefill_prompts_per_rank: int = 2
    prefill_seq: int = 4096
    decode_batch_per_rank: int = 128
    decode_kv_len: int = 4096

    @classmethod
    def tiny(cls):
        return cls(hidden=64, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                   v_head_dim=16, n_heads=4, n_routed_experts=32, n_group=8, topk_group=4,
                   num_experts_per_tok=8, moe_intermediate_size=32, intermediate_size=96,
                   prefill_prompts_per_rank=2, prefill_seq=16, decode_batch_per_rank=8, decode_kv_len=32)


@dataclasses.dataclass
class QwenCfg:
    hidden: int = 3584
    intermediate_size: int = 18944
    n_heads: int = 28
    n_kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 152064
    n_layers: int = 4
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    batch: int = 4
    decode_steps: int = 16
    contexts: tuple = (256, 1024, 2048, 4096)
    graph_ctx: int = 1024

    @classmethod
    def tiny(cls):
        return cls(hidden=64, intermediate_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab=500,
                   n_layers=2, batch=2, decode_steps=4, contexts=(8, 16), graph_ctx=8)


def widths(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items()}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def seed_of(*parts):
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def mk(shape, seed, dev, dtype, fan_in=None, scale=1.0):
    """Deterministic random weight (same on every rank for the same seed)."""
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    t = torch.empty(shape, device=dev, dtype=dtype)
    std = scale / math.sqrt(fan_in if fan_in is not None else shape[-1])
    t.normal_(0.0, std, generator=g)
    return t


def rms(x, w, eps=1e-6):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def rope_tables(max_pos, dim, theta, dev):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=dev, dtype=torch.float32) / dim))
    t = torch.arange(max_pos, device=dev, dtype=torch.float32)
    f = torch.outer(t, inv)
    return f.cos(), f.sin()  # (max_pos, dim/2) fp32


def apply_rope(x, cos, sin):
    """rotate-half RoPE; cos/sin broadcastable to x[..., :d/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class SDPA:
    """scaled_dot_product_attention, forcing the flash backend on CUDA when it accepts the inputs."""

    def __init__(self, cuda):
        self.cuda = cuda and sdpa_kernel is not None
        self.flash_ok = {}
        self.used = set()
        self.errors = []

    def __call__(self, q, k, v, causal, gqa=False, site="default"):
        kw = {"is_causal": causal}
        if gqa:
            kw["enable_gqa"] = True
        if self.cuda and self.flash_ok.get(site, True):
            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    o = F.scaled_dot_product_attention(q, k, v, **kw)
                self.used.add(f"{site}:flash")
                return o
            except RuntimeError as e:  # not accepted: fall back to the default choice
                self.errors.append(f"{site}: " + str(e).splitlines()[0][:200])
                self.flash_ok[site] = False
        o = F.scaled_dot_product_attention(q, k, v, **kw)
        self.used.add(f"{site}:default")
        return o


# ----------------------------------------------------------------------------------------------
# run context: streams, labels, communication
# ----------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, dev, rank, world, labels=True, overlap=False, group=None, own_compute_stream=False):
        self.dev = dev
        self.cuda = dev.type == "cuda"
        self.rank, self.world = rank, world
        self.labels = labels
        self.overlap = overlap
        self.group = group  # process group of the all_to_all calls (None: the default group)
        if self.cuda:
            self.compute = torch.cuda.Stream(dev) if own_compute_stream else torch.cuda.current_stream(dev)
        else:
            self.compute = None
        self.comm = torch.cuda.Stream(dev) if self.cuda else None

    def L(self, mb, layer, name):
        """Nested record_function ranges mb{i} > layer.{j} > name (nothing when labels are off)."""
        if not self.labels:
            return contextlib.nullcontext()
        st = contextlib.ExitStack()
        if mb is not None:
            st.enter_context(torch.profiler.record_function(f"mb{mb}"))
        if layer is not None:
            st.enter_context(torch.profiler.record_function(f"layer.{layer}"))
        if name:
            st.enter_context(torch.profiler.record_function(name))
        return st

    def a2a(self, pairs):
        """all_to_all_single for each (out, inp) on the communication stream; returns a done-event."""
        if not self.cuda:
            for out, inp in pairs:
                dist.all_to_all_single(out, inp, group=self.group)
            return None
        self.comm.wait_stream(self.compute)
        with torch.cuda.stream(self.comm):
            for out, inp in pairs:
                dist.all_to_all_single(out, inp, group=self.group)
            ev = torch.cuda.Event()
            ev.record(self.comm)
        if getattr(self, "record_streams", True):  # off while capturing a CUDA graph (graph pool keeps them)
            for out, inp in pairs:
                out.record_stream(self.comm)
                inp.record_stream(self.comm)
        return ev

    def wait(self, ev):
        if ev is not None:
            self.compute.wait_event(ev)

    def join(self):
        if self.cuda:
            self.compute.wait_stream(self.comm)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V3-mini: weights
# ----------------------------------------------------------------------------------------------
def build_mla(cfg, li, dev, dt, tp_rank=0, tp=1, tag="ds"):
    H, nh = cfg.hidden, cfg.n_heads
    nope, rope, vd, ql, kvl = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                               cfg.q_lora_rank, cfg.kv_lora_rank)
    nhl = nh // tp
    hs = slice(tp_rank * nhl, (tp_rank + 1) * nhl)
    p = NS(nh=nhl)
    p.attn_norm = torch.ones(H, device=dev, dtype=dt)
    p.q_a = mk((ql, H), seed_of(tag, li, "q_a"), dev, dt)
    p.q_a_norm = torch.ones(ql, device=dev, dtype=dt)
    q_b = mk((nh * (nope + rope), ql), seed_of(tag, li, "q_b"), dev, dt)
    p.q_b = q_b.view(nh, nope + rope, ql)[hs].reshape(nhl * (nope + rope), ql).contiguous()
    del q_b
    p.kv_a = mk((kvl + rope, H), seed_of(tag, li, "kv_a"), dev, dt)
    p.kv_a_norm = torch.ones(kvl, device=dev, dtype=dt)
    kv_b = mk((nh * (nope + vd), kvl), seed_of(tag, li, "kv_b"), dev, dt).view(nh, nope + vd, kvl)[hs]
    p.kv_b = kv_b.reshape(nhl * (nope + vd), kvl).contiguous()
    p.w_uk = kv_b[:, :nope, :].contiguous()                   # (nhl, nope, kvl)
    p.w_uv_t = kv_b[:, nope:, :].transpose(1, 2).contiguous()  # (nhl, kvl, vd)
    del kv_b
    o = mk((H, nh * vd), seed_of(tag, li, "o"), dev, dt)
    p.o = o.view(H, nh, vd)[:, hs].reshape(H, nhl * vd).contiguous()
    del o
    return p


def build_mlp(H, inter, seed_tag, dev, dt, tp_rank=0, tp=1):
    il = inter // tp
    s = slice(tp_rank * il, (tp_rank + 1) * il)
    gate = mk((inter, H), seed_of(seed_tag, "gate"), dev, dt)
    up = mk((inter, H), seed_of(seed_tag, "up"), dev, dt)
    w13 = torch.cat([gate[s], up[s]], 0).contiguous()
    del gate, up
    down = mk((H, inter), seed_of(seed_tag, "down"), dev, dt)
    w2 = down[:, s].contiguous()
    del down
    return NS(w13=w13, w2=w2, inter=il)


def build_experts(cfg, li, e_lo, e_hi, dev, dt):
    H, I = cfg.hidden, cfg.moe_intermediate_size
    n = e_hi - e_lo
    w13 = torch.empty((n, 2 * I, H), device=dev, dtype=dt)
    w2 = torch.empty((n, H, I), device=dev, dtype=dt)
    for i, e in enumerate(range(e_lo, e_hi)):
        g = torch.Generator(device=dev)
        g.manual_seed(seed_of("ds", li, "exp", e, "w13"))
        w13[i].normal_(0.0, 1.0 / math.sqrt(H), generator=g)
        g.manual_seed(seed_of("ds", li, "exp", e, "w2"))
        w2[i].normal_(0.0, 1.0 / math.sqrt(I), generator=g)
    return NS(w13=w13, w2=w2, n=n, I=I)


def build_ds(cfg, dev, dt, rank, world, experts_range=None):
    """Dense layer(s) then MoE layers. Experts [rank*E/world, (rank+1)*E/world) live here."""
    E = cfg.n_routed_experts
    El = E // world
    lo, hi = experts_range if experts_range else (rank * El, (rank + 1) * El)
    layers = []
    for li in range(cfg.n_dense_layers + cfg.n_moe_layers):
        lw = NS(attn=build_mla(cfg, li, dev, dt), ffn_norm=torch.ones(cfg.hidden, device=dev, dtype=dt))
        if li < cfg.n_dense_layers:
            lw.kind = "dense"
            lw.mlp = build_mlp(cfg.hidden, cfg.intermediate_size, ("ds", li, "mlp"), dev, dt)
        else:
            lw.kind = "moe"
            lw.gate_w = mk((E, cfg.hidden), seed_of("ds", li, "gate"), dev, dt)
            g = torch.Generator(device=dev)
            g.manual_seed(seed_of("ds", li, "gate_bias"))
            lw.gate_bias = torch.empty(E, device=dev, dtype=torch.float32).normal_(0, 0.01, generator=g)
            lw.shared = build_mlp(cfg.hidden, cfg.moe_intermediate_size * cfg.n_shared_experts,
                                  ("ds", li, "shared"), dev, dt)
            lw.experts = build_experts(cfg, li, lo, hi, dev, dt)
            lw.e_lo = lo
        layers.append(lw)
    return NS(layers=layers, final_norm=torch.ones(cfg.hidden, device=dev, dtype=dt), E_local=El, lo=lo, hi=hi)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V3-mini: math
# ----------------------------------------------------------------------------------------------
def mlp_fwd(m, x):
    h = F.linear(x, m.w13)
    a = F.silu(h[..., :m.inter])
    a.mul_(h[..., m.inter:])
    return F.linear(a, m.w2)


def mla_prefill(cfg, p, x, B, S, cos, sin, sdpa):
    """Non-absorbed MLA for prefill; x is the normed input (B*S, H). V is zero-padded to the qk head
    dim (as vLLM/SGLang do) so that the flash kernel accepts it."""
    T = B * S
    nh, nope, rope, vd = p.nh, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    q = F.linear(rms(F.linear(x, p.q_a), p.q_a_norm, cfg.rms_eps), p.q_b).view(T, nh, nope + rope)
    q_nope, q_pe = q.split([nope, rope], -1)
    kv = F.linear(x, p.kv_a)
    c, k_pe = kv.split([cfg.kv_lora_rank, rope], -1)
    c = rms(c, p.kv_a_norm, cfg.rms_eps)
    kvb = F.linear(c, p.kv_b).view(T, nh, nope + vd)
    k_nope, v = kvb.split([nope, vd], -1)
    pos = torch.arange(S, device=x.device).repeat(B)
    cs, sn = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
    q_pe = apply_rope(q_pe, cs, sn)
    k_pe = apply_rope(k_pe.unsqueeze(1), cs, sn)
    qf = torch.cat([q_nope, q_pe], -1)
    kf = torch.cat([k_nope, k_pe.expand(T, nh, rope)], -1)
    vf = F.pad(v, (0, nope + rope - vd))

    def to4(t):
        return t.view(B, S, nh, -1).transpose(1, 2)

    o = sdpa(to4(qf), to4(kf), to4(vf), causal=True, site="mla_prefill")  # (B, nh, S, nope+rope)
    o = o[..., :vd].transpose(1, 2).reshape(T, nh * vd)
    return F.linear(o, p.o)


def mla_decode(cfg, p, x, cache, pos, cos, sin):
    """Absorbed MLA for one decode step. x (B, H) normed; cache (B, L, kv_lora+rope) latent KV, the
    new token is written at position pos and attention runs over cache[:, :pos+1]."""
    B = x.shape[0]
    nh, nope, rope, kvl = p.nh, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    q = F.linear(rms(F.linear(x, p.q_a), p.q_a_norm, cfg.rms_eps), p.q_b).view(B, nh, nope + rope)
    q_nope, q_pe = q.split([nope, rope], -1)
    cs, sn = cos[pos:pos + 1], sin[pos:pos + 1]
    q_pe = apply_rope(q_pe, cs, sn)
    kv = F.linear(x, p.kv_a)
    c, k_pe = kv.split([kvl, rope], -1)
    c = rms(c, p.kv_a_norm, cfg.rms_eps)
    k_pe = apply_rope(k_pe, cs, sn)
    cache[:, pos] = torch.cat([c, k_pe], -1)
    kv_all = cache[:, :pos + 1]
    q_lat = torch.bmm(q_nope.transpose(0, 1), p.w_uk)             # (nh, B, kvl)  q absorbed with W_UK
    q_full = torch.cat([q_lat.transpose(0, 1), q_pe], -1)           # (B, nh, kvl+rope)
    scores = torch.bmm(q_full, kv_all.transpose(1, 2))              # (B, nh, L)
    probs = torch.softmax(scores.float() * (1.0 / math.sqrt(nope + rope)), -1).to(x.dtype)
    o_lat = torch.bmm(probs, kv_all[..., :kvl])                     # (B, nh, kvl)
    o = torch.bmm(o_lat.transpose(0, 1), p.w_uv_t)                  # (nh, B, vd)  absorbed W_UV
    o = o.transpose(0, 1).reshape(B, nh * cfg.v_head_dim)
    return F.linear(o, p.o)


def mla_decode_reference(cfg, p, x, cache_before, pos, cos, sin):
    """Plain (non-absorbed) MLA decode, for the self-test."""
    B = x.shape[0]
    nh, nope, rope, kvl, vd = p.nh, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    cache = cache_before.clone()
    q = F.linear(rms(F.linear(x, p.q_a), p.q_a_norm, cfg.rms_eps), p.q_b).view(B, nh, nope + rope)
    q_nope, q_pe = q.split([nope, rope], -1)
    cs, sn = cos[pos:pos + 1], sin[pos:pos + 1]
    q_pe = apply_rope(q_pe, cs, sn)
    kv = F.linear(x, p.kv_a)
    c, k_pe = kv.split([kvl, rope], -1)
    c = rms(c, p.kv_a_norm, cfg.rms_eps)
    k_pe = apply_rope(k_pe, cs, sn)
    cache[:, pos] = torch.cat([c, k_pe], -1)
    lat = cache[:, :pos + 1]
    kvb = F.linear(lat[..., :kvl], p.kv_b).view(B, pos + 1, nh, nope + vd)
    k = torch.cat([kvb[..., :nope], lat[..., kvl:].unsqueeze(2).expand(B, pos + 1, nh, rope)], -1)
    v = kvb[..., nope:]
    qf = torch.cat([q_nope, q_pe], -1)  # (B, nh, d)
    s = torch.einsum("bhd,blhd->bhl", qf.float(), k.float()) / math.sqrt(nope + rope)
    o = torch.einsum("bhl,blhd->bhd", torch.softmax(s, -1), v.float()).to(x.dtype)
    return F.linear(o.reshape(B, nh * vd), p.o)


def moe_gate(cfg, lw, x, token_bias=None):
    """DeepSeek-V3 gate: sigmoid scores, bias-corrected grouped top-k (top-2 sum per group).
    token_bias (N, E) fp32, optional: added to the selection scores only (not to the weights), to steer
    tokens to chosen experts (expert-imbalance scenarios of capture_more.py)."""
    N, E, G = x.shape[0], cfg.n_routed_experts, cfg.n_group
    scores = F.linear(x, lw.gate_w).float().sigmoid()
    sb = scores + lw.gate_bias
    if token_bias is not None:
        sb = sb + token_bias
    gs = sb.view(N, G, E // G).topk(2, dim=-1).values.sum(-1)
    gi = gs.topk(cfg.topk_group, dim=-1).indices
    gmask = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gi, True)
    smask = gmask.unsqueeze(-1).expand(N, G, E // G).reshape(N, E)
    idx = sb.masked_fill(~smask, float("-inf")).topk(cfg.num_experts_per_tok, dim=-1).indices
    w = scores.gather(1, idx)
    w = w / w.sum(-1, keepdim=True) * cfg.routed_scaling_factor
    return idx, w


def pack_dispatch(x, idx, w, world, El):
    """Token-level dispatch buffers (DeepEP-like: a token goes once to each rank, with the list of
    its experts that live there). Every token is sent to every rank with fixed capacity so that no
    host synchronisation is needed; experts not on the destination are marked -1 with weight 0."""
    send_x = x.repeat(world, 1)                                           # (world*N, H)
    return send_x, dispatch_meta(idx, w, world, El)


def dispatch_meta(idx, w, world, El):
    """Routing metadata of pack_dispatch: (world*N, 2k) fp32, rows [r*N, (r+1)*N) for rank r: the local
    ids (on r) of each token's experts, -1 where the expert is not on r, then the routing weights (0
    where not on r)."""
    N, k = idx.shape
    owner = torch.div(idx, El, rounding_mode="floor")
    local = idx - owner * El
    ranks = torch.arange(world, device=idx.device).view(world, 1, 1)
    on = owner.unsqueeze(0) == ranks                                      # (world, N, k)
    meta = torch.cat([torch.where(on, local.unsqueeze(0), -1).float(),
                      torch.where(on, w.unsqueeze(0), 0.0)], -1)           # (world, N, 2k) fp32
    return meta.view(world * N, 2 * k).contiguous()


GMM = {"use": None}


def experts_fwd(ex, recv_x, recv_meta, k, exact):
    """Grouped expert FFN over received tokens; returns one row per received token (the weighted sum
    of its local experts' outputs, as DeepEP/SGLang reduce before combine).
    recv_meta[:, :k] = local expert ids (-1 = not here), recv_meta[:, k:] = routing weights.
    exact=True (prefill, like DeepEP normal mode): one host sync reads the per-expert counts, so only
    valid (token, expert) rows are gathered and multiplied. exact=False (decode, like DeepEP
    low-latency mode): fixed capacity, no host sync; rows past the last group are masked."""
    M, H = recv_x.shape
    El, I = ex.n, ex.I
    ids = recv_meta[:, :k].long().reshape(-1)
    w = recv_meta[:, k:].reshape(-1)
    key = torch.where(ids >= 0, ids, El)
    order = torch.argsort(key)
    counts = torch.zeros(El + 1, dtype=torch.int64, device=recv_x.device).scatter_add_(0, key, torch.ones_like(key))
    offs = counts[:El].cumsum(0).to(torch.int32)
    cl = None
    if exact or not GMM["use"]:
        cl = counts.tolist()  # host sync
        sel = order[:sum(cl[:El])]
    else:
        sel = order
    tok = torch.div(sel, k, rounding_mode="floor")
    xs = recv_x.index_select(0, tok)
    ws = w.index_select(0, sel).to(recv_x.dtype).unsqueeze(1)
    if GMM["use"]:
        h = torch._grouped_mm(xs, ex.w13.transpose(-2, -1), offs=offs)
        a = F.silu(h[:, :I])
        a.mul_(h[:, I:]).mul_(ws)
        y = torch._grouped_mm(a, ex.w2.transpose(-2, -1), offs=offs)
    else:  # loop of matmuls over local experts
        bounds = [0]
        for c in cl[:El]:
            bounds.append(bounds[-1] + c)
        y = torch.empty_like(xs)
        for e in range(El):
            s_, t_ = bounds[e], bounds[e + 1]
            if t_ > s_:
                h = F.linear(xs[s_:t_], ex.w13[e])
                a = F.silu(h[:, :I])
                a.mul_(h[:, I:]).mul_(ws[s_:t_])
                y[s_:t_] = F.linear(a, ex.w2[e])
    if cl is None:  # rows past offs[-1] were not computed: mask them
        y = torch.where((key.index_select(0, sel) < El).unsqueeze(1), y, torch.zeros((), dtype=y.dtype, device=y.device))
    full = torch.zeros((M * k, H), dtype=recv_x.dtype, device=recv_x.device)
    full.index_copy_(0, sel, y)
    return full.view(M, k, H).sum(1)


def moe_dispatch(ctx, hn2, idx, w, El):
    send_x, send_meta = pack_dispatch(hn2, idx, w, ctx.world, El)
    recv_x, recv_meta = torch.empty_like(send_x), torch.empty_like(send_meta)
    ev = ctx.a2a([(recv_meta, send_meta), (recv_x, send_x)])
    return recv_x, recv_meta, ev


def moe_combine(ctx, y):
    back = torch.empty_like(y)
    return back, ctx.a2a([(back, y)])


def ds_forward_gen(cfg, ctx, model, x, mb, att, outs, sdpa):
    """One micro-batch's forward as a generator; it yields after each launch of communication so a
    scheduler can interleave two micro-batches (TBO). att: dict(kind='prefill', B, S, cos, sin) or
    dict(kind='decode', caches=[...], pos, cos, sin)."""
    world, El, k = ctx.world, model.E_local, cfg.num_experts_per_tok
    N = x.shape[0]
    before_layer = getattr(ctx, "before_layer", None)  # host-side hook (straggler injection), None by default
    route_bias = getattr(ctx, "route_bias", None)      # (mb, li, N) -> (N, E) selection bias or None
    on_route = getattr(ctx, "on_route", None)          # (mb, li, idx) -> None: routing counts
    for li, lw in enumerate(model.layers):
        if before_layer is not None:
            before_layer(mb, li)
        with ctx.L(mb, li, "attn"):
            hn = rms(x, lw.attn.attn_norm, cfg.rms_eps)
            if att["kind"] == "prefill":
                a = mla_prefill(cfg, lw.attn, hn, att["B"], att["S"], att["cos"], att["sin"], sdpa)
            else:
                a = mla_decode(cfg, lw.attn, hn, att["caches"][li], att["pos"], att["cos"], att["sin"])
            h = x + a
            hn2 = rms(h, lw.ffn_norm, cfg.rms_eps)
        if lw.kind == "dense":
            with ctx.L(mb, li, "mlp"):
                x = h + mlp_fwd(lw.mlp, hn2)
            continue
        with ctx.L(mb, li, "gate"):
            idx, w = moe_gate(cfg, lw, hn2, route_bias(mb, li, N) if route_bias is not None else None)
            if on_route is not None:
                on_route(mb, li, idx)
        with ctx.L(mb, li, "dispatch"):
            recv_x, recv_meta, ev = moe_dispatch(ctx, hn2, idx, w, El)
        hs = None
        if ctx.overlap:
            with ctx.L(mb, li, "shared_expert"):
                hs = h + mlp_fwd(lw.shared, hn2)
        yield
        with ctx.L(mb, li, "experts"):
            ctx.wait(ev)
            y = experts_fwd(lw.experts, recv_x, recv_meta, k, exact=att["kind"] == "prefill")
            del recv_x, recv_meta
        with ctx.L(mb, li, "combine"):
            back, ev2 = moe_combine(ctx, y)
        yield
        with ctx.L(mb, li, "combine"):
            ctx.wait(ev2)
            routed = back.view(world, N, -1).sum(0)
            if hs is not None:
                x = hs + routed
        if hs is None:
            with ctx.L(mb, li, "shared_expert"):
                x = h + mlp_fwd(lw.shared, hn2) + routed
    with ctx.L(mb, None, "final_norm"):
        outs[mb] = rms(x, model.final_norm, cfg.rms_eps)


def run_interleaved(gens):
    """Round-robin between micro-batch generators: each step runs one micro-batch up to its next
    communication launch (SGLang/DeepSeek two-batch overlap)."""
    active = list(gens)
    while active:
        for g in list(active):
            try:
                next(g)
            except StopIteration:
                active.remove(g)


class Baton:
    """CPU hand-off between micro-batch threads (like vLLM's ubatching contexts): exactly one thread
    runs model code at a time; a thread passes the baton to the next unfinished one at each
    communication launch and waits until it comes back."""

    def __init__(self, n):
        self.n = n
        self.cv = threading.Condition()
        self.reset()

    def reset(self):
        with self.cv:
            self.turn = 0
            self.done = [False] * self.n

    def wait_turn(self, i):
        with self.cv:
            while self.turn != i:
                self.cv.wait()

    def pass_on(self, i):
        with self.cv:
            for d in range(1, self.n + 1):
                j = (i + d) % self.n
                if not self.done[j]:
                    break
            self.turn = j
            self.cv.notify_all()

    def finish(self, i):
        with self.cv:
            self.done[i] = True
        self.pass_on(i)


class DBOThreads:
    """vLLM-style dual-batch overlap driven by threads: one persistent Python thread per micro-batch,
    each with its own Ctx (own compute stream, own comm stream, own process group). The threads live
    for the whole scenario (so each micro-batch keeps one CPU thread id in the trace); each run() hands
    both a micro-batch generator (ds_forward_gen), the threads alternate at every communication launch
    (Baton), and the caller's stream joins both compute streams at the end. No record_function labels
    are added here."""

    def __init__(self, ctxs, dev):
        self.ctxs, self.dev, self.n = ctxs, dev, len(ctxs)
        self.cuda = dev.type == "cuda"
        self.baton = Baton(self.n)
        self.jobs = [queue.Queue() for _ in ctxs]
        self.results = queue.Queue()
        self.tids = [None] * self.n        # threading.get_native_id() (Linux tid)
        self.idents = [None] * self.n      # threading.get_ident()
        ready = threading.Barrier(self.n + 1)
        self.threads = [threading.Thread(target=self._loop, args=(i, ready), daemon=True)
                        for i in range(self.n)]
        for t in self.threads:
            t.start()
        ready.wait()

    def _loop(self, i, ready):
        ctx = self.ctxs[i]
        if self.cuda:
            torch.cuda.set_device(self.dev)
        else:
            torch.set_num_threads(1)
        self.tids[i] = threading.get_native_id()
        self.idents[i] = threading.get_ident()
        ready.wait()
        while True:
            job = self.jobs[i].get()
            if job is None:
                return
            err = None
            try:
                with torch.no_grad(), (torch.cuda.stream(ctx.compute) if self.cuda else contextlib.nullcontext()):
                    self.baton.wait_turn(i)
                    if self.cuda:
                        ctx.compute.wait_stream(job.main)  # inputs (and the step's start event) come first
                    for _ in job.make_gen(ctx):
                        self.baton.pass_on(i)
                        self.baton.wait_turn(i)
                    ctx.join()
            except BaseException as e:  # noqa: BLE001 (reported to the caller)
                err = e
                traceback.print_exc()
            finally:
                self.baton.finish(i)
            self.results.put((i, err))

    def run(self, make_gens):
        """make_gens[i](ctx) -> generator of micro-batch i; returns when both have finished on the CPU,
        with the caller's current stream waiting on both compute streams."""
        self.baton.reset()
        main = torch.cuda.current_stream(self.dev) if self.cuda else None
        for i, mg in enumerate(make_gens):
            self.jobs[i].put(NS(main=main, make_gen=mg))
        errs = [self.results.get() for _ in range(self.n)]
        for i, e in errs:
            if e is not None:
                raise RuntimeError(f"micro-batch thread {i} failed") from e
        if self.cuda:
            for c in self.ctxs:
                main.wait_stream(c.compute)

    def close(self):
        for q in self.jobs:
            q.put(None)
        for t in self.threads:
            t.join(timeout=10)


def moe_reference(cfg, model_full, lw_full, hn2, h):
    """Single-process MoE layer output with all experts (self-test)."""
    idx, w = moe_gate(cfg, lw_full, hn2)
    out = torch.zeros_like(hn2)
    ex = lw_full.experts
    I = ex.I
    for t in range(hn2.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            hh = F.linear(hn2[t], ex.w13[e])
            out[t] += float(w[t, j]) * F.linear(F.silu(hh[:I]) * hh[I:], ex.w2[e])
    return h + mlp_fwd(lw_full.shared, hn2) + out


# ----------------------------------------------------------------------------------------------
# tensor-parallel dense variant
# ----------------------------------------------------------------------------------------------
def build_tp(cfg, dev, dt, rank, tp, n_layers=4):
    layers = []
    for li in range(n_layers):
        layers.append(NS(attn=build_mla(cfg, li, dev, dt, rank, tp, tag="tp"),
                         ffn_norm=torch.ones(cfg.hidden, device=dev, dtype=dt),
                         mlp=build_mlp(cfg.hidden, cfg.intermediate_size, ("tp", li, "mlp"), dev, dt, rank, tp)))
    return NS(layers=layers, final_norm=torch.ones(cfg.hidden, device=dev, dtype=dt))


def tp_forward(cfg, ctx, model, x, att, sdpa, tp):
    for li, lw in enumerate(model.layers):
        with ctx.L(None, li, "attn"):
            hn = rms(x, lw.attn.attn_norm, cfg.rms_eps)
            if att["kind"] == "prefill":
                a = mla_prefill(cfg, lw.attn, hn, att["B"], att["S"], att["cos"], att["sin"], sdpa)
            else:
                a = mla_decode(cfg, lw.attn, hn, att["caches"][li], att["pos"], att["cos"], att["sin"])
        if tp > 1:
            with ctx.L(None, li, "all_reduce"):
                dist.all_reduce(a)
        h = x + a
        with ctx.L(None, li, "mlp"):
            m = mlp_fwd(lw.mlp, rms(h, lw.ffn_norm, cfg.rms_eps))
        if tp > 1:
            with ctx.L(None, li, "all_reduce"):
                dist.all_reduce(m)
        x = h + m
    with ctx.L(None, None, "final_norm"):
        return rms(x, model.final_norm, cfg.rms_eps)


# ----------------------------------------------------------------------------------------------
# profiling harness
# ----------------------------------------------------------------------------------------------
def store_barrier(store, world, key):
    """Rank alignment through the TCP store: leaves nothing in the trace."""
    if store is None or world == 1:
        return
    store.add(key, 1)
    while int(store.add(key, 0)) < world:
        time.sleep(0.0002)


class Timer:
    def __init__(self, dev):
        self.cuda = dev.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e), (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms


def all_threads_config():
    """_ExperimentalConfig(profile_all_threads=True): without it the profiler records CPU ops only on the
    thread that started it (CUPTI's CUDA runtime events come from every thread either way)."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True), None
    except Exception as e:  # older torch
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def profile_steps(name, step, dev, outdir, rank, world, store, meta, warmup=2, timed=3, active=2,
                  labels=True, tag=None, steps=None, all_threads=False, timer=None, fname=None,
                  capture_meta=None):
    """warm up, time unprofiled, then profile `active` iterations (after one profiler warm-up step
    when `steps` (default: labels) is on; ProfilerStep#N ranges come from prof.step()). all_threads:
    record CPU ops of every thread (profile_all_threads). timer: callable(fn) -> (gpu_ms, wall_ms)
    (default Timer(dev)); fname: trace file name; capture_meta: the trace's "capture" metadata (default:
    scenario, rank, world_size, tokens_per_microbatch, num_microbatches). Returns manifest entry."""
    steps = labels if steps is None else steps
    extra = {}
    all_threads_used = False
    if all_threads:
        cfg_, why = all_threads_config()
        if cfg_ is not None:
            extra["experimental_config"] = cfg_
            all_threads_used = True
        else:
            log(f"{name}: profile_all_threads unavailable ({why}); CPU ops of other threads are not recorded")
    timer = timer or Timer(dev)
    tag = tag or name
    for i in range(warmup):
        store_barrier(store, world, f"{tag}/w{i}")
        timer(step)
    un = []
    for i in range(timed):
        store_barrier(store, world, f"{tag}/t{i}")
        un.append(timer(step))
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    fname = fname or (f"{name}_rank{rank}.json" if world > 1 or rank > 0 else f"{name}.json")
    path = os.path.join(outdir, fname)
    prof_times = []
    meta = dict(meta)
    meta_json = json.dumps(capture_meta if capture_meta is not None else
                           {"scenario": meta.get("scenario"), "rank": rank, "world_size": world,
                            "tokens_per_microbatch": meta.get("tokens_per_microbatch"),
                            "num_microbatches": meta.get("num_microbatches")})
    t0 = time.time()
    if steps:
        sched = torch.profiler.schedule(wait=0, warmup=1, active=active, repeat=1)
        with torch.profiler.profile(activities=acts, record_shapes=True, schedule=sched,
                                    on_trace_ready=lambda p: p.export_chrome_trace(path), **extra) as prof:
            for i in range(1 + active):
                if i == 1:
                    prof.add_metadata_json("capture", meta_json)
                store_barrier(store, world, f"{tag}/p{i}")
                r = timer(step)
                if i >= 1:
                    prof_times.append(r)
                prof.step()
    else:
        with torch.profiler.profile(activities=acts, record_shapes=True, **extra) as prof:
            prof.add_metadata_json("capture", meta_json)
            for i in range(active):
                store_barrier(store, world, f"{tag}/p{i}")
                prof_times.append(timer(step))
        prof.export_chrome_trace(path)
    export_s = time.time() - t0
    size = os.path.getsize(path)
    meta.update(file=fname, rank=rank, world_size=world,
                iter_ms_profiled=[round(a, 3) for a, _ in prof_times],
                iter_ms_profiled_mean=round(sum(a for a, _ in prof_times) / len(prof_times), 3),
                iter_wall_ms_profiled=[round(b, 3) for _, b in prof_times],
                iter_ms_unprofiled=[round(a, 3) for a, _ in un],
                iter_ms_unprofiled_mean=round(sum(a for a, _ in un) / max(1, len(un)), 3),
                profiled_iterations=len(prof_times), warmup_iterations=warmup,
                record_function_labels=labels, profiler_step_annotations=steps,
                profile_all_threads=all_threads_used, uncompressed_bytes=size)
    log(f"{fname}: {size/1e6:.1f} MB, iter(ms, CUDA events) profiled={meta['iter_ms_profiled']} "
        f"unprofiled={meta['iter_ms_unprofiled']} (profile+export {export_s:.1f}s)")
    return meta


def env_info(dev):
    info = {"torch_version": torch.__version__}
    if dev.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(dev)
        try:
            v = torch.cuda.nccl.version()
            info["nccl_version"] = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception as e:
            info["nccl_version"] = f"unknown ({e})"
        info["cuda_version"] = torch.version.cuda
    else:
        info["gpu_name"] = "cpu"
        info["nccl_version"] = None
    return info


def write_manifest_line(outdir, entry):
    with open(os.path.join(outdir, f"manifest_part_{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def check_grouped_mm(dev, dt):
    """Use torch._grouped_mm if it exists and agrees with a matmul loop on uneven groups."""
    if not hasattr(torch, "_grouped_mm"):
        return False, "torch._grouped_mm missing"
    try:
        g = torch.Generator(device=dev)
        g.manual_seed(0)
        E, K, N = 8, 256, 128
        sizes = [0, 5, 17, 1, 64, 3, 0, 30]
        M = sum(sizes) + 7  # trailing rows belong to no group
        x = torch.randn(M, K, device=dev, dtype=dt, generator=g)
        w = torch.randn(E, N, K, device=dev, dtype=dt, generator=g)
        offs = torch.tensor(sizes, device=dev).cumsum(0).to(torch.int32)
        y = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        s = 0
        err = 0.0
        for e, n in enumerate(sizes):
            if n:
                ref = (x[s:s + n].float() @ w[e].float().T)
                err = max(err, float((y[s:s + n].float() - ref).abs().max() / (ref.abs().max() + 1e-6)))
            s += n
        ok = err < 2e-2
        return ok, f"max rel err {err:.2e}"
    except Exception as e:
        return False, f"error: {str(e).splitlines()[0][:200]}"


# ----------------------------------------------------------------------------------------------
# multi-rank worker
# ----------------------------------------------------------------------------------------------
ALL_MULTI = ["prefill_tbo", "prefill_serial", "prefill_tbo_nolabels", "decode_tbo", "decode_serial",
             "prefill_dbo_threads", "prefill_dbo_threads_defaultprof", "tp2_dense", "tp2_dense_decode"]
# rough seconds each needs on the GPU (profile + export), to skip what cannot finish in time
COST = {"prefill_tbo": 25, "prefill_serial": 25, "prefill_tbo_nolabels": 20, "decode_tbo": 25,
        "decode_serial": 20, "prefill_dbo_threads": 30, "prefill_dbo_threads_defaultprof": 25,
        "tp2_dense": 35, "tp2_dense_decode": 20}
DBO_VARIANTS = {  # scenario -> profile CPU ops of every thread (profile_all_threads)?
    "prefill_dbo_threads": True,
    "prefill_dbo_threads_defaultprof": False,  # plain torch.profiler: CPU ops of the main thread only
}


def worker(rank, world, args):
    t_start = args.t_start
    cpu = args.cpu
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    if cpu:
        torch.set_num_threads(1)
        dev = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    else:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev,
                                timeout=datetime.timedelta(seconds=240))
    store = dist.distributed_c10d._get_default_store()
    dt = torch.float32 if (cpu and args.fp32) else torch.bfloat16
    cfg = DSCfg.tiny() if args.tiny else DSCfg()
    if args.heads:
        cfg.n_heads = args.heads
    if args.experts:
        cfg.n_routed_experts = args.experts
    if cfg.n_routed_experts % world:
        raise SystemExit(f"{cfg.n_routed_experts} routed experts do not split over {world} ranks")
    outdir = args.out
    os.makedirs(outdir, exist_ok=True)
    info = env_info(dev)
    scen = [s for s in (args.scenarios.split(",") if args.scenarios else ALL_MULTI) if s]
    iters = dict(warmup=2, timed=3) if not args.quick else dict(warmup=1, timed=1)

    def go(name):
        """All ranks take the same decision (rank 0's) whether a scenario still fits in the budget."""
        if rank == 0:
            left = args.budget - (time.time() - t_start)
            ok = left > COST.get(name, 20) * (0.2 if cpu else 1.0)
            store.set(f"go/{name}", "1" if ok else "0")
            if not ok:
                log(f"skip {name}: {left:.0f}s left")
        return store.get(f"go/{name}") == b"1"

    if not cpu:
        ok, why = check_grouped_mm(dev, dt)
    else:
        ok, why = hasattr(torch, "_grouped_mm"), "cpu fallback"
    if args.no_gmm:
        ok, why = False, "disabled by --no-gmm"
    GMM["use"] = ok
    if rank == 0:
        log(f"rank0 {info} grouped_mm={ok} ({why})")

    ctx = Ctx(dev, rank, world)
    sdpa = SDPA(ctx.cuda)
    t0 = time.time()
    model = build_ds(cfg, dev, dt, rank, world)
    if ctx.cuda:
        torch.cuda.synchronize()
        log(f"rank{rank}: built DeepSeek-V3-mini in {time.time()-t0:.1f}s, "
            f"{torch.cuda.memory_allocated(dev)/2**30:.1f} GiB allocated")
    cos, sin = rope_tables(max(cfg.prefill_seq, cfg.decode_kv_len) + 8, cfg.qk_rope_head_dim, 10000.0, dev)

    P, S = cfg.prefill_prompts_per_rank, cfg.prefill_seq
    g = torch.Generator(device=dev)
    g.manual_seed(1000 + rank)
    x_prefill = torch.randn((P, S, cfg.hidden), device=dev, dtype=dt, generator=g)
    Bd, Lkv = cfg.decode_batch_per_rank, cfg.decode_kv_len
    x_decode = torch.randn((Bd, cfg.hidden), device=dev, dtype=dt, generator=g)
    n_layers = len(model.layers)
    dec_caches = None

    # ---------------- dual-batch overlap driven by two CPU threads (vLLM DBO style) ----------------
    dbo = None
    main_tid = threading.get_native_id()
    if any(s in DBO_VARIANTS for s in scen):
        if P != 2:
            raise SystemExit("prefill_dbo_threads needs prefill_prompts_per_rank == 2")
        # One process group (its own NCCL communicator) per micro-batch thread, created and warmed up
        # here, before any profiling: one communicator fed from two threads and two CUDA streams is not
        # safe in NCCL (its operations must be ordered on every rank, and c10d matches collectives by
        # per-group sequence numbers), so each micro-batch thread gets its own group.
        dbo_groups = [dist.new_group(list(range(world)), timeout=datetime.timedelta(seconds=120))
                      for _ in range(2)]
        for gr in dbo_groups:
            t_ = torch.arange(world * 4, device=dev, dtype=torch.float32) + 1000 * rank
            o_ = torch.empty_like(t_)
            dist.all_to_all_single(o_, t_, group=gr)
            assert torch.equal(o_.view(world, 4)[:, 0].cpu(), torch.arange(world, dtype=torch.float32) * 1000
                               + rank * 4), "dbo group warm-up all_to_all gave a wrong result"
        if ctx.cuda:
            torch.cuda.synchronize()
        dbo_ctxs = [Ctx(dev, rank, world, labels=False, overlap=True, group=gr, own_compute_stream=True)
                    for gr in dbo_groups]
        dbo = DBOThreads(dbo_ctxs, dev)
        log(f"rank{rank}: dbo micro-batch threads tids={dbo.tids} (main thread {main_tid})")

    def step_prefill_dbo():
        """Prefill, 2 micro-batches (one prompt each), each driven by its own thread (DBOThreads)."""
        outs = [None, None]
        att = dict(kind="prefill", B=1, S=S, cos=cos, sin=sin)
        dbo.run([(lambda c, i=i: ds_forward_gen(cfg, c, model, x_prefill[i], i, att, outs, sdpa))
                 for i in range(2)])
        return torch.cat(outs, 0)

    model_meta = dict(widths(cfg), ep_size=world, n_local_experts=model.E_local,
                      local_expert_range=[model.lo, model.hi], dtype=str(dt).replace("torch.", ""),
                      embedding="none (inputs are random hidden states)", lm_head="none")
    base = dict(info, grouped_mm_used=bool(GMM["use"]), grouped_mm_check=why,
                expert_gemm="torch._grouped_mm" if GMM["use"] else "loop of matmuls over local experts",
                model_name="DeepSeek-V3-mini", model=model_meta)

    def comm_meta(N):
        H, k = cfg.hidden, cfg.num_experts_per_tok
        esz = 2 if dt == torch.bfloat16 else 4
        return {"dispatch": f"2 x all_to_all_single per micro-batch and MoE layer (meta fp32 [world*N,2k], "
                            f"hidden [world*N,H]); equal splits, every token to every rank",
                "dispatch_bytes_sent_per_rank": world * N * (H * esz + 2 * k * 4),
                "dispatch_bytes_crossing_per_rank": (world - 1) * N * (H * esz + 2 * k * 4),
                "combine_bytes_sent_per_rank": world * N * H * esz,
                "combine_bytes_crossing_per_rank": (world - 1) * N * H * esz,
                "comm_stream": "separate torch.cuda.Stream (NCCL kernels appear on the stream c10d uses)"}

    def step_prefill(overlap, labels):
        ctx.overlap, ctx.labels = overlap, labels
        if overlap:
            outs = [None, None]
            gens = [ds_forward_gen(cfg, ctx, model, x_prefill[i], i,
                                   dict(kind="prefill", B=1, S=S, cos=cos, sin=sin), outs, sdpa)
                    for i in range(P)]
            run_interleaved(gens)
            ctx.join()
            return torch.cat(outs, 0)
        outs = [None]
        run_interleaved([ds_forward_gen(cfg, ctx, model, x_prefill.reshape(P * S, -1), 0,
                                        dict(kind="prefill", B=P, S=S, cos=cos, sin=sin), outs, sdpa)])
        ctx.join()
        return outs[0]

    def step_decode(overlap, labels):
        ctx.overlap, ctx.labels = overlap, labels
        pos = Lkv - 1
        if overlap:
            h = Bd // 2
            outs = [None, None]
            gens = [ds_forward_gen(cfg, ctx, model, x_decode[i * h:(i + 1) * h], i,
                                   dict(kind="decode", caches=[c[i * h:(i + 1) * h] for c in dec_caches], pos=pos,
                                        cos=cos, sin=sin), outs, sdpa) for i in range(2)]
            run_interleaved(gens)
            ctx.join()
            return torch.cat(outs, 0)
        outs = [None]
        run_interleaved([ds_forward_gen(cfg, ctx, model, x_decode, 0,
                                        dict(kind="decode", caches=dec_caches, pos=pos, cos=cos, sin=sin),
                                        outs, sdpa)])
        ctx.join()
        return outs[0]

    def compare(a, b):
        d = (a.float() - b.float()).abs()
        rel = d.norm() / (b.float().norm() + 1e-12)
        return {"max_abs_diff": float(d.max()), "rel_l2_diff": float(rel),
                "frac_rows_max_diff_gt_0.1": float((d.max(-1).values > 0.1).float().mean())}

    def dispatch_combine_check(n_tok=1024):
        """Fixed routing, real widths: 2 micro-batches through dispatch/experts/combine on the comm
        stream (interleaved) vs every expert of the layer computed locally without communication."""
        li = cfg.n_dense_layers
        lw = model.layers[li]
        full = build_experts(cfg, li, 0, cfg.n_routed_experts, dev, dt)
        gg = torch.Generator(device=dev)
        gg.manual_seed(77 + rank)
        res = {}
        for exact in (True, False):
            xs = [rms(torch.randn((n_tok, cfg.hidden), device=dev, dtype=dt, generator=gg), lw.ffn_norm) for _ in range(2)]
            routes = [moe_gate(cfg, lw, x) for x in xs]
            ctx.overlap, ctx.labels = True, False
            st = [moe_dispatch(ctx, x, i_, w_, model.E_local) for x, (i_, w_) in zip(xs, routes)]
            st2 = []
            for rx, rm, ev in st:
                ctx.wait(ev)
                st2.append(moe_combine(ctx, experts_fwd(lw.experts, rx, rm, cfg.num_experts_per_tok, exact)))
            outs = []
            for back, ev2 in st2:
                ctx.wait(ev2)
                outs.append(back.view(world, n_tok, -1).sum(0))
            ctx.join()
            errs = []
            for x, (i_, w_), o in zip(xs, routes, outs):
                _, meta1 = pack_dispatch(x, i_, w_, 1, cfg.n_routed_experts)
                full_ns = NS(w13=full.w13, w2=full.w2, n=cfg.n_routed_experts, I=full.I)
                ref = experts_fwd(full_ns, x, meta1, cfg.num_experts_per_tok, True)
                errs.append(float((o.float() - ref.float()).norm() / ref.float().norm()))
                owner = torch.div(i_, model.E_local, rounding_mode="floor")
                need = torch.stack([(owner == r).any(-1) for r in range(world)]).float().mean().item()
            res["exact" if exact else "fixed_capacity"] = {"rel_l2_err_mb0": errs[0], "rel_l2_err_mb1": errs[1]}
            res["fraction_of_(token,rank)_pairs_that_need_the_token"] = round(need, 4)
        del full
        if ctx.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return res

    checks = {}
    done = []
    try:
        if go("check_dispatch_combine"):
            with torch.no_grad():
                checks["dispatch_combine_vs_local_all_experts"] = dispatch_combine_check(1024 if not args.tiny else 16)
        # ---------------- correctness: TBO vs serial on the real model ----------------
        if go("check_prefill"):
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("warn")  # reports any host sync in the step code
            with torch.no_grad():
                a = step_prefill(True, False)
                b = step_prefill(False, False)
            if ctx.cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode(0)
            checks["prefill_tbo_vs_serial"] = compare(a, b)
            del a, b
        for name in scen:
            if name.startswith("decode") and dec_caches is None:
                dec_caches = [torch.randn((Bd, Lkv, cfg.kv_lora_rank + cfg.qk_rope_head_dim), device=dev,
                                          dtype=dt, generator=g) for _ in range(n_layers)]
                with torch.no_grad():
                    a = step_decode(True, False)
                    b = step_decode(False, False)
                checks["decode_tbo_vs_serial"] = compare(a, b)
                del a, b
        if rank == 0:
            log(f"checks: {json.dumps(checks)}")
        for name in scen:
            if name.startswith("tp2"):
                continue
            if not go(name):
                continue
            if ctx.cuda:
                torch.cuda.synchronize()
            sdpa.used = set()
            prof_kw = {}
            if name in DBO_VARIANTS:
                if "prefill_dbo_threads_vs_serial" not in checks:
                    with torch.no_grad():
                        a = step_prefill_dbo()
                        b = step_prefill(True, False)
                        c_ = step_prefill(False, False)
                    checks["prefill_dbo_threads_vs_tbo"] = compare(a, b)
                    checks["prefill_dbo_threads_vs_serial"] = compare(a, c_)
                    del a, b, c_
                    if rank == 0:
                        log(f"checks: {json.dumps({k: v for k, v in checks.items() if 'dbo' in k})}")
                fn = step_prefill_dbo
                labels = False
                prof_kw = dict(steps=True, all_threads=DBO_VARIANTS[name])
                meta = dict(base, scenario=name, phase="prefill", schedule="dbo_threads", num_microbatches=2,
                            tokens_per_microbatch=S, prompts_per_rank=P, prompt_len=S, tokens_per_rank=P * S,
                            attention="MLA non-absorbed, SDPA causal (V zero-padded "
                            f"to {cfg.qk_nope_head_dim + cfg.qk_rope_head_dim})",
                            comm=dict(comm_meta(S), comm_stream="one torch.cuda.Stream per micro-batch thread "
                                      "(NCCL kernels appear on the stream c10d uses)",
                                      process_groups="one torch.distributed.new_group (own NCCL communicator) "
                                      "per micro-batch thread"),
                            checks=checks,
                            expert_path="exact valid (token, expert) rows: one host sync per MoE layer and micro-batch "
                                        "reads the per-expert counts (like DeepEP normal mode)",
                            microbatch_cpu_tids={"0": dbo.tids[0], "1": dbo.tids[1]},
                            main_thread_tid=main_tid,
                            dbo_threads={
                                "driver": "one persistent threading.Thread per micro-batch, started before profiling "
                                          "(each micro-batch keeps one CPU thread id for the whole trace); the main "
                                          "thread only hands out the step, waits, and joins the streams",
                                "cpu_handoff": "a baton (threading.Condition): one thread runs model code at a time and "
                                               "hands over right after launching each dispatch / combine, so one "
                                               "micro-batch's all_to_all overlaps the other's compute (same order as "
                                               "prefill_tbo)",
                                "compute_streams": "one torch.cuda.Stream per micro-batch thread; it waits on the main "
                                                   "stream at the step's start; the main stream waits on both at the end",
                                "comm_streams": "one torch.cuda.Stream per micro-batch thread, synchronised with CUDA "
                                                "events (wait_stream / record / wait_event)",
                                "process_groups": "two torch.distributed.new_group over all ranks, one per micro-batch "
                                                  "thread, created and warmed up before profiling",
                                "tids": "threading.get_native_id() of each thread (Linux tid)",
                                "python_thread_idents": {"0": dbo.idents[0], "1": dbo.idents[1]},
                                "record_function_labels": "none from this script: only PyTorch's own nccl:* "
                                                          "annotations and ProfilerStep#N",
                                "profiler": ("profile_all_threads=True: CPU ops of both micro-batch threads recorded"
                                             if DBO_VARIANTS[name] else
                                             "plain torch.profiler.profile: CPU ops of the main thread only; the "
                                             "micro-batch threads appear through CUPTI's CUDA runtime events")})
                active = 2
            elif name.startswith("prefill"):
                overlap = "tbo" in name
                labels = "nolabels" not in name
                fn = (lambda o=overlap, l=labels: step_prefill(o, l))
                meta = dict(base, scenario=name, phase="prefill", schedule="tbo" if overlap else "serial",
                            num_microbatches=2 if overlap else 1,
                            tokens_per_microbatch=S if overlap else P * S, prompts_per_rank=P, prompt_len=S,
                            tokens_per_rank=P * S, attention="MLA non-absorbed, SDPA causal (V zero-padded "
                            f"to {cfg.qk_nope_head_dim + cfg.qk_rope_head_dim})",
                            comm=comm_meta(S if overlap else P * S), checks=checks,
                            expert_path="exact valid (token, expert) rows: one host sync per MoE layer and micro-batch "
                                        "reads the per-expert counts (like DeepEP normal mode)")
                active = 2
            else:
                overlap = "tbo" in name
                fn = (lambda o=overlap: step_decode(o, True))
                labels = True
                meta = dict(base, scenario=name, phase="decode", schedule="tbo" if overlap else "serial",
                            num_microbatches=2 if overlap else 1,
                            tokens_per_microbatch=Bd // 2 if overlap else Bd, requests_per_rank=Bd, kv_len=Lkv,
                            attention="MLA absorbed (W_UK into q, W_UV after), bmm over "
                                      f"{cfg.kv_lora_rank + cfg.qk_rope_head_dim}-wide latent KV cache",
                            comm=comm_meta(Bd // 2 if overlap else Bd), checks=checks,
                            expert_path="fixed capacity, no host sync (like DeepEP low-latency mode); rows "
                                        "past the last expert group masked")
                active = 3
            with torch.no_grad():
                meta = profile_steps(name, fn, dev, outdir, rank, world, store, meta, active=active,
                                     labels=labels, **prof_kw, **iters)
            meta["sdpa_backends_used"] = sorted(sdpa.used)
            if sdpa.errors:
                meta["sdpa_flash_error"] = sdpa.errors[:2]
            write_manifest_line(outdir, meta)
            done.append(name)
        # ---------------- tensor parallel dense variant ----------------
        if dbo is not None:
            dbo.close()
            dbo = None
        tp_names = [s for s in scen if s.startswith("tp2")]
        if tp_names:
            del model, dec_caches
            dec_caches = None
            if ctx.cuda:
                torch.cuda.empty_cache()
            tpm = build_tp(cfg, dev, dt, rank, world)
            tp_meta = dict(widths(cfg), tp_size=world, n_layers=len(tpm.layers), layer_kind="MLA + dense MLP",
                           n_heads_per_rank=cfg.n_heads // world, intermediate_per_rank=cfg.intermediate_size // world,
                           dtype=str(dt).replace("torch.", ""))
            for k_ in ("n_routed_experts", "n_group", "topk_group", "num_experts_per_tok",
                       "moe_intermediate_size", "n_shared_experts", "n_moe_layers", "n_dense_layers",
                       "routed_scaling_factor"):
                tp_meta.pop(k_, None)
            x_tp = torch.randn((P * S, cfg.hidden), device=dev, dtype=dt, generator=torch.Generator(device=dev).manual_seed(7))
            x_tpd = torch.randn((Bd, cfg.hidden), device=dev, dtype=dt, generator=torch.Generator(device=dev).manual_seed(8))
            tp_caches = None
            for name in tp_names:
                if not go(name):
                    continue
                ctx.labels, ctx.overlap = True, False
                sdpa.used = set()
                if name == "tp2_dense":
                    fn = lambda: tp_forward(cfg, ctx, tpm, x_tp, dict(kind="prefill", B=P, S=S, cos=cos, sin=sin), sdpa, world)
                    meta = dict(base, scenario=name, phase="prefill", schedule="tp", model_name="DeepSeek-V3-dense-TP2",
                                model=tp_meta, grouped_mm_used=False, expert_gemm=None, num_microbatches=1,
                                tokens_per_microbatch=P * S, prompts=P, prompt_len=S,
                                comm={"all_reduce": "2 per layer (after attention o_proj and after MLP down), "
                                                    f"{P*S} x {cfg.hidden} {str(dt).replace('torch.', '')}, on the compute stream"})
                    active = 2
                else:
                    if tp_caches is None:
                        tp_caches = [torch.randn((Bd, Lkv, cfg.kv_lora_rank + cfg.qk_rope_head_dim), device=dev,
                                                 dtype=dt, generator=torch.Generator(device=dev).manual_seed(9))
                                     for _ in range(len(tpm.layers))]
                    fn = lambda: tp_forward(cfg, ctx, tpm, x_tpd, dict(kind="decode", caches=tp_caches, pos=Lkv - 1,
                                                                         cos=cos, sin=sin), sdpa, world)
                    meta = dict(base, scenario=name, phase="decode", schedule="tp", model_name="DeepSeek-V3-dense-TP2",
                                model=tp_meta, grouped_mm_used=False, expert_gemm=None, num_microbatches=1,
                                tokens_per_microbatch=Bd, requests=Bd, kv_len=Lkv,
                                comm={"all_reduce": f"2 per layer, {Bd} x {cfg.hidden}, on the compute stream"})
                    active = 3
                meta.pop("grouped_mm_check", None)
                with torch.no_grad():
                    meta = profile_steps(name, fn, dev, outdir, rank, world, store, meta, active=active, **iters)
                meta["sdpa_backends_used"] = sorted(sdpa.used)
                write_manifest_line(outdir, meta)
                done.append(name)
    except Exception:
        log(f"rank{rank} FAILED after {done}:\n{traceback.format_exc()}")
        raise
    if ctx.cuda:
        torch.cuda.synchronize()
    log(f"rank{rank} done: {done} in {time.time()-t_start:.0f}s; peak "
        f"{(torch.cuda.max_memory_allocated(dev)/2**30 if ctx.cuda else 0):.1f} GiB")
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# copy-engine expert parallelism: one process drives 2 GPUs; dispatch/combine are peer-to-peer copies
# ----------------------------------------------------------------------------------------------
ALL_CE = ["decode_tbo_copyengine", "decode_serial_copyengine", "prefill_tbo_copyengine"]
CE_OPTIONAL = ["prefill_serial_copyengine"]  # not run unless named in --scenarios
COST_CE = {"decode_tbo_copyengine": 30, "decode_serial_copyengine": 25, "prefill_tbo_copyengine": 40,
           "prefill_serial_copyengine": 35}


class CECtx:
    """Expert parallelism over 2 devices driven by ONE process (no torch.distributed, no NCCL).
    Dispatch and combine are peer-to-peer copies: Tensor.copy_ between tensors on two GPUs, which
    PyTorch issues as cudaMemcpyAsync on the SOURCE device's current stream (copy engine, no SMs; a
    gpu_memcpy "Memcpy PtoP" event in Kineto traces, not a kernel).

    Streams, for each ordered pair (s, d) of devices:
      copy[(s, d)]  on device s: every s -> d copy runs here (one stream per GPU direction);
      land[(s, d)]  on device d: made the current stream of d while an s -> d copy is issued. PyTorch's
                    cross-device copy_ fences the destination's current stream both ways (the copy
                    waits on it, it waits on the copy); with land[] current, no compute stream is
                    fenced. It holds no GPU work. Receive buffers for s -> d are allocated on it and
                    record_stream()ed to d's compute stream, which consumes them.
    compute[g] = device g's current (default) stream. p2p() makes copy[(s, d)] wait on compute[s] (the
    sources are ready), issues the copies, and returns two CUDA events: `arrived` (recorded on
    land[(s, d)] after the copies: the consumer on d waits on it) and `sent` (recorded on copy[(s, d)]:
    serial schedules make the sender wait on it too, as a blocking all_to_all would).
    mode "sync": blocking copies on the compute streams with both devices synchronised before and
    after (a reference for the checks: same kernels, no stream concurrency).
    CPU (--cpu): two 'devices' that are both the CPU; copies are plain copy_()."""

    L = Ctx.L

    def __init__(self, devs, labels=True, overlap=False, mode="async"):
        self.devs, self.n = list(devs), len(devs)
        if self.n != 2:
            raise SystemExit("the copy-engine scenarios drive exactly 2 devices")
        self.cuda = self.devs[0].type == "cuda"
        self.labels, self.overlap, self.mode = labels, overlap, mode
        self.pairs = [(s, d) for s in range(self.n) for d in range(self.n) if s != d]
        if self.cuda:
            self.compute = [torch.cuda.current_stream(d) for d in self.devs]
            self.copy = {p: torch.cuda.Stream(self.devs[p[0]]) for p in self.pairs}
            self.land = {p: torch.cuda.Stream(self.devs[p[1]]) for p in self.pairs}
        else:
            self.compute = [None] * self.n
            self.copy, self.land = {}, {}

    def on(self, g):
        return torch.cuda.device(self.devs[g]) if self.cuda else contextlib.nullcontext()

    def empty_recv(self, s, d, shape, dtype):
        """Receive buffer on device d for s -> d copies, consumed on d's compute stream."""
        if not self.cuda:
            return torch.empty(shape, dtype=dtype)
        with torch.cuda.stream(self.land[(s, d)]):
            t = torch.empty(shape, dtype=dtype, device=self.devs[d])
        t.record_stream(self.compute[d])
        return t

    def p2p(self, s, d, pairs):
        """Copy each (dst on device d, src on device s); returns (arrived, sent) events (None, None when
        nothing needs to be waited for)."""
        if not self.cuda:
            for dst, src in pairs:
                dst.copy_(src)
            return None, None
        if self.mode == "sync":
            for g in (s, d):
                torch.cuda.synchronize(self.devs[g])
            for dst, src in pairs:
                dst.copy_(src)
            for g in (s, d):
                torch.cuda.synchronize(self.devs[g])
            return None, None
        cs, ls = self.copy[(s, d)], self.land[(s, d)]
        cs.wait_stream(self.compute[s])
        with torch.cuda.stream(cs), torch.cuda.stream(ls):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
        sent = torch.cuda.Event()
        sent.record(cs)
        arrived = torch.cuda.Event()
        arrived.record(ls)
        for _, src in pairs:
            src.record_stream(cs)
        return arrived, sent

    def wait(self, g, evs):
        for ev in evs:
            if ev is not None:
                self.compute[g].wait_event(ev)

    def join(self):
        """Each compute stream waits for the copies it sent and received (end of a step)."""
        if not self.cuda:
            return
        for (s, d) in self.pairs:
            self.compute[s].wait_stream(self.copy[(s, d)])
            self.compute[d].wait_stream(self.land[(s, d)])

    def stream_info(self):
        if not self.cuda:
            return {}
        sid = lambda st: {"device": st.device.index, "torch_stream_id": st.stream_id,
                          "cuda_stream_handle": hex(st.cuda_stream)}
        return {"compute_streams": {str(g): dict(sid(self.compute[g]), role="default stream of the device")
                                    for g in range(self.n)},
                "copy_streams": {f"{s}->{d}": sid(self.copy[(s, d)]) for s, d in self.pairs},
                "landing_streams": {f"{s}->{d}": sid(self.land[(s, d)]) for s, d in self.pairs}}


def ce_dispatch(cx, mb, li, hn2, routes, El):
    """Dispatch of one micro-batch over the 2 devices: hn2[g] (N, H) normed tokens and routes[g] =
    (idx, w) of device g. Every token goes to every device (fixed capacity, like the all_to_all
    scenarios): on device d, rows [g*N, (g+1)*N) of recv_x / recv_meta hold device g's tokens; the
    local rows are a same-device copy (Memcpy DtoD) on the compute stream, the peer's rows arrive by
    two peer-to-peer copies (routing meta fp32 (N, 2k), then hidden states (N, H))."""
    n = cx.n
    N, H = hn2[0].shape
    k = routes[0][0].shape[1]
    assert all(t.shape[0] == N for t in hn2)
    st = NS(N=N, recv_x=[None] * n, recv_meta=[None] * n, arrived=[[] for _ in range(n)],
            sent=[[] for _ in range(n)])
    for d in range(n):
        st.recv_x[d] = cx.empty_recv(1 - d, d, (n * N, H), hn2[d].dtype)
        st.recv_meta[d] = cx.empty_recv(1 - d, d, (n * N, 2 * k), torch.float32)
    for g in range(n):
        with cx.on(g), cx.L(mb, li, "dispatch"):
            meta = dispatch_meta(routes[g][0], routes[g][1], n, El)
            rows = slice(g * N, (g + 1) * N)
            st.recv_meta[g][rows].copy_(meta[rows])
            st.recv_x[g][rows].copy_(hn2[g])
            for p in range(n):
                if p != g:
                    arr, sent = cx.p2p(g, p, [(st.recv_meta[p][rows], meta[p * N:(p + 1) * N]),
                                              (st.recv_x[p][rows], hn2[g])])
                    st.arrived[p].append(arr)
                    st.sent[g].append(sent)
    return st


def ce_experts_combine(cx, mb, li, experts, st, k, exact):
    """Experts on each device over what it received, then the combine copies: device d sends the
    outputs for device s's tokens (rows [s*N, (s+1)*N) of y[d]) back to s."""
    n, N = cx.n, st.N
    st2 = NS(N=N, y=[None] * n, back=[[None] * n for _ in range(n)], arrived=[[] for _ in range(n)],
             sent=[[] for _ in range(n)])
    for d in range(n):
        with cx.on(d), cx.L(mb, li, "experts"):
            cx.wait(d, st.arrived[d] + ([] if cx.overlap else st.sent[d]))
            y = experts_fwd(experts[d], st.recv_x[d], st.recv_meta[d], k, exact)
        st2.y[d] = y
        with cx.on(d), cx.L(mb, li, "combine"):
            for s in range(n):
                if s != d:
                    st2.back[s][d] = cx.empty_recv(d, s, (N, y.shape[1]), y.dtype)
                    arr, sent = cx.p2p(d, s, [(st2.back[s][d], y[s * N:(s + 1) * N])])
                    st2.arrived[s].append(arr)
                    st2.sent[d].append(sent)
    return st2


def ce_combine_finish(cx, st2, s):
    """Routed-expert output of device s's tokens: its own experts' part plus what came back."""
    N = st2.N
    cx.wait(s, st2.arrived[s] + ([] if cx.overlap else st2.sent[s]))
    parts = [st2.y[s][s * N:(s + 1) * N] if r == s else st2.back[s][r] for r in range(cx.n)]
    return torch.stack(parts).sum(0)


def ce_forward_gen(cfg, cx, models, xs, mb, atts, outs, sdpa, exact=False):
    """One micro-batch's forward on both devices (xs[g], atts[g]: device g's tokens and attention
    inputs) as a generator that yields after each dispatch and combine launch (TBO scheduling, like
    ds_forward_gen). Per layer and phase, device 0's work is launched, then device 1's, each inside
    its own record_function ranges mb{i} > layer.{j} > {attn, gate, dispatch, shared_expert, experts,
    combine, mlp}."""
    n, El, k = cx.n, models[0].E_local, cfg.num_experts_per_tok
    x = list(xs)
    for li in range(len(models[0].layers)):
        lws = [m.layers[li] for m in models]
        h, hn2 = [None] * n, [None] * n
        for g in range(n):
            lw, att = lws[g], atts[g]
            with cx.on(g), cx.L(mb, li, "attn"):
                hn = rms(x[g], lw.attn.attn_norm, cfg.rms_eps)
                if att["kind"] == "prefill":
                    a = mla_prefill(cfg, lw.attn, hn, att["B"], att["S"], att["cos"], att["sin"], sdpa)
                else:
                    a = mla_decode(cfg, lw.attn, hn, att["caches"][li], att["pos"], att["cos"], att["sin"])
                h[g] = x[g] + a
                hn2[g] = rms(h[g], lw.ffn_norm, cfg.rms_eps)
        if lws[0].kind == "dense":
            for g in range(n):
                with cx.on(g), cx.L(mb, li, "mlp"):
                    x[g] = h[g] + mlp_fwd(lws[g].mlp, hn2[g])
            continue
        routes = []
        for g in range(n):
            with cx.on(g), cx.L(mb, li, "gate"):
                routes.append(moe_gate(cfg, lws[g], hn2[g]))
        st = ce_dispatch(cx, mb, li, hn2, routes, El)
        del routes
        hs = [None] * n
        if cx.overlap:
            for g in range(n):
                with cx.on(g), cx.L(mb, li, "shared_expert"):
                    hs[g] = h[g] + mlp_fwd(lws[g].shared, hn2[g])
        yield
        st2 = ce_experts_combine(cx, mb, li, [lw.experts for lw in lws], st, k, exact)
        del st
        yield
        for g in range(n):
            with cx.on(g), cx.L(mb, li, "combine"):
                routed = ce_combine_finish(cx, st2, g)
                if hs[g] is not None:
                    x[g] = hs[g] + routed
            if hs[g] is None:
                with cx.on(g), cx.L(mb, li, "shared_expert"):
                    x[g] = h[g] + mlp_fwd(lws[g].shared, hn2[g]) + routed
        del st2
    out = []
    for g in range(n):
        with cx.on(g), cx.L(mb, None, "final_norm"):
            out.append(rms(x[g], models[g].final_norm, cfg.rms_eps))
    outs[mb] = out


class MultiTimer:
    """CUDA-event time of a step on each device (start/end events on each compute stream; the step
    joins its copy streams into the compute streams); returns (max over devices, wall ms) and keeps
    every call's per-device times in .calls."""

    def __init__(self, devs):
        self.devs = devs
        self.cuda = devs[0].type == "cuda"
        self.calls = []

    def __call__(self, fn):
        t0 = time.perf_counter()
        if not self.cuda:
            fn()
            ms = (time.perf_counter() - t0) * 1e3
            self.calls.append([ms])
            return ms, ms
        s = [torch.cuda.Event(enable_timing=True) for _ in self.devs]
        e = [torch.cuda.Event(enable_timing=True) for _ in self.devs]
        for d, ev in zip(self.devs, s):
            ev.record(torch.cuda.current_stream(d))
        fn()
        for d, ev in zip(self.devs, e):
            ev.record(torch.cuda.current_stream(d))
        for d in self.devs:
            torch.cuda.synchronize(d)
        per = [a.elapsed_time(b) for a, b in zip(s, e)]
        self.calls.append(per)
        return max(per), (time.perf_counter() - t0) * 1e3


def p2p_selfcheck(cx, devs):
    """Raw peer-to-peer copies through CECtx.p2p in both directions: bit-exact, and bandwidth of a
    large copy per direction alone and both directions at once (CUDA events on the copy streams)."""
    res = {}
    if not cx.cuda:
        a = torch.randn(1000)
        b = torch.empty_like(a)
        cx.p2p(0, 1, [(b, a)])
        res["bit_exact"] = bool(torch.equal(a, b))
        return res
    ok = True
    for s, d in cx.pairs:
        src = torch.randn((4096, 1000), device=devs[s]).to(torch.bfloat16)
        dst = cx.empty_recv(s, d, src.shape, src.dtype)
        arr, _ = cx.p2p(s, d, [(dst, src)])
        cx.wait(d, [arr])
        torch.cuda.synchronize(devs[s])
        torch.cuda.synchronize(devs[d])
        ok = ok and torch.equal(src.cpu(), dst.cpu())
    res["bit_exact"] = bool(ok)
    nbytes = 256 * 2**20
    bufs = {}
    for s, d in cx.pairs:
        src = torch.empty(nbytes, dtype=torch.uint8, device=devs[s])
        dst = torch.empty(nbytes, dtype=torch.uint8, device=devs[d])
        bufs[(s, d)] = (dst, src)

    def timed(pairs, reps=5):
        for _ in range(2):  # warm-up
            for p in pairs:
                cx.p2p(p[0], p[1], [bufs[p]])
        cx.join()
        for g in devs:
            torch.cuda.synchronize(g)
        st = {p: torch.cuda.Event(enable_timing=True) for p in pairs}
        en = {p: torch.cuda.Event(enable_timing=True) for p in pairs}
        for p in pairs:
            st[p].record(cx.copy[p])
        for _ in range(reps):
            for p in pairs:
                with torch.cuda.stream(cx.copy[p]), torch.cuda.stream(cx.land[p]):
                    bufs[p][0].copy_(bufs[p][1], non_blocking=True)
        for p in pairs:
            en[p].record(cx.copy[p])
        for g in devs:
            torch.cuda.synchronize(g)
        return {f"{p[0]}->{p[1]}": round(reps * nbytes / (st[p].elapsed_time(en[p]) * 1e-3) / 1e9, 1) for p in pairs}

    for p in cx.pairs:
        res[f"GBps_alone_{p[0]}->{p[1]}"] = timed([p])[f"{p[0]}->{p[1]}"]
    res["GBps_both_directions_at_once"] = timed(cx.pairs)
    res["copy_bytes"] = nbytes
    del bufs
    torch.cuda.empty_cache()
    return res


def ce_main(args):
    """--part copyengine: DeepSeek-V3-mini with expert parallelism 2 emulated in one process that drives
    two GPUs; dispatch/combine move hidden states by peer-to-peer copies on dedicated copy streams.
    One trace per scenario holds both GPUs (Kineto pid 0 and pid 1)."""
    t_start = args.t_start
    cpu = args.cpu
    n = 2
    if cpu:
        devs = [torch.device("cpu")] * n
    else:
        if torch.cuda.device_count() < n:
            raise SystemExit(f"--part copyengine needs 2 GPUs, found {torch.cuda.device_count()}")
        devs = [torch.device("cuda", i) for i in range(n)]
        torch.cuda.set_device(devs[0])
    dt = torch.float32 if (cpu and args.fp32) else torch.bfloat16
    cfg = DSCfg.tiny() if args.tiny else DSCfg()
    if args.heads:
        cfg.n_heads = args.heads
    if args.experts:
        cfg.n_routed_experts = args.experts
    outdir = args.out
    os.makedirs(outdir, exist_ok=True)
    info = env_info(devs[0])
    info.pop("nccl_version", None)  # not used here
    if not cpu:
        info["gpu_names"] = [torch.cuda.get_device_name(d) for d in devs]
    scen = [s for s in (args.scenarios.split(",") if args.scenarios else ALL_CE) if s]
    bad = [s for s in scen if s not in ALL_CE + CE_OPTIONAL]
    if bad:
        raise SystemExit(f"unknown copy-engine scenarios {bad}; known: {ALL_CE + CE_OPTIONAL}")
    iters = dict(warmup=2, timed=3) if not args.quick else dict(warmup=1, timed=1)

    def left():
        return args.budget - (time.time() - t_start)

    peer = {}
    if not cpu:
        peer = {f"{a}->{b}": bool(torch.cuda.can_device_access_peer(a, b)) for a in range(n) for b in range(n) if a != b}
        log(f"can_device_access_peer: {peer}")
    if not cpu:
        ok, why = check_grouped_mm(devs[0], dt)
    else:
        ok, why = hasattr(torch, "_grouped_mm"), "cpu fallback"
    if args.no_gmm:
        ok, why = False, "disabled by --no-gmm"
    GMM["use"] = ok
    log(f"{info} grouped_mm={ok} ({why})")

    cx = CECtx(devs)
    sdpa = SDPA(cx.cuda)
    t0 = time.time()
    models = []
    for g in range(n):
        with cx.on(g):
            models.append(build_ds(cfg, devs[g], dt, g, n))
    El = models[0].E_local
    if cx.cuda:
        for d in devs:
            torch.cuda.synchronize(d)
        log(f"built DeepSeek-V3-mini on {n} GPUs in {time.time()-t0:.1f}s, "
            + ", ".join(f"cuda:{d.index} {torch.cuda.memory_allocated(d)/2**30:.1f} GiB" for d in devs))
    ropes = [rope_tables(max(cfg.prefill_seq, cfg.decode_kv_len) + 8, cfg.qk_rope_head_dim, 10000.0, d) for d in devs]
    P, S = cfg.prefill_prompts_per_rank, cfg.prefill_seq
    Bd, Lkv = cfg.decode_batch_per_rank, cfg.decode_kv_len
    x_prefill, x_decode, dec_caches = [], [], []
    for g in range(n):
        gen = torch.Generator(device=devs[g])
        gen.manual_seed(1000 + g)
        x_prefill.append(torch.randn((P, S, cfg.hidden), device=devs[g], dtype=dt, generator=gen))
        x_decode.append(torch.randn((Bd, cfg.hidden), device=devs[g], dtype=dt, generator=gen))
        dec_caches.append(None)
    n_layers = len(models[0].layers)

    def ensure_caches():
        for g in range(n):
            if dec_caches[g] is None:
                gen = torch.Generator(device=devs[g])
                gen.manual_seed(2000 + g)
                dec_caches[g] = [torch.randn((Bd, Lkv, cfg.kv_lora_rank + cfg.qk_rope_head_dim), device=devs[g],
                                             dtype=dt, generator=gen) for _ in range(n_layers)]

    def finish(outs_list):
        cx.join()
        if cx.cuda:  # the timer's end event on compute[0] also covers device 1
            cx.compute[0].wait_stream(cx.compute[1])
        return outs_list

    def step_decode(overlap, labels=True):
        cx.overlap, cx.labels = overlap, labels
        pos = Lkv - 1
        if overlap:
            hb = Bd // 2
            outs = [None, None]
            gens = [ce_forward_gen(cfg, cx, models, [x_decode[g][i * hb:(i + 1) * hb] for g in range(n)], i,
                                   [dict(kind="decode", caches=[c[i * hb:(i + 1) * hb] for c in dec_caches[g]],
                                         pos=pos, cos=ropes[g][0], sin=ropes[g][1]) for g in range(n)],
                                   outs, sdpa) for i in range(2)]
            run_interleaved(gens)
            return finish([torch.cat([outs[0][g], outs[1][g]], 0) for g in range(n)])
        outs = [None]
        run_interleaved([ce_forward_gen(cfg, cx, models, [x_decode[g] for g in range(n)], 0,
                                        [dict(kind="decode", caches=dec_caches[g], pos=pos, cos=ropes[g][0],
                                              sin=ropes[g][1]) for g in range(n)], outs, sdpa)])
        return finish(outs[0])

    def step_prefill(overlap, labels=True):
        cx.overlap, cx.labels = overlap, labels
        if overlap:
            outs = [None, None]
            gens = [ce_forward_gen(cfg, cx, models, [x_prefill[g][i] for g in range(n)], i,
                                   [dict(kind="prefill", B=1, S=S, cos=ropes[g][0], sin=ropes[g][1])
                                    for g in range(n)], outs, sdpa) for i in range(P)]
            run_interleaved(gens)
            return finish([torch.cat([outs[i][g] for i in range(P)], 0) for g in range(n)])
        outs = [None]
        run_interleaved([ce_forward_gen(cfg, cx, models, [x_prefill[g].reshape(P * S, -1) for g in range(n)], 0,
                                        [dict(kind="prefill", B=P, S=S, cos=ropes[g][0], sin=ropes[g][1])
                                         for g in range(n)], outs, sdpa)])
        return finish(outs[0])

    def compare(a, b):
        """a, b: per-device outputs."""
        out = {}
        for g, (u, v) in enumerate(zip(a, b)):
            d = (u.float() - v.float()).abs()
            out[f"gpu{g}"] = {"max_abs_diff": float(d.max()),
                              "rel_l2_diff": float(d.norm() / (v.float().norm() + 1e-12)),
                              "bitwise_equal": bool(torch.equal(u, v)),
                              "frac_rows_max_diff_gt_0.1": float((d.max(-1).values > 0.1).float().mean())}
        return out

    def dispatch_combine_check(n_tok):
        """One MoE layer, real widths, fixed routing: two micro-batches per GPU through ce_dispatch /
        experts / combine (TBO order, async copies) vs every expert of the layer computed on one GPU
        without any copy (exact path), for both expert paths."""
        li = cfg.n_dense_layers
        lws = [m.layers[li] for m in models]
        full = build_experts(cfg, li, 0, cfg.n_routed_experts, devs[0], dt)
        full_ns = NS(w13=full.w13, w2=full.w2, n=cfg.n_routed_experts, I=full.I)
        res = {}
        for exact in (True, False):
            xs, routes = [], []
            for i in range(2):
                xi, ri = [], []
                for g in range(n):
                    gg = torch.Generator(device=devs[g])
                    gg.manual_seed(77 + 10 * g + i + (100 if exact else 0))
                    xg = rms(torch.randn((n_tok, cfg.hidden), device=devs[g], dtype=dt, generator=gg), lws[g].ffn_norm)
                    xi.append(xg)
                    with cx.on(g):
                        ri.append(moe_gate(cfg, lws[g], xg))
                xs.append(xi)
                routes.append(ri)
            cx.overlap, cx.labels, cx.mode = True, False, "async"
            sts = [ce_dispatch(cx, i, li, xs[i], routes[i], El) for i in range(2)]
            st2s = [ce_experts_combine(cx, i, li, [lw.experts for lw in lws], sts[i], cfg.num_experts_per_tok, exact)
                    for i in range(2)]
            outs = [[ce_combine_finish(cx, st2s[i], g) for g in range(n)] for i in range(2)]
            cx.join()
            errs = {}
            for i in range(2):
                for g in range(n):
                    x0 = xs[i][g].to(devs[0])
                    i0, w0 = routes[i][g][0].to(devs[0]), routes[i][g][1].to(devs[0])
                    ref = experts_fwd(full_ns, x0, dispatch_meta(i0, w0, 1, cfg.n_routed_experts),
                                      cfg.num_experts_per_tok, True)
                    o = outs[i][g].to(devs[0])
                    errs[f"rel_l2_err_mb{i}_gpu{g}"] = float((o.float() - ref.float()).norm() / ref.float().norm())
            res["exact" if exact else "fixed_capacity"] = errs
        del full, full_ns
        if cx.cuda:
            for d in devs:
                torch.cuda.synchronize(d)
            torch.cuda.empty_cache()
        return res

    checks = {"can_device_access_peer": peer}
    done = []
    timer = MultiTimer(devs)
    try:
        with torch.no_grad():
            checks["p2p_copy"] = p2p_selfcheck(cx, devs)
            log(f"p2p check: {checks['p2p_copy']}")
            if not checks["p2p_copy"]["bit_exact"]:
                raise RuntimeError("peer-to-peer copies are not bit-exact")
            checks["dispatch_combine_vs_local_all_experts"] = dispatch_combine_check(1024 if not args.tiny else 16)
            log(f"dispatch/combine check: {json.dumps(checks['dispatch_combine_vs_local_all_experts'])}")
            worst = max(v for r in checks["dispatch_combine_vs_local_all_experts"].values() for v in r.values())
            if worst > 5e-2:
                raise RuntimeError(f"dispatch/combine differs from the local reference (rel err {worst:.3g})")
            want_decode = any(s.startswith("decode") for s in scen)
            want_prefill = any(s.startswith("prefill") for s in scen)
            if want_decode:
                ensure_caches()
                import warnings
                sync_warn = []
                if cx.cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                with warnings.catch_warnings(record=True) as wl:
                    warnings.simplefilter("always")
                    a = step_decode(True, False)
                    sync_warn = [str(w.message).splitlines()[0][:160] for w in wl]
                if cx.cuda:
                    torch.cuda.set_sync_debug_mode(0)
                checks["decode_host_syncs_in_step"] = {"count": len(sync_warn), "first": sync_warn[:3]}
                b = step_decode(False, False)
                checks["decode_tbo_vs_serial"] = compare(a, b)
                cx.mode = "sync"
                c_ = step_decode(True, False)
                d_ = step_decode(False, False)
                cx.mode = "async"
                checks["decode_tbo_async_vs_blocking_copies"] = compare(a, c_)
                checks["decode_serial_async_vs_blocking_copies"] = compare(b, d_)
                del a, b, c_, d_
            if want_prefill and left() > 60:
                a = step_prefill(True, False)
                b = step_prefill(False, False)
                checks["prefill_tbo_vs_serial"] = compare(a, b)
                cx.mode = "sync"
                c_ = step_prefill(True, False)
                cx.mode = "async"
                checks["prefill_tbo_async_vs_blocking_copies"] = compare(a, c_)
                del a, b, c_
            if cx.cuda:
                for d in devs:
                    torch.cuda.synchronize(d)
        log(f"checks: {json.dumps(checks)}")

        model_meta = dict(widths(cfg), ep_size=n, n_local_experts=El,
                          local_expert_range_per_gpu={str(g): [models[g].lo, models[g].hi] for g in range(n)},
                          dtype=str(dt).replace("torch.", ""), embedding="none (inputs are random hidden states)",
                          lm_head="none")
        base = dict(info, grouped_mm_used=bool(GMM["use"]), grouped_mm_check=why,
                    expert_gemm="torch._grouped_mm" if GMM["use"] else "loop of matmuls over local experts",
                    model_name="DeepSeek-V3-mini", model=model_meta, rank=None, world_size=None,
                    processes=1, torch_distributed=False, gpus_in_file=list(range(n)), ep_size=n,
                    trace_layout="one trace file holds both GPUs: Kineto pid 0 = cuda:0, pid 1 = cuda:1 (GPU "
                                 "events); CPU events under the process id, one main thread launching for both GPUs",
                    expert_path="fixed capacity, no host sync (like DeepEP low-latency mode); rows past the last "
                                "expert group masked. Also for prefill here: one CPU thread drives both GPUs, and a "
                                "host sync on one GPU would stall the launches for the other")

        esz = torch.finfo(dt).bits // 8
        H, k = cfg.hidden, cfg.num_experts_per_tok

        def comm_meta(N, n_mb, overlap):
            disp_h, disp_m, comb = N * H * esz, N * 2 * k * 4, N * H * esz
            per_dir = cfg.n_moe_layers * n_mb
            m = {"mechanism": "peer-to-peer copies between the two GPUs of one process: Tensor.copy_(src on the "
                              "other GPU, non_blocking=True), which PyTorch issues as cudaMemcpyAsync on the source "
                              "GPU's current stream (peer access enabled by PyTorch); copy engine, no SMs, no kernel; "
                              "no torch.distributed / NCCL",
                 "trace_events": "gpu_memcpy 'Memcpy PtoP (Device -> Device)' (expected) on the SOURCE GPU's pid, "
                                 "tid = its copy stream; the local rows are gpu_memcpy 'Memcpy DtoD' on the compute "
                                 "stream (not communication)",
                 "can_device_access_peer": peer,
                 "dispatch": "per MoE layer, micro-batch and direction: 2 peer copies, routing meta fp32 [N, 2k] "
                             "then hidden states bf16 [N, H] (every token goes to the other GPU, fixed capacity, "
                             "as in the all_to_all scenarios); the GPU's own rows: 2 same-device copies (DtoD) on "
                             "its compute stream",
                 "dispatch_bytes_per_direction": disp_h + disp_m,
                 "dispatch_hidden_bytes_per_direction": disp_h,
                 "dispatch_meta_bytes_per_direction": disp_m,
                 "combine": "per MoE layer, micro-batch and direction: 1 peer copy, expert outputs bf16 [N, H] for "
                            "the other GPU's tokens back to it",
                 "combine_bytes_per_direction": comb,
                 "tokens_per_copy_N": N,
                 "peer_copies_per_iteration_per_direction": 3 * per_dir,
                 "peer_bytes_per_iteration_per_direction": per_dir * (disp_h + disp_m + comb),
                 "streams": cx.stream_info(),
                 "stream_ids_note": "trace tids are CUPTI stream ids, not torch ids: finalize adds "
                                    "copy_stream_ids_in_trace from the trace",
                 "sync": "per copy: copy stream waits on the source GPU's compute stream (event), copies, records "
                         "'sent' on the copy stream and 'arrived' on the landing stream (on the destination GPU); "
                         "the destination's compute stream waits on 'arrived' before experts (dispatch) / before "
                         "summing the routed output (combine)" + ("" if overlap else "; serial: the sender's compute "
                                                                  "stream also waits on its own 'sent' events")}
            if overlap:
                m["overlap_arrangement"] = (
                    "two-batch overlap in one CPU thread: micro-batches mb0 and mb1 alternate at every dispatch and "
                    "combine launch (round-robin generators, like prefill_tbo/decode_tbo). Launch order per layer: "
                    "mb0 attn+gate+dispatch copies (+ shared expert), mb1 attn+gate+dispatch copies (+ shared "
                    "expert), mb0 experts (waits for mb0's arrived) + combine copies, mb1 experts + combine copies, "
                    "mb0 combine sum, mb1 combine sum. The copies of one micro-batch run on the copy engine while "
                    "the compute stream runs the other micro-batch's kernels (and this micro-batch's shared "
                    "expert); each GPU's compute stream waits only for arriving data, never for its outgoing copies")
            else:
                m["overlap_arrangement"] = (
                    "none (serial): one batch; after each dispatch/combine launch each GPU's compute stream waits for "
                    "both its incoming copies (arrived) and its outgoing copies (sent), like a blocking all_to_all; "
                    "the shared expert runs after combine")
            return m

        for name in scen:
            cost = COST_CE.get(name, 30) * (0.2 if cpu else 1.0)
            if left() < cost:
                log(f"skip {name}: {left():.0f}s left")
                continue
            if name.startswith("decode"):
                ensure_caches()
            for d in devs:
                if cx.cuda:
                    torch.cuda.synchronize(d)
            sdpa.used = set()
            overlap = "tbo" in name
            if name.startswith("prefill"):
                fn = (lambda o=overlap: step_prefill(o, True))
                N = S if overlap else P * S
                meta = dict(base, scenario=name, phase="prefill", schedule="tbo" if overlap else "serial",
                            num_microbatches=2 if overlap else 1, tokens_per_microbatch=N,
                            tokens_per_microbatch_note="per GPU (each GPU holds its own tokens)",
                            prompts_per_gpu=P, prompt_len=S, tokens_per_gpu=P * S,
                            attention="MLA non-absorbed, SDPA causal (V zero-padded "
                                      f"to {cfg.qk_nope_head_dim + cfg.qk_rope_head_dim})",
                            comm=comm_meta(N, 2 if overlap else 1, overlap), checks=checks)
                active = 2
            else:
                fn = (lambda o=overlap: step_decode(o, True))
                N = Bd // 2 if overlap else Bd
                meta = dict(base, scenario=name, phase="decode", schedule="tbo" if overlap else "serial",
                            num_microbatches=2 if overlap else 1, tokens_per_microbatch=N,
                            tokens_per_microbatch_note="per GPU (each GPU holds its own requests)",
                            requests_per_gpu=Bd, kv_len=Lkv,
                            attention="MLA absorbed (W_UK into q, W_UV after), bmm over "
                                      f"{cfg.kv_lora_rank + cfg.qk_rope_head_dim}-wide latent KV cache",
                            comm=comm_meta(N, 2 if overlap else 1, overlap), checks=checks)
                active = 3
            cap = {"scenario": name, "processes": 1, "gpus_in_file": list(range(n)), "ep_size": n,
                   "torch_distributed": False, "tokens_per_microbatch_per_gpu": N,
                   "num_microbatches": meta["num_microbatches"], "comm": "peer-to-peer copies (copy engine)"}
            timer.calls = []
            with torch.no_grad():
                meta = profile_steps(name, fn, devs[0], outdir, 0, 1, None, meta, active=active, labels=True,
                                     timer=timer, fname=f"{name}.json", capture_meta=cap, **iters)
            meta.update(rank=None, world_size=None)
            w_, t_ = iters["warmup"], iters["timed"]
            meta["iter_ms_per_gpu_unprofiled"] = [[round(v, 3) for v in c] for c in timer.calls[w_:w_ + t_]]
            meta["iter_ms_per_gpu_profiled"] = [[round(v, 3) for v in c] for c in timer.calls[-active:]]
            meta["iter_ms_note"] = ("iter_ms_* = max over the two GPUs of the CUDA-event time of one iteration "
                                    "(start/end events on each GPU's compute stream; the step ends with each compute "
                                    "stream joined to its copy and landing streams and cuda:0 waiting on cuda:1)")
            meta["sdpa_backends_used"] = sorted(sdpa.used)
            if sdpa.errors:
                meta["sdpa_flash_error"] = sdpa.errors[:2]
            write_manifest_line(outdir, meta)
            done.append(name)
    except Exception:
        log(f"copyengine FAILED after {done}:\n{traceback.format_exc()}")
        raise
    if cx.cuda:
        for d in devs:
            torch.cuda.synchronize(d)
    log(f"copyengine done: {done} in {time.time()-t_start:.0f}s; peak "
        + (", ".join(f"cuda:{d.index} {torch.cuda.max_memory_allocated(d)/2**30:.1f} GiB" for d in devs)
           if cx.cuda else "n/a"))


# ----------------------------------------------------------------------------------------------
# single GPU: Qwen2-7B-shaped dense decoder
# ----------------------------------------------------------------------------------------------
def build_qwen(cfg, dev, dt):
    H, nq, nkv, hd = cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    m = NS(embed=mk((cfg.vocab, H), seed_of("qw", "embed"), dev, dt, fan_in=1),
           lm_head=mk((cfg.vocab, H), seed_of("qw", "lm_head"), dev, dt),
           norm=torch.ones(H, device=dev, dtype=dt), layers=[])
    for li in range(cfg.n_layers):
        lw = NS(in_norm=torch.ones(H, device=dev, dtype=dt), post_norm=torch.ones(H, device=dev, dtype=dt))
        lw.qkv_w = mk(((nq + 2 * nkv) * hd, H), seed_of("qw", li, "qkv"), dev, dt)
        lw.qkv_b = mk(((nq + 2 * nkv) * hd,), seed_of("qw", li, "qkv_b"), dev, dt, fan_in=100)
        lw.o_w = mk((H, nq * hd), seed_of("qw", li, "o"), dev, dt)
        lw.mlp = build_mlp(H, cfg.intermediate_size, ("qw", li, "mlp"), dev, dt)
        m.layers.append(lw)
    return m


def qwen_qkv(cfg, lw, x, cos, sin):
    B, S, _ = x.shape
    nq, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    qkv = F.linear(rms(x, lw.in_norm, cfg.rms_eps), lw.qkv_w, lw.qkv_b)
    q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], -1)
    q = apply_rope(q.view(B, S, nq, hd), cos, sin).transpose(1, 2)
    k = apply_rope(k.view(B, S, nkv, hd), cos, sin).transpose(1, 2)
    v = v.view(B, S, nkv, hd).transpose(1, 2)
    return q, k, v


def qwen_prefill(cfg, ctx, m, ids, kc, vc, cos, sin, sdpa):
    B, S = ids.shape
    with ctx.L(None, None, "embed"):
        x = F.embedding(ids, m.embed)
    cs, sn = cos[:S].unsqueeze(1), sin[:S].unsqueeze(1)
    for li, lw in enumerate(m.layers):
        with ctx.L(None, li, "attn"):
            q, k, v = qwen_qkv(cfg, lw, x, cs, sn)
            kc[li][:, :, :S] = k
            vc[li][:, :, :S] = v
            o = sdpa(q, k, v, causal=True, gqa=True, site="qwen_prefill")
            x = x + F.linear(o.transpose(1, 2).reshape(B, S, -1), lw.o_w)
        with ctx.L(None, li, "mlp"):
            x = x + mlp_fwd(lw.mlp, rms(x, lw.post_norm, cfg.rms_eps))
    with ctx.L(None, None, "lm_head"):
        logits = F.linear(rms(x[:, -1], m.norm, cfg.rms_eps), m.lm_head)
        return logits.argmax(-1, keepdim=True)


def qwen_decode(cfg, ctx, m, ids, pos, kc, vc, cos, sin, sdpa):
    B = ids.shape[0]
    with ctx.L(None, None, "embed"):
        x = F.embedding(ids, m.embed)
    cs, sn = cos[pos:pos + 1].unsqueeze(1), sin[pos:pos + 1].unsqueeze(1)
    for li, lw in enumerate(m.layers):
        with ctx.L(None, li, "attn"):
            q, k, v = qwen_qkv(cfg, lw, x, cs, sn)
            kc[li][:, :, pos:pos + 1] = k
            vc[li][:, :, pos:pos + 1] = v
            o = sdpa(q, kc[li][:, :, :pos + 1], vc[li][:, :, :pos + 1], causal=False, gqa=True, site="qwen_decode")
            x = x + F.linear(o.transpose(1, 2).reshape(B, 1, -1), lw.o_w)
        with ctx.L(None, li, "mlp"):
            x = x + mlp_fwd(lw.mlp, rms(x, lw.post_norm, cfg.rms_eps))
    with ctx.L(None, None, "lm_head"):
        logits = F.linear(rms(x[:, -1], m.norm, cfg.rms_eps), m.lm_head)
        return logits.argmax(-1, keepdim=True)


def qwen_decode_static(cfg, m, ids, pos_t, kc, vc, cos, sin):
    """Graph-capturable decode step: GPU position tensor, masked attention over the whole cache."""
    B = ids.shape[0]
    nq, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x = F.embedding(ids, m.embed)
    cs, sn = cos.index_select(0, pos_t).unsqueeze(1), sin.index_select(0, pos_t).unsqueeze(1)
    Lmax = kc[0].shape[2]
    mask = torch.arange(Lmax, device=ids.device) <= pos_t                      # (Lmax,)
    for li, lw in enumerate(m.layers):
        q, k, v = qwen_qkv(cfg, lw, x, cs, sn)                                   # q (B,nq,1,hd)
        kc[li].index_copy_(2, pos_t, k)
        vc[li].index_copy_(2, pos_t, v)
        qg = q.view(B, nkv, nq // nkv, hd)
        s = torch.matmul(qg, kc[li].transpose(-1, -2)).float() / math.sqrt(hd)   # (B,nkv,g,Lmax)
        s = s.masked_fill(~mask, float("-inf"))
        o = torch.matmul(torch.softmax(s, -1).to(q.dtype), vc[li])               # (B,nkv,g,hd)
        x = x + F.linear(o.reshape(B, 1, nq * hd), lw.o_w)
        x = x + mlp_fwd(lw.mlp, rms(x, lw.post_norm, cfg.rms_eps))
    logits = F.linear(rms(x[:, -1], m.norm, cfg.rms_eps), m.lm_head)
    return logits.argmax(-1, keepdim=True)


def count_kernels(path):
    with open(path) as f:
        d = json.load(f)
    return sum(1 for e in d.get("traceEvents", []) if e.get("cat") == "kernel")


def single_main(args):
    t_start = args.t_start
    cpu = args.cpu
    dev = torch.device("cpu") if cpu else torch.device("cuda", args.device)
    if not cpu:
        torch.cuda.set_device(dev)
    dt = torch.float32 if (cpu and args.fp32) else torch.bfloat16
    cfg = QwenCfg.tiny() if args.tiny else QwenCfg()
    outdir = args.out
    os.makedirs(outdir, exist_ok=True)
    info = env_info(dev)
    ctx = Ctx(dev, 0, 1)
    sdpa = SDPA(ctx.cuda)
    t0 = time.time()
    m = build_qwen(cfg, dev, dt)
    log(f"built Qwen2-7B-shaped (4 layers) in {time.time()-t0:.1f}s")
    B, steps = cfg.batch, cfg.decode_steps
    cos, sin = rope_tables(max(cfg.contexts) + steps + 8, cfg.head_dim, cfg.rope_theta, dev)
    mmeta = dict(widths(cfg), dtype=str(dt).replace("torch.", ""), tie_word_embeddings=False, qkv_bias=True)
    for k_ in ("batch", "decode_steps", "contexts", "graph_ctx"):
        mmeta.pop(k_)
    base = dict(info, model_name="Qwen2-7B-shaped (4 layers)", model=mmeta, grouped_mm_used=False,
                rank=0, world_size=1)
    timer = Timer(dev)
    g = torch.Generator(device=dev)
    g.manual_seed(5)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if ctx.cuda else [])

    def ev_time(fn):
        return timer(fn)[0]

    for N in cfg.contexts:
        left = args.budget - (time.time() - t_start)
        if left < (6 if cpu else 25):
            log(f"skip ctx {N}: {left:.0f}s left")
            continue
        ids = torch.randint(0, cfg.vocab, (B, N), device=dev, generator=g)
        kc = [torch.zeros((B, cfg.n_kv_heads, N + steps, cfg.head_dim), device=dev, dtype=dt) for _ in m.layers]
        vc = [torch.zeros_like(kc[0]) for _ in m.layers]
        rec = {}

        def run_once(record):
            with ctx.L(None, None, "prefill"):
                t = ev_time(lambda: rec.__setitem__("tok", qwen_prefill(cfg, ctx, m, ids, kc, vc, cos, sin, sdpa)))
            ds = []
            for s in range(steps):
                with ctx.L(None, None, f"decode_step"):
                    ds.append(ev_time(lambda s=s: rec.__setitem__(
                        "tok", qwen_decode(cfg, ctx, m, rec["tok"], N + s, kc, vc, cos, sin, sdpa))))
            if record is not None:
                record.update(prefill_ms=round(t, 3), decode_step_ms=[round(d, 3) for d in ds])
            return t, ds

        with torch.no_grad():
            ctx.labels = False
            run_once(None)      # warm-up
            run_once(None)
            un = {}
            run_once(un)
            ctx.labels = True
            name = f"dense_prefill_decode_ctx{N}"
            path = os.path.join(outdir, name + ".json")
            pr = {}
            with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
                prof.add_metadata_json("capture", json.dumps({"scenario": name, "rank": 0, "world_size": 1}))
                run_once(pr)
            prof.export_chrome_trace(path)
        total = pr["prefill_ms"] + sum(pr["decode_step_ms"])
        meta = dict(base, scenario=name, file=name + ".json", phase="prefill+decode", batch=B, context_len=N,
                    decode_steps=steps, tokens_per_microbatch=B * N, decode_tokens_per_step=B, num_microbatches=1,
                    prefill_ms_profiled=pr["prefill_ms"], decode_step_ms_profiled=pr["decode_step_ms"],
                    iter_ms_profiled=[round(total, 3)], iter_ms_profiled_mean=round(total, 3),
                    iter_definition="prefill + all decode steps (sum of per-step CUDA-event times; steps are "
                                    "separated by host syncs)",
                    prefill_ms_unprofiled=un["prefill_ms"], decode_step_ms_unprofiled=un["decode_step_ms"],
                    profiled_iterations=1, warmup_iterations=2, record_function_labels=True,
                    profiler_step_annotations=False, attention="SDPA (GQA, causal prefill; decode over cache slice)",
                    sdpa_backends_used=sorted(sdpa.used), uncompressed_bytes=os.path.getsize(path))
        if sdpa.errors:
            meta["sdpa_flash_error"] = sdpa.errors[:2]
        write_manifest_line(outdir, meta)
        log(f"{name}: {meta['uncompressed_bytes']/1e6:.1f} MB prefill {pr['prefill_ms']:.2f} ms, "
            f"decode steps {pr['decode_step_ms'][:3]}... ms")
        del kc, vc

    # ---------------- CUDA graph decode ----------------
    left = args.budget - (time.time() - t_start)
    if not ctx.cuda:
        log("CUDA graph part needs a GPU: running the static decode step eagerly instead (cpu test)")
    if left < (5 if cpu else 20):
        log(f"skip cudagraph: {left:.0f}s left")
        return
    N = cfg.graph_ctx
    name = "dense_decode_cudagraph"
    with torch.no_grad():
        ids0 = torch.randint(0, cfg.vocab, (B, N), device=dev, generator=g)
        kc = [torch.zeros((B, cfg.n_kv_heads, N + steps, cfg.head_dim), device=dev, dtype=dt) for _ in m.layers]
        vc = [torch.zeros_like(kc[0]) for _ in m.layers]
        ctx.labels = False
        tok = qwen_prefill(cfg, ctx, m, ids0, kc, vc, cos, sin, sdpa)
        static_ids = tok.clone()
        pos_t = torch.tensor([N], device=dev, dtype=torch.long)

        def body():
            nxt = qwen_decode_static(cfg, m, static_ids, pos_t, kc, vc, cos, sin)
            static_ids.copy_(nxt)
            pos_t.add_(1)

        if ctx.cuda:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    body()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body()
            replay = graph.replay
        else:
            replay = body

        def reset():
            pos_t.fill_(N)
            static_ids.copy_(tok)

        def run16(rec):
            reset()
            for i in range(steps):
                with ctx.L(None, None, "decode_step_graph"):
                    rec.append(ev_time(replay))

        un = []
        run16([])
        run16(un)
        ctx.labels = True
        pr = []
        path = os.path.join(outdir, name + ".json")
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            prof.add_metadata_json("capture", json.dumps({"scenario": name, "rank": 0, "world_size": 1}))
            run16(pr)
        prof.export_chrome_trace(path)
        n_k = count_kernels(path)
        captured_inside = False
        if ctx.cuda and n_k < steps * 10:
            log(f"{name}: only {n_k} kernels seen for graph replays; re-capturing the graph under the profiler")
            pr = []
            with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
                prof.add_metadata_json("capture", json.dumps({"scenario": name, "rank": 0, "world_size": 1}))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    body()
                replay = graph.replay
                run16(pr)
            prof.export_chrome_trace(path)
            n_k = count_kernels(path)
            captured_inside = True
        eager = []
        reset()
        for i in range(steps):  # same static step without the graph, for comparison
            eager.append(ev_time(body))
    total = sum(pr)
    meta = dict(base, scenario=name, file=name + ".json", phase="decode", batch=B, context_len=N, decode_steps=steps,
                tokens_per_microbatch=B, num_microbatches=1, cuda_graph=bool(ctx.cuda),
                decode_step_ms_profiled=[round(x, 3) for x in pr], iter_ms_profiled=[round(total, 3)],
                iter_ms_profiled_mean=round(total, 3), iter_definition="16 graph replays (one decode step each)",
                decode_step_ms_unprofiled=[round(x, 3) for x in un],
                decode_step_ms_eager_same_code=[round(x, 3) for x in eager],
                kernel_events=n_k, graph_captured_inside_profiler=captured_inside,
                profiled_iterations=1, warmup_iterations=2, record_function_labels=True,
                profiler_step_annotations=False,
                attention="matmul attention over the whole preallocated cache with a position mask (graph-safe)",
                uncompressed_bytes=os.path.getsize(path))
    write_manifest_line(outdir, meta)
    log(f"{name}: {meta['uncompressed_bytes']/1e6:.1f} MB graph steps {meta['decode_step_ms_profiled'][:3]} ms, "
        f"eager {meta['decode_step_ms_eager_same_code'][:3]} ms")


# ----------------------------------------------------------------------------------------------
# packing for transport
# ----------------------------------------------------------------------------------------------
def pack(src, dest, limit=15 * 2**20):
    entries = []
    for p in sorted(glob.glob(os.path.join(src, "manifest_part_*.jsonl"))):
        for line in open(p):
            if line.strip():
                entries.append(json.loads(line))
    entries.sort(key=lambda e: (e.get("scenario", ""), e.get("rank") or 0))
    for e in entries:
        e["file"] = e["file"] + ".gz"
    man = {"generated_by": "tools/capture/capture.py", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "files": entries}
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "MANIFEST.json"), "w") as f:
        json.dump(man, f, indent=1)
    traces = sorted(os.path.basename(p) for p in glob.glob(os.path.join(src, "*.json")))
    total = sum(os.path.getsize(os.path.join(src, t)) for t in traces)
    log(f"packing {len(traces)} traces, {total/1e6:.1f} MB uncompressed")
    tarpath = os.path.join("/tmp", "traces.tar.xz")
    if shutil.which("xz"):
        subprocess.run(f"tar -C {src} -cf - {' '.join(traces)} | xz -T0 -6 > {tarpath}", shell=True, check=True)
    else:
        import tarfile
        with tarfile.open(tarpath, "w:xz", preset=3) as tf:
            for t in traces:
                tf.add(os.path.join(src, t), arcname=t)
    size = os.path.getsize(tarpath)
    log(f"traces.tar.xz {size/2**20:.2f} MiB")
    with open(tarpath, "rb") as f:
        i = 0
        while True:
            chunk = f.read(limit)
            if not chunk:
                break
            with open(os.path.join(dest, f"traces.tar.xz.part{i}"), "wb") as o:
                o.write(chunk)
            i += 1
    for lg in glob.glob(os.path.join(src, "log_*.txt")):
        shutil.copy(lg, dest)
    log(f"wrote {i} part(s) to {dest}")


def finalize(src, dest, notes=()):
    """Unpack what --pack wrote (SRC/MANIFEST.json + traces.tar.xz.part*, or the .json traces beside it),
    gzip each trace into DEST and write DEST/MANIFEST.json with compressed_bytes and
    observed_by_check_traces (check_traces.py's numbers) per file; for the dbo_threads scenarios also
    microbatch_trace_tids: the tid under which each micro-batch thread's launches appear in the trace
    (Kineto writes the Linux tid for threads that the CPU profiler saw, else CUPTI's thread id:
    |int32(pthread_self())|, pthread_self() being threading.get_ident())."""
    import gzip
    import tarfile
    import tempfile
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_traces as ct
    man = json.load(open(os.path.join(src, "MANIFEST.json")))
    work = src
    parts = sorted(glob.glob(os.path.join(src, "traces.tar.xz.part*")), key=lambda p: int(p.rsplit("part", 1)[1]))
    tmp = None
    if parts:
        tmp = tempfile.mkdtemp(prefix="capture_finalize_")
        cat = os.path.join(tmp, "traces.tar.xz")
        with open(cat, "wb") as o:
            for p in parts:
                o.write(open(p, "rb").read())
        with tarfile.open(cat, "r:xz") as tf:
            tf.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        work = tmp
    os.makedirs(dest, exist_ok=True)
    out = []
    for e in man["files"]:
        raw_name = e["file"][:-3] if e["file"].endswith(".gz") else e["file"]
        raw = os.path.join(work, raw_name)
        if not os.path.exists(raw):
            log(f"missing trace {raw_name}: left out of the manifest")
            continue
        gz = os.path.join(dest, raw_name + ".gz")
        with open(raw, "rb") as f, gzip.GzipFile(gz, "wb", compresslevel=9, mtime=0) as g:
            shutil.copyfileobj(f, g)
        e = dict(e, file=raw_name + ".gz", compressed_bytes=os.path.getsize(gz))
        r = ct.analyze(gz)
        ov = next(iter(r["overlap"].values()), {}) if r["overlap"] else {}
        streams = r["kernels_per_stream"]
        obs = {"kernel_events": r["kernels"],
               "compute_streams": sorted(int(k.split("stream")[1]) for k, v in streams.items() if v.get("compute")),
               "comm_streams": sorted(int(k.split("stream")[1]) for k, v in streams.items() if v.get("comm")),
               "nccl_kernels": r["nccl_kernels"]}
        for k in ("comm_busy_ms", "compute_busy_ms", "overlap_ms", "exposed_comm_ms", "gpu_span_ms"):
            obs[k] = ov.get(k)
        if len(r["overlap"]) > 1:  # several GPUs in one file (copy-engine scenarios): every GPU
            obs["per_gpu"] = r["overlap"]
        obs["memcpy"] = r["memcpy"]
        if r["p2p_memcpy"]:
            obs["p2p_memcpy"] = r["p2p_memcpy"]
            if isinstance(e.get("comm"), dict) and "copy_streams" in (e["comm"].get("streams") or {}):
                ids = {}
                for pid, p in r["p2p_memcpy"].items():
                    for t in p["streams"]:
                        dirs = [d_ for d_ in p["directions_from_args"] if not d_.startswith("?")]
                        ids[f"pid{pid}/stream{t}"] = {"gpu_pid": int(pid), "stream_tid": int(t),
                                                      "directions_from_args": dirs}
                e["comm"]["copy_stream_ids_in_trace"] = ids
        obs["graph_launched_kernels"] = r.get("graph_launched_kernels", 0)
        obs["profiler_steps"] = r["profiler_steps"]
        obs["launch_threads"] = r["launch_threads"]
        obs["cpu_op_threads"] = r["cpu_op_threads"]
        e["observed_by_check_traces"] = obs
        if e.get("microbatch_cpu_tids"):
            idents = (e.get("dbo_threads") or {}).get("python_thread_idents", {})
            seen = {int(t) for t in r["launch_threads"]}
            tt = {}
            for mb, tid in e["microbatch_cpu_tids"].items():
                cands = [tid]
                if mb in idents:  # pthread_self() cut to int32; Kineto writes its absolute value
                    lo = idents[mb] & 0xFFFFFFFF
                    signed = lo - (1 << 32) if lo >= (1 << 31) else lo
                    cands += [abs(signed), lo, signed]
                hit = [c for c in cands if c in seen]
                tt[mb] = hit[0] if hit else None
            e["microbatch_trace_tids"] = tt
            main = e.get("main_thread_tid")
            e["launch_tids_in_trace"] = sorted(seen)
            e["microbatch_threads_distinguishable"] = (None not in tt.values() and len(set(tt.values())) == len(tt)
                                                      and main not in tt.values())
        out.append(e)
        log(f"{e['file']}: {e['compressed_bytes']/1e6:.2f} MB gz, comm {obs['comm_busy_ms']} ms, "
            f"exposed {obs['exposed_comm_ms']} ms"
            + "".join(f"; p2p gpu{pid} busy {p['busy_ms']} ms, overlapped {p['overlap_with_kernels_ms']} ms"
                      for pid, p in r["p2p_memcpy"].items()))
    res = {"generated_by": "tools/capture/capture.py", "created_utc": man.get("created_utc"),
           "notes": list(notes) + [
               "observed_by_check_traces: derived with tools/capture/check_traces.py (comm = kernel name matches "
               "nccl|all_to_all|...; busy sets are unions over the whole trace; launch_threads: CUDA launch events "
               "per CPU tid and the kernels they launched, matched by correlation id; per_gpu: the same per GPU pid "
               "when a file holds several GPUs; p2p_memcpy: gpu_memcpy events whose name matches PtoP|peer, per GPU "
               "pid, with their overlap with kernels of the same GPU, and comm_incl_p2p = comm kernels + peer "
               "copies vs the other kernels)."],
           "files": out}
    with open(os.path.join(dest, "MANIFEST.json"), "w") as f:
        json.dump(res, f, indent=1)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {len(out)} traces and MANIFEST.json to {dest}")


# ----------------------------------------------------------------------------------------------
# CPU self-test
# ----------------------------------------------------------------------------------------------
def selftest_worker(rank, world, args):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dev, dt = torch.device("cpu"), torch.float32
    cfg = DSCfg.tiny()
    GMM["use"] = not args.no_gmm
    ctx = Ctx(dev, rank, world, labels=False)
    sdpa = SDPA(False)
    model = build_ds(cfg, dev, dt, rank, world)
    full = build_ds(cfg, dev, dt, 0, 1)  # every expert, for the reference
    cos, sin = rope_tables(64, cfg.qk_rope_head_dim, 10000.0, dev)
    res = {}
    g = torch.Generator().manual_seed(rank)
    N = 12
    # 1) one MoE layer through dispatch/combine vs single-process reference
    lw, lwf = model.layers[1], full.layers[1]
    x = torch.randn(N, cfg.hidden, generator=g)
    h = x.clone()
    hn2 = rms(h, lw.ffn_norm)
    idx, w = moe_gate(cfg, lw, hn2)
    send_x, send_meta = pack_dispatch(hn2, idx, w, world, model.E_local)
    recv_x, recv_meta = torch.empty_like(send_x), torch.empty_like(send_meta)
    dist.all_to_all_single(recv_meta, send_meta)
    dist.all_to_all_single(recv_x, send_x)
    # the tokens that arrived from rank s are rank s's hidden states
    peer_x = [torch.empty_like(hn2) for _ in range(world)]
    dist.all_gather(peer_x, hn2)
    res["dispatch_tokens_ok"] = all(torch.equal(recv_x[s * N:(s + 1) * N], peer_x[s]) for s in range(world))
    ids = recv_meta[:, :cfg.num_experts_per_tok]
    res["dispatch_local_ids_in_range"] = bool(((ids >= -1) & (ids < model.E_local)).all())
    y = experts_fwd(lw.experts, recv_x, recv_meta, cfg.num_experts_per_tok, exact=True)
    y_nosync = experts_fwd(lw.experts, recv_x, recv_meta, cfg.num_experts_per_tok, exact=False)
    res["experts_exact_vs_fixed_capacity_max_abs"] = float((y - y_nosync).abs().max())
    back = torch.empty_like(y)
    dist.all_to_all_single(back, y)
    out = h + mlp_fwd(lw.shared, hn2) + back.view(world, N, -1).sum(0)
    ref = moe_reference(cfg, full, lwf, hn2, h)
    res["moe_layer_max_abs_err"] = float((out - ref).abs().max())
    # 2) full model: TBO == serial == reference (prefill) on this rank's tokens
    P, S = 2, 8
    xp = torch.randn(P, S, cfg.hidden, generator=g)
    outs2 = [None, None]
    ctx.overlap = True
    run_interleaved([ds_forward_gen(cfg, ctx, model, xp[i], i, dict(kind="prefill", B=1, S=S, cos=cos, sin=sin),
                                    outs2, sdpa) for i in range(P)])
    tbo = torch.cat(outs2)
    outs1 = [None]
    ctx.overlap = False
    run_interleaved([ds_forward_gen(cfg, ctx, model, xp.reshape(P * S, -1), 0,
                                    dict(kind="prefill", B=P, S=S, cos=cos, sin=sin), outs1, sdpa)])
    res["prefill_tbo_vs_serial_max_abs"] = float((tbo - outs1[0]).abs().max())
    # reference: same forward on one process with every expert, no communication
    ref_ctx = Ctx(dev, 0, 1, labels=False)
    outs_r = [None]
    gen = ds_forward_gen(cfg, ref_ctx, full, xp.reshape(P * S, -1), 0, dict(kind="prefill", B=P, S=S, cos=cos, sin=sin),
                         outs_r, sdpa)
    # world=1: a2a with a 1-rank group is not available here, so emulate by swapping a2a to identity
    ref_ctx.a2a = lambda pairs: [o.copy_(i) for o, i in pairs] and None
    run_interleaved([gen])
    res["prefill_vs_single_process_max_abs"] = float((outs1[0] - outs_r[0]).abs().max())
    # 3) decode TBO == serial; absorbed MLA == plain MLA
    Bd, L = 4, 16
    caches = [torch.randn(Bd, L, cfg.kv_lora_rank + cfg.qk_rope_head_dim, generator=g) for _ in model.layers]
    c2 = [c.clone() for c in caches]
    xd = torch.randn(Bd, cfg.hidden, generator=g)
    o2 = [None, None]
    ctx.overlap = True
    run_interleaved([ds_forward_gen(cfg, ctx, model, xd[i * 2:(i + 1) * 2], i,
                                    dict(kind="decode", caches=[c[i * 2:(i + 1) * 2] for c in caches], pos=L - 1,
                                         cos=cos, sin=sin), o2, sdpa) for i in range(2)])
    o1 = [None]
    ctx.overlap = False
    run_interleaved([ds_forward_gen(cfg, ctx, model, xd, 0, dict(kind="decode", caches=c2, pos=L - 1, cos=cos, sin=sin),
                                    o1, sdpa)])
    res["decode_tbo_vs_serial_max_abs"] = float((torch.cat(o2) - o1[0]).abs().max())
    p = model.layers[0].attn
    cache = torch.randn(Bd, L, cfg.kv_lora_rank + cfg.qk_rope_head_dim, generator=g)
    xa = torch.randn(Bd, cfg.hidden, generator=g)
    a1 = mla_decode(cfg, p, xa, cache.clone(), L - 1, cos, sin)
    a2 = mla_decode_reference(cfg, p, xa, cache, L - 1, cos, sin)
    res["absorbed_vs_plain_mla_max_abs"] = float((a1 - a2).abs().max())
    # prefill MLA last token vs decode MLA on the cache built from the same tokens
    # 4) TP2 == TP1
    tpm = build_tp(cfg, dev, dt, rank, world, n_layers=2)
    tp1 = build_tp(cfg, dev, dt, 0, 1, n_layers=2)
    xt = torch.randn(2 * 8, cfg.hidden, generator=torch.Generator().manual_seed(99))
    att = dict(kind="prefill", B=2, S=8, cos=cos, sin=sin)
    y2 = tp_forward(cfg, ctx, tpm, xt, att, sdpa, world)
    y1 = tp_forward(cfg, ctx, tp1, xt, att, sdpa, 1)
    res["tp2_vs_tp1_max_abs"] = float((y2 - y1).abs().max())
    # 5) dual-batch overlap driven by two threads (own process group each) == serial prefill
    groups = [dist.new_group(list(range(world))) for _ in range(2)]
    dbo = DBOThreads([Ctx(dev, rank, world, labels=False, overlap=True, group=gr) for gr in groups], dev)
    outs_d = [None, None]
    att1 = dict(kind="prefill", B=1, S=S, cos=cos, sin=sin)
    for _ in range(2):  # twice: the persistent threads take a second step
        dbo.run([(lambda c, i=i: ds_forward_gen(cfg, c, model, xp[i], i, att1, outs_d, sdpa)) for i in range(P)])
    res["prefill_dbo_threads_vs_serial_max_abs"] = float((torch.cat(outs_d) - outs1[0]).abs().max())
    res["dbo_thread_tids_distinct"] = len(set(dbo.tids)) == 2 and threading.get_native_id() not in dbo.tids
    dbo.close()
    res["grouped_mm"] = GMM["use"]
    print(f"rank{rank} selftest {json.dumps(res)}", flush=True)
    bad = [k for k, v in res.items() if k.endswith("max_abs") or k.endswith("max_abs_err")]
    ok = (all(res[k] < 1e-3 for k in bad) and res["dispatch_tokens_ok"] and res["dispatch_local_ids_in_range"]
          and res["dbo_thread_tids_distinct"])
    dist.destroy_process_group()
    if not ok:
        raise SystemExit(f"rank{rank} selftest FAILED")


# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["multi", "single", "copyengine"], help="which capture to run")
    ap.add_argument("--out", default="/tmp/traces", help="directory for the .json traces and manifest lines")
    ap.add_argument("--pack", metavar="SRC", help="merge manifest lines of SRC and pack traces into --dest")
    ap.add_argument("--dest", default=None)
    ap.add_argument("--finalize", metavar="SRC", help="gzip the traces that --pack wrote to SRC into --dest, with a "
                    "MANIFEST.json that adds compressed_bytes and check_traces.py's numbers per file")
    ap.add_argument("--note", action="append", default=[], help="a line for MANIFEST.json's notes (--finalize)")
    ap.add_argument("--selftest", action="store_true", help="CPU correctness checks (gloo, tiny widths)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU with gloo (for debugging)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths (for debugging)")
    ap.add_argument("--fp32", action="store_true", help="float32 on CPU")
    ap.add_argument("--quick", action="store_true", help="fewer warm-up/timed iterations")
    ap.add_argument("--world", type=int, default=0,
                    help="ranks for --part multi / --selftest (default: every visible GPU; 2 on --cpu/--selftest)")
    ap.add_argument("--device", type=int, default=0, help="GPU for --part single")
    ap.add_argument("--scenarios", default="", help="comma list (multi / copyengine part); default all: "
                    + ",".join(ALL_MULTI) + " / " + ",".join(ALL_CE) + " (optional: " + ",".join(CE_OPTIONAL) + ")")
    ap.add_argument("--heads", type=int, default=0, help="override n_heads (default 128)")
    ap.add_argument("--experts", type=int, default=0, help="override routed experts (default 256)")
    ap.add_argument("--no-gmm", action="store_true", help="force the loop-of-matmuls expert path")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; scenarios that would not fit are skipped")
    ap.add_argument("--port", type=int, default=29517)
    args = ap.parse_args()
    args.t_start = time.time()
    if args.pack:
        pack(args.pack, args.dest or args.pack)
        return
    if args.finalize:
        finalize(args.finalize, args.dest or args.finalize, args.note)
        return
    if not args.world:
        args.world = 2 if (args.cpu or args.selftest or args.part != "multi") else torch.cuda.device_count()
    if args.selftest:
        torch.multiprocessing.spawn(selftest_worker, args=(args.world, args), nprocs=args.world, join=True)
        print("selftest passed", flush=True)
        return
    if args.part == "multi":
        if args.world < 2:
            raise SystemExit(f"--part multi needs at least 2 ranks (world={args.world})")
        if not args.cpu:
            n = torch.cuda.device_count()
            if n < args.world:
                raise SystemExit(f"need {args.world} GPUs, found {n}")
        torch.multiprocessing.spawn(worker, args=(args.world, args), nprocs=args.world, join=True)
    elif args.part == "single":
        single_main(args)
    elif args.part == "copyengine":
        ce_main(args)
    else:
        ap.error("give --part, --pack or --selftest")


if __name__ == "__main__":
    main()
