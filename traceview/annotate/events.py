"""Added tracks -> Chrome trace events (the JSON both Perfetto and chrome://tracing open).

Every event carries ``cat`` "traceview" (``CATEGORY``): traceview's loader keeps only the
profiler's own categories, so re-reading an annotated trace measures the original events
alone.  pids and tids are small integers; each added process and track is named by ``M``
events and sorted next to the GPU it describes.
"""

from __future__ import annotations

from typing import Iterator

from ..load.decode import ANNOTATION_CATEGORY
from .tracks import DeviceTracks

CATEGORY = ANNOTATION_CATEGORY  # the loader never keeps events of this category


def us(t_ns: int) -> float:
    """Nanoseconds -> the microseconds Chrome JSON uses (exact to the nanosecond in decimal)."""
    return t_ns / 1000


def meta(name: str, pid: int, args: dict, tid: int = 0) -> dict:
    return {"ph": "M", "cat": CATEGORY, "name": name, "pid": pid, "tid": tid, "args": args}


def device_events(dt: DeviceTracks, pid: int, label: str, sort_index: int, shift_ns: int,
                  async_ids: Iterator[int]) -> list[dict]:
    """The M, X, b/e and C events of one GPU's added process."""
    out = [meta("process_name", pid, {"name": f"traceview: {label}"}),
           meta("process_sort_index", pid, {"sort_index": sort_index}),
           meta("process_labels", pid, {"labels": "derived by traceview"})]
    for tid, track in enumerate(dt.tracks, start=1):
        if track.kind != "counter":
            out.append(meta("thread_name", pid, {"name": track.name}, tid))
            out.append(meta("thread_sort_index", pid, {"sort_index": tid}, tid))
        if track.kind == "slices":
            for s in (track.lanes[0] if track.lanes else []):
                out.append({"ph": "X", "cat": CATEGORY, "name": s.name, "pid": pid, "tid": tid,
                            "ts": us(s.start + shift_ns), "dur": us(s.end - s.start), "args": s.args})
        elif track.kind == "async":
            for lane in track.lanes:
                aid = next(async_ids)
                for s in lane:
                    out.append({"ph": "b", "cat": CATEGORY, "name": s.name, "id": aid, "pid": pid, "tid": tid,
                                "ts": us(s.start + shift_ns), "args": s.args})
                    out.append({"ph": "e", "cat": CATEGORY, "name": s.name, "id": aid, "pid": pid, "tid": tid,
                                "ts": us(s.end + shift_ns)})
        else:
            for t, v in track.points:
                out.append({"ph": "C", "cat": CATEGORY, "name": track.name, "pid": pid, "tid": 0,
                            "ts": us(t + shift_ns), "args": {track.unit: v}})
    return out
