"""Measured next to modeled: hold a trace against the analytical budget.

For each (iteration, layer, micro-batch) segment of a trace, the kernels are grouped into the
budget model's classes and the model is evaluated for the *same shapes*, read from the trace:

  class            measured kernels                               shapes (from record_shapes)
  mla              attention.* kernels + GEMMs launched in an      tokens = M of the GEMMs reading
                   attention phase (q/kv/o projections)            the hidden state; B, S, H from
                                                                   the flash-attention op, or B and
                                                                   kv_len from the absorbed bmm
  routed_experts   gemm.grouped                                    rows = M of the grouped GEMM
  shared_expert    GEMMs launched in a 'shared' phase              tokens
  dense_mlp        GEMMs launched in an 'mlp' phase                tokens
  dispatch/combine moe.dispatch / moe.combine                      bytes of the hidden-state
                                                                   tensor handed to the all-to-all
  all_reduce       comm.all_reduce                                 bytes of the reduced tensor
  unmodeled        every other compute kernel (norms, elementwise, routing, ...): listed, not hidden

``model_ms`` follows the seed's formulas and conventions (rates x 0.85 discount, comm SMs
reserved in prefill, decode adds the KV-cache load).  ``peak_ms`` is a hard lower bound from
the launching ops' own shapes: for every GEMM / attention op, max(FLOPs at the datasheet peak,
bytes moved at the HBM peak) (a roofline); for all-to-all and all-reduce, bytes at the link's
peak.  So ``efficiency = peak_ms / measured_ms`` is the fraction of what the hardware could
do and must lie in (0, 1]; ``vs_model = model_ms / measured_ms`` compares with the seed.
Attention over a causal prefill counts half of the q x kv products (what the kernel does);
the seed's prefill tables count all of them.  All-to-all bytes count only what crosses to
other ranks ((world - 1) / world of what is sent, equal splits assumed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
import polars as pl

from ..errors import UsageError
from .gpus import GPUSpec, get_gpu
from .models import ModelConfig, load_model
from .flops import expected_experts_hit
from .ops import (DEFAULT_CONVENTION, ZARTBOT_2025, _compute_op, allreduce_cost, alltoall_cost, attention_costs,
                  check_convention, dense_mlp_cost, expert_cost, kv_load_cost, shared_expert_cost)

CLASSES = ("mla", "routed_experts", "shared_expert", "dense_mlp", "dispatch", "combine", "all_reduce")
ATTN_PHASE = re.compile(r"(?i)attn|attention|mla")
SHARED_PHASE = re.compile(r"(?i)shared")
MLP_PHASE = re.compile(r"(?i)^(mlp|dense_mlp|ffn|feed_forward)\b")
FLASH_BSHD = ("_flash_attention_forward", "_efficient_attention_forward")
FLASH_OPS = FLASH_BSHD + ("scaled_dot_product", "flash_attn")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")


@dataclass
class Reconciliation:
    summary: pl.DataFrame     # per (device, class): measured, model, peak, efficiency (per iteration)
    segments: pl.DataFrame    # per (device, [stage,] iteration, layer, microbatch, class)
    slack: pl.DataFrame       # per (device, [stage,] iteration, layer, microbatch): modeled vs measured slack
    shapes: pl.DataFrame      # the token counts and sizes read from the trace, per segment
    phase: str                # prefill | decode | decode+prefill (a trace of several stages)
    model: ModelConfig
    gpu: GPUSpec

    def notes(self) -> list[str]:
        """What a reader must know before trusting the model column."""
        notes = []
        modeled = self.segments.filter(pl.col("model_ms").is_not_null())
        if modeled.height == 0:
            notes.append("no modeled values: the trace recorded no input shapes for these kernels (profile with "
                         "record_shapes=True) or they are not in layer segments; give --tokens (and --kv-len, --batch)")
        elif (modeled["layer"] == "(none)").any():
            notes.append("some kernels are in no layer segment: there the model is one layer while the measured "
                         "time covers every layer of the segment (label layers, or read the per-layer rows)")
        if "stage" in self.segments.columns:
            notes.append(f"stages modeled separately ({', '.join(sorted(set(self.segments['stage'].to_list())))}), "
                         "each with its own shapes; the table sums them")
        if not self.model.is_mla:
            notes.append(f"{self.model.name} has no MLA: the 'mla' class is its attention (projections + core)")
        return notes

    def to_dict(self) -> dict:
        return {"model": self.model.name, "gpu": self.gpu.name, "phase": self.phase,
                "summary": self.summary.to_dicts(), "slack": self.slack.to_dicts(), "shapes": self.shapes.to_dicts()}


def _first_shape(dims_json: str | None, index: int = 0) -> list[int] | None:
    """The ``index``-th tensor shape of an op's Input Dims (nested lists flattened one level)."""
    if not dims_json:
        return None
    try:
        dims = orjson.loads(dims_json)
    except orjson.JSONDecodeError:
        return None
    shapes = []
    for d in dims:
        if isinstance(d, list) and d and isinstance(d[0], list):  # a tensor list: take its first tensor
            d = d[0]
        if isinstance(d, list) and d and all(isinstance(x, int) for x in d):
            shapes.append(d)
    return shapes[index] if len(shapes) > index else None


