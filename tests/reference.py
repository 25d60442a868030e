"""A deliberately simple, pure-Python implementation of the per-GPU metrics.

Written for clarity, not speed, and sharing no code with traceview: the tests hold the
vectorized implementation against it on every real fixture and on random intervals.
"""

from __future__ import annotations


def merge(intervals):
    """Sorted, disjoint, non-empty intervals covering the same points (touching ones merge)."""
    out = []
    for s, e in sorted((s, e) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1][1] = e
        else:
            out.append([s, e])
    return out


def length(intervals):
    return sum(e - s for s, e in merge(intervals))


def intersection(a, b):
    """Two-pointer walk over two merged lists."""
    a, b = merge(a), merge(b)
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if e > s:
            out.append([s, e])
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def difference(a, b):
    """Walk each interval of A, cutting out the pieces of B."""
    b = merge(b)
    out = []
    for s, e in merge(a):
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append([cur, bs])
            cur = max(cur, be)
            if cur >= e:
                break
        if cur < e:
            out.append([cur, e])
    return out


def gpu_metrics(events):
    """events: iterable of (start, end, role) on ONE device -> dict of metrics (µs)."""
    by_role = {"compute": [], "comm": [], "memory": []}
    for s, e, role in events:
        by_role[role].append((s, e))
    compute, comm, memory = by_role["compute"], by_role["comm"], by_role["memory"]
    everything = compute + comm + memory
    span = max(e for _s, e, _r in events) - min(s for s, _e, _r in events)
    busy = length(everything)
    return {
        "span_us": span,
        "busy_us": busy,
        "compute_us": length(compute),
        "comm_us": length(comm),
        "memory_us": length(memory),
        "overlap_us": length(intersection(comm, compute)),
        "exposed_comm_us": length(difference(comm, compute)),
        "exposed_memory_us": length(difference(memory, compute + comm)),
        "idle_us": span - busy,
    }


def step_time_ms(trace_path, device=0):
    """Serving step time from the raw trace: the span of one GPU's kernels (first start to last
    end) over the number of ProfilerStep annotations (at least 1).  Plain json, no traceview."""
    import gzip
    import json

    opener = gzip.open if str(trace_path).endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    kernels = [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"
               and (e.get("args", {}).get("device", e.get("pid")) == device)]
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    steps = len({e["name"] for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")})
    return (end - start) / 1000 / max(1, steps)
