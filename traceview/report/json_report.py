"""The ``--format json`` document: a stable, documented schema (docs/json-schema.md)."""

from __future__ import annotations

from typing import Any

from ..analysis import TraceAnalysis
from ..errors import TraceError

SCHEMA = "traceview.analyze/1"


#: every ``--by`` view (a saved document serves ``gate --per`` of any of them)
SEGMENT_VIEWS = ("microbatch", "layer", "phase", "iteration", "stage", "stage-phase")


def _rows(df) -> list[dict]:
    rows = []
    for r in df.to_dicts():
        cats = {k[4:]: v for k, v in r.items() if k.startswith("cat:") and v}
        row = {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items() if not k.startswith("cat:")}
        row["categories"] = cats
        rows.append(row)
    return rows


def segments_dict(a: TraceAnalysis, views=SEGMENT_VIEWS) -> dict[str, Any]:
    seg = a.segmentation
    return {"sources": seg.sources, "summary": seg.summary(), **{f"by_{v.replace('-', '_')}": _rows(a.segments(v)) for v in views}}


def _gpu_dict(a: TraceAnalysis, g) -> dict[str, Any]:
    """The GPU's totals, its means per iteration and the verdict sentences (as the terminal says them)."""
    from .verdict import severity, verdict_lines

    d = g.to_dict()
    d["device_name"] = a.trace.given_name(g.device)  # the pid's string, when it was one
    d["per_iteration"] = a.iteration_summary(g.device)
    d["verdict"] = verdict_lines(a, g)
    d["severity"] = severity(a, g)
    return d


def trace_dict(a: TraceAnalysis, with_segments: bool = True) -> dict[str, Any]:
    t = a.trace
    extra = {}
    if with_segments:
        extra = {"segments": segments_dict(a), "overlap_tax": a.overlap_tax().to_dicts(),
                 "overlap_tax_notes": a.overlap_tax_notes(),
                 "iterations": a.iterations.to_dicts()}
    return {
        "file": str(t.path),
        "rank": t.rank,
        "world_size": t.world_size,
        "warnings": list(t.warnings),
        "health": [h.to_dict() for h in a.health],
        "gpus": [_gpu_dict(a, g) for g in a.gpus],
        "unclassified": [
            {"name": n, "time_us": tu, "count": c} for n, tu, c in a.unclassified().iter_rows()
        ],
        **extra,
    }


def analysis_document(results: list[TraceAnalysis | TraceError], extra: dict | None = None,
                      with_segments: bool = True, run=None) -> dict[str, Any]:
    """``run``: the RunAnalysis of the files when there are several (the ``run`` object)."""
    from .. import __version__

    good = [r for r in results if isinstance(r, TraceAnalysis)]
    skew = run.skew_table() if run is not None and run.cross_rank else None
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "traceview_version": __version__,
        "traces": [trace_dict(r, with_segments) for r in good],
        "errors": [{"file": e.path, "error": e.reason} for e in results if isinstance(e, TraceError)],
        "run": run.to_dict() if run is not None else None,
        "skew": {"by_category": skew.to_dicts()} if skew is not None and skew.height else None,
        "skew_caveats": ([run.reason] if run.reason else []) + run.caveats if run is not None else [],
    }
    if extra:
        doc.update(extra)
    return doc
