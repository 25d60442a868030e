"""The library facade: one call from a path to every table traceview reports.

``analyze(path)`` runs the whole flow (load -> classify -> intervals -> metrics) and
returns a ``TraceAnalysis``; the CLI, JSON, HTML and the CI gate all read that object, so
each number is computed in exactly one place.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import polars as pl

from .classify import RuleSet, classify, load_rules
from .errors import NotATraceError, TraceError
from .load import DEFAULT_MAX_BYTES, Trace, find_trace_files, load
from .load.health import HealthIssue, trace_health
from .load.reader import missing_reason
from .metrics import GpuMetrics, all_devices
from .metrics.iterations import ITERATION_EXTRA, iteration_summary, iteration_table
from .metrics.segments import labelled, segment_table
from .metrics.tax import overlap_tax_with_notes
from .segment import LevelPatterns, Segmentation, segment


@dataclass
class TraceAnalysis:
    """Everything measured on one trace file (one rank)."""

    trace: Trace
    kernels: pl.DataFrame            # classified GPU events (category, role, launch columns)
    gpus: list[GpuMetrics]
    rules: RuleSet = field(repr=False, default=None)  # type: ignore[assignment]
    patterns: LevelPatterns | None = field(repr=False, default=None)
    #: problems of the recording itself (load/health.py), computed at load time
    health: list[HealthIssue] = field(default_factory=list)

    def __repr__(self) -> str:
        """One line (a notebook cell must not fill screens with tables)."""
        gpus = ", ".join(f"gpu{g.device} span {g.span_us / 1000:.1f} ms, exposed comm {g.exposed_comm_us / 1000:.3f} ms"
                         for g in self.gpus[:4]) + (", ..." if len(self.gpus) > 4 else "")
        return (f"TraceAnalysis({self.trace.name!r}, rank={self.rank}, {len(self.gpus)} GPU(s), "
                f"{self.kernels.height} GPU events: {gpus})")

    def _repr_html_(self) -> str:
        """A notebook's summary: the verdict of each GPU and its main numbers."""
        from .report.verdict import summary_html

        return summary_html(self)

    @functools.cached_property
    def segmentation(self) -> Segmentation:
        """Iterations, micro-batches, layers, phases of every GPU event (computed on first use)."""
        return segment(self.trace, self.kernels, self.patterns)

    def segments(self, by: str = "microbatch") -> pl.DataFrame:
        """Per-segment compute / overlapped / exposed communication (see metrics/segments.py);
        by iteration also the iteration's duration, idle and what-if (metrics/iterations.py)."""
        if by not in self._segment_cache:
            df = segment_table(self.kernels, self.segmentation, by, self._labelled, self._device_events)
            if by == "iteration" and df.height:
                it = self.iterations.select("device", "iteration", *ITERATION_EXTRA)
                df = df.join(it, on=["device", "iteration"], how="left", maintain_order="left")
            self._segment_cache[by] = df
        return self._segment_cache[by]

    @functools.cached_property
    def _segment_cache(self) -> dict[str, pl.DataFrame]:
        return {}

    @functools.cached_property
    def _device_events(self) -> dict:
        """Per device: event times, role masks and compute busy set, shared by every view."""
        return {}

    @functools.cached_property
    def _labelled(self) -> pl.DataFrame:
        """The GPU events with their segment labels: joined once, read by every view."""
        return labelled(self.kernels, self.segmentation)

    def overlap_tax(self) -> pl.DataFrame:
        """How much slower compute kernels ran beside communication than alone."""
        return self._tax[0]

    def overlap_tax_notes(self) -> list[str]:
        """What the overlap tax could not compare, or why it was not measured (no shapes)."""
        return self._tax[1]

    @functools.cached_property
    def _tax(self) -> tuple[pl.DataFrame, list[str]]:
        return overlap_tax_with_notes(self.kernels, self.trace.events)

    @functools.cached_property
    def iterations(self) -> pl.DataFrame:
        """Per (GPU, iteration): duration, compute, exposed comm, idle (host-bound part), what-if
        (see metrics/iterations.py; computed once, read by terminal, JSON, HTML and gate)."""
        return iteration_table(self.kernels, self.segmentation, self._labelled)

    def iteration_summary(self, device: int) -> dict | None:
        """Means per iteration of one GPU (None when it has no events)."""
        return iteration_summary(self.iterations, device)

    def verdict_inputs(self) -> None:
        """Compute (and cache) everything the verdict reads, so it survives dropping the events."""
        self.iterations
        if self.segmentation.num_microbatches > 1:
            self.segments("microbatch")
            self.overlap_tax()

    @functools.cached_property
    def rank_summaries(self) -> list:
        """This trace reduced for the run analysis (``traceview.run``): one ``RankSummary`` per GPU."""
        from .run.summary import summarize

        return summarize(self)

    def strict_health(self) -> list[HealthIssue]:
        """The health problems ``--strict`` fails on besides the loader's warnings (a loader
        drop is already one of those warnings: said once)."""
        return [h for h in self.health if h.key != "dropped_records"]

    def strict_problems(self) -> list[str]:
        """What ``--strict`` turns into errors (analyze, report): each loader warning and each
        trace health problem, one line each."""
        return [*self.trace.warnings, *(f"trace health: {h.message}" for h in self.strict_health())]

    @property
    def file(self) -> str:
        return str(self.trace.path)

    @property
    def rank(self) -> int | None:
        return self.trace.rank

    def unclassified(self) -> pl.DataFrame:
        """Kernels no rule matched, by total time (shown in reports, never dropped)."""
        return (self.kernels.filter(pl.col("category") == "unclassified")
                .group_by("name").agg(pl.col("dur").sum().alias("time_us"), pl.len().alias("count"))
                .sort("time_us", descending=True))

    def top_kernels(self, n: int = 15) -> pl.DataFrame:
        return (self.kernels.group_by("name", "category")
                .agg(pl.col("dur").sum().alias("time_us"), pl.len().alias("count"))
                .sort("time_us", descending=True).head(n))


