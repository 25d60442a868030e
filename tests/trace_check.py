"""A structural validator for annotated traces (test helper, independent of traceview's code).

What Perfetto and chrome://tracing need to show traceview's tracks as written:
  - integer pids and tids that fit 32 bits (Perfetto drops or merges others);
  - X events of one added (pid, tid) strictly nested, both as exact decimals and as
    Perfetto reads them (``int(ts * 1000)`` nanoseconds, doubles);
  - async b/e events of one (pid, cat, id) balanced and nested;
  - each flow id started once (one ``s``); traceview's flows also end (``f``);
  - process_name / process_sort_index for every added process, thread_name for every added
    thread track.
Returns a list of problems (empty: valid).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

ADDED = "traceview"


def _u32(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32


def _views(e):
    """(start, end) in nanoseconds, exact and as a double-reading parser truncates."""
    ts, dur = e["ts"], e.get("dur", 0)
    exact = (Decimal(repr(ts)) * 1000, (Decimal(repr(ts)) + Decimal(repr(dur))) * 1000)
    s = int(float(ts) * 1000)
    parsed = (s, s + int(float(dur) * 1000))
    return exact, parsed


def _nesting(spans, what) -> list[str]:
    problems = []
    spans = sorted(spans, key=lambda x: (x[0], -x[1]))
    stack: list = []
    for s, e, name in spans:
        while stack and stack[-1][1] <= s:
            stack.pop()
        if stack and e > stack[-1][1]:
            problems.append(f"{what}: {name!r} [{s}, {e}] overlaps {stack[-1][2]!r} [{stack[-1][0]}, {stack[-1][1]}]")
            if len(problems) > 5:
                break
        stack.append((s, e, name))
    return problems


def validate(doc: dict, all_integer_pids: bool = False) -> list[str]:
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    problems: list[str] = []
    x_by_track = defaultdict(list)
    async_by_id = defaultdict(list)
    flow_starts = defaultdict(int)
    flow_ends = defaultdict(int)
    named_procs, sorted_procs, named_threads = set(), set(), set()
    added_procs, added_threads, added_flows = set(), set(), set()
    for e in events:
        added = e.get("cat") == ADDED
        ph = e.get("ph")
        if (added or all_integer_pids) and not _u32(e.get("pid")):
            problems.append(f"pid {e.get('pid')!r} is not an integer < 2^32 ({ph} {e.get('name')!r})")
        if added and ph != "C" and not _u32(e.get("tid")):
            problems.append(f"tid {e.get('tid')!r} is not an integer < 2^32 ({ph} {e.get('name')!r})")
        if ph == "s":
            flow_starts[e.get("id")] += 1
        elif ph == "f":
            flow_ends[e.get("id")] += 1
        if added and ph == "s":
            added_flows.add(e.get("id"))
        if ph == "M":
            if e.get("name") == "process_name":
                named_procs.add(e.get("pid"))
            elif e.get("name") == "process_sort_index":
                sorted_procs.add(e.get("pid"))
            elif e.get("name") == "thread_name":
                named_threads.add((e.get("pid"), e.get("tid")))
            continue
        if not added:
            continue
        added_procs.add(e.get("pid"))
        if ph == "X":
            added_threads.add((e.get("pid"), e.get("tid")))
            x_by_track[(e["pid"], e["tid"])].append(e)
        elif ph in ("b", "e"):
            async_by_id[(e["pid"], e.get("cat"), e.get("id"))].append(e)
    for track, evs in x_by_track.items():
        for view in (0, 1):
            spans = [(*_views(e)[view], e["name"]) for e in evs]
            if any(s > t for s, t, _ in spans):
                problems.append(f"track {track}: negative duration")
            problems += _nesting(spans, f"track {track} ({'exact' if view == 0 else 'as parsed'})")
    for key, evs in async_by_id.items():
        begins = [e for e in evs if e["ph"] == "b"]
        ends = [e for e in evs if e["ph"] == "e"]
        if len(begins) != len(ends):
            problems.append(f"async {key}: {len(begins)} begins, {len(ends)} ends")
            continue
        # pair each end with the innermost open begin of the same name (time order)
        order = sorted(evs, key=lambda e: (_views(e)[1][0], 0 if e["ph"] == "e" else 1))
        stack, spans = [], []
        for e in order:
            if e["ph"] == "b":
                stack.append(e)
            elif not stack or stack[-1]["name"] != e["name"]:
                problems.append(f"async {key}: end of {e['name']!r} does not close the innermost open span")
                break
            else:
                b = stack.pop()
                spans.append((_views(b)[1][0], _views(e)[1][0], e["name"]))
        problems += _nesting(spans, f"async {key}")
    for fid, n in flow_starts.items():
        if n != 1:
            problems.append(f"flow id {fid!r} starts {n} times (ids must be unique)")
        if fid in added_flows and not flow_ends.get(fid):  # (profilers leave some of theirs open)
            problems.append(f"flow id {fid!r} has no end")
    for pid in added_procs:
        if pid not in named_procs:
            problems.append(f"added process {pid} has no process_name")
        if pid not in sorted_procs:
            problems.append(f"added process {pid} has no process_sort_index")
    for t in added_threads:
        if t not in named_threads:
            problems.append(f"added track {t} has no thread_name")
    if not added_procs:
        problems.append("no traceview events at all")
    return problems
