"""Flat tables (polars) of an analysis: the rows behind CSV output and the terminal view."""

from __future__ import annotations

import polars as pl

from ..analysis import TraceAnalysis
from .text import fs_text

GPU_COLUMNS = ["file", "rank", "device", "span_us", "busy_us", "compute_us", "comm_us", "memory_us",
               "overlap_us", "exposed_comm_us", "exposed_memory_us", "idle_us", "overlap_ratio",
               "exposed_comm_ratio", "events"]


def gpu_table(results: list[TraceAnalysis]) -> pl.DataFrame:
    rows = []
    for a in results:
        for g in a.gpus:
            d = g.to_dict()
            rows.append({"file": fs_text(a.trace.name), "rank": a.rank, **{k: d[k] for k in GPU_COLUMNS[2:]}})
    return pl.DataFrame(rows, schema={c: (pl.Utf8 if c == "file" else pl.Int64 if c in ("rank", "device", "events")
                                          else pl.Float64) for c in GPU_COLUMNS})


def category_table(results: list[TraceAnalysis]) -> pl.DataFrame:
    rows = []
    for a in results:
        for g in a.gpus:
            for cat, ct in g.categories.items():
                rows.append({"file": fs_text(a.trace.name), "rank": a.rank, "device": g.device, "category": cat,
                             "role": a.rules.role(cat), "time_us": ct.time_us, "count": ct.count,
                             "share": ct.share})
    return pl.DataFrame(rows, schema={"file": pl.Utf8, "rank": pl.Int64, "device": pl.Int64, "category": pl.Utf8,
                                      "role": pl.Utf8, "time_us": pl.Float64, "count": pl.Int64, "share": pl.Float64})


def stream_table(results: list[TraceAnalysis]) -> pl.DataFrame:
    rows = [{"file": fs_text(a.trace.name), "rank": a.rank, "device": g.device, "stream": s, "busy_us": b}
            for a in results for g in a.gpus for s, b in g.streams.items()]
    return pl.DataFrame(rows, schema={"file": pl.Utf8, "rank": pl.Int64, "device": pl.Int64, "stream": pl.Int64,
                                      "busy_us": pl.Float64})


def kernel_table(results: list[TraceAnalysis]) -> pl.DataFrame:
    frames = [a.kernels.group_by("device", "category", "role", "name")
              .agg(pl.col("dur").sum().alias("time_us"), pl.len().alias("count"))
              .with_columns(pl.lit(fs_text(a.trace.name)).alias("file"), pl.lit(a.rank, dtype=pl.Int64).alias("rank"))
              .select("file", "rank", "device", pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8),
                      pl.col("name").cast(pl.Utf8), "time_us", "count")
              for a in results]
    return pl.concat(frames).sort(["file", "device", "time_us"], descending=[False, False, True]) if frames else pl.DataFrame()


TABLES = {"gpus": gpu_table, "categories": category_table, "streams": stream_table, "kernels": kernel_table}
#: tables of a run (several rank files): read from the RunAnalysis
RUN_TABLES = ("ranks", "collectives")


def empty() -> pl.DataFrame:
    return pl.DataFrame()


def table(name: str, results: list[TraceAnalysis], run=None) -> pl.DataFrame:
    """The flat table ``name``: a per-file table, or ``ranks``/``collectives`` of the run."""
    if name in RUN_TABLES:
        if run is None or (name == "collectives" and not run.cross_rank):
            return pl.DataFrame()
        return run.ranks_table() if name == "ranks" else run.collectives
    return TABLES[name](results)
