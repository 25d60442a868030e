"""The map step of a run: one rank's trace reduced to what cross-rank analysis reads.

A ``RankSummary`` holds no event table: the GPU metrics, the iteration boundaries, one row
per communication kernel (with what the rank did in the window before it), the exposed
communication pieces, and the per-(iteration, layer, micro-batch) expert-GEMM time.  It is
small, so hundreds of ranks fit in the driver, and it pickles, so it can come back from a
worker process or a cluster task: names are categoricals, indices int32 (``*_table()`` widens
them for the reduce), and the per-kernel tables stay zlib-compressed from the worker to the
driver until read (a 1 GB rank trace of 7,500 collectives: 0.42 MB held, 1.96 MB unpacked;
docs/performance.md).

Windows: the *window* of a communication kernel is the time on its rank's GPU from the start
of the rank's previous communication kernel to this one's start.  What happened there -
compute by category, idle with no kernel queued, the rank's own exposed communication - is
what made this rank early or late at this collective.
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..metrics.gpu import GpuMetrics
from ..metrics.iterations import iteration_spans
from ..segment import NONE
from ..timeline import intervals as iv
from ..timeline.idle import idle_sets

#: the compute category whose excess on a late rank means expert load imbalance
EXPERT_CATEGORY = "gemm.grouped"
#: compute busy pieces kept per rank for the run timeline (and drawn per lane)
TIMELINE_PIECES = 4000
#: the per-kernel tables a summary keeps compressed until read
PACKED = ("comm", "window_compute", "layers", "exposed_start", "exposed_end", "compute_start", "compute_end")


@dataclass
class RankSummary:
    """One rank (one GPU of one trace file), summarized for the run analysis."""

    file: str
    name: str
    rank: int | None
    world_size: int | None
    rank_source: str | None
    device: int
    gpu: GpuMetrics
    base_time_ns: int | None
    warnings: list[str]
    #: iteration, label, start, end (rank clock, µs), compute_us, exposed_comm_us, idle_us, idle_no_queue_us
    iterations: pl.DataFrame
    #: one row per communication kernel, in start order (see module docstring)
    comm: pl.DataFrame
    #: comm kernel index, category, compute time (µs) of that category in the kernel's window
    window_compute: pl.DataFrame
    #: exposed communication pieces (comm not covered by compute), disjoint, sorted
    exposed_start: np.ndarray
    exposed_end: np.ndarray
    #: per (iteration, layer, microbatch): expert (grouped GEMM) time, compute, exposed comm
    layers: pl.DataFrame
    #: compute busy pieces (union of compute kernels), disjoint, sorted, as the run timeline draws
    #: them (at most TIMELINE_PIECES: neighbours closer than a gap merged, ``intervals.coarsen``)
    compute_start: np.ndarray = field(default_factory=lambda: np.empty(0))
    compute_end: np.ndarray = field(default_factory=lambda: np.empty(0))
    sources: dict[str, str] = field(default_factory=dict)
    num_microbatches: int = 1
    #: how many GPUs the file held (a run pairs one GPU per rank)
    gpus_in_file: int = 1
    #: the name the trace gave the GPU as a string ``pid`` ("GPU 0"), shown instead of its internal id
    device_name: str | None = None
    #: the trace health messages (load/health.py) of the file, for the run page's warnings
    health: list[str] = field(default_factory=list)
    #: what ``--strict`` fails on for the file: loader warnings and trace health problems
    strict_problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the per-kernel tables are kept compressed (zlib) from here on: in the worker, on the
        # way back, and in the driver, which holds hundreds of summaries but reads each table
        # only a few times (``__getattr__`` unpacks it on each read, the summary stays small)
        packed = {}
        for name in PACKED:
            if name in self.__dict__:
                packed[name] = zlib.compress(pickle.dumps(self.__dict__.pop(name), protocol=pickle.HIGHEST_PROTOCOL), 1)
        self.__dict__.setdefault("_packed", {}).update(packed)

    def __getattr__(self, name: str):
        if name in PACKED:  # only reached for a packed table (not in __dict__)
            try:
                blob = self.__dict__["_packed"][name]
            except KeyError:
                raise AttributeError(name) from None
            return pickle.loads(zlib.decompress(blob))
        raise AttributeError(name)

    def comm_table(self) -> pl.DataFrame:
        """``comm`` with the reduce's column types: it travels compact (names as categoricals,
        indices as int32), the reduce joins and sorts on plain strings and int64 as before."""
        return _widen(self.comm)

    def layers_table(self) -> pl.DataFrame:
        """``layers`` with the reduce's column types (see ``comm_table``)."""
        return _widen(self.layers)

    def window_compute_table(self) -> pl.DataFrame:
        """``window_compute`` with the reduce's column types (see ``comm_table``)."""
        return _widen(self.window_compute)

    @property
    def iteration_count(self) -> int:
        return max(1, self.iterations.height)

    def nbytes(self) -> int:
        """Size of the summary as it travels between processes (pickled) and as the driver holds
        it (its per-kernel tables compressed)."""
        return len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def unpacked_nbytes(self) -> int:
        """Size pickled with its tables uncompressed (what a reduce step holds while reading them all)."""
        return len(pickle.dumps({**{k: v for k, v in self.__dict__.items() if k != "_packed"},
                                 **{n: getattr(self, n) for n in PACKED}}, protocol=pickle.HIGHEST_PROTOCOL))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rank": self.rank, "world_size": self.world_size,
                "rank_source": self.rank_source, "device": self.device, "device_name": self.device_name,
                "base_time_ns": self.base_time_ns, "collectives": self.comm.height,
                "iterations": self.iterations.height}


