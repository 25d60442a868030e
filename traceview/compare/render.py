"""Terminal view of a diff (rich tables; every trace-supplied string goes through ``clean``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..report.text import clean, gpu_cell, short_kernel_name
from ..report.text import fmt_ms as _ms
from .diff import TOTAL_LABELS, DiffResult, GpuDiff


def _d(us: float) -> Text:
    s = f"{us / 1000:+.3f}"
    return Text(s, style="red" if us > 0 else "green" if us < 0 else "")


def _pct(new: float | None, base: float | None) -> str:
    if new is None or base is None:
        return "-"
    if base == 0:
        return "new" if new else "-"
    return f"{100 * (new - base) / base:+.1f}%"


def _count(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x else "0"


#: with more GPU pairs than this, the details follow for the pairs that changed most only
DETAIL_PAIRS = 3


def render_diff(result: DiffResult, console: Console, top: int = 10, kernels: bool = False,
                pairs: int | None = None) -> None:
    """The summary across ranks first (one row per GPU), then the details of the pairs that
    changed most (``pairs``: how many; 0 = all; default: all up to DETAIL_PAIRS pairs)."""
    if not result.pairs:
        console.print(Text("no GPUs to compare"))
    for w in result.warnings:
        console.print(Text(f"warning: {clean(w)}", style="yellow"))
    if len(result.pairs) > 1:
        _summary(result, console)
    n = pairs if pairs is not None else (0 if len(result.pairs) <= DETAIL_PAIRS else DETAIL_PAIRS)
    shown = result.biggest(n)
    if len(shown) < len(result.pairs):
        console.print(Text(f"details for the {len(shown)} of {len(result.pairs)} GPUs whose iteration time changed "
                           "most (--pairs 0 for all; --format json has every pair)", style="dim"))
    for d in shown:
        _pair(d, console, top, kernels)
    for u in result.unmatched:
        console.print(Text(f"not compared: {clean(u)}", style="yellow"))


def _summary(result: DiffResult, console: Console) -> None:
    t = Table(title="per rank, ms per iteration", title_justify="left", header_style="bold")
    for c in ("rank", "gpu", "iteration base", "iteration new", "delta", "change", "exposed comm base",
              "exposed comm new", "delta exposed"):
        t.add_column(c, justify="right")
    for r in result.summary_rows():
        t.add_row("-" if r["rank"] is None else str(r["rank"]), gpu_cell(r["device"], r["device_name"]), _ms(r["iteration_base_us"]),
                  _ms(r["iteration_new_us"]), _d(r["iteration_delta_us"]),
                  _pct(r["iteration_new_us"], r["iteration_base_us"]), _ms(r["exposed_comm_base_us"]),
                  _ms(r["exposed_comm_new_us"]), _d(r["exposed_comm_delta_us"]))
    console.print(t)


def _pair(d: GpuDiff, console: Console, top: int, kernels: bool) -> None:
    b, n = d.base, d.new
    how = "" if d.matched_by == "same rank and GPU" else f" (matched {d.matched_by})"
    console.print(Text(f"traceview diff · {clean(b.file_name)} {b.label} -> {clean(n.file_name)} {n.label}{how} · "
                       f"per iteration ({b.iterations} vs {n.iterations} iterations), ms", style="bold"))
    for f in d.findings:
        console.print(Text(f"  * {clean(f.text)}"))
    for note in d.notes:
        console.print(Text(f"  note: {clean(note)}", style="yellow"))

    t = Table(title="totals per iteration (ms)", title_justify="left", header_style="bold")
    for c in ("metric", "base", "new", "delta", "change"):
        t.add_column(c, justify="left" if c == "metric" else "right")
    for x in d.totals:
        t.add_row(TOTAL_LABELS.get(x.metric, x.metric), _ms(x.base), _ms(x.new), _d(x.delta), _pct(x.new, x.base))
    br, nr = b.exposed_ratio(), n.exposed_ratio()
    t.add_row("exposed share of comm", "-" if br is None else f"{100 * br:.1f}%", "-" if nr is None else f"{100 * nr:.1f}%",
              "", "")
    console.print(t)

    t = Table(title="categories, by impact (time per iteration in ms; mean kernel in µs)", title_justify="left",
              header_style="bold")
    for c in ("category", "role", "base", "new", "delta", "change", "launches", "mean base", "mean new", "mean change"):
        t.add_column(c, justify="left" if c in ("category", "role") else "right")
    for c in d.categories[: top or None]:
        t.add_row(clean(c.category), c.role, _ms(c.base_time), _ms(c.new_time), _d(c.delta), _pct(c.new_time, c.base_time),
                  f"{_count(c.base_count)} -> {_count(c.new_count)}",
                  "-" if c.base_mean is None else f"{c.base_mean:.1f}", "-" if c.new_mean is None else f"{c.new_mean:.1f}",
                  _pct(c.new_mean, c.base_mean))
    console.print(t)

    for view, rows in d.segments.items():
        if not rows:
            continue
        t = Table(title=f"by {view}, by impact (ms per iteration)", title_justify="left", header_style="bold")
        for c in (view, "time base", "time new", "time delta", "exposed base", "exposed new", "exposed delta"):
            t.add_column(c, justify="left" if c == view else "right")
        for s in rows[: top or None]:
            t.add_row(clean(s.label), _ms(s.base_time), _ms(s.new_time), _d(s.new_time - s.base_time),
                      _ms(s.base_exposed), _ms(s.new_exposed), _d(s.new_exposed - s.base_exposed))
        console.print(t)

    if kernels and d.kernels is not None:
        t = Table(title="kernels (name + launch grid), by impact (time per iteration in ms; mean in µs)",
                  title_justify="left", header_style="bold")
        for c in ("kernel", "grid", "category", "launches", "base", "new", "delta", "mean base", "mean new"):
            t.add_column(c, justify="left" if c in ("kernel", "grid", "category") else "right")
        for k in d.kernels[: top or None]:
            t.add_row(short_kernel_name(k.name, 60), clean(k.grid), clean(k.category),
                      f"{_count(k.base_count)} -> {_count(k.new_count)}", _ms(k.base_time), _ms(k.new_time),
                      _d(k.delta), "-" if k.base_mean is None else f"{k.base_mean:.1f}",
                      "-" if k.new_mean is None else f"{k.new_mean:.1f}")
        console.print(t)
