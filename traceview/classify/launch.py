"""Launch context: which CPU ranges enclosed the launch of each GPU event.

A kernel's ``correlation`` id points at the ``cudaLaunchKernel``/``cuLaunchKernel`` (or graph
launch) that queued it; the ``cpu_op`` and ``user_annotation`` ranges open on that CPU thread
at that moment are its launch context.  Classification uses it to name NCCL kernels
(``SendRecv`` under ``dispatch`` is MoE dispatch), segmentation to put kernels in the
micro-batch and layer that *issued* them, whatever ran beside them on the GPU.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..load.trace import GPU_KINDS


def attach_launches(events: pl.DataFrame) -> pl.DataFrame:
    """GPU events with ``launch_pid``, ``launch_tid``, ``launch_ts`` (null when unlinked)."""
    gpu = events.filter(pl.col("kind").is_in(GPU_KINDS))
    # the first launch of each correlation id (lazy: only the columns used are filtered; no
    # group-by over the millions of runtime calls, whose hash tables cost hundreds of MB)
    launches = (
        events.lazy().filter(pl.col("kind").is_in(["cuda_runtime", "cuda_driver"])
                             & pl.col("correlation").is_in(gpu["correlation"].drop_nulls().unique().implode()))
        .select("correlation", pl.col("pid").alias("launch_pid"), pl.col("tid").alias("launch_tid"),
                pl.col("ts").alias("launch_ts"))
        .filter(pl.col("correlation").is_first_distinct())
        .collect()
    )
    return gpu.join(launches, on="correlation", how="left")


def range_depths(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Nesting depth of each range (input sorted by start, longer first on ties).

    Ranges of equal depth never overlap, so each depth can be searched with searchsorted.
    """
    depth = np.empty(len(starts), dtype=np.int64)
    stack_ends: list[float] = []
    for i in range(len(starts)):
        s = starts[i]
        while stack_ends and stack_ends[-1] < s:
            stack_ends.pop()
        depth[i] = len(stack_ends)
        stack_ends.append(ends[i])
    return depth


def enclosing_ranges(points: pl.DataFrame, ranges: pl.DataFrame) -> pl.DataFrame:
    """For each point, every range on the same (pid, tid) with ``ts <= point <= end``.

    ``points``: columns ``point`` (an id), ``pid``, ``tid``, ``ts``.
    ``ranges``: columns ``range`` (an id), ``pid``, ``tid``, ``ts``, ``end``.
    Returns ``point``, ``range``, ``depth`` (0 = outermost), one row per enclosing range.
    """
    out_p: list[np.ndarray] = []
    out_r: list[np.ndarray] = []
    out_d: list[np.ndarray] = []
    pts_by_thread = points.partition_by(["pid", "tid"], as_dict=True)
    for key, rng in ranges.sort(["ts", "end"], descending=[False, True]).partition_by(
            ["pid", "tid"], as_dict=True, maintain_order=True).items():
        pts = pts_by_thread.get(key)
        if pts is None or rng.height == 0:
            continue
        r_ts, r_end = rng["ts"].to_numpy(), rng["end"].to_numpy()
        r_id = rng["range"].to_numpy()
        p_ts, p_id = pts["ts"].to_numpy(), pts["point"].to_numpy()
        depth = range_depths(r_ts, r_end)
        for d in range(int(depth.max()) + 1 if len(depth) else 0):
            sel = np.nonzero(depth == d)[0]
            starts = r_ts[sel]
            idx = np.searchsorted(starts, p_ts, side="right") - 1
            ok = idx >= 0
            ok[ok] &= r_end[sel[idx[ok]]] >= p_ts[ok]
            out_p.append(p_id[ok])
            out_r.append(r_id[sel[idx[ok]]])
            out_d.append(np.full(int(ok.sum()), d, dtype=np.int64))
    if not out_p:
        return pl.DataFrame({"point": [], "range": [], "depth": []},
                            schema={"point": pl.Int64, "range": pl.Int64, "depth": pl.Int64})
    return pl.DataFrame({"point": np.concatenate(out_p).astype(np.int64),
                         "range": np.concatenate(out_r).astype(np.int64),
                         "depth": np.concatenate(out_d)})
