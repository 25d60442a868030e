"""The terminal view of a ``RunAnalysis`` (per-rank table, straggler, what-if), read from the
run's summaries alone, so it works whichever engine ran the map step."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .text import clean, fmt_ms


def render_run(run, console: Console) -> None:
    ws = run.world_size if run.world_size is not None else "?"
    console.print(f"run: {run.ranks_loaded} of {ws} ranks loaded" + (" (partial)" if run.partial else ""))
    t = Table(title="per rank (ms per iteration)")
    cols = ("rank", "file", "iteration", "compute", "comm = wait + transfer", "exposed = wait + transfer", "idle",
            "arrived last")
    for c in cols:
        t.add_column(c, justify="left" if c == "file" else "right")
    if run.times:
        for r in run.times:
            per = r.per_iteration
            t.add_row(str(r.rank), clean(r.file), fmt_ms(r.iteration_us), fmt_ms(per(r.compute_us)),
                      f"{fmt_ms(per(r.comm_us))} = {fmt_ms(per(r.wait_us))} + {fmt_ms(per(r.transfer_us))}",
                      f"{fmt_ms(per(r.exposed_comm_us))} = {fmt_ms(per(r.exposed_wait_us))} + "
                      f"{fmt_ms(per(r.exposed_transfer_us))}", fmt_ms(per(r.idle_us)),
                      f"{r.arrived_last}/{r.collectives}")
    else:
        for r in run.ranks:
            n = r.iteration_count
            t.add_row("-" if r.rank is None else str(r.rank), clean(r.name), fmt_ms(r.gpu.span_us / n),
                      fmt_ms(r.gpu.compute_us / n), fmt_ms(r.gpu.comm_us / n), fmt_ms(r.gpu.exposed_comm_us / n),
                      fmt_ms(r.gpu.idle_us / n), "-")
    console.print(t)
    if run.reason:
        console.print(f"no cross-rank figures: {clean(run.reason)}")
    if run.straggler is not None:
        console.print(clean(run.straggler.verdict))
    if run.what_if is not None:
        w = run.what_if
        console.print(f"what-if: iteration {fmt_ms(w.iteration_us)} ms now; {fmt_ms(w.without_waiting_us)} ms without "
                      f"waiting; {fmt_ms(w.without_exposed_comm_us)} ms with the exposed communication hidden")
    for c in run.caveats:
        console.print(f"caveat: {clean(c)}")
    for e in run.errors:
        console.print(f"not analysed: {clean(str(e))}")
