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


def measure_by_group(starts, ends, groups, n_groups: int) -> np.ndarray:
    """``measure`` of each group's intervals (``groups``: ids in ``[0, n_groups)``), all groups
    at once: one sort by (group, start), then as ``union`` (linear after the sort, however
    many groups: a loop over groups would cost groups x events)."""
    s, e = _arrays(starts, ends)
    g = np.asarray(groups, dtype=np.int64)
    keep = e > s
    s, e, g = s[keep], e[keep], g[keep]
    out = np.zeros(n_groups)
    if s.size == 0:
        return out
    order = group_order(s, g, n_groups)
    s, e, g = s[order], e[order], g[order]
    first = np.empty(s.size, dtype=bool)
    first[0] = True
    first[1:] = g[1:] != g[:-1]
    lengths, run_groups = sorted_group_runs(s, e, first)
    return out + np.bincount(g[run_groups], weights=lengths, minlength=n_groups)


def group_order(s: np.ndarray, g: np.ndarray, n_groups: int) -> np.ndarray:
    """The order that sorts by (group, start), ties in input order: ``np.lexsort((s, g))``.

    Events usually come sorted by start (the classifier sorts by device, ts); then a stable sort
    of the group ids alone gives the same order, and as 16-bit ids numpy radix-sorts them (a
    fraction of a lexsort of 2 million rows)."""
    if s.size > 1 and n_groups <= 1 << 16 and bool(np.all(s[1:] >= s[:-1])):
        return np.argsort(g.astype(np.uint16), kind="stable")
    return np.lexsort((s, g))


