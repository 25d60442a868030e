"""``traceview diff``: what changed between two runs, per GPU, biggest first.

Every value is per iteration (``Segmentation.summary()["iterations"]``; a trace that marks no
iterations counts as one), so a run profiled for 3 steps compares with one profiled for 2.
GPUs pair up by (rank, device), else by position: a baseline of rank 0 compares with rank 1.

For each GPU pair:
  totals      span (iteration time), busy, compute, comm, overlap, exposed comm, idle
  categories  kernel time, launches and mean kernel time per category
  segments    per micro-batch, layer (summed over micro-batches) and phase: kernel time and
              exposed communication
  kernels     kernels matched by name + launch grid (+ category): count, time, mean (traces only)
  findings    sentences that explain the change in iteration time from the identity
              span = compute + exposed comm + exposed memory + idle
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import polars as pl

from ..errors import TraceError
from ..gate.checks import match_gpus
from ..gate.summary import SEGMENT_VIEWS, GpuSummary, load_inputs
from ..report.text import fmt_ms as _ms

DIFF_SCHEMA = "traceview.diff/1"
TOTAL_METRICS = ("span_us", "compute_us", "comm_us", "overlap_us", "exposed_comm_us", "exposed_memory_us",
                 "idle_us", "busy_us")
TOTAL_LABELS = {"span_us": "iteration time (span)", "compute_us": "compute busy", "comm_us": "comm busy",
                "overlap_us": "comm under compute", "exposed_comm_us": "exposed comm",
                "exposed_memory_us": "exposed memory", "idle_us": "idle", "busy_us": "busy"}
# a change smaller than this share of the base is reported as "about the same"
SAME = 0.005


def _pct(new: float | None, base: float | None) -> float | None:
    if new is None or base is None or base == 0:
        return None
    return (new - base) / base


@dataclass
class TotalChange:
    metric: str
    base: float
    new: float

    @property
    def delta(self) -> float:
        return self.new - self.base

    def to_dict(self) -> dict:
        return {"metric": self.metric, "base_us": self.base, "new_us": self.new, "delta_us": self.delta,
                "delta_pct": _pct(self.new, self.base)}


@dataclass
class CategoryChange:
    category: str
    role: str
    base_time: float      # per iteration
    new_time: float
    base_count: float     # launches per iteration
    new_count: float

    @property
    def delta(self) -> float:
        return self.new_time - self.base_time

    @property
    def base_mean(self) -> float | None:
        return self.base_time / self.base_count if self.base_count else None

    @property
    def new_mean(self) -> float | None:
        return self.new_time / self.new_count if self.new_count else None

    def to_dict(self) -> dict:
        bm, nm = self.base_mean, self.new_mean
        return {"category": self.category, "role": self.role, "base_us": self.base_time, "new_us": self.new_time,
                "delta_us": self.delta, "delta_pct": _pct(self.new_time, self.base_time),
                "base_count": self.base_count, "new_count": self.new_count,
                "base_mean_us": bm, "new_mean_us": nm,
                "mean_delta_us": None if bm is None or nm is None else nm - bm, "mean_delta_pct": _pct(nm, bm)}


@dataclass
class SegmentChange:
    view: str
    keys: dict[str, str]
    base_time: float
    new_time: float
    base_exposed: float
    new_exposed: float
    base_comm: float
    new_comm: float

    @property
    def label(self) -> str:
        return " ".join(f"{k} {v}" if k == "layer" else str(v) for k, v in self.keys.items())

    @property
    def impact(self) -> float:
        return max(abs(self.new_time - self.base_time), abs(self.new_exposed - self.base_exposed))

    def to_dict(self) -> dict:
        return {"view": self.view, **self.keys, "base_time_us": self.base_time, "new_time_us": self.new_time,
                "delta_time_us": self.new_time - self.base_time, "base_exposed_comm_us": self.base_exposed,
                "new_exposed_comm_us": self.new_exposed, "delta_exposed_comm_us": self.new_exposed - self.base_exposed,
                "base_comm_us": self.base_comm, "new_comm_us": self.new_comm}


@dataclass
class KernelChange:
    name: str
    grid: str
    category: str
    role: str
    base_count: float      # per iteration
    new_count: float
    base_time: float       # per iteration
    new_time: float
    base_mean: float | None
    new_mean: float | None

    @property
    def delta(self) -> float:
        return self.new_time - self.base_time

    @property
    def status(self) -> str:
        return "both" if self.base_count and self.new_count else ("base only" if self.base_count else "new only")

    def to_dict(self) -> dict:
        return {"name": self.name, "grid": self.grid, "category": self.category, "role": self.role,
                "status": self.status, "base_count": self.base_count, "new_count": self.new_count,
                "base_us": self.base_time, "new_us": self.new_time, "delta_us": self.delta,
                "base_mean_us": self.base_mean, "new_mean_us": self.new_mean,
                "mean_delta_us": None if self.base_mean is None or self.new_mean is None
                else self.new_mean - self.base_mean}


@dataclass
class Finding:
    kind: str
    text: str
    base: float | None = None
    new: float | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text, "base": self.base, "new": self.new,
                "delta": None if self.base is None or self.new is None else self.new - self.base}


@dataclass
class GpuDiff:
    base: GpuSummary
    new: GpuSummary
    matched_by: str
    totals: list[TotalChange]
    categories: list[CategoryChange]
    segments: dict[str, list[SegmentChange]]
    kernels: list[KernelChange] | None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def total(self, metric: str) -> TotalChange:
        return next(t for t in self.totals if t.metric == metric)

    def to_dict(self, top: int | None = None) -> dict:
        def head(xs):
            return xs if not top else xs[:top]

        return {
            "base": {"file": self.base.file, "rank": self.base.rank, "device": self.base.device,
                     "device_name": self.base.device_name, "iterations": self.base.iterations},
            "new": {"file": self.new.file, "rank": self.new.rank, "device": self.new.device,
                    "device_name": self.new.device_name, "iterations": self.new.iterations},
            "matched_by": self.matched_by,
            "findings": [f.to_dict() for f in self.findings],
            "notes": self.notes,
            "totals_per_iteration": [t.to_dict() for t in self.totals],
            "exposed_comm_ratio": {"base": self.base.exposed_ratio(), "new": self.new.exposed_ratio()},
            "overlap_tax_per_iteration_us": {"base": self.base.per_iter(self.base.tax_us),
                                             "new": self.new.per_iter(self.new.tax_us)},
            "categories": [c.to_dict() for c in head(self.categories)],
            "segments": {v: [s.to_dict() for s in head(rows)] for v, rows in self.segments.items()},
            "kernels": None if self.kernels is None else [k.to_dict() for k in head(self.kernels)],
        }


@dataclass
class DiffResult:
    pairs: list[GpuDiff]
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary_rows(self) -> list[dict]:
        """One row per compared GPU (rank): iteration time and exposed communication per iteration,
        base and new; the table that comes before any detail."""
        rows = []
        for d in self.pairs:
            span, exp = d.total("span_us"), d.total("exposed_comm_us")
            rows.append({"rank": d.new.rank, "device": d.new.device, "device_name": d.new.device_name,
                         "base": d.base.label, "new": d.new.label,
                         "iteration_base_us": span.base, "iteration_new_us": span.new, "iteration_delta_us": span.delta,
                         "iteration_delta_pct": _pct(span.new, span.base), "exposed_comm_base_us": exp.base,
                         "exposed_comm_new_us": exp.new, "exposed_comm_delta_us": exp.delta,
                         "findings": len(d.findings)})
        return rows

    def biggest(self, n: int) -> list[GpuDiff]:
        """The ``n`` pairs whose iteration time changed most (all when ``n`` is 0)."""
        order = sorted(self.pairs, key=lambda d: -abs(d.total("span_us").delta))
        return order if not n else order[:n]

    def to_dict(self, top: int | None = None) -> dict:
        from .. import __version__

        return {"schema": DIFF_SCHEMA, "traceview_version": __version__, "units": "microseconds per iteration",
                "summary": self.summary_rows(), "warnings": self.warnings,
                "pairs": [p.to_dict(top) for p in self.pairs], "unmatched": self.unmatched}


# --- computing ---------------------------------------------------------------------------------

def _totals(b: GpuSummary, n: GpuSummary) -> list[TotalChange]:
    return [TotalChange(m, b.totals[m] / b.per, n.totals[m] / n.per) for m in TOTAL_METRICS]


def _categories(b: GpuSummary, n: GpuSummary) -> list[CategoryChange]:
    out = []
    for c in set(b.categories) | set(n.categories):
        bc, nc = b.categories.get(c), n.categories.get(c)
        out.append(CategoryChange(
            c, n.roles.get(c) or b.roles.get(c) or "compute",
            bc.time_us / b.per if bc else 0.0, nc.time_us / n.per if nc else 0.0,
            bc.count / b.per if bc else 0.0, nc.count / n.per if nc else 0.0))
    return sorted(out, key=lambda x: (-abs(x.delta), x.category))


def _segments(b: GpuSummary, n: GpuSummary, views: Iterable[str]) -> dict[str, list[SegmentChange]]:
    out: dict[str, list[SegmentChange]] = {}
    for view in views:
        if view not in b.segments or view not in n.segments:
            continue
        key_view = "layer_only" if view == "layer" else view
        br, nr = _grouped(b, view, key_view), _grouped(n, view, key_view)
        rows = []
        for k in set(br) | set(nr):
            x, y = br.get(k), nr.get(k)
            keys = (x or y)[0]  # type: ignore[index]
            rows.append(SegmentChange(view, keys, x[1] if x else 0.0, y[1] if y else 0.0, x[2] if x else 0.0,
                                      y[2] if y else 0.0, x[3] if x else 0.0, y[3] if y else 0.0))
        out[view] = sorted(rows, key=lambda s: (-s.impact, s.label))
    return out


def _grouped(g: GpuSummary, view: str, key_view: str) -> dict[tuple, tuple[dict, float, float, float]]:
    """Per-iteration (keys, kernel time, exposed comm, comm) by segment; layers summed over micro-batches."""
    keys = ("layer",) if key_view == "layer_only" else None
    rows = g.segments_per_iteration(view)
    out: dict[tuple, tuple[dict, float, float, float]] = {}
    for r in rows.values():
        kd = {k: r.keys[k] for k in keys} if keys else dict(r.keys)
        k = tuple(kd.values())
        prev = out.get(k, (kd, 0.0, 0.0, 0.0))
        out[k] = (kd, prev[1] + r.time_us, prev[2] + r.exposed_comm_us, prev[3] + r.comm_us)
    return out


def _kernels(b: GpuSummary, n: GpuSummary) -> list[KernelChange] | None:
    if b.kernels is None or n.kernels is None:
        return None
    # the category is part of the identity: one NCCL kernel serves both dispatch and combine
    keys = ["name", "grid", "category"]
    j = (b.kernels.rename({"count": "bc", "time_us": "bt", "role": "brole"})
         .join(n.kernels.rename({"count": "nc", "time_us": "nt"}), on=keys, how="full", coalesce=True))
    out = []
    for r in j.iter_rows(named=True):
        bc, nc = float(r["bc"] or 0), float(r["nc"] or 0)
        bt, nt = float(r["bt"] or 0.0), float(r["nt"] or 0.0)
        out.append(KernelChange(r["name"], r["grid"], r["category"], r["role"] or r["brole"],
                                bc / b.per, nc / n.per, bt / b.per, nt / n.per,
                                bt / bc if bc else None, nt / nc if nc else None))
    return sorted(out, key=lambda k: (-abs(k.delta), k.name, k.grid))


def _dms(us: float) -> str:
    return f"{us / 1000:+.3f}"


def _ppct(new: float | None, base: float | None) -> str:
    p = _pct(new, base)
    return "" if p is None else f", {100 * p:+.1f}%"


def _same_kernels(kernels: list[KernelChange], base_compute: float) -> list[Finding]:
    """Compute kernels found in both runs (name + grid) whose launch count scaled alike.

    When one run splits each operation into micro-batches every launch count doubles; the
    kernels whose count changed by the common (median) factor are then the same work in more
    launches, and their time per iteration shows how much slower that work ran.
    """
    both = [k for k in kernels if k.status == "both" and k.role == "compute"]
    if not both:
        return []
    ratios = sorted(k.new_count / k.base_count for k in both)
    r = ratios[len(ratios) // 2]
    same = [k for k in both if abs(k.new_count / k.base_count - r) <= 0.01 * r]
    sb, sn = sum(k.base_time for k in same), sum(k.new_time for k in same)
    share = sb / base_compute if base_compute else 0.0
    if share < 0.05:
        return []
    how = "at the same launch count" if abs(r - 1) <= 0.01 else f"launched {r:g}x as often"
    return [Finding("same_kernels", f"the same compute kernels (name + launch grid, {len(same)} kernels, "
                                    f"{100 * share:.0f}% of base compute time) {how}: {_ms(sb)} -> {_ms(sn)} ms/iter "
                                    f"({_dms(sn - sb)} ms{_ppct(sn, sb)})", sb, sn)]


def _explain(d: GpuDiff) -> list[Finding]:
    b, n = d.base, d.new
    out: list[Finding] = []
    span, comp, exp_c, exp_m, idle = (d.total(m) for m in ("span_us", "compute_us", "exposed_comm_us",
                                                           "exposed_memory_us", "idle_us"))
    word = "up" if span.delta > 0 else "down"
    if abs(span.delta) <= SAME * span.base:
        word = "about the same"
    out.append(Finding("iteration_time", f"iteration time {word}: span per iteration {_ms(span.base)} -> "
                                         f"{_ms(span.new)} ms ({_dms(span.delta)} ms{_ppct(span.new, span.base)})",
                       span.base, span.new))
    parts = [(comp.delta, "compute busy"), (exp_c.delta, "exposed comm"), (exp_m.delta, "exposed memory"),
             (idle.delta, "idle")]
    parts = sorted(parts, key=lambda p: -abs(p[0]))
    out.append(Finding("decomposition", "span = compute busy + exposed comm + exposed memory + idle; per iteration: "
                       + ", ".join(f"{name} {_dms(v)} ms" for v, name in parts)))
    br, nr = b.exposed_ratio(), n.exposed_ratio()
    ratio = "" if br is None or nr is None else f"; exposed share of comm {100 * br:.1f}% -> {100 * nr:.1f}%"
    if exp_c.delta < -SAME * max(exp_c.base, 1.0):
        out.append(Finding("comm_hidden", f"communication hidden: exposed comm {_ms(exp_c.base)} -> {_ms(exp_c.new)} "
                                          f"ms/iter ({_dms(exp_c.delta)} ms){ratio}", exp_c.base, exp_c.new))
    elif exp_c.delta > SAME * max(exp_c.base, 1.0):
        out.append(Finding("comm_exposed", f"communication exposed more: exposed comm {_ms(exp_c.base)} -> "
                                           f"{_ms(exp_c.new)} ms/iter ({_dms(exp_c.delta)} ms{_ppct(exp_c.new, exp_c.base)})"
                                           f"{ratio}", exp_c.base, exp_c.new))
    bk, nk = b.role_time("comm") / b.per, n.role_time("comm") / n.per
    if bk or nk:
        out.append(Finding("comm_kernels", f"communication kernel time {_ms(bk)} -> {_ms(nk)} ms/iter "
                                           f"({_dms(nk - bk)} ms{_ppct(nk, bk)})", bk, nk))
    bt, nt = b.role_time("compute") / b.per, n.role_time("compute") / n.per
    bn, nn = b.role_count("compute") / b.per, n.role_count("compute") / n.per
    cats = [c for c in d.categories if c.role == "compute" and abs(c.delta) > 0]
    cats = sorted(cats, key=lambda c: -c.delta if nt >= bt else c.delta)[:3]
    word = "slower" if nt > bt * (1 + SAME) else "faster" if nt < bt * (1 - SAME) else "about the same"
    most = ", ".join(f"{c.category} {_dms(c.delta)} ms{_ppct(c.new_time, c.base_time)}" for c in cats)
    launches = (f"; {nn / bn:.2f}x the compute launches per iteration (work split into more, smaller kernels: "
                f"compare time per iteration, not mean kernel time)" if bn and abs(nn / bn - 1) > 0.05 else "")
    out.append(Finding("compute_kernels", f"compute kernels {word}: compute kernel time {_ms(bt)} -> {_ms(nt)} ms/iter "
                                          f"({_dms(nt - bt)} ms{_ppct(nt, bt)})"
                                          + (f", most in {most}" if most else "") + launches, bt, nt))
    if d.kernels is not None:
        out.extend(_same_kernels(d.kernels, bt))
    if b.tax_us is not None and n.tax_us is not None and (b.tax_us or n.tax_us):
        tb, tn = b.tax_us / b.per, n.tax_us / n.per
        out.append(Finding("overlap_tax", f"overlap tax (compute beside comm vs the same kernel alone, within each run): "
                                          f"{_ms(tb)} -> {_ms(tn)} ms/iter", tb, tn))
    for view in ("phase", "layer", "microbatch"):
        rows = d.segments.get(view) or []
        moved = [s for s in rows if abs(s.new_exposed - s.base_exposed) > 0]
        if moved:
            s = max(moved, key=lambda s: abs(s.new_exposed - s.base_exposed))
            out.append(Finding(f"{view}_exposed", f"largest exposed-comm change by {view}: {s.label} "
                                                  f"{_ms(s.base_exposed)} -> {_ms(s.new_exposed)} ms/iter "
                                                  f"({_dms(s.new_exposed - s.base_exposed)} ms)",
                               s.base_exposed, s.new_exposed))
    return out


def diff_summaries(base: list[GpuSummary], new: list[GpuSummary],
                   views: Iterable[str] = SEGMENT_VIEWS) -> DiffResult:
    """Pair the GPUs of two runs and compute every change, per iteration."""
    views = list(views)
    pairs = []
    used = set()
    for n, b, how in match_gpus(new, base):
        if b is None:
            continue
        used.add(id(b))
        d = GpuDiff(base=b, new=n, matched_by=how, totals=_totals(b, n), categories=_categories(b, n),
                    segments=_segments(b, n, views), kernels=_kernels(b, n))
        if b.iterations != n.iterations:
            d.notes.append(f"iterations differ (base {b.iterations}, new {n.iterations}): values are per iteration")
        for g, which in ((b, "base"), (n, "new")):
            if g.iterations == 0:
                d.notes.append(f"{which} marks no iterations: its values are for the whole trace")
            for w in g.warnings:  # e.g. a truncated trace: its last iteration is partial, per-iteration values shrink
                d.notes.append(f"{which} {g.file_name}: loader warning: {w}; compare with care")
        if d.kernels is None:
            d.notes.append("kernel-level detail needs traces on both sides (a saved document has none)")
        d.findings = _explain(d)
        pairs.append(d)
    unmatched = [f"base {b.label} ({b.file_name})" for b in base if id(b) not in used]
    unmatched += [f"new {n.label} ({n.file_name})" for n, b, _ in match_gpus(new, base) if b is None]
    warnings = []
    nb, nn = len({(g.rank, g.device) for g in base}), len({(g.rank, g.device) for g in new})
    if nb != nn:
        warnings.append(f"the runs have different numbers of GPUs (base {nb}, new {nn}): a different world size "
                        "changes every per-rank figure; only matched GPUs are compared")
    return DiffResult(pairs, unmatched, warnings)


def diff_paths(base: Iterable[str], new: Iterable[str], rules_file: str | None = None, jobs: int = 1,
               max_bytes: int | None = None, views: Iterable[str] = SEGMENT_VIEWS, kernels: bool = True,
               patterns=None, progress=None, skipped: list | None = None):
    """Load both sides (traces, rank directories or saved documents) and diff them.

    Returns ``(DiffResult, errors)``; errors are ``TraceError`` for inputs that could not be read.
    Files of a scanned directory that hold no trace are appended to ``skipped`` (for a note).
    """
    views = list(views)
    sides = [list(base), list(new)]
    load = functools.partial(_load_side, views=views, kernels=kernels, rules_file=rules_file, jobs=jobs,
                             max_bytes=max_bytes, patterns=patterns)
    if _side_by_side(sides):  # two big inputs: each analysed in its own process, at once
        from ..processes import map_files

        done = map_files(load, sides, [Path(side[0]) if side else Path(".") for side in sides], 2)
        (b, e1, s1), (n, e2, s2) = [([], [r], []) if isinstance(r, TraceError) else r for r in done]
    else:
        b, e1, s1 = load(sides[0], progress=progress)
        n, e2, s2 = load(sides[1], progress=progress)
    if skipped is not None:
        skipped.extend(s1 + s2)
    if not b or not n:
        return DiffResult([]), e1 + e2
    return diff_summaries(b, n, views), e1 + e2


def _load_side(paths: list, **options) -> tuple[list[GpuSummary], list, list]:
    """One side's summaries, errors and skipped files (``load_inputs``; runs in a worker too)."""
    skipped: list = []
    summaries, errors = load_inputs(paths, skipped=skipped, **options)
    return summaries, errors, skipped


#: Both sides at least this big on disk (and two cores): they are analysed in two processes at
#: once (below it, starting a process costs more than it saves).
SIDE_BY_SIDE_BYTES = 128 << 20


def _side_by_side(sides: list[list]) -> bool:
    if (os.cpu_count() or 1) < 2 or not all(sides):
        return False
    return min(sum(_bytes_on_disk(Path(p)) for p in side) for side in sides) >= SIDE_BY_SIDE_BYTES


def _bytes_on_disk(p: Path) -> int:
    """A file's size, or the sizes of the files directly in a directory (0 when unreadable)."""
    try:
        if p.is_dir():
            return sum(q.stat().st_size for q in p.iterdir() if q.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def kernel_frame(changes: list[KernelChange]) -> pl.DataFrame:
    """Kernel changes as a table (for notebooks and CSV)."""
    return pl.DataFrame([k.to_dict() for k in changes]) if changes else pl.DataFrame()

