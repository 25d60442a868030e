"""Interval algebra on sorted numpy arrays (microseconds).

Everything here is vectorized: a union is one sort plus a running maximum, and the
measure of an intersection or difference comes from inclusion-exclusion on unions
(|A ∩ B| = |A| + |B| - |A ∪ B|, |A \\ B| = |A ∪ B| - |B|), which is exact for any
input: nested, touching, zero-length or overlapping intervals from many streams.
"""

from __future__ import annotations

import numpy as np

Intervals = tuple[np.ndarray, np.ndarray]


def _arrays(starts, ends) -> Intervals:
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    if s.shape != e.shape:
        raise ValueError("starts and ends differ in length")
    return s, e


def union(starts, ends) -> Intervals:
    """Disjoint, sorted intervals covering the same points; zero-length pieces dropped.

    Touching intervals ([0,1] and [1,2]) merge into one.
    """
    s, e = _arrays(starts, ends)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # a new group starts where an interval begins after everything before it has ended
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    group_end = np.empty(idx.size, dtype=np.float64)
    group_end[:-1] = reach[idx[1:] - 1]
    group_end[-1] = reach[-1]
    return s[idx], group_end


def measure(starts, ends) -> float:
    """Total length covered (the union's length)."""
    s, e = union(starts, ends)
    return float(np.sum(e - s))


def concat(*sets: Intervals) -> Intervals:
    return (np.concatenate([a for a, _ in sets]) if sets else np.empty(0),
            np.concatenate([b for _, b in sets]) if sets else np.empty(0))


def intersection_measure(a: Intervals, b: Intervals) -> float:
    """|A ∩ B| for two arbitrary interval sets."""
    ua, ub = measure(*a), measure(*b)
    return max(0.0, ua + ub - measure(*concat(a, b)))


def difference_measure(a: Intervals, b: Intervals) -> float:
    """|A \\ B|: the part of A that B does not cover."""
    return max(0.0, measure(*concat(a, b)) - measure(*b))


def intersect(a: Intervals, b: Intervals) -> Intervals:
    """A ∩ B as disjoint sorted intervals (both unioned first)."""
    sa, ea = union(*a)
    sb, eb = union(*b)
    if sa.size == 0 or sb.size == 0:
        return np.empty(0), np.empty(0)
    # For each interval of A, the B intervals that can overlap it are a contiguous run.
    lo = np.searchsorted(eb, sa, side="right")
    hi = np.searchsorted(sb, ea, side="left")
    counts = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(sa.size), counts)
    ib = np.concatenate([np.arange(l, h) for l, h in zip(lo, hi) if h > l]) if counts.sum() else np.empty(0, int)
    s = np.maximum(sa[ia], sb[ib])
    e = np.minimum(ea[ia], eb[ib])
    keep = e > s
    return s[keep], e[keep]


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """A \\ B as disjoint sorted intervals."""
    sa, ea = union(*a)
    sb, eb = union(*b)
    if sa.size == 0 or sb.size == 0:
        return sa, ea
    # Complement of B within [min, max] of A, then intersect.
    lo, hi = min(sa[0], sb[0]), max(ea[-1], eb[-1])
    cs = np.concatenate([[lo], eb])
    ce = np.concatenate([sb, [hi]])
    return intersect((sa, ea), (cs, ce))


def clip(a: Intervals, lo: float, hi: float) -> Intervals:
    s, e = _arrays(*a)
    s2, e2 = np.maximum(s, lo), np.minimum(e, hi)
    keep = e2 > s2
    return s2[keep], e2[keep]


def coverage(starts, ends, labels, n_labels: int):
    """Sweep: elementary segments and how many intervals of each label cover each one.

    Returns ``(seg_start, seg_end, counts)`` where ``counts[i, k]`` is the number of
    intervals with label ``k`` covering segment ``i``.  Used to split a shared instant
    fairly between several micro-batches (each gets 1/n of it).
    """
    s, e = _arrays(starts, ends)
    labels = np.asarray(labels, dtype=np.int64)
    keep = e > s
    s, e, labels = s[keep], e[keep], labels[keep]
    points = np.concatenate([s, e])
    if points.size == 0:
        return np.empty(0), np.empty(0), np.zeros((0, n_labels), dtype=np.int64)
    bounds = np.unique(points)
    delta = np.zeros((bounds.size, n_labels), dtype=np.int64)
    np.add.at(delta, (np.searchsorted(bounds, s), labels), 1)
    np.add.at(delta, (np.searchsorted(bounds, e), labels), -1)
    counts = np.cumsum(delta, axis=0)[:-1]
    return bounds[:-1], bounds[1:], counts
