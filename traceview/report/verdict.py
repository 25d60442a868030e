"""The answer for one GPU, in words: iteration time, what costs it, and the what-if.

Terminal, HTML and ``--format json`` all read these sentences and the ``severity`` from here,
so the three never disagree.  Severity follows what costs time (exposed communication and
host-bound idle as a share of the iteration), never exposed ÷ communication: 0.1 ms exposed of
a 100 ms iteration is fine even when it is all of the communication.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..segment import NONE

if TYPE_CHECKING:
    from ..analysis import TraceAnalysis
    from ..metrics import GpuMetrics

#: share of the iteration lost to exposed communication + idle with no kernel queued
BAD_SHARE, WARN_SHARE = 0.10, 0.03
#: idle with no kernel queued above this share of the iteration: the GPU is host-bound
HOST_BOUND_SHARE = 0.10


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def iteration_words(s: dict) -> str:
    """'iteration 126.2 ms (mean of 2)' or 'whole trace 108.1 ms (no iteration marks)'."""
    if s["iterations"]:
        many = f" (mean of {s['iterations']})" if s["iterations"] > 1 else ""
        return f"iteration {_ms(s['duration_us'])} ms{many}"
    return f"whole trace {_ms(s['duration_us'])} ms (no iteration marks)"


def lost_share(s: dict | None) -> float | None:
    """Exposed communication + no-kernel-queued idle, as a share of the iteration."""
    if not s or s["duration_us"] <= 0:
        return None
    return (s["exposed_comm_us"] + s["idle_no_queue_us"]) / s["duration_us"]


def severity(a: "TraceAnalysis", g: "GpuMetrics") -> str:
    """'bad' | 'warn' | 'ok' | 'none' (no iteration data): the card colour and the terminal style."""
    share = lost_share(a.iteration_summary(g.device))
    if share is None:
        return "none"
    return "bad" if share > BAD_SHARE else "warn" if share > WARN_SHARE else "ok"


def verdict_lines(a: "TraceAnalysis", g: "GpuMetrics") -> list[str]:
    """The sentences for one GPU, most important first."""
    s = a.iteration_summary(g.device)
    if s is None:
        return ["no GPU events"]
    per = "/iter" if s["iterations"] else ""
    of = "of the iteration" if s["iterations"] else "of the trace"
    dur = s["duration_us"]
    head = f"{iteration_words(s)}: compute {_ms(s['compute_us'])} ms{per}"
    if g.comm_us <= 0:
        head += f", idle {_ms(s['idle_us'])} ms{per}; no communication kernels"
    else:
        head += (f", exposed communication {_ms(s['exposed_comm_us'])} ms{per} "
                 f"({_pct(s['exposed_comm_us'] / dur if dur else 0)}), idle {_ms(s['idle_us'])} ms{per}")
        if s["exposed_comm_us"] > 0:
            head += f"; if the exposed communication were hidden: {_ms(s['if_hidden_us'])} ms"
    lines = [head]
    if g.comm_us > 0:
        lines.append(f"communication {_ms(s['comm_us'])} ms{per}, of which "
                     f"{_pct(s['exposed_comm_us'] / s['comm_us']) if s['comm_us'] else '-'} exposed "
                     f"(exposed = ran while no compute kernel ran on this GPU)")
    if dur > 0 and s["idle_no_queue_us"] / dur > HOST_BOUND_SHARE:
        lines.append(f"host-bound: no kernel queued for {_ms(s['idle_no_queue_us'])} ms{per} "
                     f"({_pct(s['idle_no_queue_us'] / dur)} {of}): the GPU waited for the CPU to launch "
                     f"work (CUDA graphs, fewer and larger kernels, or a faster host loop shorten it)")
    elif dur > 0 and s["idle_us"] / dur > HOST_BOUND_SHARE:
        lines.append(f"idle {_pct(s['idle_us'] / dur)} {of}, mostly with kernels queued "
                     f"({_ms(s['idle_queued_us'])} ms{per}): waiting on events or stream dependencies, not the CPU")
    lines.extend(_overlap_cost(a, g, s))
    return lines


def _overlap_cost(a: "TraceAnalysis", g: "GpuMetrics", s: dict) -> list[str]:
    """With two or more micro-batches: what the overlap hides and what it costs."""
    if a.segmentation.num_microbatches < 2 or g.comm_us <= 0:
        return []
    n = max(1, s["iterations"])
    per = "/iter" if s["iterations"] else ""
    mb = a.segments("microbatch").filter((pl.col("device") == g.device) & (pl.col("microbatch") != NONE))
    cover = float(mb["cover_other_mb_us"].fill_nan(0.0).sum()) / n if mb.height else 0.0
    tax = a.overlap_tax().filter(pl.col("device") == g.device)
    if tax.height:
        tax_text = (f"overlap tax {_ms(float(tax['tax_us'].sum()) / n)} ms{per} (kernels beside communication ran "
                    f"slower than alone)")
    else:
        tax_text = "an overlap tax not measured here (" + ("; ".join(a.overlap_tax_notes()) or
                                                           "no kernel compared") + ")"
    mbs = a.segmentation.num_microbatches
    return [f"{mbs} micro-batches: the other micro-batch's compute hides {_ms(cover)} ms{per} of communication; "
            f"it costs {tax_text} and {s['kernels']:.0f} kernel launches{per} (each op launched once per "
            f"micro-batch, on 1/{mbs} of the tokens: smaller GEMMs run less efficiently); whether it pays, "
            f"only a single-batch run tells: traceview diff SINGLE_BATCH_TRACE THIS_TRACE"]


def verdict(a: "TraceAnalysis", g: "GpuMetrics") -> str:
    """The first sentence (timeline subtitles, one-line places)."""
    return verdict_lines(a, g)[0]


def summary_html(a: "TraceAnalysis") -> str:
    """A small HTML block for notebooks: per GPU its verdict sentences and the headline numbers."""
    from html import escape

    from .terminal import gpu_label
    from .text import clean

    rows = []
    for g in a.gpus:
        lines = "".join(f"<li>{escape(clean(x))}</li>" for x in verdict_lines(a, g))
        rows.append(f"<tr><td><b>{escape(gpu_label(a, g.device))}</b></td><td>{g.span_us / 1000:.3f}</td>"
                    f"<td>{g.compute_us / 1000:.3f}</td><td>{g.comm_us / 1000:.3f}</td>"
                    f"<td>{g.exposed_comm_us / 1000:.3f}</td><td>{g.idle_us / 1000:.3f}</td>"
                    f"<td><ul style='margin:0'>{lines}</ul></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("GPU", "span ms", "compute", "comm", "exposed comm", "idle", "verdict"))
    return (f"<div><b>traceview</b> · {escape(clean(a.trace.name))} · rank {a.rank if a.rank is not None else '-'}"
            f" · {a.kernels.height:,} GPU events<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            f"</tbody></table></div>")
