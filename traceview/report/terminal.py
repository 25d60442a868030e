"""The terminal view: one screen per run (rich tables; trace strings are sanitized)."""

from __future__ import annotations

from collections import Counter

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..analysis import TraceAnalysis
from .text import clean, display_path, fmt_ms, fmt_pct, gpu_cell, one_line, short_kernel_name, word
from .verdict import severity, verdict, verdict_lines  # noqa: F401  (verdict: the one-line form)

SEVERITY_STYLE = {"bad": "red", "warn": "yellow", "ok": "green", "none": ""}

MAX_GPU_COLUMNS = 4
#: GPUs listed one by one in the terminal (10,000 devices would be minutes of table drawing);
#: the count of the others is said, and ``--format csv`` lists them all.
MAX_GPU_ROWS = 64


def _shown_gpus(results: list[TraceAnalysis]) -> list[tuple[TraceAnalysis, object]]:
    out = []
    for a in results:
        for g in a.gpus:
            if len(out) == MAX_GPU_ROWS:
                return out
            out.append((a, g))
    return out


def gpu_label(a: TraceAnalysis, device: int) -> str:
    """'r0/gpu0'; a file without a rank (one process driving several GPUs) says 'gpu0', 'gpu1';
    a pid given as a string is shown by its name, not an internal id."""
    name = a.trace.given_name(device)
    dev = f"gpu{device}" if name is None else one_line(name, 60)
    return dev if a.rank is None else f"r{a.rank}/{dev}"


def render_analysis(results: list[TraceAnalysis], console: Console, top: int = 8) -> None:
    if not results:
        return
    _header(results, console)
    for a in results:  # first: a truncated or repaired file changes how every number below reads
        for w in a.trace.warnings:
            console.print(Text(f"warning: {display_path(a.trace.name)}: {one_line(w)}", style="yellow"))
        for h in a.health:
            console.print(Text(f"trace health: {display_path(a.trace.name)}: {one_line(h.message)}", style="yellow"))
    console.print(_gpu_table(results))
    labels = Counter(gpu_label(a, g.device) for a in results for g in a.gpus)
    for a, g in _shown_gpus(results):
        label = gpu_label(a, g.device)
        if labels[label] > 1:  # two files claim this rank: say which one
            label += f" ({clean(a.trace.name)})"
        first, *rest = verdict_lines(a, g)
        console.print(Text(f"  {label}: {first}", style=SEVERITY_STYLE[severity(a, g)]))
        for line in rest:
            console.print(Text(f"    {line}"))
    if (more := sum(len(a.gpus) for a in results) - MAX_GPU_ROWS) > 0:
        console.print(Text(f"  … and {more:,} more GPUs (--format csv lists every one)"))
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
        console.print(Text(f"traceview · {display_path(t.name)}{rank}{dev} · {len(a.gpus)} GPU(s), "
                           f"{a.kernels.height} GPU events", style="bold"))
    else:
        console.print(Text(f"traceview · {len(results)} traces, "
                           f"{sum(len(a.gpus) for a in results)} GPU(s)", style="bold"))


