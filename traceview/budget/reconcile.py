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

``model_ms`` is the budget model under the chosen convention (default ``complete``: each op
at max(FLOPs, HBM bytes of weights, KV cache and activations), so never below the roofline of
the same shapes; ``zartbot-2025``: the article's FLOP-only formulas).  ``peak_ms`` is a hard
lower bound from the launching ops' own shapes: for every GEMM / attention op, max(FLOPs at the
datasheet peak, bytes moved at the HBM peak) (a roofline); for all-to-all and all-reduce, bytes
at the link's peak.  So ``efficiency = peak_ms / measured_ms`` is the fraction of what the
hardware could do and must lie in (0, 1] (above is a warning); ``vs_model = model_ms /
measured_ms``.  Attention over a causal prefill counts half of the q x kv products (what the
kernel does); the article's prefill tables count all of them.  All-to-all bytes count only what
crosses to other ranks ((world - 1) / world of what is sent, equal splits assumed).

The GPU spec comes from the trace's ``deviceProperties`` unless given; sanity warnings name the
option that is likely wrong; serving figures put the measured step (TPOT, time per prefill
chunk) and tokens/s next to the modeled step with and without the all-to-all hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson
import polars as pl

from ..errors import UsageError
from .gpus import GPUSpec, describe_device, get_gpu, gpu_from_device
from .models import ModelConfig, load_model
from .flops import expected_experts_hit
from .ops import (DEFAULT_CONVENTION, ZARTBOT_2025, _compute_op, allreduce_cost, alltoall_cost, attention_costs,
                  check_convention, dense_mlp_cost, expert_cost, kv_load_cost, shared_expert_cost, value_bytes)

CLASSES = ("mla", "routed_experts", "shared_expert", "dense_mlp", "dispatch", "combine", "all_reduce")
_MAIN = ("mla", "routed_experts", "shared_expert", "dense_mlp")  # the compute classes sanity checks watch
_COMM = ("dispatch", "combine", "all_reduce")
# the run analysis (traceview/run) names communication by kernel category
_COMM_CATEGORY = {"moe.dispatch": "dispatch", "moe.combine": "combine", "comm.all_reduce": "all_reduce"}
SUMMARY_COLUMNS = ("device", "class", "kernels", "measured_ms", "model_ms", "peak_ms", "transfer_ms", "efficiency",
                   "vs_model")
