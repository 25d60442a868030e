"""The run page of the HTML report: every rank on one clock, who made whom wait, and why.

Reads the ``RunAnalysis`` only (summaries and matched collectives, no event table), so the
page is the same whichever engine analysed the ranks.

- a straggler card: the verdict, the what-if, the caveats;
- the per-rank table (ms per iteration; comm = waiting + transfer);
- one timeline with a lane per rank on the common clock (one figure: zooming moves every lane):
  compute busy time, each communication kernel split into its waiting part (at its start) and
  its transfer part (at its end), exposed communication under it, and every collective
  instance drawn as a line joining the ranks' arrivals, the last arrival marked;
- rank x layer heatmaps of exposed communication and of waiting.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..run.summary import TIMELINE_PIECES
from ..timeline import intervals as iv
from .html_style import COMPUTE, EXPOSED, esc
from .text import fmt_ms

WAIT = "#b8b8b8"
TRANSFER = "#f28e2b"
ARRIVAL = "#5a5a5a"
LAST = "#e3001b"
#: collective instances drawn as arrival lines (the rest are still in the tables)
MAX_INSTANCE_LINES = 400
#: waiting + transfer boxes drawn at most (over all ranks), beyond which every n-th instance is drawn
MAX_COLLECTIVE_BARS = 200_000
#: boxes per rank lane before short pieces are merged (the summaries keep compute at this many)
MAX_PIECES_PER_LANE = TIMELINE_PIECES


def ms(us: float | None) -> str:
    return fmt_ms(us)


def run_head(run):
    """What was analysed (from the summaries of every rank), the loader warnings and trace
    health of every rank, and the files that could not be read: the top of a run's page."""
    from .html import Fragment

    ranks = run.ranks
    names = list(dict.fromkeys(r.name for r in ranks))  # one per file (a file may hold several GPUs)
    shown = ", ".join(esc(f) for f in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    nums = sorted({r.rank for r in ranks if r.rank is not None})
    ws = sorted({r.world_size for r in ranks if r.world_size})
    rank_text = (", ".join(map(str, nums)) if len(nums) <= 16 else f"{len(nums)} ranks, {nums[0]}-{nums[-1]}") or "unknown"
    rank_text += f" of world size {ws[0]}" if len(ws) == 1 else ""
    gpu_names: dict[str, int] = {}
    for r in ranks:
        gpu_names[r.gpu.name or "unknown GPU"] = gpu_names.get(r.gpu.name or "unknown GPU", 0) + 1
    iters = sorted({r.iterations.height for r in ranks})
    sources = sorted({f"{lvl}: {src}" for r in ranks for lvl, src in r.sources.items() if src != "none"})
    spans = [r.gpu.span_us for r in ranks]
    window = (f"{ms(min(spans))} – {ms(max(spans))} ms of GPU activity per GPU" if len(set(spans)) > 1
              else f"{ms(spans[0])} ms of GPU activity")
    rows = [("files", shown), ("ranks", rank_text), ("GPUs", ", ".join(f"{n} × {esc(k)}" for k, n in gpu_names.items())),
            ("iterations", esc(" / ".join(map(str, iters)) + (" (per trace)" if len(iters) > 1 else ""))),
            ("time window", window), ("GPU events", f"{sum(r.gpu.events for r in ranks):,}"),
            ("segments from", esc(", ".join(sources)) or "–")]
    head = Fragment()
    head.add('<div class="card"><dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
             + "</dl></div>")
    items = [f"<li>{esc(e.path)}: {esc(e.reason)} (not analysed)</li>" for e in run.errors]
    files = list({r.file: r for r in ranks}.values())
    items += [f"<li>{esc(r.name)}: {esc(w)}</li>" for r in files for w in r.warnings]
    items += [f"<li>{esc(r.name)}: trace health: {esc(h)}</li>" for r in files for h in r.health]
    if items:
        head.add(f'<div class="note"><b>Loader warnings</b><ul class="warn-list">{"".join(items)}</ul></div>')
    return head


def run_sections(run) -> tuple[list[str], list[dict]]:
    """HTML fragments and plotly figures (in page order) for a run; empty for one rank."""
    if run is None:
        return [], []
    parts: list[str] = ["<h2>Run: all ranks together</h2>"]
    figures: list[dict] = []
    if run.reason:
        parts.append(f'<div class="note"><b>No cross-rank numbers.</b> {esc(run.reason)}</div>')
        return parts, figures
    parts.append(_straggler_card(run))
    parts.append(_ranks_table(run))
    figures.append(run_timeline(run))
    parts.append("<!--figure-->")
    for value, title in (("exposed_comm_us_per_iteration", "Exposed communication per rank and layer"),
                         ("wait_us_per_iteration", "Waiting inside communication kernels per rank and layer")):
        fig = rank_layer_heatmap(run, value, title)
        if fig is not None:
            figures.append(fig)
            parts.append("<!--figure-->")
    return parts, figures


def _straggler_card(run) -> str:
    s, w = run.straggler, run.what_if
    cls = "bad" if s is not None and s.rank is not None else ""
    head = esc(s.verdict) if s is not None else "no straggler analysis"
    kpis = ""
    if w is not None:
        kpis = (f'<span>iteration <b>{ms(w.iteration_us)}</b> ms</span>'
                f'<span>if no rank waited <b>{ms(w.without_waiting_us)}</b> ms</span>'
                f'<span>if all exposed comm were hidden <b>{ms(w.without_exposed_comm_us)}</b> ms</span>')
    notes = "".join(f'<p class="note">{esc(c)}</p>' for c in run.caveats)
    m = run.matching
    clock = ""
    if m is not None and m.end_spread_median_us is not None:
        clock = (f'<p class="sub">Clocks aligned with the trace base times and collective end times; ends then agree '
                 f'to {m.end_spread_median_us:.1f} µs (median), {m.end_spread_p95_us:.1f} µs (95th percentile).</p>')
    return (f'<div class="card verdict {cls}" id="straggler"><div class="who">Straggler</div>'
            f'<div class="what">{head}</div><div class="kpis">{kpis}</div></div>{notes}{clock}')


def _ranks_table(run) -> str:
    cols = ["rank", "iteration", "compute", "comm", "waiting", "transfer", "exposed", "exposed waiting",
            "exposed transfer", "exposed % of iteration", "idle", "idle, none queued", "arrived last"]
    head = "".join(f'<th class="n">{c}</th>' for c in cols)
    rows = []
    for t in run.times:
        p = t.per_iteration
        share = p(t.exposed_comm_us) / t.iteration_us if t.iteration_us else None
        cells = [str(t.rank), ms(t.iteration_us), ms(p(t.compute_us)), ms(p(t.comm_us)), ms(p(t.wait_us)),
                 ms(p(t.transfer_us)), f'<span class="exposed">{ms(p(t.exposed_comm_us))}</span>',
                 ms(p(t.exposed_wait_us)), ms(p(t.exposed_transfer_us)),
                 "-" if share is None else f"{100 * share:.1f}%", ms(p(t.idle_us)), ms(p(t.idle_no_queue_us)),
                 f"{t.arrived_last}/{t.collectives}"]
        rows.append("<tr>" + "".join(f'<td class="n">{c}</td>' for c in cells) + "</tr>")
    return ('<h3>Per rank (ms per iteration)</h3><p class="sub">comm = waiting + transfer (the transfer of a '
            'collective is its shortest duration over the ranks; the rest of each rank\'s kernel is waiting for the '
            'last rank). exposed = the part no compute kernel hid, split the same way. "idle, none queued": the GPU '
            'idle with no kernel launched and waiting (the host was late).</p>'
            f'<div class="card"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def run_timeline(run) -> dict:
    """One lane per rank on the common clock (ms since the run's first event)."""
    m = run.matching
    off = {r.rank: -m.to_common(r.rank) for r in run.ranks}  # subtracted from a rank's own times
    t0 = min(float(r.compute_start[0] if len(r.compute_start) else r.gpu.start_us) - off[r.rank] for r in run.ranks)
    ranks = [r.rank for r in run.ranks]
    lane = {rk: i for i, rk in enumerate(ranks)}
    data = []

    def bars(name, color, lanes, starts, ends, y_shift, width, hover, legend=True, opacity=1.0):
        data.append({"type": "bar", "orientation": "h", "name": name, "legendgroup": name, "showlegend": legend,
                     "y": [lane[k] + y_shift for k in lanes], "base": list(starts),
                     "x": [max(b - a, 1e-6) for a, b in zip(starts, ends)], "width": width,
                     "marker": {"color": color, "line": {"width": 0}}, "opacity": opacity,
                     "hovertemplate": hover + "<extra></extra>"})

    cl, cs, ce = [], [], []
    xl, xs, xe = [], [], []
    for r in run.ranks:
        s, e = iv.coarsen(r.compute_start, r.compute_end, MAX_PIECES_PER_LANE)
        cl += [r.rank] * len(s)
        cs += list((s - off[r.rank] - t0) / 1000)
        ce += list((e - off[r.rank] - t0) / 1000)
        s, e = iv.coarsen(r.exposed_start, r.exposed_end, MAX_PIECES_PER_LANE)
        xl += [r.rank] * len(s)
        xs += list((s - off[r.rank] - t0) / 1000)
        xe += list((e - off[r.rank] - t0) / 1000)
    bars("compute (busy)", COMPUTE, cl, cs, ce, 0.18, 0.28, "compute %{base:.3f} ms +%{x:.3f}")
    c = run.collectives
    # hundreds of ranks x thousands of collectives: draw the waiting/transfer of every n-th instance
    ids_all = c["instance"].unique(maintain_order=True)
    bar_step = max(1, -(-c.height // MAX_COLLECTIVE_BARS))
    if bar_step > 1:
        c = c.filter(pl.col("instance").is_in(ids_all.gather_every(bar_step).implode()))
    c = c.with_columns(((pl.col("arrival_us") - t0) / 1000).alias("a"),
                                     ((pl.col("end_us") - t0) / 1000).alias("e"),
                                     (pl.col("transfer_us") / 1000).alias("tr"))
    wait_end = (c["e"] - c["tr"]).to_list()
    bars("waiting for the last rank", WAIT, c["rank"].to_list(), c["a"].to_list(), wait_end, -0.12, 0.26,
         "waiting %{x:.3f} ms")
    bars("transfer", TRANSFER, c["rank"].to_list(), wait_end, c["e"].to_list(), -0.12, 0.26, "transfer %{x:.3f} ms")
    bars("exposed communication", EXPOSED, xl, xs, xe, -0.36, 0.12, "exposed %{x:.3f} ms", opacity=0.85)
    # arrivals of each instance joined across ranks; the last arrival marked
    inst = c.sort("instance", "rank")
    ids = inst["instance"].unique(maintain_order=True).to_list()
    step = max(1, len(ids) // MAX_INSTANCE_LINES)
    keep = set(ids[::step])
    xs_line, ys_line, lx, ly, lt = [], [], [], [], []
    for (iid,), g in inst.filter(pl.col("instance").is_in(list(keep))).partition_by(
            "instance", as_dict=True, maintain_order=True).items():
        for a, rk in zip(g["a"].to_list(), g["rank"].to_list()):
            xs_line.append(a)
            ys_line.append(lane[rk] - 0.12)
        xs_line.append(None)
        ys_line.append(None)
        last = g.filter(pl.col("arrived_last"))
        for a, rk, cat, late in zip(last["a"].to_list(), last["rank"].to_list(), last["category"].to_list(),
                                    last["late_us"].to_list()):
            lx.append(a)
            ly.append(lane[rk] - 0.12)
            lt.append(f"{esc(cat)} #{iid}: rank {rk} arrived last, {late / 1000:.3f} ms after the median rank")
    data.append({"type": "scatter", "mode": "lines", "name": "one collective across ranks (arrivals)",
                 "x": xs_line, "y": ys_line, "line": {"color": ARRIVAL, "width": 1}, "hoverinfo": "skip"})
    data.append({"type": "scatter", "mode": "markers", "name": "last arrival", "x": lx, "y": ly, "text": lt,
                 "marker": {"color": LAST, "size": 7, "symbol": "diamond"}, "hovertemplate": "%{text}<extra></extra>"})
    note = "" if step == 1 else f" (every {step * bar_step}th collective joined)"
    if bar_step > 1:
        note += f" (waiting and transfer of every {bar_step}th collective drawn: {ids_all.len():,} in the tables)"
    height = 160 + 70 * len(ranks)
    return {"data": data, "layout": {
        "title": {"text": f"All ranks on one clock{note}", "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        "height": min(height, 2400), "barmode": "overlay", "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff",
        "hovermode": "closest", "margin": {"l": 80, "r": 20, "t": 70, "b": 50},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1.0},
        "xaxis": {"title": {"text": "ms since the run's first compute (aligned clocks)"}, "gridcolor": "#eeeeee",
                  "zeroline": False},
        "yaxis": {"tickvals": list(range(len(ranks))), "ticktext": [f"rank {r}" for r in ranks],
                  "autorange": "reversed", "zeroline": False}}}


def rank_layer_heatmap(run, value: str, title: str) -> dict | None:
    t = run.by_rank_layer()
    if t.height == 0 or value not in t.columns:
        return None
    layers = run.layers()
    ranks = sorted(t["rank"].unique().to_list())
    z = [[None] * len(layers) for _ in ranks]
    for rk, layer, v in t.select("rank", "layer", value).iter_rows():
        z[ranks.index(rk)][layers.index(layer)] = None if v is None else v / 1000
    return {"data": [{"type": "heatmap", "z": z, "x": [f"layer {esc(x)}" for x in layers],
                      "y": [f"rank {r}" for r in ranks], "colorscale": "Reds", "zmin": 0,
                      "colorbar": {"title": {"text": "ms / iter"}},
                      "hovertemplate": "%{y} %{x}: %{z:.3f} ms per iteration<extra></extra>"}],
            "layout": {"title": {"text": f"{title} (ms per iteration)", "x": 0.0, "xanchor": "left",
                                 "font": {"size": 15}},
                       "height": min(220 + 28 * len(ranks), 2000), "plot_bgcolor": "#ffffff",
                       "margin": {"l": 80, "r": 20, "t": 60, "b": 50}, "yaxis": {"autorange": "reversed"}}}
