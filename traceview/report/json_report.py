"""The ``--format json`` document: a stable, documented schema (docs/json-schema.md)."""

from __future__ import annotations

from typing import Any

from ..analysis import TraceAnalysis
from ..errors import TraceError

SCHEMA = "traceview.analyze/1"


def trace_dict(a: TraceAnalysis) -> dict[str, Any]:
    t = a.trace
    return {
        "file": str(t.path),
        "rank": t.rank,
        "world_size": t.world_size,
        "warnings": list(t.warnings),
        "gpus": [g.to_dict() for g in a.gpus],
        "unclassified": [
            {"name": n, "time_us": tu, "count": c} for n, tu, c in a.unclassified().iter_rows()
        ],
    }


def analysis_document(results: list[TraceAnalysis | TraceError], extra: dict | None = None) -> dict[str, Any]:
    from .. import __version__

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "traceview_version": __version__,
        "traces": [trace_dict(r) for r in results if isinstance(r, TraceAnalysis)],
        "errors": [{"file": e.path, "error": e.reason} for e in results if isinstance(e, TraceError)],
    }
    if extra:
        doc.update(extra)
    return doc