def _widen(t: pl.DataFrame) -> pl.DataFrame:
    return t.with_columns(pl.col(pl.Categorical).cast(pl.Utf8), pl.col(pl.Int32).cast(pl.Int64))


def summarize(analysis) -> list[RankSummary]:
    """The summaries of one analysed trace: one per GPU it holds (normally one)."""
    trace = analysis.trace
    seg = analysis.segmentation
    k = analysis._labelled  # the events with their segment labels, joined once per analysis
    base = trace.metadata.get("baseTimeNanoseconds")
    base = int(base) if isinstance(base, (int, float)) and not isinstance(base, bool) else None
    from ..load.identity import identity_from_name

    if (trace.metadata.get("distributedInfo") or {}).get("rank") is not None:
        source = "header (distributedInfo)"
    else:
        source = identity_from_name(trace.name).source if trace.rank is not None else None
    out = []
    by_layer = analysis.segments("layer")
    for g in analysis.gpus:
        d = k.filter(pl.col("device") == g.device).sort("ts")
        out.append(_summarize_device(trace, g, d, base, source, seg, len(analysis.gpus),
                                     by_layer.filter(pl.col("device") == g.device),
                                     [h.message for h in analysis.health]))
        out[-1].strict_problems = analysis.strict_problems()
    return out


def _iteration_ordinals(d: pl.DataFrame) -> pl.DataFrame:
    """Iteration labels in time order -> 0, 1, 2 ... (labels differ between stacks; order does not)."""
    return iteration_spans(d).with_row_index("it").with_columns(pl.col("it").cast(pl.Int64))