def _kernel_ops(analysis) -> pl.DataFrame:
    """Classified kernels with segment labels and the launching op's name and input dims."""
    ev = analysis.trace.events
    ops = (ev.filter((pl.col("kind") == "cpu_op") & pl.col("external_id").is_not_null())
           .group_by("external_id").agg(pl.col("name").cast(pl.Utf8).first().alias("op"),
                                        pl.col("input_dims").first().alias("dims")))
    lab = analysis.segmentation.labels
    return (analysis.kernels.drop("input_dims").join(lab, on="row", how="left").join(ops, on="external_id", how="left")
            .with_columns([pl.col(c).fill_null("(none)") for c in ("iteration", "stage", "layer", "microbatch", "phase")]))


def _class_expr() -> pl.Expr:
    cat = pl.col("category").cast(pl.Utf8)
    phase = pl.col("phase")
    gemm = cat.str.starts_with("gemm.dense")
    return (pl.when(cat == "moe.dispatch").then(pl.lit("dispatch"))
            .when(cat == "moe.combine").then(pl.lit("combine"))
            .when(cat == "comm.all_reduce").then(pl.lit("all_reduce"))
            .when(cat == "gemm.grouped").then(pl.lit("routed_experts"))
            .when(cat.str.starts_with("attention")).then(pl.lit("mla"))
            .when(gemm & phase.str.contains(ATTN_PHASE.pattern)).then(pl.lit("mla"))
            .when(gemm & phase.str.contains(SHARED_PHASE.pattern)).then(pl.lit("shared_expert"))
            .when(gemm & phase.str.contains(MLP_PHASE.pattern)).then(pl.lit("dense_mlp"))
            .when(pl.col("role") == "compute").then(pl.lit("unmodeled"))
            .otherwise(pl.lit("unmodeled_other")))


def _mode(values: list[int]) -> int | None:
    return max(set(values), key=values.count) if values else None