def analyze(source: str | os.PathLike | Trace, rules: RuleSet | None = None,
            max_bytes: int = DEFAULT_MAX_BYTES, patterns: LevelPatterns | None = None,
            workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> TraceAnalysis:
    """Load (unless given a ``Trace``), classify and measure one trace.

    ``workers``/``progress``: as for ``load`` (decoding processes; ``progress(done, total)``).
    """
    trace = source if isinstance(source, Trace) else load(source, max_bytes=max_bytes, workers=workers,
                                                          progress=progress)
    rules = rules or load_rules()
    kernels = classify(trace, rules)
    gpus = all_devices(kernels)
    for g in gpus:
        g.name = trace.device_name(g.device)
    return TraceAnalysis(trace=trace, kernels=kernels, gpus=gpus, rules=rules, patterns=patterns,
                         health=trace_health(trace))


def expand_paths(paths: Iterable[str | os.PathLike], skipped: list | None = None) -> list[Path]:
    """Files as given, directories replaced by the trace files directly inside them.

    Files found by scanning a directory are returned as ``ScannedPath`` so that a
    non-trace JSON beside the ranks (a manifest) can be skipped instead of failing.
    A file with a trace's name that the scan already saw is not a trace (a results list, a
    manifest) is appended to ``skipped`` as a ``SkippedInput`` (when given), for the caller's note.
    """
    from .load.reader import SIDECAR_NOTE, TRACE_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = find_trace_files(p)
            out.extend(ScannedPath(f) for f in found)
            if skipped is not None:
                skipped.extend(SkippedInput(q, "not a trace: " + why.replace(SIDECAR_NOTE, " (a sidecar)"))
                               for q, why in found.skipped if q.name.endswith(TRACE_SUFFIXES))
        elif not p.exists():
            raise TraceError(p, missing_reason(p))  # a dangling symlink or a loop says so
        else:
            out.append(p)
    return out


class ScannedPath(type(Path())):  # type: ignore[misc]
    """A path found inside a directory rather than named by the user."""


class SkippedInput(NotATraceError):
    """A file found by scanning a directory that holds no trace (a manifest, a results list):
    skipped, not an error; ``analyze_many(skipped=...)`` hands these to the caller to note."""


def _analyze_one(args, progress: Callable[[Path, int, int], None] | None = None,
                 summarize: bool = False) -> TraceAnalysis | TraceError | None:
    path, rules_file, max_bytes, patterns, workers, keep_events = args
    try:
        a = analyze(path, load_rules(rules_file), max_bytes, patterns, workers,
                    None if progress is None else functools.partial(progress, path))
    except NotATraceError as e:
        return SkippedInput(e.path, e.reason) if isinstance(path, ScannedPath) else e
    except TraceError as e:
        return e
    except MemoryError:  # (after the load, which names its own: classifying, measuring)
        return TraceError(path, "out of memory while analyzing it (a memory limit such as ulimit -v or a "
                                "container's is too small for it; try fewer --jobs)")
    if summarize:
        a.rank_summaries  # noqa: B018  (computed while the events are here)
    if not keep_events:
        a.verdict_inputs()  # what the verdict reads, measured while the events are here
        a.trace.events = None  # type: ignore[assignment]  # (anything that still reads it fails loudly)
        a.__dict__.pop("_labelled", None)  # (a copy of the events' rows: not kept per rank)
        a.__dict__.pop("_device_events", None)  # (per-event arrays, likewise)
    return a


def analyze_many(paths: list[Path], rules_file: str | None = None, jobs: int = 1,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 patterns: LevelPatterns | None = None, keep_events: bool = True,
                 progress: Callable[[Path, int, int], None] | None = None,
                 summarize: bool = False,
                 skipped: list[SkippedInput] | None = None) -> list[TraceAnalysis | TraceError]:
    """Analyze several files (ranks), in parallel processes when ``jobs > 1``.

    A bad file gives a ``TraceError`` in its place; the good ones are still analyzed.

    ``keep_events=False`` drops each trace's event table once it is measured (GPU metrics,
    classified kernels and warnings stay): memory is then bounded by the files analyzed at
    once, not by the number of ranks; segments, overlap tax and budgets need the events.
    ``summarize=True`` computes each file's ``rank_summaries`` (the run analysis's input)
    while its events are still loaded.
    Under ``jobs > 1`` each file's loader gets a share of the cores (``cores // jobs``
    decoding processes), not all of them.  ``progress(path, done, total)`` is called as
    each file loads (with ``jobs > 1``: once per file, when it is done).
    Files found by scanning a directory that hold no trace are left out of the result and
    appended to ``skipped`` (when given) so the caller can say so.
    """
    parallel = jobs > 1 and len(paths) > 1
    workers = max(1, (os.cpu_count() or 1) // min(jobs, len(paths))) if parallel else None
    work = [(p, rules_file, max_bytes, patterns, workers, keep_events) for p in paths]
    if not parallel:
        results = [_analyze_one(w, progress, summarize) for w in work]
    else:  # (a worker that dies is reported by the file it held: processes.py)
        from .processes import map_files

        results = map_files(functools.partial(_analyze_one, summarize=summarize), work, paths,
                            min(jobs, len(paths)), None if progress is None else (lambda i: progress(paths[i], 1, 1)))
    if skipped is not None:
        skipped.extend(r for r in results if isinstance(r, SkippedInput))
    results = [r for r in results if not isinstance(r, SkippedInput)]
    if not results:
        raise TraceError(paths[0].parent if paths else ".", "no trace files among the inputs")
    # ranks in rank order; files without a rank keep their (sorted) position after them
    return sorted(results, key=lambda r: (0, r.rank, r.file) if isinstance(r, TraceAnalysis) and r.rank is not None
                  else (1, 0, r.file if isinstance(r, TraceAnalysis) else r.path))