def _summarize_device(trace, g: GpuMetrics, d: pl.DataFrame, base, source, seg, n_gpus,
                      by_layer: pl.DataFrame, health: list[str]) -> RankSummary:
    its = _iteration_ordinals(d)
    d = d.join(its.select("iteration", "it"), on="iteration", how="left").with_columns(pl.col("it").fill_null(-1))
    ts, end = d["ts"].to_numpy(), d["end"].to_numpy()
    role = d["role"].cast(pl.Utf8).to_numpy()
    compute = iv.union(ts[role == "compute"], end[role == "compute"])
    comm_set = iv.union(ts[role == "comm"], end[role == "comm"])
    exposed = iv.subtract(comm_set, compute)
    launch = d["launch_ts"].to_numpy().astype(float) if "launch_ts" in d.columns else None
    gaps = idle_sets(ts, end, launch)  # the per-iteration table's definition (timeline/idle.py)
    idle, idle_no_queue = gaps.idle, gaps.no_queue

    iterations = _iteration_table(its, compute, exposed, idle, idle_no_queue)
    comm = d.filter(pl.col("role") == "comm")
    cts, cend = comm["ts"].to_numpy(), comm["end"].to_numpy()
    win_lo = np.concatenate([[ts.min() if d.height else 0.0], cts[:-1]]) if comm.height else np.empty(0)
    comm_table = pl.DataFrame({
        "idx": np.arange(comm.height, dtype=np.int32),
        "it": comm["it"].cast(pl.Int32),
        "category": comm["category"].cast(pl.Utf8).cast(pl.Categorical),
        "name": comm["name"].cast(pl.Utf8).cast(pl.Categorical),
        "stream": _narrow(comm["stream"].cast(pl.Int64)),
        "ts": cts, "end": cend, "dur": comm["dur"].to_numpy(),
        **{c: comm[c].cast(pl.Utf8).cast(pl.Categorical) for c in ("layer", "microbatch", "phase")},
        "win_idle_no_queue_us": iv.measure_in_windows(idle_no_queue, win_lo, cts),
        "win_idle_us": iv.measure_in_windows(idle, win_lo, cts),
        "win_exposed_comm_us": iv.measure_in_windows(exposed, win_lo, cts),
    })
    gap_us, gap_layer = _launch_gaps(d, win_lo, cts)
    comm_table = comm_table.with_columns(pl.Series("win_launch_gap_us", gap_us),
                                         pl.Series("win_launch_gap_layer", gap_layer, dtype=pl.Utf8).cast(pl.Categorical))
    window_compute = _window_compute(d, win_lo, cts)
    layers = _layer_table(d, by_layer, its)
    return RankSummary(
        file=str(trace.path), name=trace.name, rank=trace.rank, world_size=trace.world_size, rank_source=source,
        device=g.device, gpu=g, base_time_ns=base, warnings=list(trace.warnings), iterations=iterations,
        comm=comm_table, window_compute=window_compute, exposed_start=exposed[0], exposed_end=exposed[1],
        layers=layers, sources=dict(seg.sources), num_microbatches=seg.num_microbatches, gpus_in_file=n_gpus,
        device_name=trace.given_name(g.device), health=list(health),
        **dict(zip(("compute_start", "compute_end"), iv.coarsen(*compute, TIMELINE_PIECES))))


def _launch_gaps(d: pl.DataFrame, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, list]:
    """Per comm kernel: the longest gap between consecutive kernel launches (host time) whose
    next kernel started on the GPU inside the kernel's window, and that kernel's layer.  A host
    stall shows here whole, even where the GPU's queue hid part of it."""
    n = len(lo)
    gap = np.zeros(n)
    layer: list = [None] * n
    if n == 0 or "launch_ts" not in d.columns:
        return gap, layer
    l = (d.select("launch_ts", "ts", "layer").filter(pl.col("launch_ts").is_not_null() & pl.col("launch_ts").is_finite())
         .sort("launch_ts", "ts"))
    t = l["launch_ts"].to_numpy()
    if len(t) < 2:
        return gap, layer
    g = np.diff(t)
    start_after = l["ts"].to_numpy()[1:]
    layers = l["layer"].to_list()[1:]
    # window k holds GPU times [lo_k, hi_k); windows are consecutive, so one search finds it
    w = np.searchsorted(hi, start_after, side="right")
    inside = (w < n) & (start_after >= lo[np.minimum(w, n - 1)])
    best = np.full(n, -1)
    for j in np.nonzero(inside & (g > 0))[0]:
        k = w[j]
        if best[k] < 0 or g[j] > g[best[k]]:
            best[k] = j
    for k in np.nonzero(best >= 0)[0]:
        gap[k] = g[best[k]]
        layer[k] = layers[best[k]]
    return gap, layer


