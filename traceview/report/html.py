"""The self-contained HTML overlap report (``traceview report``).

One file that opens offline: plotly.js is inlined, the figures travel as one JSON block
that a short script hands to ``Plotly.newPlot``; nothing is fetched.  A Content Security
Policy allows only those two scripts (by hash) and no network access at all, so even a
string that escaped escaping could not run or phone home.

Every string that comes from a trace (file names, kernel names, annotation labels) is
HTML-escaped where the page shows it, and inside the figures too (plotly renders HTML
entities as text).  The JSON block has ``<``, ``>`` and ``&`` written as ``\\u003c``...,
so no string in it can close the ``<script>`` element that holds it.

Sections: header (what was analyzed, one verdict per GPU), per-GPU timelines, per
micro-batch and per layer bars, category breakdown, top and unclassified kernels, and
measured-vs-modeled budget reconciliation when a model and GPU are given.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from .. import __version__
from ..analysis import TraceAnalysis
from .html_charts import category_figure, layer_figure, microbatch_figure, reconciliation_figure
from .html_style import EXPOSED, category_color, esc, ms, pct
from .html_timeline import gpu_timeline
from ..classify.names import demangle
from .terminal import gpu_label
from .verdict import BAD_SHARE, WARN_SHARE, severity, verdict, verdict_lines
from .text import short_kernel_name, word

DEFAULT_MAX_EVENTS = 20_000
MIN_BOXES_PER_GPU = 500
UNCLASSIFIED_ROWS = 25
TOP_KERNELS = 15


@dataclass
class Report:
    """The page and what it took to build it (for the CLI and tests)."""

    html: str
    figures: int
    boxes: int                                  # kernel boxes drawn in all timelines
    kernels: int                                # kernels in the analyzed traces
    reduced: bool                               # some timeline merged kernels
    notes: list[str] = field(default_factory=list)


def plotly_js() -> str:
    """plotly.js from the installed plotly package (inlined; never a CDN)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    # a literal '</script' would end the element early; plotly.min.js has none, but make sure
    return js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no '<', '>', '&' or line separators
    appear literally (they are \\u-escaped, which JSON.parse reads back unchanged)."""
    raw = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    return (raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_BOOT = """(function () {
  var t0 = performance.now();
  var figs = JSON.parse(document.getElementById('tv-figures').textContent);
  var config = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['select2d', 'lasso2d'],
                toImageButtonOptions: {format: 'png', scale: 2}};
  Object.keys(figs).forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { Plotly.newPlot(el, figs[id].data, figs[id].layout, config); }
  });
  document.body.setAttribute('data-render-ms', String(Math.round(performance.now() - t0)));
  document.body.setAttribute('data-plots-ready', String(Object.keys(figs).length));
})();"""


def _csp(*scripts: str) -> str:
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    return (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data: blob:; "
            "font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")


_CSS = """
:root { --fg:#1d2733; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f6f8fb; --card:#ffffff; --red:#e3001b;
        --amber:#b86e00; --green:#1d7a46; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
       "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1480px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: var(--muted); margin: 0 0 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
        margin: 12px 0; box-shadow: 0 1px 2px rgba(20,30,50,.04); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; word-break: break-all; }
