"""Trace health: what in the recording itself distorts the figures, said once per trace.

A trace can be a faithful file of an unfaithful recording: CUPTI drops activity records when
its buffers overflow (graph replays recorded fewer times than launched), a profiler run
without CUDA activities has launches but no kernels, ``record_shapes`` off leaves the budget
and the overlap tax without shapes, a GPU missing from ``deviceProperties`` has no name, SGLang's merger writes string pids, and two processes
writing one path interleave their events.  Each check below looks at the loaded event table
only (no classification), so it is computed once at load time and read by terminal, JSON,
HTML and ``--strict`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .trace import GPU_KINDS, Trace

#: runtime/driver calls that queue GPU work (kernels, graphs, copies)
LAUNCHES = r"(?i)LaunchKernel|LaunchCooperativeKernel|cuLaunch|GraphLaunch|hipModuleLaunch|hipExtLaunch"
#: the per-event decoder numbers string pids/tids from here down (decode.ColumnBuffer.thread_key)
STRING_ID_BASE = -1_000_000


@dataclass(frozen=True)
class HealthIssue:
    """One problem of the recording: a stable key, what it affects, and how many events."""

    key: str
    message: str
    count: int = 0

    def to_dict(self) -> dict:
        return {"key": self.key, "message": self.message, "count": self.count}


def launches_without_gpu_activity(events: pl.DataFrame) -> tuple[int, int]:
    """(launch calls with no GPU record, all launch calls) by correlation id."""
    launches = events.filter(pl.col("kind").is_in(["cuda_runtime", "cuda_driver"])
                             & pl.col("name").cast(pl.Utf8).str.contains(LAUNCHES)
                             & pl.col("correlation").is_not_null())
    if launches.height == 0:
        return 0, 0
    gpu_corr = events.filter(pl.col("kind").is_in(GPU_KINDS))["correlation"].drop_nulls().unique()
    missing = launches.filter(~pl.col("correlation").is_in(gpu_corr.implode())).height
    return missing, launches.height


def no_gpu_activity_reason(events: pl.DataFrame) -> str | None:
    """Why a trace has no GPU events, when its CPU side says kernels were launched."""
    missing, total = launches_without_gpu_activity(events)
    if total == 0:
        return None
    return (f"no GPU events, but {total:,} kernel/graph launches on the CPU side: the profiler ran without "
            "CUDA activities (torch.profiler activities=[ProfilerActivity.CPU] only), or CUPTI recorded nothing")


def trace_health(trace: Trace) -> list[HealthIssue]:
    """Every health problem of one loaded trace (empty: nothing found)."""
    ev = trace.events
    out: list[HealthIssue] = []
    rt = ev.filter(pl.col("kind").is_in(["cuda_runtime", "cuda_driver"]))
    gpu = ev.filter(pl.col("kind").is_in(GPU_KINDS))

    empty = 0
    graphs = trace.graph_launches().filter(pl.col("correlation").is_not_null())
    if graphs.height:
        per = (graphs.select("correlation")
               .join(gpu.group_by("correlation").agg(pl.len().alias("n")), on="correlation", how="left")
               .with_columns(pl.col("n").fill_null(0)))
        # (a launch with fewer kernels than another is no sign: piecewise graphs differ in size)
        empty = per.filter(pl.col("n") == 0).height
        if empty:
            out.append(HealthIssue(
                "graph_replays_missing",
                f"{empty:,} of {graphs.height:,} graph launches have no recorded kernels: CUPTI dropped "
                "replay records (activity buffer overflow under continuous replay); GPU busy time is "
                "undercounted and idle time inflated", empty))

    missing, total = launches_without_gpu_activity(ev)
    missing_plain = missing - empty  # empty graph launches are said above
    dropped = [w for w in trace.warnings if "skipped" in w or "truncated" in w]
    if dropped:  # the loader's own drops explain launches without records: one issue
        lost = f" ({missing_plain:,} of {total:,} kernel launches have no GPU record)" if missing_plain else ""
        out.append(HealthIssue("dropped_records", "the loader dropped or cut records: " + "; ".join(dropped) + lost,
                               len(dropped)))
    elif total and missing_plain > max(10, 0.01 * total):
        out.append(HealthIssue(
            "launches_without_gpu_activity",
            f"{missing_plain:,} of {total:,} kernel launches have no GPU record with their correlation id: "
            "dropped activity records, GPU records without a correlation, or the profiler window cut them; "
            "their GPU time is missing or unlinked", missing_plain))

    ops = ev.filter(pl.col("kind") == "cpu_op")
    if ops.height and ops["input_dims"].drop_nulls().len() == 0:
        out.append(HealthIssue(
            "no_record_shapes",
            "recorded without record_shapes: no operator input shapes, so budget shapes and the "
            "overlap tax's same-shape matching are limited", ops.height))

    string_pids = ev.filter(pl.col("pid") <= STRING_ID_BASE)["pid"].n_unique()
    if string_pids:
        out.append(HealthIssue(
            "string_pids",
            f"{string_pids:,} process ids are strings (a merged trace, e.g. SGLang's profile merger "
            "'[TP00-DP00-PP00-EP00] <pid>'): ranks are numbered in file order, not by their pid", string_pids))

    for device in sorted(gpu["device"].drop_nulls().unique().to_list()):
        if device in trace.thread_names:
            continue  # a GPU pid given as a string: its name is that string
        reason = trace.unknown_gpu_reason(device)
        if reason is not None:
            out.append(HealthIssue(
                "gpu_name_unknown",
                f"{reason}: the GPU is shown without a name and a budget needs --gpu",
                gpu.filter(pl.col("device") == device).height))

    dup = (rt.filter(pl.col("correlation").is_not_null() & pl.col("name").cast(pl.Utf8).str.contains(LAUNCHES))
           .group_by("correlation").agg(pl.col("pid").n_unique().alias("p")).filter(pl.col("p") > 1).height)
    if dup:
        out.append(HealthIssue(
            "interleaved_writers",
            f"{dup:,} correlation ids are used by launches of different processes: two profilers wrote "
            "this file (ranks exporting to one path); kernels may be matched to the wrong launch", dup))
    return out