RATIO_LIMIT = 3.0  # model/measured beyond 3x either way on a main class: an input is likely wrong
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
    convention: str = DEFAULT_CONVENTION
    gpu_source: str = "--gpu"  # where the spec came from: "--gpu" or the trace's deviceProperties
    warnings: list[str] = field(default_factory=list)  # sanity checks: each names the likely wrong option
    serving: pl.DataFrame = field(default_factory=pl.DataFrame)  # step time and tokens/s, measured vs modeled
    comm_basis: str = "kernel"  # "transfer": comm efficiency against the measured transfer time

    def notes(self) -> list[str]:
        """What a reader must know before trusting the model column (terminal, HTML and JSON)."""
        notes = [f"GPU spec {self.gpu.name} ({self.gpu_source}); {self.convention} convention"
                 + (" (every op at max(FLOPs, HBM bytes of weights, KV cache and activations))"
                    if self.convention == "complete" else " (the article's FLOP-only model: below the roofline "
                    "where weight reads bound an op)")]
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
        if "capacity_rows" in self.shapes.columns and self.shapes["capacity_rows"].drop_nulls().len():
            notes.append("routed experts: the grouped GEMMs run over a fixed-capacity buffer (rows for every rank's "
                         "tokens' top-k); the kernel skips the masked rows, so model and roofline count the balanced "
                         "tokens x top-k rows")
        if not self.model.is_mla:
            notes.append(f"{self.model.name} has no MLA: the 'mla' class is its attention (projections + core)")
        if self.summary.filter(pl.col("class").is_in(list(_COMM))).height:
            notes.append("communication efficiency is against the measured transfer time (waiting for peers "
                         "excluded, from the run's cross-rank matching)" if self.comm_basis == "transfer" else
                         "communication efficiency counts the whole kernel time, including waiting for peers "
                         "(one rank's trace cannot split waiting from transfer; analyze the run's ranks together)")
        if self.serving.height:
            notes.append("modeled step times add up the modeled classes only; unmodeled kernels (norms, routing, "
                         "elementwise) and idle gaps are in the measured step")
        return notes

    def table(self) -> pl.DataFrame:
        """The summary with the columns terminal and HTML print (names as in the JSON)."""
        cols = [c for c in SUMMARY_COLUMNS if c in self.summary.columns
                and (c != "transfer_ms" or self.comm_basis == "transfer")]
        return self.summary.select(cols)

    def serving_lines(self) -> list[str]:
        """One line per device and stage: measured step and tokens/s against the model."""
        out = []
        f = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
        for r in self.serving.iter_rows(named=True):
            out.append(f"gpu {r['device']} {r['stage']}: measured {f(r['step_ms'])} ms {r['step']} vs modeled "
                       f"{f(r['model_step_overlap_ms'])} ms (overlap) / {f(r['model_step_ms'])} ms (no overlap); "
                       f"{f(r['tokens_per_s'], 0)} tokens/s per GPU vs modeled {f(r['model_tokens_per_s_overlap'], 0)}"
                       f" / {f(r['model_tokens_per_s'], 0)} ({r['steps']} steps of {f(r['tokens_per_step'], 0)} "
                       f"{'sequences' if r['phase'] == 'decode' else 'tokens'})")
        return out

    def to_dict(self) -> dict:
        return {"model": self.model.name, "gpu": self.gpu.name, "gpu_source": self.gpu_source,
                "convention": self.convention, "phase": self.phase, "warnings": list(self.warnings),
                "notes": self.notes(), "summary": self.summary.to_dicts(), "serving": self.serving.to_dicts(),
                "slack": self.slack.to_dicts(), "shapes": self.shapes.to_dicts()}


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


def _op_roofline(op: str, dims: str, cls: str, elem: int, rows_scale: float = 1.0) -> tuple[float, float]:
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
        r = r * rows_scale  # a fixed-capacity buffer: only the real rows are computed
        hit = expected_experts_hit(b[0], r) / b[0] if b[0] else 1.0
        return 2.0 * r * k * b[2], float(elem * (r * k + n(b) * hit + r * b[2]))
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


