"""The per-GPU timeline of the HTML report: one lane per stream, kernels colored by
category, exposed communication in red, micro-batch / layer / phase bands on top.

Every box is a horizontal plotly bar (``base`` = start, ``x`` = duration, in ms since the
GPU's first event): plain SVG, so it renders the same in any browser, headless included.

Large traces are reduced before drawing, so a report stays small and opens quickly.  When
a GPU has more kernels than its box budget:
  - the first half of the budget is spent on a *detail window* at the start of the trace,
    drawn kernel by kernel (shaded on the plot), so one can zoom into real kernels;
  - after it, kernels shorter than a resolution ``r`` are merged into one box per (stream,
    time bin of width ``r``), colored by the category that took most of the bin's time and
    as opaque as the bin was busy; kernels at least ``r`` long are still drawn one by one.
    Kernels on one stream do not overlap, so a lane holds at most ``span / r`` long kernels
    and ``span / r`` bins, and ``r`` doubles until the boxes fit.
Exposed-communication pieces and the bands are reduced the same way (after the detail
window, pieces closer than ``r`` are joined).  The page says when this happened.

Plotly widens an opaque bar narrower than a pixel to one or two pixels; a box whose color is
not fully opaque is drawn at its exact width.  So exposed pieces and merged boxes carry an
alpha below one: a scatter of microsecond pieces looks faint, not like a wall of red.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..metrics.segments import labelled
from ..segment import NONE
from ..timeline import intervals as iv
from .html_style import EXPOSED, ROLE_ORDER, category_color, esc, rgba
from .text import short_kernel_name

KERNEL_WIDTH = 0.8
BAND_WIDTH = 0.8


@dataclass
class Timeline:
    """One GPU's timeline figure and what was reduced to draw it."""

    figure: dict
    kernels: int
    boxes: int
    merged_kernels: int = 0          # kernels drawn inside merged boxes
    resolution_us: float | None = None
    notes: list[str] = field(default_factory=list)


def _fmt_dur(col: str) -> pl.Expr:
    """'12.3 µs' below a millisecond, '1.234 ms' above."""
    c = pl.col(col)
    return (pl.when(c < 1000).then(pl.format("{} µs", c.round(1)))
            .otherwise(pl.format("{} ms", (c / 1000).round(3))))


def _names(names: pl.Series) -> dict[str, str]:
    """Unique kernel names -> a short, escaped label for hover text."""
    return {n: esc(short_kernel_name(n, 100)) for n in names.unique().to_list()}


def _hover_names(names: pl.Series) -> pl.Series:
    """Each event's short, escaped name label, mapped through the categorical codes: the full
    names are never copied into a new column (a 500 MB name would be, under a memory limit)."""
    if names.dtype != pl.Categorical:
        return names.replace_strict(_names(names), return_dtype=pl.Utf8)
    uniq = names.unique()
    labels = {code: esc(short_kernel_name(n, 100)) for code, n in zip(uniq.to_physical().to_list(), uniq.to_list())}
    return names.to_physical().replace_strict(labels, return_dtype=pl.Utf8)


def _reduce_intervals(s: np.ndarray, e: np.ndarray, cap: int, r: float, detail_end: float | None = None):
    """Disjoint sorted intervals; those after ``detail_end`` joined at resolution ``r``
    (doubled) until at most ``cap`` remain there.  (start, end, pieces, covered length)."""
    if detail_end is None or s.size <= cap:
        cut = s.size if s.size <= cap else 0
    else:
        cut = int(np.searchsorted(s, detail_end))
    head = (s[:cut], e[:cut], np.ones(cut, dtype=int), e[:cut] - s[:cut])
    ts, te = s[cut:], e[cut:]
    gap = r
    while ts.size:
        tail = iv.join_close(ts, te, gap)
        if tail[0].size <= cap:
            break
        gap *= 2
    else:
        tail = iv.join_close(ts, te, 0.0)
    return tuple(np.concatenate([h, t]) for h, t in zip(head, tail))


