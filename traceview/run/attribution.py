"""Who made whom wait, and why: per-rank wait/transfer, the straggler and its cause, imbalance, what-if.

All of it reads ``RankSummary`` objects and the matched instances only (no event tables).

Per rank (docs/metrics.md, "Runs"):
  transfer_us          |union of the transfer windows [end - transfer, end] of its matched
                       kernels, and of its unmatched comm kernels whole| (an instant is transfer
                       when any communication kernel on the GPU is transferring)
  wait_us              comm_us - transfer_us
  exposed_transfer_us  |transfer windows ∩ exposed communication|
  exposed_wait_us      exposed_comm_us - exposed_transfer_us
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from ..timeline import intervals as iv
from .summary import EXPERT_CATEGORY, RankSummary


@dataclass
class RankTimes:
    """The run view of one rank (µs; per-iteration figures divide by its iteration count)."""

    rank: int
    file: str
    iterations: int
    iteration_us: float
    compute_us: float
    comm_us: float
    wait_us: float
    transfer_us: float
    exposed_comm_us: float
    exposed_wait_us: float
    exposed_transfer_us: float
    idle_us: float
    idle_no_queue_us: float
    arrived_last: int
    collectives: int
    others_waited_us: float      # what the other ranks waited at instances where this rank came last

    def per_iteration(self, value: float) -> float:
        return value / max(1, self.iterations)

    def to_dict(self) -> dict:
        return asdict(self)


def rank_times(ranks: list[RankSummary], inst: pl.DataFrame) -> list[RankTimes]:
    """Per rank: comm = wait + transfer, exposed = exposed wait + exposed transfer."""
    out = []
    waited_for = _others_waited(inst)
    for r in ranks:
        mine = inst.filter(pl.col("rank") == r.rank) if inst.height else inst
        matched_idx = set(mine["idx"].to_list()) if mine.height else set()
        c = r.comm_table()
        unmatched = c.filter(~pl.col("idx").is_in(list(matched_idx))) if matched_idx else c
        # transfer windows on the rank's own clock (the instances' end is the rank's own end)
        if mine.height:
            m = mine.join(c.select("idx", pl.col("end").alias("own_end")), on="idx")
            ws, we = (m["own_end"] - m["transfer_us"]).to_numpy(), m["own_end"].to_numpy()
        else:
            ws, we = np.empty(0), np.empty(0)
        win = iv.union(np.concatenate([ws, unmatched["ts"].to_numpy()]), np.concatenate([we, unmatched["end"].to_numpy()]))
        transfer = iv.measure(*win)
        exposed_transfer = iv.intersection_measure(win, (r.exposed_start, r.exposed_end))
        g = r.gpu
        n_it = r.iterations.height
        it_us = (float((r.iterations["end"] - r.iterations["start"]).mean()) if n_it else g.span_us)
        out.append(RankTimes(
            rank=int(r.rank), file=r.name, iterations=max(1, n_it), iteration_us=it_us,
            compute_us=g.compute_us, comm_us=g.comm_us,
            wait_us=max(0.0, g.comm_us - transfer), transfer_us=min(transfer, g.comm_us),
            exposed_comm_us=g.exposed_comm_us,
            exposed_wait_us=max(0.0, g.exposed_comm_us - exposed_transfer),
            exposed_transfer_us=min(exposed_transfer, g.exposed_comm_us),
            idle_us=g.idle_us,
            idle_no_queue_us=float(r.iterations["idle_no_queue_us"].sum()) if n_it else float("nan"),
            arrived_last=int(mine["arrived_last"].sum()) if mine.height else 0,
            collectives=mine.height,
            others_waited_us=waited_for.get(int(r.rank), 0.0),
        ))
    return out


def _others_waited(inst: pl.DataFrame) -> dict[int, float]:
    """Per rank: the others' waiting summed over the instances where it arrived last."""
    if inst.height == 0:
        return {}
    w = (inst.filter(pl.col("last_rank").is_not_null() & (pl.col("rank") != pl.col("last_rank"))).group_by("last_rank")
         .agg(pl.col("wait_us").sum()))
    return {int(r): float(v) for r, v in w.iter_rows()}