def sorted_group_runs(s: np.ndarray, e: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union pieces of intervals sorted by (group, start), ``first`` marking each group's first
    row (zero-length intervals already dropped): each piece's length and its first row.

    As ``union``, with a running maximum of the ends that restarts at each group."""
    reach = _segmented_cummax(e, first)
    new = first.copy()
    new[1:] |= s[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    return np.maximum.reduceat(e, idx) - s[idx], idx


#: Up to this many groups the segmented running maximum is numpy's accumulate per group (a
#: loop of at most this many slices, ~10x faster than a polars window at 2 million rows);
#: above it, polars' windowed ``cum_max`` (linear whatever the number of groups).
ACCUMULATE_GROUPS = 4096


def _segmented_cummax(e: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running maximum of ``e`` restarting where ``first`` is set (numpy has no segmented
    accumulate)."""
    starts = np.flatnonzero(first)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    if starts.size <= ACCUMULATE_GROUPS:
        out = np.empty_like(e)
        for a, b in zip(starts, np.append(starts[1:], e.size)):
            np.maximum.accumulate(e[a:b], out=out[a:b])
        return out
    import polars as pl

    return (pl.DataFrame({"g": np.cumsum(first), "e": e}).select(pl.col("e").cum_max().over("g"))
            .to_series().to_numpy())


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


def split_by_owner(starts, ends, owners, n_owners: int, cover: Intervals) -> tuple[np.ndarray, np.ndarray]:
    """Split communication time between owners, and into covered / uncovered parts.

    ``starts/ends/owners``: intervals, each belonging to an owner (e.g. a micro-batch).
    ``cover``: the compute busy set.  Each instant covered by k owners' intervals counts
    1/k for each of them (an owner's own overlapping intervals count once), so that the
    per-owner sums add up exactly to the device totals |C ∩ cover| and |C \\ cover|.
    Returns ``(covered, uncovered)`` arrays of length ``n_owners``.
    """
    s, e = _arrays(starts, ends)
    owners = np.asarray(owners, dtype=np.int64)
    covered = np.zeros(n_owners)
    uncovered = np.zeros(n_owners)
    if s.size == 0:
        return covered, uncovered
    # union per owner, so an owner never counts twice (all owners in one sort, no loop over them)
    keep = e > s
    s, e, owners = s[keep], e[keep], owners[keep]
    if s.size == 0:
        return covered, uncovered
    order = group_order(s, owners, n_owners)
    s, e, owners = s[order], e[order], owners[order]
    first = np.empty(s.size, dtype=bool)
    first[0] = True
    first[1:] = owners[1:] != owners[:-1]
    _, idx = sorted_group_runs(s, e, first)
    s, e, owners = s[idx], np.maximum.reduceat(e, idx), owners[idx]
    ks, ke = union(*cover)
    bounds = np.unique(np.concatenate([s, e, ks, ke]))
    # (bincount, not np.add.at: the same counts, ~20x faster on millions of intervals)
    delta = (np.bincount(np.searchsorted(bounds, s), minlength=bounds.size)
             - np.bincount(np.searchsorted(bounds, e), minlength=bounds.size))
    n = np.cumsum(delta)[:-1]
    length = np.diff(bounds)
    mid = (bounds[:-1] + bounds[1:]) / 2
    j = np.searchsorted(ks, mid, side="right") - 1
    in_k = (j >= 0) & (mid < ke[np.maximum(j, 0)]) if ks.size else np.zeros(mid.size, dtype=bool)
    share = np.where(n > 0, length / np.maximum(n, 1), 0.0)
    w_cov = np.concatenate([[0.0], np.cumsum(share * in_k)])
    w_unc = np.concatenate([[0.0], np.cumsum(share * ~in_k)])
    i0, i1 = np.searchsorted(bounds, s), np.searchsorted(bounds, e)
    covered += np.bincount(owners, weights=w_cov[i1] - w_cov[i0], minlength=n_owners)
    uncovered += np.bincount(owners, weights=w_unc[i1] - w_unc[i0], minlength=n_owners)
    return covered, uncovered


def intersection_with_sorted(a: Intervals, sorted_union: Intervals) -> float:
    """|A ∩ U| where U is already a disjoint sorted union: only the part of U near A is read."""
    sa, ea = union(*a)
    us, ue = sorted_union
    if sa.size == 0 or us.size == 0:
        return 0.0
    lo = np.searchsorted(ue, sa[0], side="right")
    hi = np.searchsorted(us, ea[-1], side="left")
    return intersection_measure((sa, ea), (us[lo:hi], ue[lo:hi]))


def measure_in_windows(sets: Intervals, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """|S ∩ [lo_i, hi_i)| for each window i, S disjoint and sorted (prefix sums over S:
    O((n + m) log n) for m windows, whatever they overlap)."""
    s, e = sets
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if len(s) == 0 or len(lo) == 0:
        return np.zeros(len(lo))
    cum = np.concatenate([[0.0], np.cumsum(e - s)])

    def covered_before(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(s, t, side="right")  # pieces starting at or before t
        j = np.maximum(i - 1, 0)
        part = np.where(i > 0, np.minimum(np.clip(t - s[j], 0, None), e[j] - s[j]), 0.0)
        return np.where(i > 0, cum[j] + part, 0.0)

    return np.maximum(covered_before(hi) - covered_before(lo), 0.0)


def join_close(s: np.ndarray, e: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Join the neighbours of a disjoint sorted set that are closer than ``gap``, for drawing:
    (start, end, pieces joined into each, covered length of each)."""
    if s.size == 0:
        return s, e, np.zeros(0, int), np.zeros(0)
    new = np.ones(s.size, dtype=bool)
    new[1:] = (s[1:] - e[:-1]) >= gap
    idx = np.flatnonzero(new)
    return s[idx], np.maximum.reduceat(e, idx), np.diff(np.append(idx, s.size)), np.add.reduceat(e - s, idx)


def coarsen(s: np.ndarray, e: np.ndarray, limit: int) -> Intervals:
    """At most ``limit`` pieces of a disjoint sorted set, for drawing: neighbours closer than a
    gap (doubling from span / limit until they fit) are joined.  Idempotent: a set already at
    most ``limit`` pieces long comes back unchanged."""
    if len(s) <= limit:
        return s, e
    gap = (e[-1] - s[0]) / limit
    while True:
        ns, ne, _, _ = join_close(s, e, gap)
        if len(ns) <= limit:
            return ns, ne
        gap *= 2
