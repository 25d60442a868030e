"""The terminal view: one screen per run (rich tables; trace strings are sanitized)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..analysis import TraceAnalysis
from .text import clean, fmt_ms, fmt_pct, short_kernel_name, word
from .verdict import severity, verdict, verdict_lines  # noqa: F401  (verdict: the one-line form)

SEVERITY_STYLE = {"bad": "red", "warn": "yellow", "ok": "green", "none": ""}

MAX_GPU_COLUMNS = 4


def gpu_label(a: TraceAnalysis, device: int) -> str:
    """'r0/gpu0'; a file without a rank (one process driving several GPUs) says 'gpu0', 'gpu1'."""
    return f"gpu{device}" if a.rank is None else f"r{a.rank}/gpu{device}"


def render_analysis(results: list[TraceAnalysis], console: Console, top: int = 8) -> None:
    if not results:
        return
    _header(results, console)
    for a in results:  # first: a truncated or repaired file changes how every number below reads
        for w in a.trace.warnings:
            console.print(Text(f"warning: {clean(a.trace.name)}: {clean(w)}", style="yellow"))
    console.print(_gpu_table(results))
    labels = [gpu_label(a, g.device) for a in results for g in a.gpus]
    for a in results:
        for g in a.gpus:
            label = gpu_label(a, g.device)
            if labels.count(label) > 1:  # two files claim this rank: say which one
                label += f" ({clean(a.trace.name)})"
            first, *rest = verdict_lines(a, g)
            console.print(Text(f"  {label}: {first}", style=SEVERITY_STYLE[severity(a, g)]))
            for line in rest:
                console.print(Text(f"    {line}"))
    console.print(_category_table(results))
    if len(results) == 1:
        console.print(_top_kernels(results[0], top))
    _unclassified(results, console)


def _header(results: list[TraceAnalysis], console: Console) -> None:
    if len(results) == 1:
        a = results[0]
        t = a.trace
        rank = "" if t.rank is None else f" · rank {t.rank}" + ("" if t.world_size is None else f"/{t.world_size}")
        names = sorted({clean(g.name) for g in a.gpus if g.name})
        dev = f" · {', '.join(names)}" if names else ""
        console.print(Text(f"traceview · {clean(t.name)}{rank}{dev} · {len(a.gpus)} GPU(s), "
                           f"{a.kernels.height} GPU events", style="bold"))
    else:
        console.print(Text(f"traceview · {len(results)} traces, "
                           f"{sum(len(a.gpus) for a in results)} GPU(s)", style="bold"))


def _gpu_table(results: list[TraceAnalysis]) -> Table:
    # no vertical rules, numbers never cut, a long trace name folds onto a second line: in a
    # 110-column terminal names that differ at their end ("..._rank0", "..._rank1") were all "prefil…"
    t = Table(title="GPU time (ms)", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
              padding=(0, 0, 0, 1), pad_edge=False)
    names = [clean(a.trace.name, 40) for a in results]
    ext = next((e for e in (".json.gz", ".json") if all(n.endswith(e) for n in names)), "")
    names = [n[: len(n) - len(ext)] for n in names]  # the header says the extension once
    ranked = any(a.rank is not None for a in results)
    rows = []
    for a, name in zip(results, names):
        for g in a.gpus:
            rows.append([name, *(("-" if a.rank is None else str(a.rank),) * ranked), str(g.device),
                         fmt_ms(g.span_us), fmt_ms(g.busy_us), fmt_ms(g.compute_us), fmt_ms(g.comm_us),
                         fmt_ms(g.overlap_us), Text(fmt_ms(g.exposed_comm_us), style=SEVERITY_STYLE[severity(a, g)]),
                         fmt_pct(g.exposed_comm_ratio), fmt_ms(g.memory_us), fmt_ms(g.idle_us)])
    cols = (f"trace ({ext})" if ext else "trace",) + ("rank",) * ranked + ("gpu", "span", "busy", "compute", "comm", "overlap",
                                              "exposed\ncomm", "exposed\n% of comm", "memory", "idle")
    for i, col in enumerate(cols):
        widest = max(len(str(r[i])) for r in rows) if rows else 1
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold" if i == 0 else "ellipsis",
                     min_width=None if i == 0 else widest)
    for r in rows:
        t.add_row(*r)
    return t


def _category_table(results: list[TraceAnalysis]) -> Table:
    gpus = [(a, g) for a in results for g in a.gpus]
    cats: dict[str, float] = {}
    for _a, g in gpus:
        for c, ct in g.categories.items():
            cats[c] = cats.get(c, 0.0) + ct.time_us
    order = sorted(cats, key=lambda c: -cats[c])
    rules = results[0].rules
    t = Table(title="Kernel categories (time ms, share of GPU event time)", title_justify="left",
              header_style="bold")
    t.add_column("category")
    t.add_column("role")
    if len(gpus) <= MAX_GPU_COLUMNS:
        for a, g in gpus:
            t.add_column(f"{gpu_label(a, g.device)} ms", justify="right")
            t.add_column("share", justify="right")
            t.add_column("count", justify="right")
        for c in order:
            row = [clean(c), rules.role(c)]
            for _a, g in gpus:
                ct = g.categories.get(c)
                row += [fmt_ms(ct.time_us), fmt_pct(ct.share), str(ct.count)] if ct else ["-", "-", "-"]
            t.add_row(*row, style="red" if c == "unclassified" else None)
    else:
        for col in ("total ms", "mean share", "min share", "max share"):
            t.add_column(col, justify="right")
        for c in order:
            shares = [g.categories[c].share if c in g.categories else 0.0 for _a, g in gpus]
            t.add_row(clean(c), rules.role(c), fmt_ms(cats[c]), fmt_pct(sum(shares) / len(shares)),
                      fmt_pct(min(shares)), fmt_pct(max(shares)), style="red" if c == "unclassified" else None)
    return t


def _top_kernels(a: TraceAnalysis, n: int) -> Table:
    title = f"Top {n} kernels" + (f" (all {len(a.gpus)} GPUs of this trace together)" if len(a.gpus) > 1 else "")
    t = Table(title=title, title_justify="left", header_style="bold")
    for col, just in (("kernel", "left"), ("category", "left"), ("ms", "right"), ("count", "right")):
        t.add_column(col, justify=just, overflow="fold" if col == "kernel" else "ellipsis")
    for name, cat, time_us, count in a.top_kernels(n).iter_rows():
        t.add_row(short_kernel_name(name, 80), clean(cat), fmt_ms(time_us), str(count))
    return t


def _unclassified(results: list[TraceAnalysis], console: Console) -> None:
    for a in results:
        u = a.unclassified()
        if u.height:
            total = sum(g.categories["unclassified"].time_us for g in a.gpus if "unclassified" in g.categories)
            console.print(Text(f"{clean(a.trace.name)}: {u.height} unclassified kernel name(s), "
                               f"{total / 1000:.3f} ms (add a rule with --rules):", style="yellow"))
            for name, time_us, count in u.head(5).iter_rows():
                console.print(Text(f"    {short_kernel_name(name, 100)}  {time_us / 1000:.3f} ms x{count}"))


def render_segments(a: TraceAnalysis, by: str, console: Console) -> None:
    """The per-segment table (micro-batch, layer, phase...) for one trace."""
    from ..metrics.segments import category_columns

    seg = a.segmentation
    df = a.segments(by)
    src = ", ".join(f"{k}: {v}" for k, v in seg.sources.items() if v != "none")
    t = Table(title=f"{clean(a.trace.name)} by {by} (ms; segments from {src})", title_justify="left",
              header_style="bold")
    keys = [c for c in df.columns if c in ("iteration", "stage", "microbatch", "layer", "phase")]
    multi_gpu = df["device"].n_unique() > 1 if df.height else False
    if multi_gpu:
        t.add_column("gpu", justify="right")
    for k in keys:
        t.add_column(k)
    timed = "duration_us" in df.columns  # --by iteration: the iteration's own time accounting
    for col in ("events", *(("duration", "idle", "no kernel queued", "if hidden") if timed else ()),
                "compute", "comm", "overlapped", "exposed", "exposed % of comm",
                *(("cover by other mb",) if by == "microbatch" else ()), "top categories (share)"):
        t.add_column(col, justify="left" if col.startswith("top") else "right")
    cats = category_columns(df)
    for row in df.iter_rows(named=True):
        total = sum(row[c] or 0.0 for c in cats)
        tops = sorted(cats, key=lambda c: -(row[c] or 0.0))[:3]
        top_text = ", ".join(f"{clean(c[4:])} {100 * row[c] / total:.0f}%" for c in tops if total and row[c])
        cover = row["cover_other_mb_us"]
        cells = [str(row["device"])] if multi_gpu else []
        cells += [clean(row[k], 40) for k in keys]
        exposed_pct = row["exposed_comm_us"] / row["comm_us"] if row["comm_us"] > 0 else None
        cells += [str(row["events"])]
        if timed:
            cells += [fmt_ms(row[c]) for c in ("duration_us", "idle_us", "idle_no_queue_us", "if_hidden_us")]
        cells += [fmt_ms(row["compute_us"]), fmt_ms(row["comm_us"]),
                  fmt_ms(row["overlapped_comm_us"]),
                  Text(fmt_ms(row["exposed_comm_us"]), style="red" if (exposed_pct or 0) > 0.5 else ""),
                  fmt_pct(exposed_pct)]
        if by == "microbatch":
            cells.append("-" if cover is None or cover != cover else fmt_ms(cover))
        cells.append(top_text or "-")
        t.add_row(*cells)
    console.print(t)


def render_tax(a: TraceAnalysis, console: Console) -> None:
    tax = a.overlap_tax()
    notes = a.overlap_tax_notes()
    title = f"{clean(a.trace.name)}: overlap tax (same kernel and shapes, alone vs beside communication)"
    if tax.height == 0:
        if not notes:
            reason = ("no communication kernels" if all(g.comm_us <= 0 for g in a.gpus)
                      else "no kernel ran beside communication")
            notes = [f"overlap tax: {reason}"]
        console.print(Text(title, style="bold"))
        for n in notes:
            console.print(Text("  " + clean(n), style="yellow"))
        return
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("gpu", "category", "under comm", "kernels", "with comm ms", "alone estimate ms", "tax ms",
                "slowdown"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for r in tax.iter_rows(named=True):
        t.add_row(str(r["device"]), clean(r["category"]), r["overlap"], str(r["kernels_with_comm"]),
                  fmt_ms(r["time_with_comm_us"]), fmt_ms(r["alone_estimate_us"]), fmt_ms(r["tax_us"]),
                  fmt_pct(r["slowdown"]))
    console.print(t)
    for n in notes:
        console.print(Text("  " + clean(n), style="yellow"))


def render_skew(skew, offsets: dict, console: Console, caveats: list[str] | None = None) -> None:
    for c in caveats or []:
        console.print(Text(clean(c), style="yellow"))
    if skew is None or skew.height == 0:
        return
    t = Table(title="Collective skew between ranks (waiting for a peer, not moving data)", title_justify="left",
              header_style="bold")
    wait_cols = [c for c in skew.columns if c.startswith("wait_share_")]
    for col in ["category", "collectives", "mean skew ms", "max skew ms"] + [f"rank {c[11:]} waiting" for c in wait_cols]:
        t.add_column(col, justify="left" if col == "category" else "right")
    for r in skew.iter_rows(named=True):
        t.add_row(clean(r["category"]), str(r["collectives"]), fmt_ms(r["mean_skew_us"]), fmt_ms(r["max_skew_us"]),
                  *[fmt_pct(r[c]) for c in wait_cols])
    console.print(t)
    if any(abs(v) > 1000 for v in offsets.values()):
        console.print(Text("clock offsets removed (µs): " + ", ".join(f"rank {k}: {v:.0f}" for k, v in offsets.items()),
                           style="yellow"))


def render_reconciliation(a: TraceAnalysis, rec, console: Console) -> None:
    """Measured vs modeled per budget class (per iteration), then the per-layer slack."""
    from ..budget.reconcile import CLASSES

    t = Table(title=f"{clean(a.trace.name)}: measured vs modeled ({clean(rec.model.name)} on {clean(rec.gpu.name)}, "
                    f"{rec.phase}; ms per iteration)", title_justify="left", header_style="bold")
    for col in ("gpu", "class", "kernels", *map(word, ("measured_ms", "model_ms", "peak_ms", "efficiency",
                                                     "vs_model"))):
        t.add_column(col, justify="left" if col == "class" else "right")
    for r in rec.summary.iter_rows(named=True):
        label = r["class"] if r["class"] in CLASSES else word(r["class"])
        t.add_row(str(r["device"]), label, str(r["kernels"]), fmt_ms(r["measured_ms"] * 1000),
                  fmt_ms(r["model_ms"] * 1000 if r["model_ms"] is not None else None),
                  fmt_ms(r["peak_ms"] * 1000 if r["peak_ms"] is not None else None),
                  fmt_pct(r["efficiency"]), fmt_pct(r["vs_model"]),
                  style="dim" if r["class"].startswith("unmodeled") else None)
    console.print(t)
    sh = rec.shapes.filter(pl_col_not_none("layer"))
    if sh.height:
        tok = sorted({v for v in sh["tokens"].to_list() if v})
        kv = sorted({v for v in sh["kv_len"].to_list() if v})
        rows = sorted({v for v in sh["rows"].to_list() if v}) if "rows" in sh.columns else []
        console.print(Text(f"  shapes from the trace: tokens per micro-batch {tok or '?'}, kv_len {kv or '?'}, "
                           f"routed rows {rows[:3] + (['…'] if len(rows) > 3 else []) or '-'}"))
    for note in rec.notes():
        console.print(Text("  " + note, style="yellow"))
    if rec.slack.height:
        s = rec.slack
        console.print(Text(f"  communication slack per layer (MLA + shared - dispatch - combine): model "
                           f"{s['model_slack_ms'].mean():.3f} ms, measured {s['measured_slack_ms'].mean():.3f} ms "
                           f"(min {s['measured_slack_ms'].min():.3f}); positive = the all-to-all can hide"))


def pl_col_not_none(col: str):
    import polars as pl

    return pl.col(col) != "(none)"
