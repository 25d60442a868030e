"""The HTML report's charts besides the timeline: per micro-batch and per layer
compute / overlapped / exposed communication, the category breakdown, and the
measured-vs-modeled budget chart.  Each function returns a plotly figure as a plain dict
(``{"data": [...], "layout": {...}}``); every trace-supplied string in it is escaped.
"""

from __future__ import annotations

import polars as pl

from ..segment import NONE
from .html_style import COMPUTE, EXPOSED, OVERLAPPED, ROLE_ORDER, category_color, esc

_BASE_LAYOUT = {
    "barmode": "group",
    "bargap": 0.25,
    "bargroupgap": 0.05,
    "plot_bgcolor": "#ffffff",
    "paper_bgcolor": "#ffffff",
    "hovermode": "closest",
    "hoverlabel": {"align": "left"},
    "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.09, "xanchor": "right", "x": 1.0,
               "traceorder": "normal"},
    "yaxis": {"gridcolor": "#eeeeee", "zeroline": False},
}


def _layout(title: str, height: int, **kw) -> dict:
    out = {**_BASE_LAYOUT, "title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}},
           "height": height, "margin": {"l": 70, "r": 20, "t": 70, "b": 60}}
    for k, v in kw.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def overlap_bars(x, compute_ms: list[float], overlapped_ms: list[float], exposed_ms: list[float],
                 title: str, x_title: str) -> dict:
    """Two panels over the same groups ``x``: compute time (left) and communication time split
    into the part hidden under compute and the exposed part (right, stacked; own scale, since
    communication is often a tenth of compute and would vanish beside it)."""
    comm = [o + e for o, e in zip(overlapped_ms, exposed_ms)]
    exp_text = [f"{e:.2f} ms · {100 * e / c:.0f}%" if c > 0 and e > 0 else "" for e, c in zip(exposed_ms, comm)]
    data = [
        {"type": "bar", "x": x, "name": "compute", "y": compute_ms, "marker": {"color": COMPUTE},
         "hovertemplate": "%{x}<br>compute %{y:.3f} ms<extra></extra>", "xaxis": "x", "yaxis": "y"},
        {"type": "bar", "x": x, "name": "communication hidden under compute", "y": overlapped_ms,
         "marker": {"color": OVERLAPPED}, "hovertemplate": "%{x}<br>hidden comm %{y:.3f} ms<extra></extra>",
         "xaxis": "x2", "yaxis": "y2"},
        {"type": "bar", "x": x, "name": "exposed communication", "y": exposed_ms, "marker": {"color": EXPOSED},
         "text": exp_text, "textposition": "outside", "textfont": {"size": 10, "color": EXPOSED},
         "cliponaxis": False, "hovertemplate": "%{x}<br>exposed comm %{y:.3f} ms<extra></extra>", "xaxis": "x2", "yaxis": "y2"},
    ]
    n = len(compute_ms)
    axis = {"title": {"text": x_title}, "tickangle": 0 if n <= 8 else -45, "tickfont": {"size": 11}}
    layout = _layout(title, 400 if n <= 16 else 470, barmode="stack",
                     xaxis={**axis, "domain": [0.0, 0.47]}, xaxis2={**axis, "domain": [0.53, 1.0], "anchor": "y2"},
                     yaxis={"title": {"text": "compute ms"}},
                     yaxis2={"title": {"text": "communication ms"}, "anchor": "x2", "gridcolor": "#eeeeee",
                             "zeroline": False, "rangemode": "tozero"},
                     annotations=[
                         {"text": "<b>compute</b>", "xref": "x domain", "yref": "paper", "x": 0.5, "y": 1.0,
                          "showarrow": False, "yanchor": "bottom", "font": {"size": 12, "color": "#555"}},
                         {"text": "<b>communication</b>: hidden under compute + exposed", "xref": "x2 domain",
                          "yref": "paper", "x": 0.5, "y": 1.0, "showarrow": False, "yanchor": "bottom",
                          "font": {"size": 12, "color": "#555"}}])
    layout["margin"] = {"l": 70, "r": 20, "t": 90, "b": 70}
    return {"data": data, "layout": layout}


def microbatch_figure(items: list[tuple[str, pl.DataFrame]]) -> dict | None:
    """``items``: (GPU label, that GPU's rows of ``segments('microbatch')``)."""
    outer, inner, comp, ovl, exp = [], [], [], [], []
    for label, df in items:
        for r in df.iter_rows(named=True):
            if r["comm_us"] <= 0 and (r["compute_us"] <= 0 or r["microbatch"] == NONE):
                continue  # a group with neither, or unlabelled stragglers with no communication
            outer.append(label)
            inner.append(esc(r["microbatch"]))
            comp.append(round(r["compute_us"] / 1000, 4))
            ovl.append(round(r["overlapped_comm_us"] / 1000, 4))
            exp.append(round(r["exposed_comm_us"] / 1000, 4))
    if not comp:
        return None
    x = [outer, inner] if len(items) > 1 else inner
    return overlap_bars(x, comp, ovl, exp, "<b>Per micro-batch</b>: compute vs communication (hidden / exposed)",
                        "micro-batch")


