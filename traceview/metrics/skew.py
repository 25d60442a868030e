"""Cross-rank skew of collectives: is a communication kernel slow, or waiting for a peer?

An NCCL (or DeepEP) kernel starts on each rank when that rank launches it, but it cannot
finish before the last rank has joined; the time between its own start and the last
rank's start is waiting for a peer, not moving data.  With every rank's trace loaded, the
n-th kernel of the same collective (same category and name) on each rank is one collective.

Clocks: ranks on different hosts have offset clocks.  Collectives end nearly together on
all ranks, so each rank's offset to the first rank is estimated as the median difference
of matched end times and removed before comparing starts (``clock_offset_us``).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def collective_skew(per_rank: list[tuple[int, pl.DataFrame]]) -> tuple[pl.DataFrame, dict[int, float]]:
    """``per_rank``: (rank, classified kernels of that rank's GPU).

    Returns a per-category table (collectives, mean/max skew, wait per rank as a share of
    that rank's time in those kernels) and the clock offsets that were removed.
    """
    if len(per_rank) < 2:
        return pl.DataFrame(), {}
    frames = []
    for rank, k in per_rank:
        c = (k.filter(pl.col("role") == "comm").sort("ts")
             .select(pl.col("category").cast(pl.Utf8), pl.col("name").cast(pl.Utf8), "ts", "end", "dur")
             .with_columns(pl.int_range(pl.len()).over("category", "name").alias("seq"),
                           pl.lit(rank, dtype=pl.Int64).alias("rank")))
        frames.append(c)
    allc = pl.concat(frames)
    ranks = [r for r, _ in per_rank]
    # keep collectives seen on every rank
    full = allc.group_by("category", "name", "seq").agg(pl.len().alias("n")).filter(pl.col("n") == len(ranks))
    allc = allc.join(full.select("category", "name", "seq"), on=["category", "name", "seq"])
    if allc.height == 0:
        return pl.DataFrame(), {}
    ref = allc.filter(pl.col("rank") == ranks[0]).select("category", "name", "seq", pl.col("end").alias("ref_end"))
    offs = (allc.join(ref, on=["category", "name", "seq"]).group_by("rank")
            .agg((pl.col("end") - pl.col("ref_end")).median().alias("offset")))
    offset = {int(r): float(o) for r, o in offs.iter_rows()}
    allc = allc.join(offs, on="rank").with_columns((pl.col("ts") - pl.col("offset")).alias("start_aligned"))
    allc = allc.with_columns(pl.col("start_aligned").max().over("category", "name", "seq").alias("last_start"),
                             pl.col("start_aligned").min().over("category", "name", "seq").alias("first_start"))
    allc = allc.with_columns(
        pl.min_horizontal(pl.col("last_start") - pl.col("start_aligned"), pl.col("dur")).clip(0).alias("wait"))
    per_coll = allc.group_by("category", "name", "seq").agg((pl.col("last_start") - pl.col("first_start")).first()
                                                            .alias("skew"))
    skew = per_coll.group_by("category").agg(pl.len().alias("collectives"), pl.col("skew").mean().alias("mean_skew_us"),
                                             pl.col("skew").max().alias("max_skew_us"))
    wait = (allc.group_by("category", "rank").agg(pl.col("wait").sum().alias("wait_us"), pl.col("dur").sum().alias("time_us"))
            .with_columns((pl.col("wait_us") / pl.col("time_us")).alias("wait_share")))
    wide = wait.pivot(on="rank", index="category", values=["wait_us", "wait_share"])
    cols = [f"{m}_{r}" for m in ("wait_us", "wait_share") for r in sorted(ranks) if f"{m}_{r}" in wide.columns]
    return skew.join(wide.select("category", *cols), on="category", how="left").sort("category"), offset