def _kernel_boxes(d: pl.DataFrame, t0: float, span: float, budget: int,
                  n_lanes: int) -> tuple[pl.DataFrame, int, float | None, float | None]:
    """Boxes to draw (ts, end, stream, category, role, hover, n, alpha) and (kernels merged,
    resolution, end of the detail window): the kernels themselves when they fit the budget,
    else a detail window plus long kernels and merged bins of short ones."""
    single = d.with_columns(
        pl.format("<b>{}</b><br>{} · {}<br>{} · starts at {} ms", _hover_names(d["name"]),
                  pl.col("category"), _fmt_dur("dur"), pl.col("stream_text"),
                  ((pl.col("ts") - t0) / 1000).round(3)).alias("hover"),
        pl.lit(1, dtype=pl.UInt32).alias("n"), pl.lit(1.0).alias("alpha"))
    cols = ["ts", "end", "stream", "category", "role", "hover", "n", "alpha"]
    if d.height <= budget:
        return single.select(cols), 0, None, None
    detail_end = float(d["ts"].sort()[budget // 2])
    detail = single.filter(pl.col("ts") < detail_end).select(cols)
    rest = single.filter(pl.col("ts") >= detail_end)
    room = budget - detail.height
    t1 = detail_end
    bins = max(20, room // (2 * max(1, n_lanes)))
    r = max((t0 + span - t1) / bins, 1e-3)
    while True:
        long = rest.filter(pl.col("dur") >= r).select(cols)
        bin_of = ((pl.col("ts") - t1) // r).cast(pl.Int64)
        binned = rest.filter(pl.col("dur") < r).with_columns(
            bin_of.alias("bin"), pl.len().over("stream", bin_of).alias("_in_bin"))
        solo = binned.filter(pl.col("_in_bin") == 1).select(cols)  # alone in its bin: drawn as itself
        short = binned.filter(pl.col("_in_bin") > 1)
        per_cat = (short.group_by("stream", "bin", "category", "role")
                   .agg(pl.col("dur").sum().alias("t")))
        merged = (short.group_by("stream", "bin").agg(
            pl.col("ts").min(), pl.col("end").max(), pl.len().alias("n"), pl.col("dur").sum().alias("busy"),
            pl.col("stream_text").first())
            .join(per_cat.sort("t", descending=True).group_by("stream", "bin", maintain_order=True).agg(
                pl.col("category").first(), pl.col("role").first(),
                pl.format("{} {}", pl.col("category"), _fmt_dur("t")).head(4).str.join(", ").alias("mix")),
                on=["stream", "bin"]))
        merged = merged.with_columns(
            pl.format("<b>{} short kernels merged</b><br>busy {} of {}<br>{}<br>{} · from {} ms",
                      pl.col("n"), _fmt_dur("busy"), pl.lit(_fmt_us(r)), pl.col("mix"), pl.col("stream_text"),
                      ((pl.col("ts") - t0) / 1000).round(3)).alias("hover"),
            (pl.col("busy") / (pl.col("end") - pl.col("ts")).clip(lower_bound=1e-9)).clip(0.3, 0.999).alias("alpha"),
        ).select(cols)
        if detail.height + long.height + solo.height + merged.height <= budget or r > 4 * span:
            # (past the span every lane holds one bin: what is left cannot shrink further)
            return pl.concat([detail, long, solo, merged]), int(short.height), r, detail_end
        r *= 2


#: Lanes of streams drawn at most; beyond, the busiest streams keep their lanes and the rest
#: share one (200,000 streams would be a page 7 million pixels high, drawn box by box).
MAX_STREAM_LANES = 48
OTHER_STREAMS = -(1 << 63)  # the shared lane's stream id (int64's minimum: no real stream)


def _cap_lanes(d: pl.DataFrame, thread_names: dict[int, str]) -> tuple[pl.DataFrame, str | None]:
    """``d`` with a ``stream_text`` column (how a stream is shown: its number, or the name it
    was given as a string) and, past ``MAX_STREAM_LANES`` streams, all but the busiest moved
    to one shared lane; the note that says so."""
    def text(s: pl.Series) -> pl.Series:
        return pl.Series([f"stream {thread_names.get(v, v)}" for v in s.to_list()], dtype=pl.Utf8)

    streams = d.group_by("stream").agg(pl.col("dur").sum().alias("t")).sort("t", "stream", descending=[True, False])
    names = dict(zip(streams["stream"].to_list(), text(streams["stream"]).to_list()))
    if streams.height <= MAX_STREAM_LANES:
        return d.with_columns(pl.col("stream").replace_strict(names, return_dtype=pl.Utf8).alias("stream_text")), None
    keep = streams["stream"].head(MAX_STREAM_LANES - 1)
    others = streams.height - keep.len()
    names = {k: names[k] for k in keep.to_list()} | {OTHER_STREAMS: f"other {others:,} streams"}
    own = pl.col("stream").is_in(keep.implode())
    d = (d.with_columns(pl.when(own).then(pl.col("stream")).otherwise(pl.lit(OTHER_STREAMS, dtype=pl.Int64))
                        .alias("stream"))
         .with_columns(pl.col("stream").replace_strict(names, return_dtype=pl.Utf8).alias("stream_text"))
         .sort("stream", "ts"))
    return d, (f"{streams.height:,} streams on this GPU: the {keep.len()} busiest have a lane each, the other "
               f"{others:,} share the last lane")


def _fmt_us(us: float) -> str:
    return f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.3f} ms"


def _bands(a, d: pl.DataFrame, cap: int, detail_end: float | None) -> list[tuple[str, str, pl.DataFrame]]:
    """(lane label, level, runs) for each micro-batch and level with labels: a run is a stretch
    of one micro-batch's kernels (in time order) sharing one (iteration, layer) or phase.
    On a reduced timeline only the detail window has bands; beyond ``cap`` runs in a lane, the
    longest are kept."""
    seg = a.segmentation
    lab = labelled(d.select("row", "ts", "end"), seg)
    mbs = [m for m in lab["microbatch"].unique().to_list() if m != NONE]
    mbs.sort(key=_natural)
    single_mb = seg.sources.get("microbatch") == "single" or len(mbs) <= 1
    out = []
    for level in ("layer", "phase"):
        if level not in lab.columns or (lab[level] == NONE).all():
            continue
        for mb in mbs:
            m = lab.filter(pl.col("microbatch") == mb).sort("ts")
            key = (pl.col("iteration") + "/" + pl.col("layer")) if level == "layer" else pl.col("phase")
            m = m.with_columns(key.alias("key")).with_columns(
                (pl.col("key") != pl.col("key").shift(1)).fill_null(True).cum_sum().alias("run"))
            runs = (m.group_by("run", maintain_order=True).agg(
                pl.col("key").first(), pl.col("iteration").first(), pl.col("layer").first(), pl.col("phase").first(),
                pl.col("ts").min(), pl.col("end").max(), pl.len().alias("n"))
                .filter(~pl.col("key").str.contains(re.escape(NONE))))
            if runs.height == 0:
                continue
            if detail_end is not None:  # a reduced timeline: bands only where kernels are drawn one by one
                runs = runs.filter(pl.col("ts") < detail_end)
            if runs.height > cap:  # keep the longest stretches
                runs = runs.sort(pl.col("end") - pl.col("ts"), descending=True).head(cap).sort("ts")
            label = level if single_mb else f"{mb} · {level}"
            out.append((label, level, runs.with_columns(pl.lit(mb).alias("microbatch"))))
    return out


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


_PHASE_FILL = [
    (re.compile(r"(?i)dispatch|combine|a2a|all.?to.?all|all.?reduce|comm"), "#fbe0c4"),
    (re.compile(r"(?i)attn|attention|mla"), "#d3e2f5"),
    (re.compile(r"(?i)expert|mlp|moe|ffn|shared"), "#cfeae6"),
    (re.compile(r"(?i)gate|rout"), "#e6dcf3"),
]


def _phase_fill(name: str) -> str:
    for pat, color in _PHASE_FILL:
        if pat.search(name):
            return color
    return "#e8e8e8"


def _density_colors(color: str, s: np.ndarray, e: np.ndarray, covered: np.ndarray, span: float) -> list[str]:
    """One color per piece.  A piece with no other piece within ``span / 300`` is drawn opaque, so
    plotly widens it to at least a pixel and a lone exposed stretch is seen at any zoom; a piece
    in a crowd is drawn at its exact width, as opaque as it is covered (a joined box of scattered
    pieces is paler than a solid one), so a crowd of microsecond pieces does not read as a wall."""
    if s.size == 0:
        return []
    ext = np.maximum(e - s, 1e-9)
    gaps = np.full(s.size + 1, np.inf)
    gaps[1:-1] = s[1:] - e[:-1]
    alone = np.minimum(gaps[:-1], gaps[1:]) >= span / 300
    share = np.minimum(covered / ext, 1.0)
    return [color if lone and f > 0.9 else rgba(color, max(0.35, f)) for lone, f in zip(alone, share)]


def _bar(name: str, y: float, base: np.ndarray, width_ms: np.ndarray, hover: list[str], color, **extra) -> dict:
    return {
        "type": "bar", "orientation": "h", "name": name,
        "y": np.full(base.size, y) if np.isscalar(y) else y,
        "base": np.round(base, 4), "x": np.round(np.maximum(width_ms, 0.0), 4),
        "width": extra.pop("width", KERNEL_WIDTH),
        "marker": {"color": color, "line": {"width": 0}},
        "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>",
        **extra,
    }


def gpu_timeline(a, g, budget: int = 10_000, label: str = "", subtitle: str = "") -> Timeline:
    """The timeline figure of GPU ``g`` of analysis ``a`` with at most ``budget`` kernel boxes."""
    d = (a.kernels.filter(pl.col("device") == g.device)
         .select("row", "ts", "end", "dur", "stream", "name",  # (categorical: labels via its codes)
                 pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8))
         .with_columns(pl.col("stream").fill_null(-1))
         .sort("stream", "ts"))
    t0, span = g.start_us, max(g.span_us, 1e-3)
    d, lane_note = _cap_lanes(d, a.trace.thread_names)
    streams = sorted(d["stream"].unique().to_list())
    stream_role = {s: r for s, r in d.group_by("stream", "role").agg(pl.col("dur").sum())
                   .sort("dur", descending=True).unique("stream", keep="first").select("stream", "role").iter_rows()}
    boxes, merged_kernels, r, detail_end = _kernel_boxes(d, t0, span, budget, len(streams))
    bands = _bands(a, d, max(50, budget // 16), detail_end)

    lanes: list[str] = [esc(lbl) for lbl, _lvl, _runs in bands]
    has_comm = bool((d["role"] == "comm").any())
    exposed_y = len(lanes)
    if has_comm:
        lanes.append("<b>exposed comm</b>")
    stream_y = {s: len(lanes) + i for i, s in enumerate(streams)}
    text_of = dict(d.select("stream", "stream_text").unique("stream").iter_rows())
    lanes += [f"{esc(text_of.get(s, s))} · {esc(stream_role.get(s, ''))}" for s in streams]

    traces: list[dict] = [_band_trace(lbl, level, runs, float(y), t0, span, detail_end)
                          for y, (lbl, level, runs) in enumerate(bands)]  # drawn first: below the rest

    # kernels, one trace per category (legend entries, grouped by role)
    cats = boxes.group_by("category", "role").agg(pl.col("n").sum()).to_dicts()
    time_by_cat = {c: ct.time_us for c, ct in g.categories.items()}
    cats.sort(key=lambda c: (ROLE_ORDER.get(c["role"], 3), -time_by_cat.get(c["category"], 0.0)))
    for c in cats:
        sel = boxes.filter(pl.col("category") == c["category"])
        ts, end = sel["ts"].to_numpy(), sel["end"].to_numpy()
        y = np.array([stream_y[s] for s in sel["stream"].to_list()], dtype=float)
        color = category_color(c["category"], c["role"])
        alpha = sel["alpha"].to_numpy()
        colors = color if (alpha >= 1).all() else [color if x >= 1 else rgba(color, x) for x in alpha]
        traces.append(_bar(esc(c["category"]), y, (ts - t0) / 1000, (end - ts) / 1000, sel["hover"].to_list(),
                           colors, legendgroup=c["role"], legendgrouptitle={"text": c["role"]}))

    # exposed communication: comm not covered by any compute, on its own lane and on each comm stream
    if has_comm:
        comp = d.filter(pl.col("role") == "compute")
        comp_iv = (comp["ts"].to_numpy(), comp["end"].to_numpy())
        comm = d.filter(pl.col("role") == "comm")
        cap = max(100, budget // 4)
        res = r or span / 2000
        es, ee, pieces, cov = _reduce_intervals(*iv.subtract((comm["ts"].to_numpy(), comm["end"].to_numpy()),
                                                             comp_iv), cap, res, detail_end)
        hover = [f"<b>exposed communication</b><br>{_fmt_us(c)}" + (f" in {p} pieces" if p > 1 else "")
                 + f"<br>from {(s - t0) / 1000:.3f} ms" for s, c, p in zip(es, cov, pieces)]
        traces.append(_bar("exposed communication", float(exposed_y), (es - t0) / 1000, (ee - es) / 1000, hover,
                           _density_colors(EXPOSED, es, ee, cov, span), legendgroup="exposed",
                           legendgrouptitle={"text": "not hidden by compute"}))
        ys, bs, xs, hs, cs = [], [], [], [], []
        for s in streams:
            on_s = comm.filter(pl.col("stream") == s)
            if on_s.height == 0:
                continue
            a_s, a_e, pieces, cov = _reduce_intervals(*iv.subtract((on_s["ts"].to_numpy(), on_s["end"].to_numpy()),
                                                                   comp_iv), cap, res, detail_end)
            ys.append(np.full(a_s.size, float(stream_y[s])))
            bs.append((a_s - t0) / 1000)
            xs.append((a_e - a_s) / 1000)
            hs += [f"<b>exposed</b> (stream {s})<br>{_fmt_us(c)}" for c in cov]
            cs += _density_colors(EXPOSED, a_s, a_e, cov, span)
        if ys:
            traces.append(_bar("exposed (on its stream)", np.concatenate(ys), np.concatenate(bs), np.concatenate(xs),
                               hs, cs, width=KERNEL_WIDTH / 2, offset=0.0, legendgroup="exposed", showlegend=False))

    n_lanes = len(lanes)
    n_legend = len(cats) + (1 if has_comm else 0)
    legend_px = 21 * n_legend + 34 * (len({c["role"] for c in cats}) + (1 if has_comm else 0))
    layout = {
        "title": {"text": f"<b>{label}</b> timeline" + (f"<span style='font-size:12px;color:#5f6b7a'> · "
                                                           f"{subtitle}</span>" if subtitle else ""), "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        "barmode": "overlay",
        "height": 100 + max(34 * n_lanes, legend_px),
        "margin": {"l": 150, "r": 20, "t": 50, "b": 50},
        "xaxis": {"title": {"text": "ms since this GPU's first event"}, "zeroline": False,
                  "showgrid": True, "gridcolor": "#eeeeee", "range": [0, span / 1000]},
        "yaxis": {"tickvals": list(range(n_lanes)), "ticktext": lanes, "fixedrange": True, "showgrid": False,
                  "zeroline": False, "range": [n_lanes - 0.5, -0.5]},
        "hovermode": "closest",
        "hoverlabel": {"align": "left", "font": {"size": 12}},
        "legend": {"groupclick": "toggleitem", "tracegroupgap": 8, "font": {"size": 11}},
        "uniformtext": {"minsize": 9, "mode": "hide"},
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
    }
    notes = [lane_note] if lane_note else []
    if merged_kernels:
        detail_ms = (detail_end - t0) / 1000
        layout["shapes"] = [{"type": "rect", "xref": "x", "yref": "paper", "x0": 0, "x1": detail_ms, "y0": 0, "y1": 1,
                             "fillcolor": "rgba(59,111,182,0.07)", "line": {"width": 0}, "layer": "below"}]
        layout["annotations"] = [{"text": "kernel by kernel", "xref": "x", "yref": "paper", "x": detail_ms, "y": 1.0,
                                  "xanchor": "right", "yanchor": "bottom", "showarrow": False,
                                  "font": {"size": 11, "color": "#3b6fb6"}}]
        kept = d.height - merged_kernels
        notes.append(f"the first {detail_ms:,.3f} ms are drawn kernel by kernel, with segment bands (shaded; zoom "
                     f"in there); after that, "
                     f"{merged_kernels:,} of {d.height:,} kernels shorter than {_fmt_us(r)} are merged into one box "
                     f"per stream and {_fmt_us(r)} of time, colored by the category that took most of it, as opaque "
                     f"as it was busy (hover shows the mix); {kept:,} kernels are drawn one by one")
    return Timeline(figure={"data": traces, "layout": layout}, kernels=d.height, boxes=boxes.height,
                    merged_kernels=merged_kernels, resolution_us=r, notes=notes)


def _band_trace(lbl: str, level: str, runs: pl.DataFrame, y: float, t0: float, span: float,
                detail_end: float | None) -> dict:
    """One band lane: a bar per run, labelled where it is wide enough to read."""
    mid, its, lys, phs = (runs[c].to_list() for c in ("microbatch", "iteration", "layer", "phase"))
    ts, end, n = runs["ts"].to_numpy(), runs["end"].to_numpy(), runs["n"].to_list()
    wide = ((end - ts) >= span / 250) | (ts < (detail_end if detail_end is not None else np.inf))
    if level == "layer":
        text = [f"L{esc(x)}" if w else "" for x, w in zip(lys, wide)]
        colors = ["#c9d8ee" if i % 2 == 0 else "#e3ebf6" for i in range(runs.height)]
        hover = [f"<b>{esc(m)} · iteration {esc(it)} · layer {esc(ly)}</b><br>{_fmt_us(e - s)}, {k} kernels"
                 for m, it, ly, s, e, k in zip(mid, its, lys, ts, end, n)]
    else:
        text = [esc(x) if w else "" for x, w in zip(phs, wide)]
        colors = [_phase_fill(x) for x in phs]
        hover = [f"<b>{esc(m)} · {esc(ph)}</b> (iteration {esc(it)}, layer {esc(ly)})<br>{_fmt_us(e - s)}, {k} kernels"
                 for m, ph, it, ly, s, e, k in zip(mid, phs, its, lys, ts, end, n)]
    return _bar(lbl, y, (ts - t0) / 1000, (end - ts) / 1000, hover, colors, width=BAND_WIDTH, text=text,
                textposition="inside", insidetextanchor="middle", textangle=0,
                textfont={"size": 10, "color": "#333"}, showlegend=False,
                marker={"color": colors, "line": {"width": 0}})
