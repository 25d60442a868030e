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


def run_wait_transfer(per_rank):
    """Per rank: (comm, wait, transfer, exposed comm, exposed wait, exposed transfer), the simple way.

    ``per_rank``: {rank: [(start, end, role, iteration, category), ...]} of one GPU per rank,
    on one clock.  The n-th comm kernel of a category in the k-th iteration (in start order) is
    one collective on every rank; its transfer is the shortest duration over ranks and lies at
    the end of each rank's kernel; kernels of groups whose counts differ count whole as transfer.
    """
    groups = {}
    for rank, events in per_rank.items():
        seen = {}
        for s, e, role, it, cat in sorted(events):
            if role != "comm":
                continue
            n = seen.get((it, cat), 0)
            seen[(it, cat)] = n + 1
            groups.setdefault((it, cat), {}).setdefault(rank, []).append((s, e))
    windows = {rank: [] for rank in per_rank}
    for key, by_rank in groups.items():
        counts = {len(v) for v in by_rank.values()}
        if len(by_rank) != len(per_rank) or len(counts) != 1:
            for rank, ks in by_rank.items():
                windows[rank].extend(ks)
            continue
        for i in range(counts.pop()):
            transfer = min(by_rank[r][i][1] - by_rank[r][i][0] for r in by_rank)
            for r in by_rank:
                end = by_rank[r][i][1]
                windows[r].append((end - transfer, end))
    out = {}
    for rank, events in per_rank.items():
        comm = merge([(s, e) for s, e, role, *_ in events if role == "comm"])
        compute = merge([(s, e) for s, e, role, *_ in events if role == "compute"])
        exposed = difference(comm, compute)
        win = merge(windows[rank])
        transfer = length(win)
        exposed_transfer = length(intersection(win, exposed))
        out[rank] = (length(comm), length(comm) - transfer, transfer, length(exposed),
                     length(exposed) - exposed_transfer, exposed_transfer)
    return out



def queued_intervals(events):
    """[queued from, start) of each event, sorted by start: from its launch; without one, from
    the latest end of the events that started before it."""
    queued, latest = [], min(e[0] for e in events)
    for s, e, _r, launch in sorted(events, key=lambda e: e[0]):
        queued.append((launch if launch is not None else latest, s))
        latest = max(latest, e)
    return queued


def idle_no_queue_in_windows(events, windows):
    """Per window (a, b): the time in it when no event ran and none was queued (the span of
    the events minus every event, minus every queued stretch, cut to the window)."""
    span = [(min(e[0] for e in events), max(e[1] for e in events))]
    free = difference(difference(span, [(s, e) for s, e, _r, _l in events]), queued_intervals(events))
    return [length(intersection(free, [(a, b)])) for a, b in windows]

def iteration_metrics(events, iterations):
    """Per iteration window, by brute force over merged lists.

    events: (start, end, role, launch or None) of ONE device; iterations: {name: [starts]} of
    the events labelled with that iteration.  A window runs from the iteration's first start to
    the next iteration's first start (the last: to its own last end).  An event is queued from
    its launch (no launch: from the latest end of the events that started before it) to its start.
    """
    events = sorted(events, key=lambda e: e[0])
    order = sorted(iterations, key=lambda n: min(s for s, _e in iterations[n]))
    starts = [min(s for s, _e in iterations[n]) for n in order]
    out = {}
    for i, name in enumerate(order):
        a = starts[i]
        b = starts[i + 1] if i + 1 < len(order) else max(e for _s, e in iterations[name])
        window = [(a, b)]

        def inside(role):
            return intersection([(s, e) for s, e, r, _l in events if r == role], window)

        queued = queued_intervals(events)
        compute, comm, memory = inside("compute"), inside("comm"), inside("memory")
        busy = length(compute + comm + memory)
        idle_set = difference(window, compute + comm + memory)
        out[name] = {
            "duration_us": b - a,
            "compute_us": length(compute),
            "comm_us": length(comm),
            "exposed_comm_us": length(difference(comm, compute)),
            "idle_us": (b - a) - busy,
            "idle_no_queue_us": length(difference(idle_set, queued)),
            "if_hidden_us": (b - a) - length(difference(comm, compute)),
            "kernels": sum(1 for s, _e, _r, _l in events if a <= s < b),
        }
    return out


def overlap_tax(kernels, min_alone=3):
    """kernels: (category, key, dur, frac under comm) -> {(category, bucket): tax}, brute force."""
    alone = {}
    for _c, key, dur, frac in kernels:
        if frac == 0:
            alone.setdefault(key, []).append(dur)
    out = {}
    for cat, key, dur, frac in kernels:
        if frac == 0 or len(alone.get(key, [])) < min_alone:
            continue
        runs = sorted(alone[key])
        n = len(runs)
        median = runs[n // 2] if n % 2 else (runs[n // 2 - 1] + runs[n // 2]) / 2
        bucket = "≥50%" if frac >= 0.5 else "<50%"
        out[(cat, bucket)] = out.get((cat, bucket), 0.0) + dur - median
    return out


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
