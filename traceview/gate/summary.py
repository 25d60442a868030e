"""What the gate and the diff compare: per-GPU numbers from a trace or from a saved JSON document.

A ``GpuSummary`` holds the measured totals of one GPU (the same numbers ``traceview analyze``
reports), its kernel categories, its per-segment rows and, when it came from a trace, its
kernels grouped by name and launch grid.  Building it from either source lets a baseline be
kept as the small ``analyze --format json`` document instead of a large trace, and lets
``diff`` compare a trace against such a document.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import orjson
import polars as pl

from ..errors import TraceError

if TYPE_CHECKING:
    from ..analysis import TraceAnalysis

ANALYZE_SCHEMA = "traceview.analyze/1"
TOTALS = ("span_us", "busy_us", "compute_us", "comm_us", "memory_us", "overlap_us", "exposed_comm_us",
          "exposed_memory_us", "idle_us")
# segment views kept for comparison, and the key columns that identify a row across runs
# (the iteration is summed away: values are compared per iteration)
SEGMENT_VIEWS = ("microbatch", "layer", "phase")
VIEW_KEYS = {"microbatch": ("microbatch",), "layer": ("layer", "microbatch"), "phase": ("phase",),
             "iteration": ("iteration",), "stage": ("stage",)}
ROW_KEYS = {"microbatch": ("microbatch",), "layer": ("iteration", "layer", "microbatch"), "phase": ("phase",),
            "iteration": ("iteration",), "stage": ("stage",)}


@dataclass
class CategoryStat:
    time_us: float
    count: int


@dataclass
class SegmentRow:
    """One row of ``TraceAnalysis.segments(view)`` (one device, one group)."""

    keys: dict[str, str]
    comm_us: float
    exposed_comm_us: float
    compute_us: float
    categories: dict[str, float]
    duration_us: float | None = None     # iteration rows: the iteration time (metrics/iterations.py)

    @property
    def time_us(self) -> float:
        """Summed GPU event time of the segment (all categories)."""
        return float(sum(self.categories.values()))

    def where(self) -> str:
        return " ".join(f"{k} {v}" if k in ("iteration", "layer") else str(v) for k, v in self.keys.items())


@dataclass
class GpuSummary:
    """One GPU of one trace: totals, categories, segments, kernels (trace inputs only)."""

    file: str
    rank: int | None
    device: int
    iterations: int                      # 0 when the trace marks no iterations
    totals: dict[str, float]
    categories: dict[str, CategoryStat]
    roles: dict[str, str]                # category -> compute / comm / memory
    segments: dict[str, list[SegmentRow]] = field(default_factory=dict)
    kernels: pl.DataFrame | None = None  # name, grid, category, role, count, time_us
    tax_us: float | None = None          # overlap tax measured within the run
    source: str = "trace"                # "trace" or "document"
    warnings: tuple[str, ...] = ()       # the loader's warnings for this GPU's file (skipped/repaired events)
    #: the name the trace gave this GPU as a string ``pid`` ("GPU 0"); shown instead of its internal id
    device_name: str | None = None
    #: trace health problems of this GPU's file (load/health.py: key, message, count), loader drops left out
    health: tuple[dict, ...] = ()

    @property
    def label(self) -> str:
        from ..report.text import device_label

        gpu = device_label(self.device, self.device_name)
        return gpu if self.rank is None else f"rank {self.rank} {gpu}"

    @property
    def file_name(self) -> str:
        """The file's name as shown (controls escaped: a name cannot forge a line)."""
        from ..report.text import display_path

        return display_path(Path(self.file).name)

    @property
    def per(self) -> int:
        """The divisor that makes values per iteration (1 when the trace marks none)."""
        return max(1, self.iterations)

    def per_iter(self, value: float | None) -> float | None:
        return None if value is None else value / self.per

    def exposed_ratio(self) -> float | None:
        comm = self.totals.get("comm_us", 0.0)
        return self.totals["exposed_comm_us"] / comm if comm > 0 else None

    def role_time(self, role: str) -> float:
        """Summed kernel time of the categories with this role."""
        return float(sum(c.time_us for cat, c in self.categories.items() if self.roles.get(cat, "compute") == role))

    def role_count(self, role: str) -> int:
        return int(sum(c.count for cat, c in self.categories.items() if self.roles.get(cat, "compute") == role))

    def segment_rows(self, view: str) -> list[SegmentRow]:
        if view not in self.segments:
            raise TraceError(self.file, f"no per-{view} rows in this input")
        return self.segments[view]

    def segments_per_iteration(self, view: str) -> dict[tuple[str, ...], SegmentRow]:
        """Rows of ``view`` summed over iterations, keyed without the iteration, divided per iteration."""
        keys = VIEW_KEYS[view]
        out: dict[tuple[str, ...], SegmentRow] = {}
        for r in self.segment_rows(view):
            k = tuple(str(r.keys.get(c, "")) for c in keys)
            acc = out.setdefault(k, SegmentRow(dict(zip(keys, k)), 0.0, 0.0, 0.0, {}))
            acc.comm_us += r.comm_us
            acc.exposed_comm_us += r.exposed_comm_us
            acc.compute_us += r.compute_us
            for c, t in r.categories.items():
                acc.categories[c] = acc.categories.get(c, 0.0) + t
        n = self.per
        for r in out.values():
            r.comm_us /= n
            r.exposed_comm_us /= n
            r.compute_us /= n
            r.categories = {c: t / n for c, t in r.categories.items()}
        return out