@dataclass
class Cause:
    """Why the straggler arrived late: the largest excess over the median rank in its windows."""

    kind: str                 # expert_imbalance | compute | host_bound | exposed_comm | unknown
    text: str
    excess_us_per_iteration: dict[str, float] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)


@dataclass
class Straggler:
    rank: int | None
    arrived_last: int
    collectives: int
    others_waited_us_per_iteration: float
    late_us_per_iteration: float
    share_of_waiting: float
    cause: Cause | None
    verdict: str
    #: per layer (label): how late the straggler arrived, µs per iteration
    late_by_layer: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


#: below this share of the iteration, waiting is not worth a straggler verdict
IN_STEP_SHARE = 0.01
#: a straggler is named only when it causes at least this share of all waiting
STRAGGLER_SHARE = 0.5


def find_straggler(ranks: list[RankSummary], times: list[RankTimes], inst: pl.DataFrame,
                   iteration_us: float) -> Straggler:
    """The rank the others waited for most, with the evidence and its cause."""
    n_it = max(1, min(t.iterations for t in times))
    n_inst = inst["instance"].n_unique() if inst.height else 0
    total_wait = float(inst["wait_us"].sum()) if inst.height else 0.0
    if n_inst == 0:
        return Straggler(None, 0, 0, 0.0, 0.0, 0.0, None, "no collective matched across ranks: no straggler analysis")
    s = max(times, key=lambda t: (t.others_waited_us, -t.rank))
    share = s.others_waited_us / total_wait if total_wait > 0 else 0.0
    waited_per_it = s.others_waited_us / n_it
    late = inst.filter((pl.col("rank") == s.rank) & pl.col("arrived_last"))
    late_per_it = float(late["late_us"].clip(lower_bound=0).sum()) / n_it
    by_layer = (late.group_by("layer").agg((pl.col("late_us").clip(lower_bound=0).sum() / n_it).alias("v"))
                .sort("v", descending=True))
    late_by_layer = {str(k): float(v) for k, v in by_layer.iter_rows() if v > 0}
    head = f"rank {s.rank}"
    counts = f"last at {s.arrived_last}/{n_inst} collectives"
    if total_wait / n_it < IN_STEP_SHARE * iteration_us:
        return Straggler(None, s.arrived_last, n_inst, waited_per_it, late_per_it, share, None,
                         f"no straggler: the ranks arrive together (waiting {total_wait / n_it / 1000:.3f} ms per "
                         f"iteration summed over ranks, under {IN_STEP_SHARE:.0%} of the iteration)", late_by_layer)
    cause = _cause(s.rank, ranks, inst, n_it)
    if share < STRAGGLER_SHARE:
        return Straggler(None, s.arrived_last, n_inst, waited_per_it, late_per_it, share, cause,
                         f"no single straggler: {head} causes the most waiting ({share:.0%} of it; {counts}); "
                         f"the others waited {waited_per_it / 1000:.3f} ms per iteration for it", late_by_layer)
    verdict = (f"{head} is the straggler: {counts}; the other ranks waited {waited_per_it / 1000:.3f} ms per "
               f"iteration for it; {cause.text}")
    return Straggler(s.rank, s.arrived_last, n_inst, waited_per_it, late_per_it, share, cause, verdict, late_by_layer)