def _segment_shapes(ops: pl.DataFrame, model: ModelConfig, world_size: int, elem: int = 2, ep: int = 1) -> dict:
    """Token counts and sizes of one segment, from its launching ops' input dims (each op once),
    plus per-class FLOPs and bytes of those ops (for the roofline bound)."""
    tokens, attn, rows, bytes_ = [], None, [], {"dispatch": 0.0, "combine": 0.0, "all_reduce": 0.0}
    local_experts: list[int] = []
    attn_ops = 0  # attention-core ops: one per layer and step, so a segment of several steps has several
    gemm_widths: list[int] = []  # K and N of the modeled GEMMs: does the model's hidden size appear?
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
        if op in GEMM_OPS and a and b and len(a) == 2 and len(b) == 2 and cls in _MAIN:
            gemm_widths += [a[1], b[1] if b[0] == a[1] else b[0]]
        if op in GEMM_OPS and a and len(a) == 2 and a[-1] == model.dim:
            tokens.append(a[0])
        elif any(f in op for f in FLASH_OPS) and a and len(a) == 4 and b and len(b) == 4 and attn is not None:
            attn_ops += 1
        elif any(f in op for f in FLASH_OPS) and a and len(a) == 4 and b and len(b) == 4 and attn is None:
            attn_ops += 1
            if any(f in op for f in FLASH_BSHD):
                bsz, q_len, heads, _d = a
                kv_len = b[1]
            else:
                bsz, heads, q_len, _d = a
                kv_len = b[2]
            attn = {"batch": bsz, "q_len": q_len, "kv_len": kv_len, "heads": heads, "absorbed": False}
        elif op == "aten::bmm" and a and b and len(a) == 3 and len(b) == 3 and model.is_mla \
                and a[2] == model.kv_lora_rank + model.qk_rope_head_dim and b[1] == a[2]:
            attn_ops += 1
            if attn is None:
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
    steps = max(1, attn_ops)  # e.g. decode steps without iteration labels: model one, times steps
    capacity = None
    tok = _mode(tokens)
    if rows and tok and ep > 1 and model.is_moe and sum(rows) // steps == tok * ep * model.n_activated_experts:
        # a fixed-capacity buffer (room for every rank's tokens' top-k): the kernel skips the masked
        # rows, so count the balanced tokens x top-k rows, in the roofline too
        capacity = sum(rows) // steps
        scale = tok * model.n_activated_experts / capacity
        rows = [tok * model.n_activated_experts * steps]
        acc = [0.0, 0.0, 0.0]
        for op, dims, cls in uniq.select("op", "dims", "class").iter_rows():
            if cls == "routed_experts" and op is not None and dims is not None:
                fl, by = _op_roofline(op, dims, cls, elem, scale)
                acc = [acc[0] + fl, acc[1] + by, acc[2] + 1]
        roof["routed_experts"] = acc
    return {
        "steps": steps, "_widths": gemm_widths, "capacity_rows": capacity,
        "tokens": _mode(tokens), "rows": sum(rows) // steps if rows else None,
        "local_experts": max(local_experts) if local_experts else None,
        "attn_batch": attn["batch"] if attn else None, "q_len": attn["q_len"] if attn else None,
        "kv_len": attn["kv_len"] if attn else None, "heads": attn["heads"] if attn else None,
        "absorbed": attn["absorbed"] if attn else None,
        "dispatch_bytes": bytes_["dispatch"] * crossing / steps, "combine_bytes": bytes_["combine"] * crossing / steps,
        "all_reduce_bytes": bytes_["all_reduce"] / steps,
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
    steps = s.get("steps") or 1
    return {cls: (mms * steps, pms if cls not in ("dispatch", "combine", "all_reduce") else pms * steps)
            for cls, (mms, pms) in out.items()}


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


def trace_gpu(analysis, gpu_file: str | None = None) -> tuple[GPUSpec | None, str]:
    """The spec of the trace's GPU from its ``deviceProperties`` (None if none maps to a known
    spec) and the device as the trace describes it."""
    trace = analysis.trace
    devices = list(getattr(trace, "devices", None) or [])
    measured = [g.device for g in getattr(analysis, "gpus", None) or []]
    if measured and hasattr(trace, "device_entry"):
        # the entries of the GPUs measured, never another listed device's: with a GPU the
        # trace cannot name, the budget needs --gpu
        for device in measured:
            if trace.device_entry(device) is None:
                return None, trace.unknown_gpu_reason(device) or ""
        devices = [trace.device_entry(d) for d in measured]
    for d in devices:
        spec = gpu_from_device(d, gpu_file)
        if spec is not None:
            return spec, describe_device(d)
    return None, describe_device(devices[0]) if devices else ""


def reconcile(analysis, model: ModelConfig | str, gpu: GPUSpec | str | None = None, *, phase: str | None = None,
              precision: str = "auto", gpus_per_node: int = 8, gpu_file: str | None = None,
              tokens: int | None = None, kv_len: int | None = None, batch: int | None = None,
              convention: str = DEFAULT_CONVENTION,
              comm_transfer_us: dict[str, float] | None = None) -> Reconciliation:
    """Measured vs modeled time per budget class, per segment and per iteration.

    Shapes come from the trace (``record_shapes``); ``tokens`` (per micro-batch), ``kv_len``
    and ``batch`` (sequences) override them or fill them in where the trace has none.  ``gpu``
    None takes the spec from the trace's ``deviceProperties``; a given one that contradicts
    the trace is used with a warning.  ``comm_transfer_us`` (class or kernel category ->
    measured transfer time of this rank over the trace, waiting excluded, from the run's
    cross-rank matching) makes communication efficiency count transfer, not waiting.
    """
    model = load_model(model) if isinstance(model, str) else model
    convention = check_convention(convention)
    warnings: list[str] = []
    detected, device = trace_gpu(analysis, gpu_file)
    if gpu is None:
        if detected is None:
            raise UsageError(f"{analysis.trace.name}: "
                             + (device if device.startswith("GPU name unknown") else "the trace's deviceProperties "
                                + (f"name {device!r}, not a known GPU" if device else "are missing"))
                             + "; give --gpu (see 'traceview budget --list')")
        gpu, gpu_source = detected, f"from the trace: {device}"
    else:
        gpu = get_gpu(gpu, gpu_file) if isinstance(gpu, str) else gpu
        gpu_source = "--gpu"
        if detected is not None and detected.name != gpu.name:
            gpu_source = f"--gpu; the trace says {device}"
            warnings.append(f"--gpu {gpu.name} contradicts the trace's device ({device}, spec {detected.name}): "
                            f"the model and efficiencies use {gpu.name}; leave --gpu out to use {detected.name}")
    k = _kernel_ops(analysis).with_columns(_class_expr().alias("class"))
    if precision == "auto":
        names = k.filter(pl.col("class").is_in(list(_MAIN)))["name"]
        fp8 = names.cast(pl.Utf8).str.contains("(?i)fp8|e4m3|e5m2").mean() if names.len() else 0.0
        precision = "fp8" if (fp8 or 0) > 0.5 else "bf16"
    elem = value_bytes(precision)
    ws = analysis.trace.world_size or 1
    ep = ws if ws > 1 else max(1, len(getattr(analysis, "gpus", []) or []))  # one file may hold several GPUs
    link = "nvlink" if ws <= gpus_per_node else "scaleout"
    # a trace holding several stages (a prefill pass, then decode steps) is modeled stage by
    # stage, each with its own shapes and phase: lumping them would model decode with prefill shapes
    staged = analysis.segmentation.sources.get("stage", "none") != "none" and k["stage"].n_unique() > 1
    keys = ["device", *(["stage"] if staged else []), "iteration", "layer", "microbatch"]
    measured = (k.group_by(*keys, "class").agg(pl.col("dur").sum().alias("measured_us"), pl.len().alias("kernels")))
    if phase is not None and phase not in ("prefill", "decode"):
        raise UsageError(f"phase must be prefill or decode (got {phase!r})")
    shape_rows, model_rows = [], []
    own_phase = []  # each segment's phase by the trace's own shapes (None where it recorded none)
    widths: list[int] = []
    own_q: list[int | None] = []  # the trace's query tokens per sequence, before any override
    for key, seg in k.partition_by(keys, as_dict=True, maintain_order=True).items():
        s = _segment_shapes(seg, model, ws, elem, ep)
        own_phase.append(None if s["q_len"] is None else "decode" if s["q_len"] == 1 else "prefill")
        own_q.append(s["q_len"])
        widths += s["_widths"]
        if dict(zip(keys, key))["layer"] != "(none)" or tokens:
            s = _apply_overrides(s, tokens, kv_len, batch, phase)
        shape_rows.append(dict(zip(keys, key)) | s)
    phases = [p for p in own_phase if p]
    ph = phase or (max(set(phases), key=phases.count) if phases else "prefill")  # the trace's main phase
    for row, own in zip(shape_rows, own_phase):
        key = tuple(row[c] for c in keys)
        present = set(measured.filter(*[pl.col(c) == v for c, v in zip(keys, key)])["class"].to_list())
        seg_phase = phase or (own if staged and own else ph)  # several stages: each segment its own
        for cls, (mms, pms) in _model_segment(row, present, model, gpu, seg_phase, precision, link, convention,
                                              elem).items():
            model_rows.append(dict(zip(keys, key)) | {"class": cls, "model_ms": mms, "peak_ms": pms})
    shapes = pl.DataFrame([{k2: v for k2, v in r.items() if not k2.startswith("_")} for r in shape_rows],
                          infer_schema_length=None)
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
        pl.len().alias("segments")))
    transfer = _transfer_ms(comm_transfer_us, iters)
    summary = (summary.with_columns(
        pl.col("class").replace_strict(transfer, default=None, return_dtype=pl.Float64).alias("transfer_ms"))
        .with_columns(
            (pl.col("peak_ms") / pl.coalesce("transfer_ms", "measured_ms")).alias("efficiency"),
            (pl.col("model_ms") / pl.col("measured_ms")).alias("vs_model"),
            pl.col("class").replace_strict(order, default=99).alias("_o"))
        .sort("device", "_o").drop("_o"))
    slack = _slack(segs, k, keys)
    serving = _serving(analysis, k, segs, shape_rows, keys, own_phase, ph if not staged else None)
    warnings += _sanity(summary, model, gpu, phase, own_phase, own_q, widths, detected)
    return Reconciliation(summary=summary, segments=segs.sort(keys), slack=slack, shapes=shapes, phase=ph,
                          model=model, gpu=gpu, convention=convention, gpu_source=gpu_source, warnings=warnings,
                          serving=serving, comm_basis="transfer" if transfer else "kernel")