# --- from a trace -------------------------------------------------------------------------

def _rows_from_table(df: pl.DataFrame, view: str) -> dict[int, list[SegmentRow]]:
    keys = ROW_KEYS[view]
    cat_cols = [c for c in df.columns if c.startswith("cat:")]
    out: dict[int, list[SegmentRow]] = {}
    for r in df.iter_rows(named=True):
        out.setdefault(int(r["device"]), []).append(SegmentRow(
            keys={k: str(r[k]) for k in keys},
            comm_us=float(r["comm_us"] or 0.0),
            exposed_comm_us=float(r["exposed_comm_us"] or 0.0),
            compute_us=float(r["compute_us"] or 0.0),
            categories={c[4:]: float(r[c]) for c in cat_cols if r[c]},
            duration_us=float(r["duration_us"]) if r.get("duration_us") is not None else None,
        ))
    return out


def kernel_table(kernels: pl.DataFrame) -> pl.DataFrame:
    """Kernels grouped by (device, name, launch grid): the identity used to match kernels across runs."""
    return (kernels.group_by("device", "name", "grid", "category", "role")  # (on the categories' codes:
            .agg(pl.len().alias("count"), pl.col("dur").sum().alias("time_us"))  # texts only per group)
            .with_columns(pl.col("name").cast(pl.Utf8), pl.col("grid").cast(pl.Utf8).fill_null(""),
                          pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8)))


def from_analysis(a: "TraceAnalysis", views: Iterable[str] = SEGMENT_VIEWS, kernels: bool = True, tax: bool = True) -> list[GpuSummary]:
    """Summaries of every GPU of one ``TraceAnalysis``."""
    views = list(dict.fromkeys(views))
    iterations = int(a.segmentation.summary()["iterations"])
    seg = {v: _rows_from_table(a.segments(v), v) for v in views}
    roles = {str(c): str(r) for c, r in a.kernels.select(pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8))
             .unique().iter_rows()}
    ktab = kernel_table(a.kernels) if kernels else None
    taxes: dict[int, float] = {}
    if tax:
        t = a.overlap_tax()
        if t.height:
            for (dev,), g in t.partition_by("device", as_dict=True).items():
                taxes[int(dev)] = float(g["tax_us"].sum())
    out = []
    for g in a.gpus:
        out.append(GpuSummary(
            file=a.file, rank=a.rank, device=g.device, iterations=iterations,
            totals={k: float(getattr(g, k)) for k in TOTALS},
            categories={c: CategoryStat(v.time_us, v.count) for c, v in g.categories.items()},
            roles=roles,
            segments={v: rows.get(g.device, []) for v, rows in seg.items()},
            kernels=ktab.filter(pl.col("device") == g.device).drop("device") if ktab is not None else None,
            tax_us=taxes.get(g.device, 0.0) if tax else None,
            warnings=tuple(a.trace.warnings),
            device_name=a.trace.given_name(g.device),
            health=tuple(h.to_dict() for h in a.strict_health()),
        ))
    return out