def _cause(rank: int, ranks: list[RankSummary], inst: pl.DataFrame, n_it: int) -> Cause:
    """Compare the late rank's windows before its late arrivals with the median rank's windows
    before the same instances: the largest excess names the cause."""
    late_inst = inst.filter((pl.col("rank") == rank) & pl.col("arrived_last"))["instance"]
    rows = inst.filter(pl.col("instance").is_in(late_inst.implode()))
    by_rank = {r.rank: r for r in ranks}
    frames = []
    for rk, r in by_rank.items():
        mine = rows.filter(pl.col("rank") == rk).select("instance", "idx", "layer")
        if mine.height == 0:
            continue
        w = mine.join(r.comm_table().select("idx", "win_idle_no_queue_us", "win_idle_us", "win_exposed_comm_us",
                                            "win_launch_gap_us", "win_launch_gap_layer"), on="idx")
        wc = (mine.join(r.window_compute_table(), on="idx").group_by("instance", "category").agg(pl.col("time_us").sum())
              .pivot(on="category", index="instance", values="time_us"))
        w = w.join(wc, on="instance", how="left").with_columns(pl.lit(rk, dtype=pl.Int64).alias("rank"))
        frames.append(w)
    if not frames:
        return Cause("unknown", "no window evidence for its late arrivals")
    allw = pl.concat(frames, how="diagonal_relaxed")
    allw = allw.with_columns([pl.col(c).fill_null(0.0) for c in allw.columns if allw[c].dtype.is_float()])
    metrics = [c for c in allw.columns if c not in ("instance", "idx", "layer", "rank", "win_launch_gap_layer")]
    mine = allw.filter(pl.col("rank") == rank).sort("instance")
    others = allw.filter(pl.col("rank") != rank).group_by("instance").agg(
        [pl.col(m).median() for m in metrics]).sort("instance")
    joined = mine.join(others, on="instance", suffix="_med")
    excess = {m: float((joined[m] - joined[f"{m}_med"]).sum()) / n_it for m in metrics}
    # queued-but-idle is idle minus idle with no kernel queued
    excess_idle_queued = excess.pop("win_idle_us", 0.0) - excess.get("win_idle_no_queue_us", 0.0)
    launch_gap = excess.pop("win_launch_gap_us", 0.0)
    compute = {m: excess[m] for m in sorted(excess) if not m.startswith("win_")}  # a stable order in every output
    candidates = {"host_bound": excess.get("win_idle_no_queue_us", 0.0),
                  "exposed_comm": excess.get("win_exposed_comm_us", 0.0),
                  "idle_queued": excess_idle_queued}
    top_cat = max(compute, key=compute.get) if compute else None
    if top_cat is not None:
        candidates["compute"] = compute[top_cat]
    kind = max(candidates, key=candidates.get)
    value = candidates[kind]
    detail = {"idle with no kernel queued": excess.get("win_idle_no_queue_us", 0.0),
              "idle with kernels queued": excess_idle_queued,
              "own exposed communication": excess.get("win_exposed_comm_us", 0.0),
              **{f"compute {c}": v for c, v in compute.items()}}
    if value <= 0:
        return Cause("unknown", "before its late arrivals it did no more work and idled no longer than the median "
                     "rank (its lateness comes from earlier)", detail)
    ms = value / 1000
    if kind == "compute" and top_cat == EXPERT_CATEGORY:
        layers = _expert_layers(rank, rows, allw)
        where = f" in layer(s) {', '.join(layers)}" if layers else ""
        return Cause("expert_imbalance", f"before its late arrivals its expert GEMMs ({EXPERT_CATEGORY}) ran "
                     f"{ms:.3f} ms/iter longer than the median rank's{where} (expert load imbalance)", detail, layers)
    if kind == "compute":
        return Cause("compute", f"before its late arrivals its {top_cat} kernels ran {ms:.3f} ms/iter longer than "
                     "the median rank's", detail)
    if kind == "host_bound":
        layers = _gap_layers(rank, joined)
        where = f" before layer(s) {', '.join(layers)}" if layers else ""
        gap = (f"; its host paused {launch_gap / 1000:.3f} ms/iter longer between kernel launches{where}"
               if launch_gap > 0 else "")
        detail["launch gap"] = launch_gap
        return Cause("host_bound", f"before its late arrivals its GPU was idle {ms:.3f} ms/iter longer than the "
                     f"median rank's with no kernel queued (host-bound: launch gaps{gap})", detail, layers)
    if kind == "idle_queued":
        return Cause("idle_queued", f"before its late arrivals its GPU was idle {ms:.3f} ms/iter longer than the "
                     "median rank's with kernels queued (waiting on events or other streams)", detail)
    return Cause("exposed_comm", f"before its late arrivals its own exposed communication was {ms:.3f} ms/iter "
                 "longer than the median rank's", detail)