def _transfer_ms(comm_transfer_us: dict[str, float] | None, iters: int) -> dict[str, float]:
    """class -> measured transfer ms per iteration (keys: class names or kernel categories)."""
    out: dict[str, float] = {}
    for key, us in (comm_transfer_us or {}).items():
        cls = _COMM_CATEGORY.get(key, key)
        if cls not in _COMM:
            raise UsageError(f"comm_transfer_us: {key!r} is not a communication class "
                             f"(known: {', '.join(_COMM + tuple(_COMM_CATEGORY))})")
        if us is not None and us > 0:
            out[cls] = out.get(cls, 0.0) + us / 1000 / iters
    return out


def _sanity(summary: pl.DataFrame, model: ModelConfig, gpu: GPUSpec, phase: str | None, own_phase: list,
            own_q: list, widths: list[int], detected: GPUSpec | None) -> list[str]:
    """Warning lines for inputs that are likely wrong, each naming the option to check."""
    out: list[str] = []
    wrong_width = bool(widths) and model.dim not in widths
    if wrong_width:
        common = sorted({w for w in widths if widths.count(w) >= max(2, widths.count(max(set(widths), key=widths.count)))})
        out.append(f"--model {model.name}: none of the trace's {len(widths) // 2} modeled GEMMs has its hidden size "
                   f"{model.dim} (the trace's most common width: {', '.join(map(str, common))}); the model's "
                   "widths do not fit this trace: check --model")
    seen = [p for p in own_phase if p]
    if phase and seen and phase not in seen:
        q = sorted({qq for qq, p in zip(own_q, own_phase) if p})
        out.append(f"--phase {phase} contradicts the trace's shapes: its attention has {', '.join(map(str, q[:3]))} "
                   f"query token(s) per sequence ({'decode' if phase == 'prefill' else 'prefill'}; decode = one per "
                   "sequence): check --phase, or leave it out to take the phase from the shapes")
    hint = ("--model" if wrong_width else "--phase" if phase and seen and phase not in seen
            else "--gpu" if detected is not None and detected.name != gpu.name else "--model / --phase / --tokens")
    for r in summary.iter_rows(named=True):
        if r["efficiency"] is not None and r["efficiency"] > 1.0 + 1e-9:
            out.append(f"{r['class']}: efficiency {r['efficiency']:.1%} is above 100% of {gpu.name}'s peak: the "
                       "hardware that ran this is faster than the spec, or the bytes/FLOPs read from the trace are "
                       "too few: check --gpu")
        if (r["class"] in _MAIN and r["model_ms"] is not None and r["peak_ms"] is not None
                and r["model_ms"] < r["peak_ms"] * (1 - 1e-9)):
            out.append(f"{r['class']}: the model ({r['model_ms']:.3f} ms) is below the roofline of the trace's own ops "
                       f"({r['peak_ms']:.3f} ms): it counts less work than the trace ran: check {hint}")
        v = r["vs_model"]
        if r["class"] in _MAIN and v is not None and v > 0 and (v > RATIO_LIMIT or v < 1 / RATIO_LIMIT):
            out.append(f"{r['class']}: model/measured {v:.0%} is beyond {RATIO_LIMIT:g}x either way: "
                       f"check {hint}")
    return out


