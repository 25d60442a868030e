"""Overlap tax: how much slower compute kernels run while communication runs beside them.

Communication kernels take SMs and memory bandwidth, so a GEMM that overlaps an all-to-all
can run slower than the same GEMM alone: two-batch overlap hides communication but pays
this tax.  For each kernel *key* (name + launch grid/block: the same kernel on the same
shape) that ran both ways in the trace, we compare durations:

  alone      : no communication on the device at any point of the kernel
  with comm  : some of the kernel's duration overlapped communication, in two buckets:
               ``overlap`` "≥50%" (mostly beside comm) and "<50%" (partly), so that partly
               overlapped kernels are counted, not dropped
  tax_us     = Σ over with-comm instances of (duration - median duration of the key alone)

Reported per (category, bucket), with the share of the alone estimate it represents.

Evidence: a key needs ``MIN_ALONE_SAMPLES`` alone runs for its median to mean anything (the
with-comm kernels of rarer keys are counted in a note, not compared), and the trace needs the
launching ops' input shapes (``record_shapes``): without them a kernel name + grid is not one
amount of work (a persistent grouped GEMM keeps its grid for any number of tokens), so the tax
is refused with a note rather than reported.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..timeline import intervals as iv

#: alone runs of the same kernel and shapes needed before its median is used as the estimate
MIN_ALONE_SAMPLES = 3
MOSTLY, PARTLY = "≥50%", "<50%"
NO_SHAPES = ("overlap tax not measured: the trace has no input shapes (profiled without record_shapes), so one "
             "kernel name and launch grid can be different work (a persistent grouped GEMM keeps its grid for any "
             "number of tokens); profile with record_shapes=True")


def overlap_fraction(ts: np.ndarray, end: np.ndarray, busy: iv.Intervals) -> np.ndarray:
    """For each interval, the fraction of its length covered by the (disjoint) set ``busy``."""
    bs, be = busy
    if bs.size == 0 or ts.size == 0:
        return np.zeros(ts.size)
    cum = np.concatenate([[0.0], np.cumsum(be - bs)])

    def covered_until(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(bs, x, side="right")  # intervals starting at or before x
        full = cum[np.maximum(i - 1, 0)]
        last = np.where(i > 0, np.clip(x - bs[np.maximum(i - 1, 0)], 0, (be - bs)[np.maximum(i - 1, 0)]), 0.0)
        return np.where(i > 0, full + last, 0.0)

    dur = end - ts
    cov = covered_until(end) - covered_until(ts)
    return np.where(dur > 0, cov / np.where(dur > 0, dur, 1), 0.0)


def kernel_keys(kernels: pl.DataFrame, events: pl.DataFrame | None) -> pl.DataFrame:
    """``kernels`` with a ``key``: name, launch grid/block and the launching op's input shapes.

    The grid alone does not pin a GEMM's shape (K does not change it); the CPU op that
    launched the kernel (same ``External id``) recorded its input dims when the trace was
    taken with ``record_shapes``.
    """
    k = kernels
    if events is not None and "input_dims" in events.columns:
        ops = (events.filter((pl.col("kind") == "cpu_op") & pl.col("input_dims").is_not_null()
                             & pl.col("external_id").is_not_null())
               .group_by("external_id").agg(pl.col("input_dims").first().alias("_dims")))
        k = k.join(ops, on="external_id", how="left")
    else:
        k = k.with_columns(pl.lit(None, dtype=pl.Utf8).alias("_dims"))
    return k.with_columns(pl.concat_str([pl.col("name").cast(pl.Utf8), pl.col("grid").cast(pl.Utf8).fill_null(""),
                                         pl.col("_dims").fill_null("")], separator="|").alias("key")).drop("_dims")


def has_shapes(events: pl.DataFrame | None) -> bool:
    """Did the profiler record the CPU ops' input shapes (``record_shapes=True``)?"""
    if events is None or "input_dims" not in events.columns:
        return False
    return events.filter((pl.col("kind") == "cpu_op") & pl.col("input_dims").is_not_null()).height > 0


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={"device": pl.Int64, "category": pl.Utf8, "overlap": pl.Utf8,
                                "kernels_with_comm": pl.UInt32, "kernel_keys": pl.UInt32,
                                "time_with_comm_us": pl.Float64, "alone_estimate_us": pl.Float64,
                                "tax_us": pl.Float64, "slowdown": pl.Float64})


def overlap_tax_with_notes(kernels: pl.DataFrame, events: pl.DataFrame | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Per (device, category, overlap bucket): kernels compared, time with comm, its alone
    estimate, the tax; and notes on what was not compared (or why nothing was)."""
    if not has_shapes(events):
        return _empty(), [NO_SHAPES]
    kernels = kernel_keys(kernels, events)
    frames, notes = [], []
    for (device,), d in kernels.partition_by("device", as_dict=True, maintain_order=True).items():
        comm = d.filter(pl.col("role") == "comm")
        busy = iv.union(comm["ts"].to_numpy(), comm["end"].to_numpy())
        comp = d.filter((pl.col("role") == "compute") & (pl.col("kind") == "kernel"))
        if comp.height == 0 or busy[0].size == 0:
            continue
        frac = overlap_fraction(comp["ts"].to_numpy(), comp["end"].to_numpy(), busy)
        comp = comp.with_columns(pl.Series("frac", frac))
        alone = comp.filter(pl.col("frac") == 0).group_by("key").agg(pl.col("dur").median().alias("alone_median"),
                                                                      pl.len().alias("alone_n"))
        beside = comp.filter(pl.col("frac") > 0).join(alone, on="key", how="left").with_columns(
            pl.when(pl.col("frac") >= 0.5).then(pl.lit(MOSTLY)).otherwise(pl.lit(PARTLY)).alias("overlap"))
        rare = beside.filter(pl.col("alone_n").fill_null(0) < MIN_ALONE_SAMPLES)
        if rare.height:
            notes.append(f"GPU {int(device)}: {rare.height} kernel(s) beside communication "
                         f"({float(rare['dur'].sum()) / 1000:.3f} ms) not compared: fewer than {MIN_ALONE_SAMPLES} "
                         f"runs of the same kernel and shapes alone")
        with_comm = beside.filter(pl.col("alone_n").fill_null(0) >= MIN_ALONE_SAMPLES)
        if with_comm.height == 0:
            continue
        frames.append(
            with_comm.group_by(pl.col("category").cast(pl.Utf8), "overlap").agg(
                pl.len().alias("kernels_with_comm"),
                pl.col("key").n_unique().alias("kernel_keys"),
                pl.col("dur").sum().alias("time_with_comm_us"),
                pl.col("alone_median").sum().alias("alone_estimate_us"),
            ).with_columns(
                pl.lit(int(device), dtype=pl.Int64).alias("device"),
                (pl.col("time_with_comm_us") - pl.col("alone_estimate_us")).alias("tax_us"),
            ).with_columns((pl.col("tax_us") / pl.col("alone_estimate_us")).alias("slowdown"))
        )
    if not frames:
        return _empty(), notes
    return (pl.concat(frames).select(*_empty().columns)
            .sort(["device", "tax_us", "overlap"], descending=[False, True, False]), notes)


def overlap_tax(kernels: pl.DataFrame, events: pl.DataFrame | None = None) -> pl.DataFrame:
    """The table of ``overlap_tax_with_notes``."""
    return overlap_tax_with_notes(kernels, events)[0]
