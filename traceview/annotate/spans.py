"""Slices that a trace viewer shows as they are: strictly nested on each track.

Perfetto moves overlapping ``X`` events of one track to overflow tracks (or drops them) and
reads ``ts``/``dur`` as doubles in microseconds, so two slices that touch in nanoseconds can
overlap by a nanosecond once parsed.  Everything traceview adds goes through ``pack`` (spans
into lanes where they nest) and ``settle`` (a margin at shared edges), so validity holds by
construction, whatever the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Nanoseconds kept between a slice and its neighbours or parent edges (display only: a
#: parsed double at Kineto's time magnitudes is exact to about one nanosecond).
MARGIN_NS = 3


@dataclass
class Span:
    start: int              # nanoseconds
    end: int
    name: str
    args: dict = field(default_factory=dict)
    children: list["Span"] = field(default_factory=list)


def pack(spans: list[Span]) -> list[list[Span]]:
    """Spans into the fewest lanes (greedy, in start order) where each lane strictly nests."""
    lanes: list[list[Span]] = []
    stacks: list[list[Span]] = []
    for s in sorted((s for s in spans if s.end > s.start), key=lambda s: (s.start, -s.end)):
        for lane, stack in zip(lanes, stacks):
            while stack and stack[-1].end <= s.start:
                stack.pop()
            if not stack or s.end <= stack[-1].end:
                lane.append(s)
                stack.append(s)
                break
        else:
            lanes.append([s])
            stacks.append([s])
    return lanes


def settle(lane: list[Span]) -> list[Span]:
    """The lane as flat, sorted slices with ``MARGIN_NS`` between siblings and inside parents;
    slices too short to keep a margin are dropped (they are a few nanoseconds long)."""
    roots = _tree(lane)
    out: list[Span] = []
    _settle(roots, None, None, out)
    return out


def _tree(lane: list[Span]) -> list[Span]:
    roots: list[Span] = []
    stack: list[Span] = []
    for s in sorted(lane, key=lambda s: (s.start, -s.end)):
        s.children = []
        while stack and stack[-1].end <= s.start:
            stack.pop()
        (stack[-1].children if stack else roots).append(s)
        stack.append(s)
    return roots


def _settle(nodes: list[Span], lo: int | None, hi: int | None, out: list[Span]) -> None:
    prev_end = None
    for i, s in enumerate(nodes):
        start, end = s.start, s.end
        if lo is not None:
            start = max(start, lo + MARGIN_NS)
        if prev_end is not None:
            start = max(start, prev_end + MARGIN_NS)
        if hi is not None:
            end = min(end, hi - MARGIN_NS)
        if i + 1 < len(nodes):
            end = min(end, nodes[i + 1].start - MARGIN_NS)
        if end - start < MARGIN_NS:
            continue
        s.start, s.end = start, end
        out.append(s)
        prev_end = end
        _settle(s.children, start, end, out)