def _gap_layers(rank: int, joined: pl.DataFrame) -> list[str]:
    """The layers launched right after the late rank's excess launch gaps (most of the excess)."""
    ex = (joined.with_columns((pl.col("win_launch_gap_us") - pl.col("win_launch_gap_us_med")).alias("x"))
          .filter((pl.col("x") > 0) & pl.col("win_launch_gap_layer").is_not_null())
          .group_by("win_launch_gap_layer").agg(pl.col("x").sum()).sort("x", descending=True))
    return _most_of(ex)


def _most_of(ex: pl.DataFrame, share: float = 0.8) -> list[str]:
    """(layer, excess) rows sorted by excess, largest first -> the layers holding ``share`` of it."""
    total = float(ex[:, 1].sum()) if ex.height else 0.0
    out, acc = [], 0.0
    for layer, x in ex.iter_rows():
        out.append(str(layer))
        acc += x
        if acc >= share * total:
            break
    return out


def _expert_layers(rank: int, rows: pl.DataFrame, allw: pl.DataFrame) -> list[str]:
    if EXPERT_CATEGORY not in allw.columns:
        return []
    mine = allw.filter(pl.col("rank") == rank).select("instance", "layer", pl.col(EXPERT_CATEGORY).alias("me"))
    med = allw.filter(pl.col("rank") != rank).group_by("instance").agg(pl.col(EXPERT_CATEGORY).median().alias("med"))
    ex = (mine.join(med, on="instance").group_by("layer").agg((pl.col("me") - pl.col("med")).sum().alias("x"))
          .filter(pl.col("x") > 0).sort("x", descending=True))
    return _most_of(ex)


def expert_imbalance(ranks: list[RankSummary], inst: pl.DataFrame) -> pl.DataFrame:
    """Per (iteration, layer, micro-batch): expert GEMM time per rank, max/mean, the slowest
    rank, and the combine waiting on the other ranks in that layer."""
    frames = [r.layers_table().with_columns(pl.lit(r.rank, dtype=pl.Int64).alias("rank")) for r in ranks if r.layers.height]
    if not frames:
        return pl.DataFrame()
    lay = pl.concat(frames, how="diagonal_relaxed").filter(pl.col("expert_kernels") > 0)
    if lay.height == 0:
        return pl.DataFrame()
    agg = (lay.group_by("it", "layer", "microbatch")
           .agg(pl.col("expert_us").max().alias("max_expert_us"), pl.col("expert_us").mean().alias("mean_expert_us"),
                pl.col("rank").sort_by("expert_us").last().alias("slowest_rank"), pl.len().alias("ranks"))
           .with_columns((pl.col("max_expert_us") / pl.col("mean_expert_us")).alias("max_over_mean")))
    if inst.height:
        comb = (inst.filter((pl.col("category") == "moe.combine") & (pl.col("rank") != pl.col("last_rank")))
                .group_by("it", "layer", "microbatch").agg(pl.col("wait_us").sum().alias("combine_wait_others_us"))
                .with_columns(pl.col("layer", "microbatch").cast(pl.Utf8)))
        agg = agg.join(comb, on=["it", "layer", "microbatch"], how="left").with_columns(
            pl.col("combine_wait_others_us").fill_null(0.0))
    return agg.sort("it", pl.col("layer").cast(pl.Int64, strict=False), "layer", "microbatch")


@dataclass
class WhatIf:
    """Iteration time now and under two stated hypotheses (no simulation beyond them)."""

    iteration_us: float             # max over ranks of the mean iteration duration
    without_waiting_us: float       # max over ranks of (iteration - exposed waiting per iteration)
    without_exposed_comm_us: float  # max over ranks of (iteration - exposed communication per iteration)

    def to_dict(self) -> dict:
        return asdict(self)


def what_if(times: list[RankTimes]) -> WhatIf:
    return WhatIf(
        iteration_us=max(t.iteration_us for t in times),
        without_waiting_us=max(t.iteration_us - t.per_iteration(t.exposed_wait_us) for t in times),
        without_exposed_comm_us=max(t.iteration_us - t.per_iteration(t.exposed_comm_us) for t in times),
    )