def layer_figure(label: str, df: pl.DataFrame) -> tuple[dict | None, int]:
    """Per (layer, micro-batch) of one GPU, the mean over iterations; (figure, iterations)."""
    d = df.filter(pl.col("layer") != NONE)
    if d.height == 0:
        return None, 0
    iters = max(1, d["iteration"].n_unique())
    g = (d.group_by("layer", "microbatch").agg(
        (pl.col("compute_us").sum() / iters / 1000).alias("c"),
        (pl.col("overlapped_comm_us").sum() / iters / 1000).alias("o"),
        (pl.col("exposed_comm_us").sum() / iters / 1000).alias("e"))
        .with_columns(pl.col("layer").cast(pl.Int64, strict=False).alias("_n"))
        .sort("_n", "layer", "microbatch", nulls_last=True))
    layers = [f"L{esc(v)}" for v in g["layer"].to_list()]
    mbs = [esc(v) for v in g["microbatch"].to_list()]
    x = [layers, mbs] if len(set(mbs)) > 1 else layers
    per = f"mean of {iters} iterations" if iters > 1 else "one iteration"
    fig = overlap_bars(x, g["c"].round(4).to_list(), g["o"].round(4).to_list(), g["e"].round(4).to_list(),
                       f"<b>{label}</b> per layer ({per})", "layer · micro-batch" if len(set(mbs)) > 1 else "layer")
    return fig, iters


def category_figure(gpus: list[tuple[str, object]], rules) -> dict:
    """One 100% bar per GPU, split by kernel category (share of summed GPU event time)."""
    totals: dict[str, float] = {}
    for _label, g in gpus:
        for c, ct in g.categories.items():
            totals[c] = totals.get(c, 0.0) + ct.time_us
    order = sorted(totals, key=lambda c: (ROLE_ORDER.get(rules.role(c), 3), -totals[c]))
    labels = [lbl for lbl, _g in gpus]
    data = []
    for c in order:
        shares = [round(100 * g.categories[c].share, 3) if c in g.categories else 0.0 for _l, g in gpus]
        times = [round(g.categories[c].time_us / 1000, 3) if c in g.categories else 0.0 for _l, g in gpus]
        counts = [g.categories[c].count if c in g.categories else 0 for _l, g in gpus]
        role = rules.role(c)
        data.append({"type": "bar", "orientation": "h", "name": esc(c), "y": labels, "x": shares,
                     "customdata": [[t, n] for t, n in zip(times, counts)],
                     "text": [f"{esc(c)} {v:.0f}%" if v >= 4 else "" for v in shares],
                     "textposition": "inside", "insidetextanchor": "middle", "textangle": 0,
                     "textfont": {"size": 11},
                     "marker": {"color": category_color(c, role), "line": {"width": 0.5, "color": "#ffffff"}},
                     "hovertemplate": f"<b>{esc(c)}</b> ({role})<br>%{{x:.1f}}% · %{{customdata[0]:.3f}} ms · "
                                      "%{customdata[1]} kernels<extra>%{y}</extra>"})
    legend_rows = 1 + len(order) // 6
    plot_h = 50 * len(gpus) + 20
    height = 50 + plot_h + 60 + 24 * legend_rows
    layout = _layout("<b>Where the GPU time goes</b>: share of kernel time by category", height,
                     barmode="stack", xaxis={"title": {"text": "% of summed GPU event time"}, "range": [0, 100],
                                             "gridcolor": "#eeeeee"},
                     yaxis={"autorange": "reversed", "gridcolor": "#ffffff"},
                     uniformtext={"minsize": 9, "mode": "hide"},
                     legend={"orientation": "h", "y": -50 / plot_h, "yanchor": "top", "x": 0.0,
                             "xanchor": "left", "groupclick": "toggleitem", "font": {"size": 11}})
    layout["margin"] = {"l": 110, "r": 20, "t": 50, "b": 60 + 24 * legend_rows}
    return {"data": data, "layout": layout}


def reconciliation_figure(summary: pl.DataFrame, title: str) -> dict | None:
    """Measured vs modeled (and the roofline bound) per budget class, ms per iteration."""
    need = {"class", "measured_ms"}
    if not need <= set(summary.columns) or summary.height == 0:
        return None
    s = summary
    multi = "device" in s.columns and s["device"].n_unique() > 1
    x = [[f"gpu{v}" for v in s["device"].to_list()], [esc(v) for v in s["class"].to_list()]] if multi \
        else [esc(v) for v in s["class"].to_list()]
    data = [{"type": "bar", "name": "measured", "x": x, "y": s["measured_ms"].round(4).to_list(),
             "marker": {"color": COMPUTE}, "hovertemplate": "measured %{y:.3f} ms<extra>%{x}</extra>"}]
    for col, name, color in (("model_ms", "model (budget)", "#9ecae1"), ("peak_ms", "roofline bound", "#bdbdbd")):
        if col in s.columns:
            data.append({"type": "bar", "name": name, "x": x, "y": [None if v is None else round(v, 4)
                                                                    for v in s[col].to_list()],
                         "marker": {"color": color}, "hovertemplate": f"{name} %{{y:.3f}} ms<extra>%{{x}}</extra>"})
    return {"data": data, "layout": _layout(title, 400, yaxis={"title": {"text": "ms per iteration"}})}