def _serving(analysis, k: pl.DataFrame, segs: pl.DataFrame, shape_rows: list[dict], keys: list[str],
             own_phase: list, phase: str | None) -> pl.DataFrame:
    """Per device and stage: measured step time (TPOT in decode, time per prefill chunk) and
    tokens/s per GPU, against the modeled step with and without the all-to-all hidden.

    Steps are the iterations the trace labels, else the attention ops per layer (decode steps
    without iteration labels); the measured step is the GPU span of the stage's kernels over its
    steps.  Tokens per step: decode, the sequences (one token each); prefill, the tokens."""
    stage_col = "stage" if "stage" in keys else None
    rows = []
    layered = [r for r in shape_rows if r["layer"] != "(none)"]
    if not layered:
        return pl.DataFrame()
    groups: dict[tuple, list[dict]] = {}
    for r, own in zip(shape_rows, own_phase):
        if r["layer"] == "(none)":
            continue
        groups.setdefault((r["device"], r[stage_col] if stage_col else None), []).append(r | {"_own": own})
    iters = analysis.segmentation.summary()["iterations"]
    for (dev, stage), rs in groups.items():
        kk = k.filter(pl.col("device") == dev)
        sg = segs.filter(pl.col("device") == dev)
        if stage_col:
            kk, sg = kk.filter(pl.col("stage") == stage), sg.filter(pl.col("stage") == stage)
        if kk.height == 0:
            continue
        ph = phase or next((r["_own"] for r in rs if r["_own"]), None)
        if ph is None:
            continue
        # the iterations of this stage (a prefill pass and its decode steps are separate iterations)
        stage_iters = (kk.filter(pl.col("iteration") != "(none)")["iteration"].n_unique()
                       if "iteration" in kk.columns else 0)
        steps = (stage_iters or iters) if iters else max(r.get("steps") or 1 for r in rs)
        span_ms = (kk["end"].max() - kk["ts"].min()) / 1000 if "end" in kk.columns else None
        if not span_ms:
            continue
        first_layer = min(r["layer"] for r in rs)
        mbs = [r for r in rs if r["layer"] == first_layer]
        n_iter_labels = len({r["iteration"] for r in mbs}) or 1
        if ph == "decode":
            per = sum(r.get("attn_batch") or 0 for r in mbs) / n_iter_labels
        else:
            per = sum(r.get("tokens") or 0 for r in mbs) / n_iter_labels
        mod = sg.filter(pl.col("model_ms").is_not_null())
        if mod.height == 0:
            model_step = model_overlap = None
        else:
            model_step = mod["model_ms"].sum() / steps
            model_overlap = mod.filter(~pl.col("class").is_in(["dispatch", "combine"]))["model_ms"].sum() / steps
        step_ms = span_ms / steps
        rows.append({"device": dev, "stage": stage or ph, "phase": ph,
                     "step": "TPOT" if ph == "decode" else "prefill chunk", "steps": steps,
                     "tokens_per_step": per, "step_ms": step_ms, "model_step_overlap_ms": model_overlap,
                     "model_step_ms": model_step,
                     "tokens_per_s": per / step_ms * 1000 if per else None,
                     "model_tokens_per_s_overlap": per / model_overlap * 1000 if per and model_overlap else None,
                     "model_tokens_per_s": per / model_step * 1000 if per and model_step else None})
    return pl.DataFrame(rows, infer_schema_length=None)


def _slack(segs: pl.DataFrame, k: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per layer and micro-batch: compute that can hide the all-to-all minus the all-to-all
    (the article's TimeBudget = MLA + shared - (dispatch + combine)), modeled and measured."""
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
