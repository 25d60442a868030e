"""The vectorized interval algebra against the simple reference, on random and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from traceview.timeline import intervals as iv

# Integer-valued endpoints make touching and nesting common and keep sums exact.
point = st.integers(min_value=0, max_value=60)
interval = st.tuples(point, st.integers(min_value=0, max_value=20)).map(lambda t: (float(t[0]), float(t[0] + t[1])))
interval_sets = st.lists(interval, max_size=40)


def arr(xs):
    return np.array([s for s, _ in xs], dtype=float), np.array([e for _, e in xs], dtype=float)


@given(interval_sets)
def test_union_matches_reference(xs):
    s, e = iv.union(*arr(xs))
    assert [[a, b] for a, b in zip(s.tolist(), e.tolist())] == ref.merge(xs)


@settings(deadline=None)  # (polars starts its thread pool on the first call: no timing limit here)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=4), interval), max_size=60))
def test_measure_by_group_matches_the_reference_group_by_group(items):
    """The grouped union (one sort, a running maximum that restarts per group) equals the
    reference union of each group on its own, touching and nested intervals included."""
    g = np.array([k for k, _ in items], dtype=np.int64)
    s, e = arr([x for _, x in items])
    got = iv.measure_by_group(s, e, g, 6)
    want = [ref.length(ref.merge([x for k, x in items if k == group])) for group in range(6)]
    assert got.tolist() == want


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=4), interval), max_size=60), st.booleans(),
       st.booleans())
def test_grouped_unions_are_the_same_on_every_path(items, presorted, many_groups):
    """Events sorted by start (the radix-sort path) or not (lexsort), few groups (numpy's
    accumulate per group) or many (the polars window): the same measures, the reference's."""
    if presorted:
        items = sorted(items, key=lambda t: t[1][0])
    g = np.array([k for k, _ in items], dtype=np.int64)
    s, e = arr([x for _, x in items])
    want = [ref.length(ref.merge([x for k, x in items if k == group])) for group in range(6)]
    old = iv.ACCUMULATE_GROUPS
    iv.ACCUMULATE_GROUPS = 0 if many_groups else old
    try:
        got = iv.measure_by_group(s, e, g, 6)
        cov, unc = iv.split_by_owner(s, e, g, 6, iv.union(np.array([10.0, 40.0]), np.array([25.0, 50.0])))
    finally:
        iv.ACCUMULATE_GROUPS = old
    assert got.tolist() == want
    # each owner's covered + uncovered comm is its share of the union of all owners' comm
    assert float(cov.sum() + unc.sum()) == pytest.approx(ref.length(ref.merge([x for _, x in items])))


@given(interval_sets, interval_sets)
def test_intersection_and_difference_measures(a, b):
    assert iv.intersection_measure(arr(a), arr(b)) == pytest.approx(ref.length(ref.intersection(a, b)))
    assert iv.difference_measure(arr(a), arr(b)) == pytest.approx(ref.length(ref.difference(a, b)))


@given(interval_sets, interval_sets)
def test_intersect_and_subtract_sets(a, b):
    s, e = iv.intersect(arr(a), arr(b))
    assert ref.merge(list(zip(s.tolist(), e.tolist()))) == ref.intersection(a, b)
    s, e = iv.subtract(arr(a), arr(b))
    assert ref.merge(list(zip(s.tolist(), e.tolist()))) == ref.merge(ref.difference(a, b))


@settings(max_examples=200, deadline=None)  # (the first example imports traceview.metrics)
@given(st.lists(st.tuples(interval, st.sampled_from(["compute", "comm", "memory"]),
                          st.integers(min_value=0, max_value=5)), min_size=1, max_size=60))
def test_device_metrics_match_reference_on_many_streams(evs):
    """Random kernels on up to 6 streams: the per-GPU metrics equal the reference's."""
    import polars as pl

    from traceview.metrics import device_metrics

    df = pl.DataFrame({
        "device": [0] * len(evs),
        "stream": [st_ for _iv, _r, st_ in evs],
        "ts": [s for (s, _e), _r, _s in evs],
        "end": [e for (_s, e), _r, _s in evs],
        "dur": [e - s for (s, e), _r, _s in evs],
        "role": [r for _iv, r, _s in evs],
        "category": [r for _iv, r, _s in evs],
    })
    got = device_metrics(df, 0).to_dict()
    want = ref.gpu_metrics([(s, e, r) for (s, e), r, _s in evs])
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    # TraceLens-style identity: every instant of the span is counted exactly once
    assert got["compute_us"] + got["exposed_comm_us"] + got["exposed_memory_us"] + got["idle_us"] == pytest.approx(
        got["span_us"])


def test_edge_cases_by_hand():
    # nested, touching and zero-length intervals
    s, e = iv.union([0, 1, 5, 5, 10], [10, 2, 5, 7, 12])
    assert s.tolist() == [0.0] and e.tolist() == [12.0]
    assert iv.measure([0, 2], [2, 4]) == 4.0        # touching: no double count, no gap
    assert iv.measure([3], [3]) == 0.0              # zero-length contributes nothing
    assert iv.measure([], []) == 0.0
    assert iv.intersection_measure(([0.0], [10.0]), ([2.0, 4.0], [3.0, 6.0])) == 3.0
    assert iv.difference_measure(([0.0], [10.0]), ([2.0, 4.0], [3.0, 6.0])) == 7.0


@given(st.lists(st.tuples(interval, st.integers(min_value=0, max_value=2)), max_size=30))
def test_coverage_counts(items):
    s = [a for (a, _b), _l in items]
    e = [b for (_a, b), _l in items]
    lab = [lbl for _iv, lbl in items]
    seg_s, seg_e, counts = iv.coverage(s, e, lab, 3)
    for i in range(len(seg_s)):
        mid = (seg_s[i] + seg_e[i]) / 2
        for k in range(3):
            want = sum(1 for (a, b), lbl in items if lbl == k and a < mid < b)
            assert counts[i, k] == want
