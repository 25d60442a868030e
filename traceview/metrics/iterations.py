"""Per-iteration time accounting: how long each iteration took, what filled it, and the what-if.

An iteration's *window* on a device runs from its first GPU event's start to the next
iteration's first start (the last one: to its own last end), so the windows tile the
iterations' part of the span and gaps between iterations count as idle of the one before.
Every GPU event of the device is clipped to the window (by time, whatever its label):

  duration_us           window length (the iteration time)
  compute_us            |compute ∩ W|
  comm_us               |comm ∩ W|
  exposed_comm_us       |(comm \\ compute) ∩ W|
  exposed_memory_us     |(memory \\ (compute ∪ comm)) ∩ W|
  idle_us               duration - |busy ∩ W|       (identity: compute + exposed comm +
                                                      exposed memory + idle == duration)
  idle_no_queue_us      the idle time with no kernel queued: no GPU event of the device had
                        been launched (its cudaLaunchKernel/graph launch had begun) and not yet
                        started, i.e. the GPU waited for the CPU (launch- or host-bound)
  idle_queued_us        idle - idle_no_queue: something was queued but did not run yet
                        (waiting on an event, a stream dependency, launch latency)
  if_hidden_us          duration - exposed comm: the iteration time if all exposed
                        communication ran under compute (compute unchanged: a bound, not a promise)
  kernels               GPU events that started in the window (launches per iteration)

Idle and "no kernel queued" are ``timeline/idle.py``'s sets (the run summaries measure the
same sets in their windows): a GPU event whose launch is not in the trace counts as queued
from the latest end of the device's earlier events (so it never makes idle look host-bound);
``unlinked`` counts them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..segment import NONE, Segmentation
from ..timeline import intervals as iv
from ..timeline.idle import idle_sets
from .segments import labelled

COLUMNS = ("device", "iteration", "start_us", "end_us", "duration_us", "compute_us", "comm_us", "exposed_comm_us",
           "exposed_memory_us", "idle_us", "idle_no_queue_us", "idle_queued_us", "if_hidden_us", "kernels",
           "unlinked")

#: the columns ``--by iteration`` adds to the per-segment table
ITERATION_EXTRA = ("duration_us", "idle_us", "idle_no_queue_us", "if_hidden_us")


def iteration_table(kernels: pl.DataFrame, seg: Segmentation,
                    labelled_kernels: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (device, iteration) with the columns above, in time order.

    A trace without iteration marks gets one row per device, iteration '(none)', over its span.
    ``labelled_kernels``: ``labelled(kernels, seg)`` when the caller has it already.
    """
    df = labelled(kernels, seg) if labelled_kernels is None else labelled_kernels
    rows: list[dict] = []
    for (device,), d in df.partition_by("device", as_dict=True, maintain_order=True).items():
        d = d.sort("ts")
        ts, end = d["ts"].to_numpy(), d["end"].to_numpy()
        role = d["role"].cast(pl.Utf8).to_numpy()
        launch = d["launch_ts"].to_numpy().astype(float) if "launch_ts" in d.columns else None
        gaps = idle_sets(ts, end, launch)
        compute = iv.union(ts[role == "compute"], end[role == "compute"])
        comm = iv.union(ts[role == "comm"], end[role == "comm"])
        exposed = iv.subtract(comm, compute)
        windows = _windows(d)
        lo = np.array([a for _it, a, _b in windows])
        hi = np.array([b for _it, _a, b in windows])
        measured = {name: iv.measure_in_windows(sets, lo, hi) for name, sets in
                    (("compute", compute), ("comm", comm), ("exposed", exposed), ("busy", gaps.busy),
                     ("idle", gaps.idle), ("no_queue", gaps.no_queue))}
        for i, (it, a, b) in enumerate(windows):
            sel = (ts >= a) & (ts < b) if b > a else (ts == a)
            duration = b - a
            compute_us, exposed_us = float(measured["compute"][i]), float(measured["exposed"][i])
            busy, idle = float(measured["busy"][i]), float(measured["idle"][i])
            no_queue = min(float(measured["no_queue"][i]), idle)
            rows.append(dict(device=int(device), iteration=it, start_us=a, end_us=b, duration_us=duration,
                             compute_us=compute_us, comm_us=float(measured["comm"][i]), exposed_comm_us=exposed_us,
                             exposed_memory_us=max(0.0, busy - compute_us - exposed_us), idle_us=idle,
                             idle_no_queue_us=no_queue, idle_queued_us=max(0.0, idle - no_queue),
                             if_hidden_us=duration - exposed_us,
                             kernels=int(sel.sum()), unlinked=int((sel & gaps.unlinked).sum())))
    schema = {c: (pl.Int64 if c in ("device", "kernels", "unlinked") else pl.Utf8 if c == "iteration" else pl.Float64)
              for c in COLUMNS}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def iteration_spans(d: pl.DataFrame) -> pl.DataFrame:
    """The labelled iterations of one device's events: (iteration, first start, last end), by start."""
    return (d.filter(pl.col("iteration") != NONE).group_by("iteration")
            .agg(pl.col("ts").min().alias("start"), pl.col("end").max().alias("end")).sort("start"))


def _windows(d: pl.DataFrame) -> list[tuple[str, float, float]]:
    """(iteration, start, end) of each iteration on one device, in time order."""
    marked = iteration_spans(d)
    if marked.height == 0:
        return [(NONE, float(d["ts"].min()), float(d["end"].max()))]
    names, a, z = marked["iteration"].to_list(), marked["start"].to_numpy(), marked["end"].to_numpy()
    ends = np.concatenate([a[1:], [z[-1]]])
    return [(str(n), float(s), float(e)) for n, s, e in zip(names, a, ends)]


def iteration_summary(table: pl.DataFrame, device: int) -> dict | None:
    """Mean per iteration on one device (None without rows): what the verdict and gate read."""
    d = table.filter(pl.col("device") == device)
    if d.height == 0:
        return None
    marked = d.filter(pl.col("iteration") != NONE)
    use = marked if marked.height else d
    out = {c: float(use[c].mean()) for c in COLUMNS if c not in ("device", "iteration", "start_us", "end_us")}
    out["iterations"] = marked.height
    out["kernels_total"] = int(use["kernels"].sum())
    return out
