"""Several ranks on one clock, and the instances of each collective across them.

Swappable in one place: ``align`` is the only function the annotated trace asks for clock
offsets and matched collectives.  Until the run analysis (``traceview/run/``) provides them,
it aligns ranks by ``baseTimeNanoseconds`` alone (Kineto's ``ts`` is relative to a base that
differs between ranks whose profilers started in different quarters, field notes §1.6) and
matches the n-th kernel of the same collective (category and name) on each rank, as
``metrics/skew.py`` does.  Waiting = the time between a rank's own start and the last rank's
start, capped at the kernel's duration; the rest of the kernel is transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class Alignment:
    shift_us: dict[int, float]            # per rank: add to its ts to reach the common clock
    collectives: pl.DataFrame             # rank, row, instance, start (common clock), wait_us, late_rank
    method: str


def align(comm: dict[int, pl.DataFrame], base_ns: dict[int, int | None]) -> Alignment:
    """``comm``: per rank, its communication kernels (row, category, name, ts, end, dur, device)."""
    ranks = sorted(comm)
    known = [base_ns[r] for r in ranks if base_ns.get(r) is not None]
    ref = min(known) if known else 0
    shift = {r: ((base_ns[r] - ref) / 1000.0 if base_ns.get(r) is not None else 0.0) for r in ranks}
    method = "baseTimeNanoseconds" if len(known) == len(ranks) else "raw ts (a rank has no baseTimeNanoseconds)"
    frames = []
    for r in ranks:
        c = comm[r]
        frames.append(c.sort("ts", "row").select(
            "row", pl.col("category").cast(pl.Utf8), pl.col("name").cast(pl.Utf8), "dur",
            (pl.col("ts") + shift[r]).alias("start"),
            pl.lit(r, dtype=pl.Int64).alias("rank")).with_columns(
            pl.int_range(pl.len()).over("category", "name").alias("seq")))
    allc = pl.concat(frames) if frames else pl.DataFrame()
    if allc.height == 0:
        return Alignment(shift, allc, method)
    full = allc.group_by("category", "name", "seq").agg(pl.len().alias("n")).filter(pl.col("n") == len(ranks))
    allc = allc.join(full.select("category", "name", "seq"), on=["category", "name", "seq"])
    inst = allc.select("category", "name", "seq").unique().sort("category", "name", "seq").with_row_index("instance")
    allc = allc.join(inst, on=["category", "name", "seq"]).with_columns(
        pl.col("start").max().over("instance").alias("last_start"))
    late = (allc.sort("start", descending=True).group_by("instance").agg(pl.col("rank").first().alias("late_rank")))
    allc = allc.join(late, on="instance").with_columns(
        pl.min_horizontal(pl.col("last_start") - pl.col("start"), pl.col("dur")).clip(0).alias("wait_us"))
    return Alignment(shift, allc.select("rank", "row", "instance", "start", "wait_us", "late_rank"), method)
