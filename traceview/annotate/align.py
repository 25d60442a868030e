"""Several ranks on one clock, and the instances of each collective across them: read from
the run analysis (``traceview.run``), never measured again here.

``align`` is the one place the annotated trace asks for clock shifts and matched
collectives.  Shifts are the run's (``Matching.to_common``: baseTimeNanoseconds, then the
offset estimated from collective end times); waiting and transfer are the run's split (the
transfer lies at the end of each rank's kernel, so a kernel waits from its start for
``wait_us``).  Where the files cannot be compared as one run (the run analysis says why),
ranks are aligned by baseTimeNanoseconds alone and no collective is matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ..analysis import TraceAnalysis
from ..run import reduce_run


@dataclass
class Alignment:
    shift_us: dict[int, float]      # per rank: add to its ts to reach the common clock
    collectives: pl.DataFrame       # rank, row (kernel row of that rank), instance, arrival_us, wait_us, last_rank
    method: str

    def waits(self, rank: int) -> dict[int, float]:
        """Kernel row -> microseconds it waited for the last peer (matched kernels of ``rank``)."""
        c = self.collectives.filter(pl.col("rank") == rank) if self.collectives.height else self.collectives
        return dict(zip(c["row"].to_list(), c["wait_us"].to_list())) if c.height else {}


def align(analyses: dict[int, TraceAnalysis]) -> Alignment:
    run = reduce_run([s for a in analyses.values() for s in a.rank_summaries])
    m = run.matching
    if m is None or not run.cross_rank:
        bases = {r: a.trace.metadata.get("baseTimeNanoseconds") for r, a in analyses.items()}
        ok = all(isinstance(b, int) and not isinstance(b, bool) for b in bases.values())
        lo = min(bases.values()) if ok else 0
        shift = {r: ((b - lo) / 1000.0 if ok else 0.0) for r, b in bases.items()}
        how = "baseTimeNanoseconds" if ok else "the traces' own ts (a rank has no baseTimeNanoseconds)"
        return Alignment(shift, pl.DataFrame(), f"{how}; no collectives matched: {run.reason}")
    shift = {r: m.to_common(r) for r in analyses}
    inst = m.instances
    frames = []
    for r, a in analyses.items():
        mine = (a.kernels.filter(pl.col("role") == "comm")
                .select("row", pl.col("name").cast(pl.Utf8), pl.col("stream").cast(pl.Int64), "ts", "dur")
                .sort("ts"))
        theirs = (inst.filter(pl.col("rank") == r)
                  .select("instance", pl.col("name").cast(pl.Utf8), pl.col("stream").cast(pl.Int64), "dur", "arrival",
                          "wait_us", "last_rank",
                          (pl.col("arrival") - shift[r]).alias("ts"))
                  .sort("ts"))
        # the same kernel: same name, stream and duration, at its own time (to rounding)
        got = theirs.join_asof(mine, on="ts", by=["name", "stream", "dur"], strategy="nearest", tolerance=1e-3,
                              check_sortedness=False)
        frames.append(got.filter(pl.col("row").is_not_null()).select(
            pl.lit(r, dtype=pl.Int64).alias("rank"), "row", "instance", pl.col("arrival").alias("arrival_us"),
            "wait_us", "last_rank"))
    method = (f"run analysis: baseTimeNanoseconds, then collective end times "
              f"(end spread after alignment: median {m.end_spread_median_us or 0:.1f} µs)")
    return Alignment(shift, pl.concat(frames), method)
