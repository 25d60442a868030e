"""A run: the set of ranks of one job, and what their traces say together.

``analyze_run(paths)`` maps every rank file to ``RankSummary`` objects (``summary.py``, in
worker processes with ``jobs > 1``) and reduces them here: ranks checked (one file per rank,
one run), collectives matched on one clock (``collectives.py``), waiting split from transfer,
the straggler and its cause, expert imbalance and the what-if (``attribution.py``).  The CLI,
JSON, HTML, gate and diff read the ``RunAnalysis``; nothing here reads an event table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import polars as pl

from ..errors import TraceError
from .attribution import RankTimes, Straggler, WhatIf, expert_imbalance, find_straggler, rank_times, what_if
from .collectives import Matching, match
from .summary import RankSummary

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class RunAnalysis:
    """The cross-rank view of a set of rank traces.

    ``cross_rank`` is False (with ``reason``) when the files cannot be compared as one run:
    then only the per-rank GPU figures are meaningful, and no wait, skew or straggler is given.
    """

    ranks: list[RankSummary]
    errors: list[TraceError] = field(default_factory=list)
    world_size: int | None = None
    cross_rank: bool = False
    reason: str | None = None
    matching: Matching | None = None
    times: list[RankTimes] = field(default_factory=list)
    straggler: Straggler | None = None
    what_if: WhatIf | None = None
    imbalance: pl.DataFrame = field(default_factory=pl.DataFrame)
    caveats: list[str] = field(default_factory=list)

    @property
    def ranks_loaded(self) -> int:
        return len({r.rank for r in self.ranks if r.rank is not None})

    @property
    def partial(self) -> bool:
        """Fewer ranks loaded than the world size the headers give (or a rank failed to load)."""
        return bool(self.errors) or (self.world_size is not None and self.ranks_loaded < self.world_size)

    @property
    def partial_note(self) -> str:
        if not self.partial:
            return ""
        ws = self.world_size if self.world_size is not None else "?"
        return f"partial run: {self.ranks_loaded} of {ws} ranks loaded"

    @property
    def collectives(self) -> pl.DataFrame:
        """One row per (collective instance, rank): arrival, end, duration, transfer, wait, late."""
        if self.matching is None:
            return pl.DataFrame()
        return self.matching.instances.select(
            "instance", pl.col("it").alias("iteration"), "category", "ordinal", "rank", "name", "stream", "layer",
            "microbatch", "phase", pl.col("arrival").alias("arrival_us"), pl.col("end_aligned").alias("end_us"),
            pl.col("dur").alias("dur_us"), "transfer_us", "wait_us", "late_us", "arrived_last", "last_rank",
            "start_spread_us", "end_spread_us")

    def ranks_table(self) -> pl.DataFrame:
        """One row per rank: iteration, compute, comm = wait + transfer, exposed = wait + transfer, idle."""
        if self.times:
            rows = [t.to_dict() for t in self.times]
        else:
            rows = [{"rank": r.rank, "file": r.name, "iterations": r.iteration_count,
                     "iteration_us": (float((r.iterations["end"] - r.iterations["start"]).mean())
                                      if r.iterations.height else r.gpu.span_us),
                     "compute_us": r.gpu.compute_us, "comm_us": r.gpu.comm_us, "exposed_comm_us": r.gpu.exposed_comm_us,
                     "idle_us": r.gpu.idle_us} for r in self.ranks]
        return pl.DataFrame(rows)

    def skew_table(self) -> pl.DataFrame:
        """Per collective category: instances, mean/max arrival spread, and per rank the
        waiting (µs, and as a share of that rank's time in those kernels)."""
        c = self.collectives
        if c.height == 0:
            return pl.DataFrame()
        per = c.group_by("category", "instance").agg(pl.col("start_spread_us").first())
        skew = per.group_by("category").agg(pl.len().alias("collectives"),
                                            pl.col("start_spread_us").mean().alias("mean_skew_us"),
                                            pl.col("start_spread_us").max().alias("max_skew_us"))
        wait = (c.group_by("category", "rank").agg(pl.col("wait_us").sum(), pl.col("dur_us").sum().alias("time_us"))
                .with_columns((pl.col("wait_us") / pl.col("time_us")).alias("wait_share")))
        wide = wait.pivot(on="rank", index="category", values=["wait_us", "wait_share"])
        ranks = sorted(c["rank"].unique().to_list())
        cols = [f"{m}_{r}" for m in ("wait_us", "wait_share") for r in ranks if f"{m}_{r}" in wide.columns]
        return skew.join(wide.select("category", *cols), on="category", how="left").sort("category")

    def transfer_by_category(self, rank: int | None) -> dict[str, float] | None:
        """A rank's transfer time per communication category (µs, Σ of its matched instances'
        transfer): what the budget reconciles communication against, waiting left out."""
        c = self.collectives
        if rank is None or c.height == 0 or not self.cross_rank:
            return None
        mine = c.filter(pl.col("rank") == rank)
        return {str(k): float(v) for k, v in mine.group_by("category").agg(pl.col("transfer_us").sum()).iter_rows()}

    def by_rank_layer(self) -> pl.DataFrame:
        """Rank x layer, per iteration (µs): exposed communication and waiting in that layer."""
        frames = [r.layers_table().with_columns(pl.lit(r.rank, dtype=pl.Int64).alias("rank"),
                                        pl.lit(r.iteration_count, dtype=pl.Int64).alias("_n"))
                  for r in self.ranks if r.layers.height and r.rank is not None]
        if not frames:
            return pl.DataFrame()
        lay = (pl.concat(frames, how="diagonal_relaxed").group_by("rank", "layer")
               .agg((pl.col("exposed_comm_us").sum() / pl.col("_n").first()).alias("exposed_comm_us_per_iteration"),
                    (pl.col("expert_us").sum() / pl.col("_n").first()).alias("expert_us_per_iteration")))
        c = self.collectives
        if c.height:
            n_it = {t.rank: t.iterations for t in self.times}
            w = (c.group_by("rank", "layer").agg(pl.col("wait_us").sum()).with_columns(pl.col("layer").cast(pl.Utf8))
                 .with_columns((pl.col("wait_us") / pl.col("rank").replace_strict(n_it, default=1))
                               .alias("wait_us_per_iteration")).drop("wait_us"))
            lay = lay.join(w, on=["rank", "layer"], how="full", coalesce=True).with_columns(
                pl.col("wait_us_per_iteration").fill_null(0.0), pl.col("exposed_comm_us_per_iteration").fill_null(0.0))
        return lay.sort("rank", pl.col("layer").cast(pl.Int64, strict=False), "layer", nulls_last=True)

    def layers(self) -> list[str]:
        """The layer labels of ``by_rank_layer()`` in model order (numbers as numbers, '(none)' last)."""
        t = self.by_rank_layer()
        labels = t["layer"].unique().to_list() if t.height else []
        return sorted(labels, key=lambda x: (x == "(none)", int(x) if x.isdigit() else 1 << 30, x))

    def to_pandas(self):
        """The per-rank and per-collective tables as pandas DataFrames (needs pandas + pyarrow)."""
        return self.ranks_table().to_pandas(), self.collectives.to_pandas()

    def to_dict(self) -> dict[str, Any]:
        m = self.matching
        return {
            "world_size": self.world_size,
            "ranks_loaded": self.ranks_loaded,
            "partial": self.partial,
            "cross_rank": self.cross_rank,
            "reason": self.reason,
            "caveats": list(self.caveats),
            "clock_offsets_us": {str(k): v for k, v in (m.offsets_us.items() if m else [])},
            "base_time_shift_us": {str(k): v for k, v in (m.base_shift_us.items() if m else [])},
            "end_spread_us": ({"median": m.end_spread_median_us, "p95": m.end_spread_p95_us} if m else None),
            "ranks": [_rank_json(t) for t in self.times] if self.times else self.ranks_table().to_dicts(),
            "collectives": {"instances": (self.collectives["instance"].n_unique() if m else 0),
                            "unmatched": list(m.unmatched) if m else []},
            "straggler": _straggler_json(self.straggler),
            "what_if": self.what_if.to_dict() if self.what_if else None,
            "imbalance": self.imbalance.to_dicts() if self.imbalance.height else [],
            "errors": [str(e) for e in self.errors],
        }


def _rank_json(t: RankTimes) -> dict:
    d = t.to_dict()
    for k in ("wait_us", "transfer_us", "exposed_wait_us", "exposed_transfer_us", "exposed_comm_us", "idle_no_queue_us",
              "others_waited_us"):
        d[f"{k[:-3]}_us_per_iteration"] = t.per_iteration(d[k])
    return d


def _straggler_json(s: Straggler | None) -> dict | None:
    if s is None:
        return None
    return {"rank": s.rank, "arrived_last": s.arrived_last, "collectives": s.collectives,
            "others_waited_us_per_iteration": s.others_waited_us_per_iteration,
            "late_us_per_iteration": s.late_us_per_iteration, "share_of_waiting": s.share_of_waiting,
            "late_us_per_iteration_by_layer": s.late_by_layer,
            "cause": None if s.cause is None else {"kind": s.cause.kind, "text": s.cause.text,
                                                    "excess_us_per_iteration": s.cause.excess_us_per_iteration,
                                                    "layers": s.cause.layers},
            "verdict": s.verdict}


def reduce_run(summaries: Iterable[RankSummary], errors: Iterable[TraceError] = ()) -> RunAnalysis:
    """The reduce step: cross-rank analysis on summaries alone."""
    ranks = sorted(summaries, key=lambda r: (r.rank is None, r.rank if r.rank is not None else 0, r.file))
    run = RunAnalysis(ranks=ranks, errors=list(errors))
    sizes = {r.world_size for r in ranks if r.world_size is not None}
    run.world_size = max(sizes) if sizes else None
    reason = _not_one_run(ranks, sizes)
    if reason:
        run.reason = reason
        return run
    m = match(ranks)
    run.matching = m
    cut = [f"rank {r.rank}" for r in ranks if any("truncated" in w or "cut short" in w for w in r.warnings)]
    cut_note = f"; {', '.join(cut)}: trace cut short" if cut else ""
    if m.instances.height == 0:
        run.reason = ("no collective matched across ranks" + (f" ({'; '.join(m.unmatched[:3])})" if m.unmatched else "")
                      + cut_note)
        return run
    iter_us = sorted(float((r.iterations["end"] - r.iterations["start"]).median()) if r.iterations.height
                     else r.gpu.span_us for r in ranks)[len(ranks) // 2]
    worst = max(m.offsets_us.items(), key=lambda kv: abs(kv[1]))
    residual = abs(worst[1])
    if residual > iter_us:
        run.reason = (f"rank {worst[0]}'s clock would be {residual / 1000:.1f} ms off, more than an iteration "
                      f"({iter_us / 1000:.1f} ms): traces of different runs? (no cross-rank numbers)")
        return run
    groups = m.instances.select("it", "category").unique().height
    if m.unmatched and len(m.unmatched) > groups:
        run.reason = ("the ranks' collectives do not line up (" + "; ".join(m.unmatched[:4])
                      + (" ..." if len(m.unmatched) > 4 else "") + "): traces of different runs, or cut short?"
                      + cut_note)
        return run
    run.cross_rank = True
    if m.unmatched:
        run.caveats.append(f"{len(m.unmatched)} collective group(s) not matched (kernel counts differ): "
                           + "; ".join(m.unmatched[:4]) + (" ..." if len(m.unmatched) > 4 else "")
                           + "; their kernels count as transfer" + cut_note)
    if m.end_spread_median_us is not None and m.end_spread_median_us > 0.05 * iter_us:
        run.caveats.append(f"collective end times still spread {m.end_spread_median_us / 1000:.3f} ms (median) after "
                           "clock alignment: the wait/transfer split is unreliable")
    run.times = rank_times(ranks, m.instances)
    run.what_if = what_if(run.times)
    run.straggler = find_straggler(ranks, run.times, m.instances, run.what_if.iteration_us)
    run.imbalance = expert_imbalance(ranks, m.instances)
    if run.partial:
        run.caveats.insert(0, run.partial_note + ": every cross-rank figure is among the loaded ranks only")
    return run


def _not_one_run(ranks: list[RankSummary], sizes: set[int]) -> str | None:
    """Why these summaries cannot be one run, or None."""
    if len(ranks) < 2:
        return "one rank: nothing to compare"
    multi = [r.name for r in ranks if r.gpus_in_file > 1]
    if multi:
        return f"{multi[0]} holds {ranks[0].gpus_in_file if ranks[0].gpus_in_file > 1 else 'several'} GPUs in one " \
               "file: a run pairs one GPU per rank file"
    norank = [r.name for r in ranks if r.rank is None]
    if norank:
        return f"no rank in the header or the file name of {', '.join(norank[:3])}"
    by_rank: dict[int, list[str]] = {}
    for r in ranks:
        by_rank.setdefault(r.rank, []).append(r.name)
    dup = {k: v for k, v in by_rank.items() if len(v) > 1}
    if dup:
        return "two files claim one rank (" + "; ".join(f"rank {k}: {', '.join(v)}" for k, v in sorted(dup.items())) + ")"
    if len(sizes) > 1:
        return f"the headers give different world sizes ({', '.join(map(str, sorted(sizes)))}): traces of different runs"
    return None


def summarize_file(path: Path, rules_file: str | None = None, max_bytes: int | None = None,
                   patterns=None, workers: int | None = None) -> list[RankSummary] | TraceError | None:
    """The map step: one rank file -> its summaries (or its error).  Runs anywhere (a worker
    process, a cluster task): takes a path, returns small picklable objects."""
    from ..analysis import _analyze_one
    from ..load import DEFAULT_MAX_BYTES

    a = _analyze_one((path, rules_file, max_bytes or DEFAULT_MAX_BYTES, patterns, workers, True), summarize=True)
    if a is None or isinstance(a, TraceError):
        return a
    return a.rank_summaries


def analyze_run(paths: str | os.PathLike | Iterable[str | os.PathLike], rules_file: str | None = None,
                jobs: int = 1, engine: "str | Engine" = "local", patterns=None,
                progress: Callable[[Path, int, int], None] | None = None, address: str | None = None,
                max_bytes: int | None = None) -> RunAnalysis:
    """Analyze a run: a directory of per-rank traces, or the rank files themselves.

    ``engine`` says where the map step runs: ``"local"`` (``jobs`` processes here), ``"ray"``
    (tasks on the Ray cluster at ``address``, default ``"auto"``; files read on the node that
    has them), or an ``Engine`` object (``engine.py``).  The reduce is the same for all.
    """
    from .engine import RankTask, make_engine, map_run

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    eng = make_engine(engine, jobs, address)
    rules_text = Path(rules_file).read_text() if rules_file and eng.name != "local" else None
    summaries, errors = map_run(eng, paths, RankTask(rules_file, max_bytes, patterns, None, rules_text), progress)
    return reduce_run(summaries, errors)


def run_from_analyses(results) -> RunAnalysis:
    """The run of already-analysed files (``TraceAnalysis`` with summaries, or ``TraceError``)."""
    errors = [r for r in results if isinstance(r, TraceError)]
    summaries = [s for r in results if not isinstance(r, TraceError) for s in r.rank_summaries]
    return reduce_run(summaries, errors)
