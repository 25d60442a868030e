"""Collective instances across ranks: one clock, one row per (instance, rank), wait vs transfer.

Clocks.  Kineto writes ``ts`` relative to ``baseTimeNanoseconds``; the bases of two ranks can
differ, so each rank's times are first moved by its base difference to the lowest base.  Then
the residual offset of each rank to the reference rank (the lowest rank number) is estimated
as the median difference of matched collective *end* times - a collective ends nearly
together on every rank, whenever each rank joined it - and removed.  What remains of the
end-time spread is reported as a health figure: large values mean the clocks or the matching
are wrong.

Matching.  The n-th communication kernel of one category in the k-th iteration (iterations
counted in time order on each rank) is one collective instance on every rank.  Groups whose
kernel counts differ between ranks are not matched (and are reported).  c10d's
``Process Group Name``/``Seq`` are not used: DeepEP kernels and NCCL kernels issued under
dispatch/combine carry none, and the ordinal works for both.

Per instance (TraceLens's and the TensorBoard plugin's definitions):
  arrival_r  = start on rank r, on the common clock
  transfer   = min over ranks of the kernel's duration
  wait_r     = dur_r - transfer        (the transfer lies at the END of each rank's kernel)
  last       = the rank with the latest arrival
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .summary import RankSummary


@dataclass
class Matching:
    """The matched instances (long format) and how the clocks were aligned."""

    instances: pl.DataFrame              # one row per (instance, rank)
    offsets_us: dict[int, float]         # each rank's clock offset to the reference rank, from collective ends
    base_shift_us: dict[int, float]      # added to each rank's times for its baseTimeNanoseconds
    end_spread_median_us: float | None   # after alignment: median over instances of (max end - min end)
    end_spread_p95_us: float | None
    unmatched: list[str] = field(default_factory=list)  # groups left out, in words
    unmatched_kernels: dict[int, int] = field(default_factory=dict)

    def to_common(self, rank: int) -> float:
        """What to add to a rank's own times to put them on the run's clock."""
        return self.base_shift_us.get(rank, 0.0) - self.offsets_us.get(rank, 0.0)


def match(ranks: list[RankSummary]) -> Matching:
    """Match every rank's communication kernels into instances on one clock.

    Memory: the instance table has one row per (instance, rank) - 2.2 million rows for 300
    ranks of 7,500 collectives - so it is built lean: names stay categoricals, the per-instance
    figures are window expressions of one lazy query (no joins of the whole table), and the
    ranks' raw times are dropped once aligned."""
    bases = {r.rank: r.base_time_ns for r in ranks}
    if all(b is not None for b in bases.values()):
        lo = min(bases.values())
        base_shift = {r: (b - lo) / 1000.0 for r, b in bases.items()}
    else:
        base_shift = {r: 0.0 for r in bases}
    use_iterations = all(r.iterations.height > 0 for r in ranks)
    frames = []
    for r in ranks:
        c = r.comm.select(pl.col("idx", "it", "stream").cast(pl.Int64), "category", "name", "ts", "end", "dur",
                          "layer", "microbatch", "phase")
        if not use_iterations:
            c = c.with_columns(pl.lit(-1, dtype=pl.Int64).alias("it"))
        c = c.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("it", "category").alias("ordinal"),
                           pl.lit(r.rank, dtype=pl.Int64).alias("rank"),
                           (pl.col("ts") + base_shift[r.rank]).alias("ts"),
                           (pl.col("end") + base_shift[r.rank]).alias("end"))
        frames.append(c)
    allc = pl.concat(frames, rechunk=False)  # the ranks' frames as chunks: no second copy
    del frames
    n = len(ranks)
    counts = allc.group_by("it", "category", "rank").agg(pl.len().alias("k"))
    per_group = counts.group_by("it", "category").agg(pl.col("k").min().alias("kmin"), pl.col("k").max().alias("kmax"),
                                                      pl.len().alias("ranks"))
    bad = per_group.filter((pl.col("kmin") != pl.col("kmax")) | (pl.col("ranks") != n)).sort("it", "category")
    unmatched = []
    for it, cat, kmin, kmax, nr in bad.iter_rows():
        where = f"iteration {it + 1} " if it >= 0 else ""
        got = counts.filter((pl.col("it") == it) & (pl.col("category") == cat)).sort("rank")
        unmatched.append(f"{where}{cat}: " + ", ".join(f"rank {rk} {k}" for _, _, rk, k in got.iter_rows())
                         + (f" (on {nr} of {n} ranks)" if nr != n else ""))
    good = per_group.filter((pl.col("kmin") == pl.col("kmax")) & (pl.col("ranks") == n)).select("it", "category")
    unmatched_kernels = {int(r): int(k) for r, k in
                         allc.join(good, on=["it", "category"], how="anti").group_by("rank").len().iter_rows()}
    matched = allc.join(good, on=["it", "category"], how="semi") if bad.height else allc
    del allc
    ref = min(r.rank for r in ranks)
    key = ["it", "category", "ordinal"]
    if matched.height:
        refend = matched.filter(pl.col("rank") == ref).select(*key, pl.col("end").alias("_ref"))
        offs = (matched.lazy().select(*key, "rank", "end").join(refend.lazy(), on=key).group_by("rank")
                .agg((pl.col("end") - pl.col("_ref")).median().alias("off")).collect())
        residual = {int(r): float(o) for r, o in offs.iter_rows()}
    else:
        residual = {r.rank: 0.0 for r in ranks}
    offsets = {rk: residual.get(rk, 0.0) for rk in base_shift}
    # instance = the (it, category, ordinal) key's place in sorted order: every matched group has
    # the same count k on every rank, so it is the group's first instance + ordinal (no join)
    groups = (matched.filter(pl.col("rank") == ref).group_by("it", "category").agg(pl.len().alias("k"))
              .sort("it", "category").with_columns((pl.col("k").cum_sum() - pl.col("k")).alias("first")))
    code = pl.col("it") * (1 << 32) + pl.col("category").to_physical().cast(pl.Int64)
    first = dict(zip(groups.select(code.alias("c"))["c"].to_list(), groups["first"].to_list()))
    instance = matched.select((code.replace_strict(first, return_dtype=pl.Int64) + pl.col("ordinal")))
    instance = instance.to_series().to_numpy()
    ranks_in_order = np.sort(np.array([r.rank for r in ranks], dtype=np.int64))
    # into (instance, rank) order without a sort: row (instance i, j-th rank) goes to i * n + j;
    # one column at a time, each dropped from the rank-major table once moved (no second table)
    lane = np.searchsorted(ranks_in_order, matched["rank"].to_numpy())
    order = np.empty(len(instance), dtype=np.int64)
    order[instance * n + lane] = np.arange(len(instance))
    off = np.array([residual.get(int(rk), 0.0) for rk in ranks_in_order])[np.tile(np.arange(n), len(instance) // n)]
    del lane
    cols: dict[str, pl.Series] = {}
    for c in ("idx", "it", "stream", "category", "name", "dur", "layer", "microbatch", "phase", "ordinal", "rank"):
        cols[c] = matched[c].gather(order)
        matched = matched.drop(c)
    cols["instance"] = pl.Series("instance", instance[order])
    cols["arrival"] = pl.Series("arrival", matched["ts"].to_numpy()[order] - off)
    cols["end_aligned"] = pl.Series("end_aligned", matched["end"].to_numpy()[order] - off)
    del matched, order, off, instance
    matched = pl.DataFrame(cols)
    del cols
    # every matched instance has one row per rank, and the table is sorted by (instance, rank):
    # its per-instance figures are row reductions of (instances x ranks) arrays
    dur = matched["dur"].to_numpy().reshape(-1, n)
    arrival = matched["arrival"].to_numpy().reshape(-1, n)
    end_aligned = matched["end_aligned"].to_numpy().reshape(-1, n)
    transfer = dur.min(axis=1)
    start_spread = arrival.max(axis=1) - arrival.min(axis=1)
    end_spread = end_aligned.max(axis=1) - end_aligned.min(axis=1)
    ranks_in_order = np.sort(np.array([r.rank for r in ranks], dtype=np.int64))
    last = ranks_in_order[arrival.argmax(axis=1)] if len(arrival) else np.empty(0, np.int64)  # ties: the lowest rank
    # a rank "arrived last" only when the others really waited: the arrival spread exceeds the
    # clock noise (1 µs plus twice the instance's end-time spread); ties name nobody
    named = start_spread > 1.0 + 2 * end_spread
    rank = matched["rank"].to_numpy().reshape(-1, n)
    del dur, end_aligned
    matched = matched.with_columns(
        pl.Series("transfer_us", np.repeat(transfer, n)),
        pl.Series("end_spread_us", np.repeat(end_spread, n)),
        pl.Series("start_spread_us", np.repeat(start_spread, n)),
        pl.Series("last_rank", np.repeat(last, n)).set(pl.Series(np.repeat(~named, n)), None),
        pl.Series("arrived_last", ((rank == last[:, None]) & named[:, None]).ravel()),
        pl.Series("late_us", (arrival - _median_rows(arrival)[:, None]).ravel()),
    ).with_columns((pl.col("dur") - pl.col("transfer_us")).alias("wait_us")).rechunk()
    spread = end_spread
    return Matching(
        instances=matched, offsets_us=offsets, base_shift_us=base_shift,
        end_spread_median_us=float(np.median(spread)) if len(spread) else None,
        end_spread_p95_us=float(np.percentile(spread, 95)) if len(spread) else None,
        unmatched=unmatched, unmatched_kernels=unmatched_kernels)


def _median_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row, as polars computes it (the two middle values' midpoint ``lo + (hi - lo) / 2``)."""
    if a.shape[0] == 0:
        return np.empty(0)
    k = a.shape[1]
    part = np.sort(a, axis=1)
    if k % 2:
        return part[:, k // 2]
    lo, hi = part[:, k // 2 - 1], part[:, k // 2]
    return lo + (hi - lo) / 2