def _window_compute(d: pl.DataFrame, lo: np.ndarray, hi: np.ndarray) -> pl.DataFrame:
    """Compute time per category inside each comm kernel's window (kernels clipped to it)."""
    comp = d.filter(pl.col("role") == "compute")
    if comp.height == 0 or len(lo) == 0:
        return pl.DataFrame(schema={"idx": pl.Int32, "category": pl.Categorical, "time_us": pl.Float64})
    frames = []
    cats = comp["category"].cast(pl.Utf8).to_numpy()
    cts, cend = comp["ts"].to_numpy(), comp["end"].to_numpy()
    for cat in np.unique(cats):
        sel = cats == cat
        t = iv.measure_in_windows(iv.union(cts[sel], cend[sel]), lo, hi)
        keep = t > 0
        frames.append(pl.DataFrame({"idx": np.nonzero(keep)[0].astype(np.int32), "category": cat, "time_us": t[keep]}))
    return pl.concat(frames).with_columns(pl.col("category").cast(pl.Categorical)) if frames else pl.DataFrame()


def _iteration_table(its: pl.DataFrame, compute, exposed, idle, idle_no_queue) -> pl.DataFrame:
    lo, hi = its["start"].to_numpy(), its["end"].to_numpy()
    return pl.DataFrame({
        "it": its["it"], "label": its["iteration"], "start": lo, "end": hi,
        "compute_us": iv.measure_in_windows(compute, lo, hi),
        "exposed_comm_us": iv.measure_in_windows(exposed, lo, hi),
        "idle_us": iv.measure_in_windows(idle, lo, hi),
        "idle_no_queue_us": iv.measure_in_windows(idle_no_queue, lo, hi),
    })


def _layer_table(d: pl.DataFrame, by_layer: pl.DataFrame, its: pl.DataFrame) -> pl.DataFrame:
    """Per (iteration, layer, micro-batch): expert GEMM time and kernels, and the exposed
    communication of the layer as ``segments("layer")`` measures it (the fair split)."""
    g = d.filter(pl.col("layer") != NONE)
    if g.height == 0:
        return pl.DataFrame(schema={"it": pl.Int64, "layer": pl.Utf8, "microbatch": pl.Utf8, "expert_us": pl.Float64,
                                    "expert_kernels": pl.UInt32, "exposed_comm_us": pl.Float64})
    t = (g.group_by("it", "layer", "microbatch")
         .agg((pl.col("dur") * (pl.col("category").cast(pl.Utf8) == EXPERT_CATEGORY)).sum().alias("expert_us"),
              (pl.col("category").cast(pl.Utf8) == EXPERT_CATEGORY).sum().cast(pl.UInt32).alias("expert_kernels")))
    if by_layer.height and "exposed_comm_us" in by_layer.columns:
        ex = (by_layer.join(its.select("iteration", "it"), on="iteration", how="left")
              .with_columns(pl.col("it").fill_null(-1)).select("it", "layer", "microbatch", "exposed_comm_us"))
        t = t.join(ex, on=["it", "layer", "microbatch"], how="left")
    else:
        t = t.with_columns(pl.lit(0.0).alias("exposed_comm_us"))
    return _compact(t.with_columns(pl.col("exposed_comm_us").fill_null(0.0)).sort("it", "layer", "microbatch"))


def _narrow(col: pl.Series) -> pl.Series:
    """An int64 column as int32 when every value fits (a string tid's hashed id does not)."""
    lo, hi = col.min(), col.max()
    fits = lo is None or (-(2 ** 31) <= lo and hi < 2 ** 31)
    return col.cast(pl.Int32) if fits else col


def _compact(t: pl.DataFrame) -> pl.DataFrame:
    """Strings as categoricals, int64 as int32 where it fits: how the tables travel and stay in the driver."""
    return t.with_columns(pl.col(pl.Utf8).cast(pl.Categorical),
                          *(_narrow(t[c]) for c, dt in t.schema.items() if dt == pl.Int64))