def _gpu_table(results: list[TraceAnalysis]) -> Table:
    # no vertical rules, numbers never cut, a long trace name folds onto a second line: in a
    # 110-column terminal names that differ at their end ("..._rank0", "..._rank1") were all "prefil…"
    t = Table(title="GPU time (ms)", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
              padding=(0, 0, 0, 1), pad_edge=False)
    shown = _shown_gpus(results)
    names = {id(a): display_path(a.trace.name, 40) for a in results}
    ext = next((e for e in (".json.gz", ".json") if all(n.endswith(e) for n in names.values())), "")
    names = {k: n[: len(n) - len(ext)] for k, n in names.items()}  # the header says the extension once
    ranked = any(a.rank is not None for a in results)
    rows = []
    for a, g in shown:
        rows.append([names[id(a)], *(("-" if a.rank is None else str(a.rank),) * ranked),
                     one_line(a.trace.device_text(g.device), 40),
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
    if (more := sum(len(a.gpus) for a in results) - MAX_GPU_ROWS) > 0:
        t.caption = f"… and {more:,} more GPUs (--format csv lists every one)"
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
        cells = [gpu_cell(row["device"], a.trace.given_name(row["device"]))] if multi_gpu else []
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
    for note in seg.approximate:
        console.print(Text(f"  approximate: {clean(note)}", style="yellow"))


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
        t.add_row(gpu_cell(r["device"], a.trace.given_name(r["device"])), clean(r["category"]), r["overlap"], str(r["kernels_with_comm"]),
                  fmt_ms(r["time_with_comm_us"]), fmt_ms(r["alone_estimate_us"]), fmt_ms(r["tax_us"]),
                  fmt_pct(r["slowdown"]))
    console.print(t)
    for n in notes:
        console.print(Text("  " + clean(n), style="yellow"))


def render_run(run, console: Console) -> None:
    """The run view: one row per rank (per iteration), the straggler line, the what-if, the skew."""
    if run.reason:
        console.print(Text(f"no cross-rank numbers: {clean(run.reason)}", style="yellow"))
        return
    for c in run.caveats:
        console.print(Text(clean(c), style="yellow"))
    partial = f" ({run.partial_note})" if run.partial else ""
    t = Table(title=f"Run: {run.ranks_loaded} ranks{partial}, ms per iteration; comm = waiting + transfer, "
                    "exposed = exposed waiting + exposed transfer", title_justify="left", header_style="bold")
    for col in ("rank", "iteration", "compute", "comm", "wait", "transfer", "exposed", "exp. wait", "exp. transfer",
                "exposed % of iter", "idle", "idle, none queued", "arrived last"):
        t.add_column(col, justify="right")
    for r in run.times:
        p = r.per_iteration
        t.add_row(str(r.rank), fmt_ms(r.iteration_us), fmt_ms(p(r.compute_us)), fmt_ms(p(r.comm_us)),
                  fmt_ms(p(r.wait_us)), fmt_ms(p(r.transfer_us)), fmt_ms(p(r.exposed_comm_us)),
                  fmt_ms(p(r.exposed_wait_us)), fmt_ms(p(r.exposed_transfer_us)),
                  fmt_pct(p(r.exposed_comm_us) / r.iteration_us if r.iteration_us else None), fmt_ms(p(r.idle_us)),
                  fmt_ms(p(r.idle_no_queue_us)), f"{r.arrived_last}/{r.collectives}")
    console.print(t)
    if run.straggler is not None:
        console.print(Text(clean(run.straggler.verdict), style="bold"))
    w = run.what_if
    if w is not None:
        console.print(Text(f"what-if: iteration {w.iteration_us / 1000:.3f} ms now; {w.without_waiting_us / 1000:.3f} ms "
                           f"if no rank waited for another; {w.without_exposed_comm_us / 1000:.3f} ms if all exposed "
                           "communication were hidden too (max over ranks; docs/metrics.md)"))
    skew = run.skew_table()
    if skew.height:
        st = Table(title="Collective skew between ranks (waiting for a peer, not moving data)", title_justify="left",
                   header_style="bold")
        ranks = [c[8:] for c in skew.columns if c.startswith("wait_us_")]
        for col in ["category", "collectives", "mean skew ms", "max skew ms"] + [f"rank {r} waiting ms (%)" for r in ranks]:
            st.add_column(col, justify="left" if col == "category" else "right")
        for r in skew.iter_rows(named=True):
            st.add_row(clean(r["category"]), str(r["collectives"]), fmt_ms(r["mean_skew_us"]), fmt_ms(r["max_skew_us"]),
                       *[f"{fmt_ms(r['wait_us_' + k])} ({fmt_pct(r['wait_share_' + k])})" for k in ranks])
        console.print(st)
    m = run.matching
    if m is not None:
        off = m.offsets_us
        spread = "-" if m.end_spread_median_us is None else f"{m.end_spread_median_us:.1f} µs"
        console.print(Text(f"clocks: offsets removed (µs) " + ", ".join(f"rank {k}: {v:.1f}" for k, v in off.items())
                           + f"; collective end times agree to {spread} (median) after alignment", style="dim"))


def render_rank_layers(run, console: Console) -> None:
    """``--by rank``: rank x layer, ms per iteration, exposed communication and waiting."""
    t = run.by_rank_layer()
    if t.height == 0:
        console.print(Text("--by rank: no layers found in these traces", style="yellow"))
        return
    layers = run.layers()
    for value, title in (("exposed_comm_us_per_iteration", "exposed communication"),
                         ("wait_us_per_iteration", "waiting inside communication kernels")):
        if value not in t.columns:
            continue
        tab = Table(title=f"by rank x layer: {title} (ms per iteration)", title_justify="left", header_style="bold")
        tab.add_column("rank", justify="right")
        for layer in layers:
            tab.add_column(f"layer {clean(layer)}", justify="right")
        for (rank,), g in t.partition_by("rank", as_dict=True, maintain_order=True).items():
            vals = dict(zip(g["layer"].to_list(), g[value].to_list()))
            tab.add_row(str(rank), *[fmt_ms(vals.get(layer)) for layer in layers])
        console.print(tab)


def render_reconciliation(a: TraceAnalysis, rec, console: Console) -> None:
    """Measured vs modeled per budget class (per iteration), then the per-layer slack; warnings,
    notes and column names are those of the JSON (``Reconciliation.table/warnings/notes``)."""
    from ..budget.reconcile import CLASSES

    t = Table(title=f"{clean(a.trace.name)}: measured vs modeled ({clean(rec.model.name)} on {clean(rec.gpu.name)}, "
                    f"{rec.phase}; ms per iteration)", title_justify="left", header_style="bold")
    table = rec.table()
    for col in table.columns:
        t.add_column("gpu" if col == "device" else word(col), justify="left" if col == "class" else "right")
    for r in table.iter_rows(named=True):
        cells = []
        for col, v in r.items():
            if col == "class":
                cells.append(v if v in CLASSES else word(v))
            elif col.endswith("_ms"):
                cells.append(fmt_ms(v * 1000 if v is not None else None))
            elif col in ("efficiency", "vs_model"):
                cells.append(fmt_pct(v))
            elif col == "device":
                cells.append(gpu_cell(v, a.trace.given_name(v)))
            else:
                cells.append(str(v))
        t.add_row(*cells, style="dim" if r["class"].startswith("unmodeled") else None)
    console.print(t)
    sh = rec.shapes.filter(pl_col_not_none("layer"))
    if sh.height:
        tok = sorted({v for v in sh["tokens"].to_list() if v})
        kv = sorted({v for v in sh["kv_len"].to_list() if v})
        rows = sorted({v for v in sh["rows"].to_list() if v}) if "rows" in sh.columns else []
        console.print(Text(f"  shapes from the trace: tokens per micro-batch {tok or '?'}, kv_len {kv or '?'}, "
                           f"routed rows {rows[:3] + (['…'] if len(rows) > 3 else []) or '-'}"))
    for line in rec.serving_lines():
        console.print(Text("  " + line))
    for w in rec.warnings:
        console.print(Text("  warning: " + w, style="bold red"))
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