# --- from an ``analyze --format json`` document ------------------------------------------------

def is_document(path: str | os.PathLike) -> bool:
    """Cheap test: does this file start like an ``analyze --format json`` document?"""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return b'"schema"' in head and b"traceview." in head


def _need(d: Any, key: str, path: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise TraceError(path, f"not a traceview analyze document: {where} has no '{key}'")
    return d[key]


def _num(v: Any, path: str, where: str) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TraceError(path, f"not a traceview analyze document: {where} is not a number")
    return float(v)


def _device(v: Any, path: str, where: str) -> int:
    """A device id as written (a named device's id is a 63-bit integer: not through a float)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return int(_num(v, path, where))


def from_document(doc: Any, path: str | os.PathLike) -> list[GpuSummary]:
    """Summaries of every GPU in a parsed ``traceview analyze --format json`` document."""
    from ..classify import load_rules

    path = str(path)
    if not isinstance(doc, dict) or "schema" not in doc:
        raise TraceError(path, f"not a traceview analyze document (no \"schema\": \"{ANALYZE_SCHEMA}\")")
    if doc["schema"] != ANALYZE_SCHEMA:
        raise TraceError(path, f"unsupported schema {str(doc['schema'])[:60]!r} (expected {ANALYZE_SCHEMA!r})")
    traces = _need(doc, "traces", path, "the document")
    if not isinstance(traces, list) or not traces:
        raise TraceError(path, "the document holds no analyzed traces")
    rules = load_rules()
    out = []
    for ti, t in enumerate(traces):
        where = f"traces[{ti}]"
        gpus = _need(t, "gpus", path, where)
        segs = t.get("segments") or {}
        summary = segs.get("summary") or {}
        iterations = int(_num(summary.get("iterations", 0), path, f"{where}.segments.summary.iterations"))
        rank = t.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
            raise TraceError(path, f"not a traceview analyze document: {where}.rank is not an integer")
        seg_rows: dict[str, dict[int, list[SegmentRow]]] = {}
        for view, keys in ROW_KEYS.items():
            rows = segs.get(f"by_{view}")
            if not isinstance(rows, list):
                continue
            by_dev: dict[int, list[SegmentRow]] = {}
            for ri, r in enumerate(rows):
                w = f"{where}.segments.by_{view}[{ri}]"
                cats = r.get("categories") or {} if isinstance(r, dict) else None
                if not isinstance(cats, dict):
                    raise TraceError(path, f"not a traceview analyze document: {w} is not a segment row")
                by_dev.setdefault(_device(_need(r, "device", path, w), path, w), []).append(SegmentRow(
                    keys={k: str(r.get(k)) for k in keys},
                    comm_us=_num(r.get("comm_us"), path, w), exposed_comm_us=_num(r.get("exposed_comm_us"), path, w),
                    compute_us=_num(r.get("compute_us"), path, w),
                    categories={str(c): _num(v, path, w) for c, v in cats.items()},
                    duration_us=_num(r["duration_us"], path, w) if r.get("duration_us") is not None else None))
            seg_rows[view] = by_dev
        for gi, g in enumerate(gpus if isinstance(gpus, list) else []):
            w = f"{where}.gpus[{gi}]"
            device = _device(_need(g, "device", path, w), path, w)
            cats = _need(g, "categories", path, w)
            if not isinstance(cats, dict):
                raise TraceError(path, f"not a traceview analyze document: {w}.categories is not an object")
            out.append(GpuSummary(
                file=str(t.get("file") or path), rank=rank, device=device, iterations=iterations,
                totals={k: _num(_need(g, k, path, w), path, f"{w}.{k}") for k in TOTALS},
                categories={str(c): CategoryStat(_num(_need(v, "time_us", path, f"{w}.categories"), path, w),
                                                 int(_num(v.get("count", 0), path, w)))
                            for c, v in cats.items()},
                roles={str(c): rules.role(str(c)) for c in cats},
                segments={v: rows.get(device, []) for v, rows in seg_rows.items()},
                source="document",
                warnings=tuple(str(x) for x in t.get("warnings") or [] if isinstance(x, str)),
                device_name=g["device_name"] if isinstance(g.get("device_name"), str) else None,
                health=tuple(_health_items(t.get("health"))),
            ))
    if not out:
        raise TraceError(path, "the document holds no GPUs")
    return out


def _health_items(items: Any) -> list[dict]:
    """A document's ``traces[].health`` entries (the loader's own drops are its warnings)."""
    out = []
    for h in items if isinstance(items, list) else []:
        if isinstance(h, dict) and isinstance(h.get("key"), str) and h["key"] != "dropped_records":
            count = h.get("count")
            out.append({"key": h["key"], "message": str(h.get("message", "")),
                        "count": count if isinstance(count, int) and not isinstance(count, bool) else 0})
    return out


def load_document(path: str | os.PathLike) -> list[GpuSummary]:
    """Read a saved ``analyze --format json`` document (a baseline)."""
    p = Path(path)
    if not p.exists():
        raise TraceError(p, "no such file or directory")
    if p.is_dir():
        raise TraceError(p, "is a directory, not an analyze --format json document")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TraceError(p, f"cannot read: {e.strerror or e}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise TraceError(p, f"not valid JSON: {str(e).splitlines()[0]}") from None
    return from_document(doc, p)


# --- any input ----------------------------------------------------------------------------------

def load_inputs(paths: Iterable[str | os.PathLike], views: Iterable[str] = SEGMENT_VIEWS, kernels: bool = True,
                rules_file: str | None = None, jobs: int = 1, max_bytes: int | None = None,
                patterns=None, progress=None, runs: list | None = None,
                skipped: list | None = None) -> tuple[list[GpuSummary], list[TraceError]]:
    """GPU summaries of traces, directories of ranks and saved analyze documents, in order.

    Input that cannot be used comes back as a ``TraceError`` beside the good summaries, so
    a caller can report every problem at once.  ``progress(trace_paths)``, when given, makes the
    context manager whose value is ``analyze_many``'s progress callback (the CLI's bar).
    ``runs``: when a list is given, the ``RunAnalysis`` of the traces (all of them, as one run)
    is appended to it.
    Scanned files that hold no trace are appended to ``skipped`` (see ``analyze_many``).
    """
    from ..analysis import TraceAnalysis, analyze_many, expand_paths
    from ..load import DEFAULT_MAX_BYTES

    views = list(views)
    docs: list[GpuSummary] = []
    errors: list[TraceError] = []
    traces = []
    for p in paths:
        if is_document(p):
            try:
                docs.extend(load_document(p))
            except TraceError as e:
                errors.append(e)
        else:
            try:
                traces.extend(expand_paths([p], skipped))
            except TraceError as e:
                errors.append(e)
    out: list[GpuSummary] = []
    if traces:
        try:
            with (progress(traces) if progress is not None else contextlib.nullcontext()) as bar:
                results = analyze_many(traces, rules_file, jobs, max_bytes or DEFAULT_MAX_BYTES, patterns,
                                       progress=bar, summarize=runs is not None, skipped=skipped)
        except TraceError as e:
            errors.append(e)
            results = []
        for r in results:
            if isinstance(r, TraceAnalysis):
                out.extend(from_analysis(r, views, kernels=kernels, tax=kernels))
            else:
                errors.append(r)
        if runs is not None and results:
            from ..run import run_from_analyses

            runs.append(run_from_analyses(results))
    return out + docs, errors