def _op_roofline(op: str, dims: str, cls: str, elem: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one launching op, from its input shapes; (0, 0) if unknown."""
    a, b = _first_shape(dims, 0), _first_shape(dims, 1)
    if not a or not b:
        return 0.0, 0.0

    def n(shape):
        out = 1
        for x in shape:
            out *= x
        return out

    if op in GEMM_OPS and len(a) == 2 and len(b) == 2:
        m, k = a
        nn = b[1] if b[0] == k else b[0]
        return 2.0 * m * k * nn, float(elem * (m * k + n(b) + m * nn))
    if op == "aten::bmm" and len(a) == 3 and len(b) == 3:
        bb, m, k = a
        return 2.0 * bb * m * k * b[2], float(elem * (n(a) + n(b) + bb * m * b[2]))
    if op == "aten::_grouped_mm" and len(a) == 2 and len(b) == 3:
        r, k = a  # only the experts that receive rows need their weights read (expected number)
        hit = expected_experts_hit(b[0], r) / b[0] if b[0] else 1.0
        return 2.0 * r * k * b[2], float(elem * (n(a) + n(b) * hit + r * b[2]))
    if any(f in op for f in FLASH_OPS) and len(a) == 4 and len(b) == 4:
        v = _first_shape(dims, 2) or b
        if any(f in op for f in FLASH_BSHD):
            bs, sq, h, d = a
            skv, dv = b[1], v[3]
        else:
            bs, h, sq, d = a
            skv, dv = b[2], v[3]
        causal = 0.5 if sq == skv else 1.0
        return 2.0 * bs * h * sq * skv * (d + dv) * causal, float(elem * (n(a) + n(b) + n(v) + bs * sq * h * dv))
    return 0.0, 0.0


def _segment_shapes(ops: pl.DataFrame, model: ModelConfig, world_size: int, elem: int = 2) -> dict:
    """Token counts and sizes of one segment, from its launching ops' input dims (each op once),
    plus per-class FLOPs and bytes of those ops (for the roofline bound)."""
    tokens, attn, rows, bytes_ = [], None, [], {"dispatch": 0.0, "combine": 0.0, "all_reduce": 0.0}
    local_experts: list[int] = []
    roof: dict[str, list[float]] = {}
    # one row per launching op; its class is that of its modeled kernel (an op can also launch
    # helper kernels, e.g. a grouped GEMM's argument preparation)
    uniq = (ops.filter(pl.col("external_id").is_not_null())
            .with_columns(pl.col("class").str.starts_with("unmodeled").alias("_u"))
            .sort("_u").unique("external_id", keep="first", maintain_order=True))
    for op, dims, cls in uniq.select("op", "dims", "class").iter_rows():
        if op is None or dims is None:
            continue
        a = _first_shape(dims, 0)
        b = _first_shape(dims, 1)
        if cls in ("mla", "routed_experts", "shared_expert", "dense_mlp"):
            fl, by = _op_roofline(op, dims, cls, elem)
            acc = roof.setdefault(cls, [0.0, 0.0, 0.0])
            acc[0] += fl
            acc[1] += by
            acc[2] += 1
        if op in GEMM_OPS and a and len(a) == 2 and a[-1] == model.dim:
            tokens.append(a[0])
        elif any(f in op for f in FLASH_OPS) and a and len(a) == 4 and b and len(b) == 4 and attn is None:
            if any(f in op for f in FLASH_BSHD):
                bsz, q_len, heads, _d = a
                kv_len = b[1]
            else:
                bsz, heads, q_len, _d = a
                kv_len = b[2]
            attn = {"batch": bsz, "q_len": q_len, "kv_len": kv_len, "heads": heads, "absorbed": False}
        elif op == "aten::bmm" and a and b and len(a) == 3 and len(b) == 3 and model.is_mla \
                and a[2] == model.kv_lora_rank + model.qk_rope_head_dim and b[1] == a[2] and attn is None:
            attn = {"batch": a[0], "q_len": 1, "kv_len": b[2], "heads": a[1], "absorbed": True}
        elif op == "aten::_grouped_mm" and a and len(a) == 2 and a[-1] == model.dim:
            rows.append(a[0])
            if b and len(b) == 3:
                local_experts.append(b[0])
        elif cls in bytes_ and a and a[-1] == model.dim:
            nel = 1
            for x in a:
                nel *= x
            bytes_[cls] += nel * 2  # bf16 hidden states; small fp32 metadata tensors are not counted
    crossing = (world_size - 1) / world_size if world_size > 1 else 1.0
    return {
        "tokens": _mode(tokens), "rows": sum(rows) if rows else None,
        "local_experts": max(local_experts) if local_experts else None,
        "attn_batch": attn["batch"] if attn else None, "q_len": attn["q_len"] if attn else None,
        "kv_len": attn["kv_len"] if attn else None, "heads": attn["heads"] if attn else None,
        "absorbed": attn["absorbed"] if attn else None,
        "dispatch_bytes": bytes_["dispatch"] * crossing, "combine_bytes": bytes_["combine"] * crossing,
        "all_reduce_bytes": bytes_["all_reduce"],
        "_roof": roof,
    }


def _roofline_ms(gpu: GPUSpec, gflop: float, nbytes: float, precision: str) -> float:
    """The faster-than-possible time: max(FLOPs at peak, bytes at HBM peak bandwidth)."""
    return max(gflop / gpu.peak_tflops(precision), nbytes / (gpu.hbm_gbps * 1e6))


def _link_ms(gpu: GPUSpec, nbytes: float, link: str) -> float:
    """Bytes at the link's datasheet peak (SI: GB/s = 1e6 bytes per ms)."""
    bw = gpu.nvlink_gbps if link == "nvlink" else gpu.scaleout_gbps
    return nbytes / (bw * 1e6)


def _model_segment(s: dict, present: set[str], model: ModelConfig, gpu: GPUSpec, phase: str, precision: str,
                   link: str, convention: str = DEFAULT_CONVENTION, elem: int = 2
                   ) -> dict[str, tuple[float, float | None]]:
    """class -> (model_ms under ``convention``, roofline_ms from the ops' own shapes)."""
    comm_sm = None if phase == "prefill" else 0
    conv = check_convention(convention)
    out: dict[str, tuple[float, float | None]] = {}
    roof = {c: _roofline_ms(gpu, fl / 1e9, by, precision if c != "mla" else "bf16")
            for c, (fl, by, _n) in s["_roof"].items() if fl or by}
    T = s["tokens"]
    tp = max(1, round(model.n_heads / s["heads"])) if s["heads"] else 1
    if "mla" in present and s["q_len"]:
        decode = bool(s["absorbed"]) or s["q_len"] == 1
        gemm, attn = attention_costs(model, gpu, s["q_len"], s["kv_len"], batch=s["attn_batch"],
                                     absorbed=bool(s["absorbed"]), kv_cache_rate=1.0 if decode else 0.0, tp=tp,
                                     comm_sm=comm_sm, gemm_precision=precision, attn_precision="bf16",
                                     kv_bytes=elem, convention=conv)
        if not decode and s["q_len"] == s["kv_len"] and attn.gflop:  # causal prefill: half of q x kv
            h = model.n_heads / tp
            core = 2 * h * s["q_len"] * s["kv_len"] * (model.qk_rope_head_dim + model.qk_nope_head_dim
                                                        + model.v_head_dim if model.is_mla else 2 * model.head_dim)
            core *= s["attn_batch"] / 1e9
            attn = _compute_op(attn.name, gpu, attn.gflop - core / 2, attn.bytes, attn.precision, conv,
                               comm_sm=comm_sm)
        mla_ms = gemm.ms + attn.ms
        if decode and conv == ZARTBOT_2025:  # the article adds reading the KV cache (here bf16)
            mla_ms += kv_load_cost(model, gpu, s["kv_len"], s["attn_batch"] / tp, bytes_per_value=2).ms
        out["mla"] = (mla_ms, roof.get("mla"))
    if "routed_experts" in present and s["rows"] and model.is_moe:
        local = s.get("local_experts") or model.n_routed_experts
        c = expert_cost(model, gpu, s["rows"], comm_sm=comm_sm, precision=precision,
                        experts=expected_experts_hit(local, s["rows"]), convention=conv)
        out["routed_experts"] = (c.ms, roof.get("routed_experts"))
    if "shared_expert" in present and T and model.is_moe and model.shared_inter_dim:
        c = shared_expert_cost(model, gpu, T, comm_sm=comm_sm, precision=precision, convention=conv)
        out["shared_expert"] = (c.ms, roof.get("shared_expert"))
    if "dense_mlp" in present and T:
        c = dense_mlp_cost(model, gpu, T, comm_sm=comm_sm, precision=precision, tp=tp, convention=conv)
        out["dense_mlp"] = (c.ms, roof.get("dense_mlp"))
    for cls in ("dispatch", "combine"):
        if cls in present and s[f"{cls}_bytes"]:
            c = alltoall_cost(gpu, s[f"{cls}_bytes"], name=cls, link=link, convention=conv)
            out[cls] = (c.ms, _link_ms(gpu, c.bytes, link))
    if "all_reduce" in present and s["all_reduce_bytes"]:
        c = allreduce_cost(gpu, s["all_reduce_bytes"], convention=conv)
        out["all_reduce"] = (c.ms, _link_ms(gpu, c.bytes, "nvlink"))
    return out


def _apply_overrides(s: dict, tokens: int | None, kv_len: int | None, batch: int | None, phase: str | None) -> dict:
    """Flags fill in (or replace) what the trace did not record."""
    if tokens:
        s["tokens"] = tokens
    if phase == "decode" and (batch or s["tokens"]):
        b = batch or s["tokens"]
        s.update(attn_batch=b, q_len=1, kv_len=kv_len or s["kv_len"], absorbed=True)
        s["heads"] = s["heads"] or None
    elif (tokens or kv_len or batch) and s["q_len"] is None and s["tokens"]:
        b = batch or 1
        s.update(attn_batch=b, q_len=s["tokens"] // b, kv_len=kv_len or s["tokens"] // b, absorbed=False)
    elif kv_len and s["q_len"] is not None:
        s["kv_len"] = kv_len
    return s


def reconcile(analysis, model: ModelConfig | str, gpu: GPUSpec | str, *, phase: str | None = None,
              precision: str = "auto", gpus_per_node: int = 8, gpu_file: str | None = None,
              tokens: int | None = None, kv_len: int | None = None, batch: int | None = None,
              convention: str = DEFAULT_CONVENTION) -> Reconciliation:
    """Measured vs modeled time per budget class, per segment and per iteration.

    Shapes come from the trace (``record_shapes``); ``tokens`` (per micro-batch), ``kv_len``
    and ``batch`` (sequences) override them or fill them in where the trace has none.
    """
    model = load_model(model) if isinstance(model, str) else model
    gpu = get_gpu(gpu, gpu_file) if isinstance(gpu, str) else gpu
    k = _kernel_ops(analysis).with_columns(_class_expr().alias("class"))
    if precision == "auto":
        names = k.filter(pl.col("class").is_in(["mla", "routed_experts", "shared_expert", "dense_mlp"]))["name"]
        fp8 = names.cast(pl.Utf8).str.contains("(?i)fp8|e4m3|e5m2").mean() if names.len() else 0.0
        precision = "fp8" if (fp8 or 0) > 0.5 else "bf16"
    ws = analysis.trace.world_size or 1
    link = "nvlink" if ws <= gpus_per_node else "scaleout"
    # a trace holding several stages (a prefill pass, then decode steps) is modeled stage by
    # stage, each with its own shapes and phase: lumping them would model decode with prefill shapes
    staged = analysis.segmentation.sources.get("stage", "none") != "none" and k["stage"].n_unique() > 1
    keys = ["device", *(["stage"] if staged else []), "iteration", "layer", "microbatch"]
    measured = (k.group_by(*keys, "class").agg(pl.col("dur").sum().alias("measured_us"), pl.len().alias("kernels")))
    if phase is not None and phase not in ("prefill", "decode"):
        raise UsageError(f"phase must be prefill or decode (got {phase!r})")
    shape_rows, model_rows = [], []
    own_phase = []  # each segment's phase by its shapes (None where the trace recorded none)
    for key, seg in k.partition_by(keys, as_dict=True, maintain_order=True).items():
        s = _segment_shapes(seg, model, ws, 1 if precision == "fp8" else 2)
        if dict(zip(keys, key))["layer"] != "(none)" or tokens:
            s = _apply_overrides(s, tokens, kv_len, batch, phase)
        shape_rows.append(dict(zip(keys, key)) | s)
        own_phase.append(None if s["q_len"] is None else "decode" if s["q_len"] == 1 else "prefill")
    phases = [p for p in own_phase if p]
    ph = phase or (max(set(phases), key=phases.count) if phases else "prefill")  # the trace's main phase
    for row, own in zip(shape_rows, own_phase):
        key = tuple(row[c] for c in keys)
        present = set(measured.filter(*[pl.col(c) == v for c, v in zip(keys, key)])["class"].to_list())
        seg_phase = phase or (own if staged and own else ph)  # several stages: each segment its own
        for cls, (mms, pms) in _model_segment(row, present, model, gpu, seg_phase, precision, link, convention,
                                              1 if precision == "fp8" else 2).items():
            model_rows.append(dict(zip(keys, key)) | {"class": cls, "model_ms": mms, "peak_ms": pms})
    shapes = pl.DataFrame([{k2: v for k2, v in r.items() if k2 != "_roof"} for r in shape_rows], infer_schema_length=None)
    modeled = pl.DataFrame(model_rows, schema={"device": pl.Int64, **{c: pl.Utf8 for c in keys[1:]},
                                               "class": pl.Utf8, "model_ms": pl.Float64, "peak_ms": pl.Float64})
    if staged and not phase and phases:
        ph = "+".join(sorted(set(phases)))
    segs = measured.join(modeled, on=[*keys, "class"], how="left").with_columns(
        (pl.col("measured_us") / 1000).alias("measured_ms")).drop("measured_us")
    iters = max(1, analysis.segmentation.summary()["iterations"])
    order = {c: i for i, c in enumerate(CLASSES + ("unmodeled", "unmodeled_other"))}
    modeled_any = pl.col("model_ms").is_not_null().any()
    summary = (segs.group_by("device", "class").agg(
        (pl.col("measured_ms").sum() / iters).alias("measured_ms"),
        pl.when(modeled_any).then(pl.col("model_ms").sum() / iters).alias("model_ms"),
        pl.when(pl.col("peak_ms").is_not_null().any()).then(pl.col("peak_ms").sum() / iters).alias("peak_ms"),
        pl.col("kernels").sum(),
        pl.col("model_ms").is_not_null().sum().alias("modeled_segments"),
        pl.len().alias("segments"))
        .with_columns((pl.col("peak_ms") / pl.col("measured_ms")).alias("efficiency"),
                      (pl.col("model_ms") / pl.col("measured_ms")).alias("vs_model"),
                      pl.col("class").replace_strict(order, default=99).alias("_o"))
        .sort("device", "_o").drop("_o"))
    slack = _slack(segs, k, keys)
    return Reconciliation(summary=summary, segments=segs.sort(keys), slack=slack, shapes=shapes, phase=ph,
                          model=model, gpu=gpu)


def _slack(segs: pl.DataFrame, k: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per layer and micro-batch: compute that can hide the all-to-all minus the all-to-all
    (the seed's TimeBudget = MLA + shared - (dispatch + combine)), modeled and measured."""
    # per layer only: a segment without a layer holds many layers, the model one
    w = segs.filter(pl.col("class").is_in(["mla", "shared_expert", "dispatch", "combine"]) & (pl.col("layer") != "(none)"))
    if w.height == 0:
        return pl.DataFrame()
    sign = pl.when(pl.col("class").is_in(["dispatch", "combine"])).then(-1.0).otherwise(1.0)
    out = (w.group_by(keys).agg((pl.col("model_ms") * sign).sum().alias("model_slack_ms"),
                                (pl.col("measured_ms") * sign).sum().alias("measured_slack_ms"),
                                pl.col("class").is_in(["dispatch", "combine"]).any().alias("has_a2a"),
                                pl.col("model_ms").is_not_null().all().alias("modeled"))
           .filter(pl.col("has_a2a") & pl.col("modeled")).drop("has_a2a", "modeled"))
    return out.sort(keys)