.verdicts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
.verdict { border-left: 6px solid var(--green); }
.verdict.warn { border-left-color: #f0a020; } .verdict.bad { border-left-color: var(--red); }
.verdict.none { border-left-color: #9aa5b1; }
.verdict .more { font-size: 13px; color: var(--muted); margin: 0 0 4px; }
.legend .sw { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 8px; border-radius: 2px; background: var(--green); }
.legend .sw.warn { background: #f0a020; } .legend .sw.bad { background: var(--red); } .legend .sw.none { background: #9aa5b1; }
.verdict .who { font-weight: 600; } .verdict .what { font-size: 15px; margin: 2px 0 8px; }
.kpis { display: flex; flex-wrap: wrap; gap: 6px 18px; color: var(--muted); font-size: 13px; }
.kpis b { color: var(--fg); font-variant-numeric: tabular-nums; }
.kpis .exp b { color: var(--red); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 9px;  border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f0f3f8; font-weight: 600; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfd; }
.k { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
       font-size: 12px; word-break: break-all; }
td.c { white-space: nowrap; }
.chip { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px;
        vertical-align: -1px; }
.note { background: #fff8e6; border: 1px solid #f1d48a; border-radius: 6px; padding: 8px 12px; margin: 10px 0;
        font-size: 13px; }
.warn-list { color: #8a5a00; font-size: 13px; }
.plot { width: 100%; }
.muted { color: var(--muted); }
.exposed { color: var(--red); font-weight: 600; }
.scroll { max-height: 520px; overflow: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


#: where the next figure of a fragment goes
FIGURE = "<!--figure-->"


@dataclass
class Fragment:
    """A part of the page: HTML pieces (``FIGURE`` where each figure goes) and those figures.

    Figures get their element ids only when the page is assembled, so a fragment rendered
    elsewhere (a worker process, a Ray task on the node holding the rank's file) fits any page.
    """

    parts: list[str] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    boxes: int = 0                              # kernel boxes drawn in its timelines
    kernels: int = 0                            # kernels of its traces
    notes: list[str] = field(default_factory=list)  # timelines that merged kernels
    title: str | None = None                    # the file's name, for a one-file page's title
    problems: list[str] = field(default_factory=list)  # what --strict fails on (loader warnings, trace health)

    def add(self, html_text: str) -> None:
        self.parts.append(html_text)

    def figure(self, fig: dict) -> None:
        self.parts.append(FIGURE)
        self.figures.append(fig)

    def extend(self, other: "Fragment") -> None:
        self.parts += other.parts
        self.figures += other.figures
        self.boxes += other.boxes
        self.kernels += other.kernels
        self.notes += other.notes


def _per_gpu_budget(max_events: int, n_gpus: int) -> int:
    return max(max_events // max(1, n_gpus), min(max_events, MIN_BOXES_PER_GPU))


def render_html(results: list[TraceAnalysis], *, max_events: int = DEFAULT_MAX_EVENTS,
                reconciliations: dict[int, Any] | None = None, budget_note: str | None = None,
                title: str | None = None, run=None, generated: str | None = None) -> Report:
    """Build the report page for analyzed traces (one per rank), all of them in detail.

    ``max_events`` is shared among the GPUs' timelines, each getting at least
    ``min(max_events, MIN_BOXES_PER_GPU)`` boxes;
    ``reconciliations`` maps ``id(analysis)`` to a reconciliation result (an object with a
    ``summary`` table, or a polars DataFrame), ``budget_note`` says why there is none.
    A run of many ranks is reported by ``report.run_report.report_run`` instead: the run page
    from summaries, detail for the ranks a reader needs.
    """
    if not results:
        raise ValueError("no analyses to report")
    budget = _per_gpu_budget(max_events, sum(len(a.gpus) for a in results))
    title = title or ("traceview report · " + (results[0].trace.name if len(results) == 1
                                               else f"{len(results)} traces"))
    head = Fragment()
    head.add(_header(results))
    head.add(_warnings(results))
    details = [(None if len(results) == 1 else _detail_heading(a.trace.name, a.rank, None),
                detail_fragment(a, budget, max_events, (reconciliations or {}).get(id(a)),
                                budget_note if reconciliations is None or id(a) not in reconciliations else None,
                                budget_asked=reconciliations is not None or budget_note is not None))
               for a in results]
    return assemble(title, head, run, details, generated=generated)


def _detail_heading(name: str, rank: int | None, why: str | None) -> str:
    who = f"rank {rank}" if rank is not None else "no rank"
    return (f'<h2 class="rank-detail" id="detail-{esc(str(rank) if rank is not None else name)}">Detail: {who} · '
            f'{esc(name)}{" · " + esc(why) if why else ""}</h2>')


def detail_fragment(a: TraceAnalysis, boxes_per_gpu: int, max_events: int, reconciliation: Any = None,
                    budget_note: str | None = None, budget_asked: bool = False) -> Fragment:
    """One trace file in detail (verdicts, tables, timelines, segments, categories, kernels,
    budget): what needs its event table, so it is rendered where the file is read."""
    page = Fragment()
    page.add(_verdicts([a]))
    page.add(_gpu_table([a]))
    page.add(_iterations([a]))
    reduced_slot = len(page.parts)
    page.add("")  # filled below when a timeline was reduced
    page.add("<h2>Timeline</h2>")
    page.add('<p class="sub">One lane per stream; kernels colored by category (compute in cool '
             'colors, communication in warm ones). <span class="chip" style="background:'
             f'{EXPOSED}"></span><span class="exposed">Exposed communication</span> is on its own lane and as a red strip under the '
             'communication kernels it belongs to. Bands on top: micro-batch, layer and phase stretches '
             '(from annotations or inferred). Drag to zoom, double-click to reset, click legend entries to hide.</p>')
    for g in a.gpus:
        tl = gpu_timeline(a, g, boxes_per_gpu, label=esc(_gpu_name(a, g)), subtitle=esc(verdict(a, g)))
        page.boxes += tl.boxes
        page.kernels += tl.kernels
        page.figure(tl.figure)
        page.notes += [f"{_gpu_name(a, g)}: {n}" for n in tl.notes]
    if page.notes:
        page.parts[reduced_slot] = ('<div class="note"><b>Reduced timeline.</b> This trace has more kernels than '
                                    f'the report draws one by one (<code>--max-events {max_events:,}</code>): '
                                    + "; ".join(esc(n) for n in page.notes)
                                    + ". Every number, bar and table below is computed from all kernels.</div>")
    _segments(page, [a])
    _categories(page, [a])
    _kernels(page, [a])
    if budget_asked:
        _reconciliation(page, [a], None if reconciliation is None else {id(a): reconciliation}, budget_note)
    return page


def assemble(title: str, head: Fragment, run, details: list[tuple[str | None, "Fragment | str"]],
             detail_note: str = "", generated: str | None = None) -> Report:
    """The page: title, ``head`` (what was analysed, loader warnings), the run's sections
    (``html_run``: from the summaries of every rank), then each detail fragment under its
    heading (or a note where a detail could not be rendered)."""
    from .html_run import run_sections

    page = Fragment()
    page.add(f"<h1>{esc(title)}</h1>")
    page.add('<p class="sub">Where the GPU time went, and how much communication compute did not hide. '
             'Exposed communication (<span class="exposed">red</span>) is communication that ran while no '
             'compute kernel ran on the same GPU.</p>')
    page.extend(head)
    run_parts, run_figures = run_sections(run)
    page.extend(Fragment(run_parts, run_figures))
    page.add(_skew(run))
    if run_parts:
        page.add('<h2>Per-rank detail</h2><p class="sub">Each rank on its own, on its own clock.'
                 f'{" " + detail_note if detail_note else ""}</p>')
    for heading, frag in details:
        if heading:
            page.add(heading)
        if isinstance(frag, Fragment):
            page.extend(frag)
        else:
            page.add(f'<div class="note"><b>No detail.</b> {esc(frag)}</div>')
    when = generated or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page.add(f'<footer>traceview {esc(__version__)} · generated {esc(when)}'
             ' · definitions: busy(role) = union of that role\'s kernel intervals on a GPU (all streams); '
             'overlap = |comm ∩ compute|; exposed comm = |comm \\ compute|; span = last end − first start.</footer>')
    body, figures = [], {}
    for part in page.parts:
        if part == FIGURE:
            fid = f"fig{len(figures)}"
            fig = page.figures[len(figures)]
            figures[fid] = fig
            h = int(fig.get("layout", {}).get("height", 400))
            part = f'<div class="card"><div id="{fid}" class="plot" style="height:{h}px"></div></div>'
        body.append(part)
    plotly = plotly_js()
    data = json_for_script(figures)
    html_text = "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(plotly, _BOOT)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>\n",
        "\n".join(p for p in body if p),
        "\n</main>\n",
        f'<script type="application/json" id="tv-figures">{data}</script>\n',
        f"<script>{plotly}</script>\n<script>{_BOOT}</script>\n</body></html>\n",
    ])
    return Report(html=html_text, figures=len(figures), boxes=page.boxes, kernels=page.kernels,
                  reduced=bool(page.notes), notes=page.notes)


def write_html(results: list[TraceAnalysis], path, **kwargs) -> Report:
    """Render and write the report to ``path`` (UTF-8)."""
    rep = render_html(results, **kwargs)
    with open(path, "w", encoding="utf-8") as f:
        f.write(rep.html)
    return rep


# --- sections ---------------------------------------------------------------------------

def _gpu_name(a: TraceAnalysis, g) -> str:
    name = f" · {g.name}" if g.name else ""
    return f"{gpu_label(a, g.device)}{name}"


def _header(results: list[TraceAnalysis]) -> str:
    files = [a.trace.name for a in results]
    shown = ", ".join(esc(f) for f in files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    ranks = sorted({a.rank for a in results if a.rank is not None})
    ws = sorted({a.trace.world_size for a in results if a.trace.world_size})
    rank_text = (", ".join(map(str, ranks)) if ranks else "unknown") + (f" of world size {ws[0]}" if len(ws) == 1 else "")
    names: dict[str, int] = {}
    for a in results:
        for g in a.gpus:
            names[g.name or "unknown GPU"] = names.get(g.name or "unknown GPU", 0) + 1
    gpu_text = ", ".join(f"{n} × {esc(k)}" for k, n in names.items())
    iters, sources = [], set()
    for a in results:
        s = a.segmentation.summary()
        iters.append(s["iterations"])
        sources.update(f"{lvl}: {src}" for lvl, src in s["sources"].items() if src != "none")
    it_text = str(iters[0]) if len(set(iters)) == 1 else " / ".join(map(str, iters)) + " (per trace)"
    spans = [g.span_us for a in results for g in a.gpus]
    window = (f"{ms(min(spans))} – {ms(max(spans))} ms of GPU activity per GPU" if len(set(spans)) > 1
              else f"{ms(spans[0])} ms of GPU activity")
    first = min(g.start_us for a in results for g in a.gpus)
    last = max(g.end_us for a in results for g in a.gpus)
    window += f" (trace clock {first / 1e6:,.6f} s → {last / 1e6:,.6f} s)"
    events = sum(a.kernels.height for a in results)
    rows = [("files", shown), ("ranks", rank_text), ("GPUs", gpu_text), ("iterations", esc(it_text)),
            ("time window", window), ("GPU events", f"{events:,}"),
            ("segments from", esc(", ".join(sorted(sources))) or "–")]
    return '<div class="card"><dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl></div>"


def _verdicts(results: list[TraceAnalysis]) -> str:
    """One card per GPU: the verdict sentences, coloured by what the iteration loses (legend below)."""
    cards = []
    for a in results:
        for g in a.gpus:
            cls = {"ok": "", "warn": "warn", "bad": "bad", "none": "none"}[severity(a, g)]
            s = a.iteration_summary(g.device) or {}
            per = " ms/iter" if s.get("iterations") else " ms"
            kpis = [("iteration" if s.get("iterations") else "span", s.get("duration_us", g.span_us)),
                    ("compute", s.get("compute_us", g.compute_us)), ("comm", s.get("comm_us", g.comm_us))]
            k_html = "".join(f"<span>{k} <b>{ms(v)}</b>{per}</span>" for k, v in kpis)
            k_html += f'<span class="exp">exposed <b>{ms(s.get("exposed_comm_us", g.exposed_comm_us))}</b>{per}</span>'
            k_html += f"<span>idle <b>{ms(s.get('idle_us', g.idle_us))}</b>{per}</span>"
            k_html += f"<span>no kernel queued <b>{ms(s.get('idle_no_queue_us', 0.0))}</b>{per}</span>"
            first, *rest = verdict_lines(a, g)
            more = "".join(f'<div class="more">{esc(line)}</div>' for line in rest)
            cards.append(f'<div class="card verdict {cls}"><div class="who">{esc(_gpu_name(a, g))}</div>'
                         f'<div class="what">{esc(first)}</div>{more}<div class="kpis">{k_html}</div></div>')
    legend = (f'<p class="sub legend">Card colour: the share of the iteration lost to exposed communication plus '
              f'idle time with no kernel queued: <span class="sw bad"></span>more than {BAD_SHARE:.0%}, '
              f'<span class="sw warn"></span>more than {WARN_SHARE:.0%}, <span class="sw ok"></span>less; '
              f'<span class="sw none"></span>no data. (Not exposed ÷ communication: a little exposed '
              f'communication in a long iteration costs little.)</p>')
    return '<div class="verdicts">' + "".join(cards) + "</div>" + legend


def _iterations(results: list[TraceAnalysis]) -> str:
    """Per GPU and iteration: duration, compute, exposed comm, idle (no kernel queued), the what-if."""
    headers = [("gpu", False), ("iteration", False), ("duration ms", True), ("compute", True), ("comm", True),
               ("exposed comm", True), ("idle", True), ("no kernel queued", True),
               ("if exposed comm were hidden", True), ("kernels", True)]
    rows = []
    for a in results:
        for r in a.iterations.head(200).iter_rows(named=True):
            rows.append([esc(gpu_label(a, r["device"])), esc(r["iteration"]), ms(r["duration_us"]),
                         ms(r["compute_us"]), ms(r["comm_us"]),
                         f'<span class="exposed">{ms(r["exposed_comm_us"])}</span>', ms(r["idle_us"]),
                         ms(r["idle_no_queue_us"]), ms(r["if_hidden_us"]), f'{r["kernels"]:,}'])
    return ("<h3>Iterations (ms)</h3><p class=\"sub\">Each iteration from its first kernel to the next one's first "
            "kernel; <i>no kernel queued</i>: idle while nothing had been launched, the GPU waited for the CPU.</p>"
            + _table(headers, rows))


def _table(headers: list[tuple[str, bool]], rows: list[list[str]], cls: str = "") -> str:
    """headers: (label, numeric); cells are already-escaped HTML."""
    head = "".join(f'<th class="{"n" if num else ""}">{h}</th>' for h, num in headers)
    body = "".join("<tr>" + "".join(f'<td class="{"n" if num else ""}">{c}</td>'
                                    for c, (_h, num) in zip(r, headers)) + "</tr>" for r in rows)
    return f'<div class="card {cls}"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _gpu_table(results: list[TraceAnalysis]) -> str:
    headers = [("trace", False), ("rank", True), ("gpu", True), ("span ms", True), ("busy", True),
               ("compute", True), ("comm", True), ("hidden comm", True), ("exposed comm", True),
               ("exposed % of comm", True), ("memory", True), ("idle", True)]
    rows = []
    for a in results:
        for g in a.gpus:
            rows.append([esc(a.trace.name), "–" if a.rank is None else str(a.rank), esc(a.trace.device_text(g.device)),
                         ms(g.span_us),
                         ms(g.busy_us), ms(g.compute_us), ms(g.comm_us), ms(g.overlap_us),
                         f'<span class="exposed">{ms(g.exposed_comm_us)}</span>', pct(g.exposed_comm_ratio),
                         ms(g.memory_us), ms(g.idle_us)])
    return "<h3>GPU time (ms)</h3>" + _table(headers, rows)


def _skew(run) -> str:
    """Per collective category, how long ranks waited for each other (a run of 2+ ranks)."""
    if run is None or not run.cross_rank:
        return ""
    skew = run.skew_table()
    if skew.height == 0:
        return ""
    waits = [c for c in skew.columns if c.startswith("wait_us_")]
    headers = [("category", False), ("collectives", True), ("mean skew ms", True), ("max skew ms", True)]
    headers += [(f"rank {esc(c[8:])} waiting ms (% of its time in them)", True) for c in waits]
    rows = []
    for r in skew.iter_rows(named=True):
        row = [esc(r["category"]), f'{r["collectives"]:,}', ms(r["mean_skew_us"]), ms(r["max_skew_us"])]
        row += [f'{ms(r[c])} ({pct(r.get("wait_share_" + c[8:]))})' for c in waits]
        rows.append(row)
    return ("<h3>Waiting for a peer: collective skew between ranks</h3>"
            '<p class="sub">For the same collective on every rank, how much later the last rank arrived than the '
            "first (clocks aligned). A rank that arrives early waits inside the communication kernel: "
            "that time looks like communication but moves no data.</p>" + _table(headers, rows))


def _warnings(results: list[TraceAnalysis]) -> str:
    items = [f"<li>{esc(a.trace.name)}: {esc(w)}</li>" for a in results for w in a.trace.warnings]
    items += [f"<li>{esc(a.trace.name)}: trace health: {esc(h.message)}</li>" for a in results for h in a.health]
    return f'<div class="note"><b>Loader warnings</b><ul class="warn-list">{"".join(items)}</ul></div>' if items else ""


def _segments(page: Fragment, results: list[TraceAnalysis]) -> None:
    page.add("<h2>Micro-batches and layers</h2>")
    page.add('<p class="sub">Per group: compute time (union of its compute kernels) beside its communication, '
             'split into the part that ran under <i>any</i> compute on the GPU (hidden) and the part that did not '
             '(<span class="exposed">exposed</span>). With two-batch overlap, one micro-batch\'s communication '
             'hides under the other\'s compute.</p>')
    items = []
    for a in results:
        mb = a.segments("microbatch")
        for g in a.gpus:
            items.append((esc(gpu_label(a, g.device)), mb.filter(pl.col("device") == g.device)))
    fig = microbatch_figure(items)
    if fig:
        page.figure(fig)
    for a in results:
        for note in a.segmentation.approximate:
            page.add(f'<p class="muted">{esc(a.trace.name)}: approximate: {esc(note)}</p>')
    any_layer = False
    for a in results:
        src = a.segmentation.sources
        if src.get("layer", "none") == "none":
            continue
        lay = a.segments("layer")
        for g in a.gpus:
            fig, _iters = layer_figure(esc(_gpu_name(a, g)), lay.filter(pl.col("device") == g.device))
            if fig:
                any_layer = True
                page.figure(fig)
    if not any_layer:
        srcs = "; ".join(f"{esc(a.trace.name)}: layer {esc(a.segmentation.sources.get('layer', 'none'))}"
                         for a in results)
        page.add(f'<p class="muted">No layer segmentation found ({srcs}): annotate layers with '
                 "<code>record_function(\"layer.N\")</code> or see <code>--segments</code> in "
                 "<code>traceview analyze</code>.</p>")


def _categories(page: Fragment, results: list[TraceAnalysis]) -> None:
    page.add("<h2>Kernel categories</h2>")
    gpus = [(esc(gpu_label(a, g.device)), g) for a in results for g in a.gpus]
    rules = results[0].rules
    page.figure(category_figure(gpus, rules))
    totals: dict[str, float] = {}
    for _l, g in gpus:
        for c, ct in g.categories.items():
            totals[c] = totals.get(c, 0.0) + ct.time_us
    order = sorted(totals, key=lambda c: -totals[c])
    if len(gpus) <= 4:
        headers = [("category", False), ("role", False)]
        for lbl, _g in gpus:
            headers += [(f"{lbl} ms", True), ("share", True), ("count", True)]
        rows = []
        for c in order:
            row = [_chip(c, rules.role(c)) + esc(c), esc(rules.role(c))]
            for _l, g in gpus:
                ct = g.categories.get(c)
                row += [ms(ct.time_us), pct(ct.share), f"{ct.count:,}"] if ct else ["–", "–", "–"]
            rows.append(row)
    else:
        headers = [("category", False), ("role", False), ("total ms", True), ("mean share", True),
                   ("min share", True), ("max share", True)]
        rows = []
        for c in order:
            shares = [g.categories[c].share if c in g.categories else 0.0 for _l, g in gpus]
            rows.append([_chip(c, rules.role(c)) + esc(c), esc(rules.role(c)), ms(totals[c]),
                         pct(sum(shares) / len(shares)), pct(min(shares)), pct(max(shares))])
    page.add(_table(headers, rows))


def _chip(category: str, role: str) -> str:
    return f'<span class="chip" style="background:{category_color(category, role)}"></span>'


def _cat_cell(category: str, role: str) -> str:
    return f'<span style="white-space:nowrap">{_chip(category, role)}{esc(category)}</span>'


def _all_kernels(results: list[TraceAnalysis]) -> pl.DataFrame:
    return pl.concat([a.kernels.select(pl.col("name").cast(pl.Utf8), pl.col("category").cast(pl.Utf8),
                                       pl.col("role").cast(pl.Utf8), "dur") for a in results])


def _kernels(page: Fragment, results: list[TraceAnalysis]) -> None:
    k = _all_kernels(results)
    total = float(k["dur"].sum()) or 1.0
    top = (k.group_by("name", "category", "role").agg(pl.col("dur").sum().alias("t"), pl.len().alias("n"))
           .sort("t", descending=True)
           .with_columns(pl.col("name").str.slice(0, 1 << 16)))  # (what a cell shows: not a 500 MB name)
    scope = "" if len(results) == 1 else f" (all {len(results)} traces together)"
    page.add(f"<h2>Top kernels{scope}</h2>")
    rows = [[_kernel_cell(n), _cat_cell(c, r), ms(t), f"{cnt:,}", pct(t / total), f"{t / cnt:,.1f}"]
            for n, c, r, t, cnt in top.head(TOP_KERNELS).iter_rows()]
    page.add(_table([("kernel", False), ("category", False), ("ms", True), ("count", True),
                     ("share of kernel time", True), ("mean µs", True)], rows))
    un = top.filter(pl.col("category") == "unclassified")
    page.add("<h2>Unclassified kernels</h2>")
    if un.height == 0:
        page.add('<p class="muted">None: every kernel matched a classification rule.</p>')
        return
    t_un = float(un["t"].sum())
    page.add(f'<p class="sub">{un.height:,} kernel name(s) matched no rule: {ms(t_un)} ms, {pct(t_un / total)} of '
             "kernel time, counted as compute. Add rules with <code>--rules my_rules.toml</code>.</p>")
    rows = [[_kernel_cell(n), ms(t), f"{cnt:,}", pct(t / total)] for n, _c, _r, t, cnt in
            un.head(UNCLASSIFIED_ROWS).iter_rows()]
    more = un.height - UNCLASSIFIED_ROWS
    if more > 0:
        rows.append([f'<span class="muted">… and {more:,} more</span>', ms(float(un["t"][UNCLASSIFIED_ROWS:].sum())),
                     f'{int(un["n"][UNCLASSIFIED_ROWS:].sum()):,}', ""])
    page.add(_table([("kernel", False), ("ms", True), ("count", True), ("share of kernel time", True)], rows))


def _kernel_cell(name: str) -> str:
    full = demangle(name)  # the whole signature on hover, demangled
    full = full if len(full) <= 2000 else full[:2000] + "…"
    return f'<span class="k" title="{esc(full)}">{esc(short_kernel_name(name, 140))}</span>'


def _reconciliation(page: Fragment, results: list[TraceAnalysis], recs: dict[int, Any] | None,
                    note: str | None) -> None:
    if recs is None and note is None:
        return
    page.add("<h2>Budget reconciliation</h2>")
    if not recs:
        page.add(f'<p class="note">Reconciliation unavailable{": " + esc(note) if note else ""}.</p>')
        return
    page.add('<p class="sub">Per budget class, ms per iteration: measured kernel time; the budget model for the '
             "shapes read from the trace; the roofline bound (FLOPs at peak or bytes at peak bandwidth, whichever is "
             "slower). Efficiency = roofline bound ÷ measured; model ÷ measured compares with the model. See docs/budget.md "
             "and the vocabulary in docs/metrics.md.</p>")
    for a in results:
        rec = recs.get(id(a))
        if rec is None:
            continue
        summary = rec if isinstance(rec, pl.DataFrame) else getattr(rec, "summary", None)
        if not isinstance(summary, pl.DataFrame):
            continue
        what = ""
        if hasattr(rec, "model") and hasattr(rec, "gpu"):
            what = f" · {getattr(rec.model, 'name', '')} on {getattr(rec.gpu, 'name', '')}, {getattr(rec, 'phase', '')}"
        title = f"<b>{esc(a.trace.name)}</b>: measured vs modeled{esc(what)} (ms per iteration)"
        fig = reconciliation_figure(summary, title)
        if fig:
            page.figure(fig)
        if hasattr(rec, "table"):  # the columns, warnings and notes the terminal prints, in its words
            page.add(_frame_table(rec.table()))
            page.add("".join(f'<p>{esc(line)}</p>' for line in rec.serving_lines()))
            page.add("".join(f'<p class="note"><b>warning:</b> {esc(w)}</p>' for w in rec.warnings))
        else:
            page.add(_frame_table(summary))
        if hasattr(rec, "notes"):
            page.add("".join(f'<p class="note">{esc(n)}</p>' for n in rec.notes()))


_RATIO_COLUMNS = ("efficiency", "vs_model")


def _frame_table(df: pl.DataFrame, limit: int = 200, raw_names: bool = False) -> str:
    """Any polars table as an escaped HTML table (ratios as percentages, other floats to 3 decimals);
    ``raw_names`` keeps the column names as the JSON spells them."""
    headers = [(esc(c if raw_names else word(c)), df.schema[c].is_numeric()) for c in df.columns]
    rows = []
    for r in df.head(limit).iter_rows(named=True):
        cells = []
        for c, v in r.items():
            if v is None or (isinstance(v, float) and v != v):
                cells.append("–")
            elif c in _RATIO_COLUMNS or c.endswith(("_ratio", "_share")):
                cells.append(pct(v))
            elif isinstance(v, float):
                cells.append(f"{v:,.3f}")
            elif isinstance(v, int):
                cells.append(f"{v:,}" if c != "device" else str(v))
            else:
                cells.append(esc(word(v) if c == "class" else v))
        rows.append(cells)
    return _table(headers, rows)
