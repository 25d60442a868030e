"""Per-segment accounting: compute and communication per micro-batch, layer or phase.

For a group g of GPU events (e.g. micro-batch mb1, or layer 3 of mb0) on one device:
  events, time by category     plain sums over the group's events
  compute_us                   |union of the group's compute events|
  comm_us                      |union of the group's communication events|
  overlapped_comm_us           the part of the group's comm that ran under compute of ANY
                               group on that device
  exposed_comm_us              the part that ran under no compute at all
  cover_other_mb_us            |group comm ∩ compute of the other micro-batches|: what
                               two-batch overlap bought (grouping by micro-batch only)
Where several groups' communication runs at the same instant, that instant is split
equally between them, so overlapped and exposed sum over groups to the device totals.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..segment import NONE, Segmentation
from ..timeline import intervals as iv

BY_KEYS = {
    "microbatch": ["microbatch"],
    "layer": ["iteration", "layer", "microbatch"],
    "phase": ["phase"],
    "iteration": ["iteration"],
    "stage": ["stage"],
    "stage-phase": ["stage", "phase"],
}


def labelled(kernels: pl.DataFrame, seg: Segmentation) -> pl.DataFrame:
    """The classified events with their segment labels (missing labels -> '(none)')."""
    lab = seg.labels.with_columns([pl.col(c).fill_null(NONE) for c in seg.labels.columns if c != "row"])
    return kernels.join(lab, on="row", how="left").with_columns(
        [pl.col(c).fill_null(NONE) for c in lab.columns if c != "row"])


class DeviceEvents:
    """One device's event times and role masks, and its compute busy set: the same for every
    view, so a caller computing several views (the diff: three) builds them once."""

    def __init__(self, d: pl.DataFrame):
        self.ts, self.end = d["ts"].to_numpy(), d["end"].to_numpy()
        role = d["role"]  # (masks from polars: not an array of 2 million Python strings)
        self.compute, self.comm = (role == "compute").to_numpy(), (role == "comm").to_numpy()
        self.compute_union = iv.union(self.ts[self.compute], self.end[self.compute])


def segment_table(kernels: pl.DataFrame, seg: Segmentation, by: str,
                  labelled_kernels: pl.DataFrame | None = None,
                  device_events: dict[int, DeviceEvents] | None = None) -> pl.DataFrame:
    """One row per (device, group) with the metrics above, in a stable order
    (``labelled_kernels``: ``labelled(kernels, seg)`` when the caller already has it;
    ``device_events``: a dict the caller keeps across views, filled here on first use)."""
    keys = BY_KEYS[by]
    df = labelled(kernels, seg) if labelled_kernels is None else labelled_kernels
    cache = {} if device_events is None else device_events
    frames = []
    for (device,), d in df.partition_by("device", as_dict=True, maintain_order=True).items():
        ev = cache.get(int(device))
        if ev is None or ev.ts.size != d.height:
            ev = cache[int(device)] = DeviceEvents(d)
        frames.append(_device_groups(d, int(device), keys, ev))
    out = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    out = out.with_columns(pl.col(category_columns(out)).fill_null(0.0)) if frames else out
    return _sort(out, keys)


def _device_groups(d: pl.DataFrame, device: int, keys: list[str], ev: DeviceEvents) -> pl.DataFrame:
    groups = d.select(keys).unique(maintain_order=True).with_row_index("gid")
    d = d.join(groups, on=keys, how="left", maintain_order="left")
    n = groups.height
    gid = d["gid"].to_numpy().astype(np.int64)
    ts, end, compute_mask, comm_mask, k_union = ev.ts, ev.end, ev.compute, ev.comm, ev.compute_union
    covered, uncovered = iv.split_by_owner(ts[comm_mask], end[comm_mask], gid[comm_mask], n, k_union)

    compute_us = iv.measure_by_group(ts[compute_mask], end[compute_mask], gid[compute_mask], n)
    comm_us = iv.measure_by_group(ts[comm_mask], end[comm_mask], gid[comm_mask], n)

    cover_other = np.full(n, np.nan)
    if keys == ["microbatch"]:
        mbs = groups["microbatch"].to_list()
        mb_of_event = d["microbatch"].to_numpy()
        for g in range(n):
            other = compute_mask & (mb_of_event != mbs[g])
            cover_other[g] = iv.intersection_with_sorted(
                (ts[(gid == g) & comm_mask], end[(gid == g) & comm_mask]), iv.union(ts[other], end[other]))

    stats = d.group_by("gid").agg(pl.len().alias("events"), pl.col("ts").min().alias("start_us"),
                                  pl.col("end").max().alias("end_us"))
    table = groups.join(stats, on="gid").sort("gid").with_columns(
        pl.lit(device, dtype=pl.Int64).alias("device"),
        pl.Series("compute_us", compute_us),
        pl.Series("comm_us", comm_us),
        pl.Series("overlapped_comm_us", covered),
        pl.Series("exposed_comm_us", uncovered),
        pl.Series("cover_other_mb_us", cover_other),
    )
    cats = (d.group_by("gid", pl.col("category").cast(pl.Utf8)).agg(pl.col("dur").sum())
            .pivot(on="category", index="gid", values="dur").fill_null(0.0))
    cats = cats.rename({c: f"cat:{c}" for c in cats.columns if c != "gid"}).with_columns(pl.col("gid").cast(pl.UInt32))
    cat_columns = sorted(c for c in cats.columns if c != "gid")  # stable order: CSVs of two runs diff cleanly
    return table.join(cats, on="gid", how="left").drop("gid").select(
        "device", *keys, "events", "start_us", "end_us", "compute_us", "comm_us", "overlapped_comm_us",
        "exposed_comm_us", "cover_other_mb_us", *cat_columns)


def _sort(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Natural order: numbers as numbers ('layer 10' after 'layer 9'), '(none)' last; stages in
    the order they ran (prefill before decode), not alphabetically."""
    if df.height == 0:
        return df
    sort_cols = [pl.col("device")]
    drop = []
    for k in keys:
        if k == "stage":
            df = df.with_columns(pl.col("start_us").min().over("device", "stage").alias("_stage_start"))
            sort_cols += [(pl.col(k) == NONE), pl.col("_stage_start")]
            drop.append("_stage_start")
        sort_cols += [(pl.col(k) == NONE), pl.col(k).cast(pl.Int64, strict=False), pl.col(k)]
    return df.sort(sort_cols, nulls_last=True).drop(drop)


def category_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("cat:")]
