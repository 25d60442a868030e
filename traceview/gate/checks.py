"""The CI gate: thresholds, one check per (metric, GPU or segment), and the verdict.

Checks (each gives one ``CheckResult``; values are the numbers ``traceview analyze`` reports):

  exposed_comm_pct   exposed communication per iteration as a share of the iteration time (per
                     GPU, or per segment with ``per``): fails above ``max_exposed_comm_pct``.
                     What costs time: 0.1 ms exposed of a 100 ms iteration is 0.1%, however
                     small the communication it belongs to
  exposed_comm_ms    exposed communication per iteration: fails above ``max_exposed_comm_us``
                     (so a 2-step and a 10-step profile of the same run get the same verdict)
  exposed_of_comm_pct  exposed ÷ communication time (opt-in): fails above ``max_exposed_of_comm_pct``
  regression.*       against a baseline, per iteration: exposed communication, span (iteration
                     time) and each kernel category's time; fails when the increase is more than
                     ``max_regression_pct`` of the baseline value AND more than ``min_regression_us``
                     (a noise floor, so that a 20 µs category does not fail on 2 µs)

  loader_warnings    one per input whose loader skipped or repaired events: WARN, FAIL with ``strict``
  trace_health       one per trace health problem of an input (``TraceAnalysis.health``: dropped
                     graph replays, launches without GPU records, no record_shapes, string pids,
                     two writers): WARN, FAIL with ``strict``

Per-segment checks use ``TraceAnalysis.segments(per)``: a micro-batch row sums its iterations
(the rows add up to the GPU total), a layer row is one layer of one micro-batch in one iteration.
Segments without communication have nothing to expose and get no check.

Exit codes: 0 every check passed, 1 a check failed, 2 some input could not be analyzed.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..errors import TraceError, UsageError
from ..report.text import fmt_ms as _ms
from .summary import GpuSummary, SegmentRow, load_document, load_inputs

PASS, FAIL, SKIP, WARN = "pass", "fail", "skip", "warn"
EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
PER_CHOICES = ("gpu", "microbatch", "layer", "iteration", "phase", "stage")
DEFAULT_MIN_REGRESSION_US = 50.0
GATE_SCHEMA = "traceview.gate/1"


# --- thresholds ------------------------------------------------------------------------------

_PCT = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")
_TIME = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*$")


def parse_percent(value: Any, option: str) -> float:
    """'10%', '10' or 10 -> 10.0 (percent).  A bare number is a percentage, not a fraction."""
    if isinstance(value, bool):
        raise UsageError(f"{option}: {value!r} is not a percentage (e.g. 10%)")
    if isinstance(value, (int, float)):
        v = float(value)
    else:
        m = _PCT.match(str(value))
        if not m:
            raise UsageError(f"{option}: {str(value)[:40]!r} is not a percentage (e.g. 10%)")
        v = float(m.group(1))
    if not math.isfinite(v) or v < 0:
        raise UsageError(f"{option}: {str(value)[:40]!r} must be a percentage >= 0")
    return v


def parse_duration_us(value: Any, option: str) -> float:
    """'2.5', '2.5ms', '2500us', '0.0025s' or 2.5 -> microseconds.  A bare number is milliseconds."""
    if isinstance(value, bool):
        raise UsageError(f"{option}: {value!r} is not a time (e.g. 2.5 or 2.5ms)")
    if isinstance(value, (int, float)):
        v, unit = float(value), "ms"
    else:
        m = _TIME.match(str(value))
        if not m:
            raise UsageError(f"{option}: {str(value)[:40]!r} is not a time (e.g. 2.5 or 2.5ms)")
        v, unit = float(m.group(1)), (m.group(2) or "ms")
    if not math.isfinite(v) or v < 0:
        raise UsageError(f"{option}: {str(value)[:40]!r} must be a time >= 0")
    return v * {"ms": 1e3, "us": 1.0, "µs": 1.0, "s": 1e6}[unit]


@dataclass
class Thresholds:
    """What the gate checks.  ``None`` turns a check off."""

    max_exposed_comm_pct: float | None = None
    max_exposed_comm_us: float | None = None
    max_exposed_of_comm_pct: float | None = None
    per: str = "gpu"
    baseline: str | None = None
    max_regression_pct: float | None = None
    min_regression_us: float = DEFAULT_MIN_REGRESSION_US
    strict: bool = False         # loader warnings and trace health problems fail the gate
    max_wait_pct: float | None = None  # a run: exposed waiting for other ranks, % of the iteration, per rank

    def validate(self) -> "Thresholds":
        if self.per not in PER_CHOICES:
            raise UsageError(f"per: {self.per!r} is not one of {', '.join(PER_CHOICES)}")
        if self.max_regression_pct is not None and not self.baseline:
            raise UsageError("max_regression needs a baseline (--baseline FILE)")
        if self.baseline and self.max_regression_pct is None:
            self.max_regression_pct = 5.0
        if not self.any():
            raise UsageError("no thresholds: give --max-exposed-comm, --max-exposed-comm-ms, --max-exposed-of-comm, "
                             "--max-wait or --baseline "
                             "(or a [tool.traceview.gate] table in pyproject.toml / traceview.toml)")
        return self

    def any(self) -> bool:
        return self.exposed_checks() or self.baseline is not None or self.max_wait_pct is not None

    def exposed_checks(self) -> bool:
        return any(v is not None for v in (self.max_exposed_comm_pct, self.max_exposed_comm_us,
                                           self.max_exposed_of_comm_pct))

    def to_dict(self) -> dict:
        return asdict(self)


# --- results ---------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """One check on one GPU or segment: what was measured, against what, and where."""

    check: str                   # exposed_comm_pct | exposed_comm_ms | regression.exposed_comm | ...
    status: str                  # pass | fail | skip
    value: float | None          # measured (percent, or microseconds)
    threshold: float             # the limit (percent, or microseconds)
    unit: str                    # "%" or "us"
    file: str
    rank: int | None
    device: int
    segment: dict[str, str] | None = None
    category: str | None = None
    baseline: float | None = None          # regression checks: the baseline value (per iteration)
    baseline_where: str | None = None      # regression checks: which baseline GPU, how matched
    detail: str = ""                       # extra words for the line (comm time, why skipped)
    device_name: str | None = None         # the GPU's name where its pid was a string ("GPU 0")

    @property
    def where(self) -> str:
        from ..report.text import device_label

        gpu = device_label(self.device, self.device_name)
        w = f"rank {self.rank} {gpu}" if self.rank is not None else gpu
        if self.segment:
            w += " " + SegmentRow(self.segment, 0, 0, 0, {}).where()
        return w

    @property
    def title(self) -> str:
        return {
            "exposed_comm_pct": "exposed comm",
            "exposed_comm_ms": "exposed comm",
            "exposed_of_comm_pct": "exposed share of comm",
            "regression.exposed_comm": "regression: exposed comm",
            "regression.span": "regression: iteration time (span)",
            "regression.category": f"regression: {self.category} time",
            "loader_warnings": "loader warnings",
            "trace_health": "trace health",
            "run.wait_pct": "exposed waiting for other ranks",
        }.get(self.check, self.check)

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        if self.check == "loader_warnings":
            n = int(self.value)
            return f"{n} warning" + ("" if n == 1 else "s")
        if self.check == "trace_health":
            return (self.category or "").replace("_", " ")
        if self.check == "exposed_comm_pct":
            return f"{self.value:.1f}% of the iteration"
        if self.check == "exposed_of_comm_pct":
            return f"{self.value:.1f}% of comm"
        if self.check == "run.wait_pct":
            return f"{self.value:.1f}% of the iteration"
        if self.check.startswith("regression."):
            return f"{_ms(self.value)} ms/iter vs baseline {_ms(self.baseline)} ms/iter ({_signed_pct(self.value, self.baseline)})"
        return f"{_ms(self.value)} ms/iter"

    def threshold_text(self) -> str:
        if self.check in ("loader_warnings", "trace_health"):
            return "--strict: none allowed" if self.status == FAIL else "allowed (--strict fails them)"
        if self.check in ("exposed_comm_pct", "exposed_of_comm_pct"):
            return f"max {self.threshold:g}%"
        if self.check == "exposed_comm_ms":
            return f"max {_ms(self.threshold)} ms/iter"
        if self.check == "run.wait_pct":
            return f"max {self.threshold:g}%"
        return f"max +{self.threshold:g}%"

    def line(self) -> str:
        """``PASS|FAIL|SKIP  what: value (detail)  threshold  where  [file]`` on one line."""
        from ..report.text import clean

        detail = f" ({self.detail})" if self.detail else ""
        base = f"  vs {self.baseline_where}" if self.baseline_where else ""
        return clean(f"{self.status.upper():4}  {self.title}: {self.value_text()}{detail}  {self.threshold_text()}  "
                     f"{self.where}{base}  [{_basename(self.file)}]")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["where"] = self.where
        d["message"] = self.line()
        return d


@dataclass
class GateResult:
    thresholds: Thresholds
    checks: list[CheckResult] = field(default_factory=list)
    errors: list[TraceError] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # scanned files skipped (not traces)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_INPUT
        return EXIT_FAIL if self.failed else EXIT_OK

    @property
    def warned(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == WARN]

    def verdict(self) -> str:
        n, f = len(self.checks), len(self.failed)
        s = sum(c.status == SKIP for c in self.checks)
        w = sum(c.check == "loader_warnings" for c in self.warned)
        h = sum(c.check == "trace_health" for c in self.warned)
        skipped = ((f", {s} skipped" if s else "") + (f", {w} with loader warnings" if w else "")
                   + (f", {h} trace health problem" + ("" if h == 1 else "s") if h else ""))
        checks = f"{n} check" + ("" if n == 1 else "s")
        if self.errors:
            return f"gate: ERROR ({len(self.errors)} input(s) could not be analyzed; {checks}, {f} failed{skipped})"
        if f:
            return f"gate: FAIL ({f} of {checks} failed{skipped})"
        return f"gate: PASS ({checks}{skipped})"

    def lines(self) -> list[str]:
        from ..report.text import one_line

        return ([one_line(f"NOTE  {n}") for n in self.notes] + [c.line() for c in self.checks]
                + [self.verdict()])

    def to_dict(self) -> dict:
        from .. import __version__

        return {
            "schema": GATE_SCHEMA,
            "traceview_version": __version__,
            "passed": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "verdict": self.verdict(),
            "thresholds": self.thresholds.to_dict(),
            "inputs": self.inputs,
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
            "errors": [{"file": e.path, "error": e.reason} for e in self.errors],
        }


def _signed_pct(new: float | None, base: float | None) -> str:
    if new is None or base is None:
        return "-"
    if base <= 0:
        return "new" if new > 0 else "+0.0%"
    return f"{100 * (new - base) / base:+.1f}%"


def _basename(path: str) -> str:
    """The file's name as shown (controls escaped: a name cannot forge a line or annotation)."""
    from ..report.text import display_path

    return display_path(path.replace("\\", "/").rsplit("/", 1)[-1])


# --- evaluation --------------------------------------------------------------------------------

def _at(g: GpuSummary) -> dict:
    """Where a check on this GPU was made: its file, rank, device and the device's given name."""
    return dict(file=g.file, rank=g.rank, device=g.device, device_name=g.device_name)


def _skips(g: GpuSummary, t: Thresholds, detail: str, segment: dict | None = None) -> list[CheckResult]:
    """A SKIP line for each exposed-comm check asked for: there is nothing to measure, and why."""
    return [CheckResult(check, SKIP, None, thr, unit, **_at(g), segment=segment, detail=detail)
            for check, thr, unit in (("exposed_comm_pct", t.max_exposed_comm_pct, "%"),
                                     ("exposed_comm_ms", t.max_exposed_comm_us, "us"),
                                     ("exposed_of_comm_pct", t.max_exposed_of_comm_pct, "%")) if thr is not None]


def _units(g: GpuSummary, t: Thresholds) -> list[tuple[dict | None, float, float, float]]:
    """(segment, comm, exposed, iteration time), all per iteration, for each unit checked.

    A GPU or a row summed over iterations (micro-batch, phase, stage) is divided by the number of
    iterations; a row of one iteration (iteration, layer) is not.  The iteration time is the
    row's own duration for an iteration row, else the GPU's span per iteration.
    """
    iteration_us = g.totals["span_us"] / g.per
    if t.per == "gpu":
        return [(None, g.totals["comm_us"] / g.per, g.totals["exposed_comm_us"] / g.per, iteration_us)]
    out = []
    for r in g.segment_rows(t.per):
        if r.comm_us <= 0:
            continue
        n = 1 if "iteration" in r.keys else g.per
        own = r.duration_us if t.per == "iteration" and r.duration_us else iteration_us
        out.append((r.keys, r.comm_us / n, r.exposed_comm_us / n, own))
    return out


def _absolute_checks(g: GpuSummary, t: Thresholds) -> list[CheckResult]:
    """Exposed communication (share of the iteration, time per iteration, share of comm) of one
    GPU, or of each of its segments."""
    out: list[CheckResult] = []
    common = _at(g)
    units = _units(g, t)
    if t.per != "gpu":
        if units and all((k or {}).get(t.per) == "(none)" for k, *_ in units):
            # nothing labels this level: one check on "(none)" would read as a per-segment pass
            return _skips(g, t, f"no {t.per} segments in this trace (no annotations, threads or inferred "
                                f"{t.per}s): use --by gpu")
        if not units:  # no segment communicates: say so once instead of printing nothing
            units = [(None, 0.0, 0.0, 0.0)]
    whole = "" if g.iterations else "; no iteration marks: the whole trace counts as one iteration"
    for seg, comm, exposed, iteration_us in units:
        if comm <= 0:
            out.extend(_skips(g, t, "no communication on this GPU", seg))
            continue
        of_comm = 100.0 * exposed / comm
        if t.max_exposed_comm_pct is not None:
            pct = 100.0 * exposed / iteration_us if iteration_us > 0 else 0.0
            out.append(CheckResult("exposed_comm_pct", PASS if pct <= t.max_exposed_comm_pct + 1e-9 else FAIL, pct,
                                   t.max_exposed_comm_pct, "%", segment=seg,
                                   detail=f"{_ms(exposed)} ms/iter of a {_ms(iteration_us)} ms iteration; "
                                          f"{of_comm:.1f}% of comm{whole}", **common))
        if t.max_exposed_comm_us is not None:
            out.append(CheckResult("exposed_comm_ms", PASS if exposed <= t.max_exposed_comm_us + 1e-9 else FAIL,
                                   exposed, t.max_exposed_comm_us, "us", segment=seg,
                                   detail=f"{of_comm:.1f}% of {_ms(comm)} ms/iter comm{whole}", **common))
        if t.max_exposed_of_comm_pct is not None:
            out.append(CheckResult("exposed_of_comm_pct",
                                   PASS if of_comm <= t.max_exposed_of_comm_pct + 1e-9 else FAIL, of_comm,
                                   t.max_exposed_of_comm_pct, "%", segment=seg,
                                   detail=f"{_ms(exposed)} of {_ms(comm)} ms/iter{whole}", **common))
    return out


def match_gpus(new: list[GpuSummary], base: list[GpuSummary]) -> list[tuple[GpuSummary, GpuSummary | None, str]]:
    """Pair each new GPU with a baseline GPU: same (rank, device), else the same position.

    Position is the fallback that lets a baseline captured on one rank gate another rank
    (or a trace without a rank in its metadata).
    """
    by_id = {(b.rank, b.device): b for b in base}
    out = []
    for i, g in enumerate(new):
        b = by_id.get((g.rank, g.device))
        if b is not None:
            out.append((g, b, "same rank and GPU"))
        elif i < len(base):
            out.append((g, base[i], "by position"))
        elif len(base) == 1:
            out.append((g, base[0], "by position"))
        else:
            out.append((g, None, "no baseline GPU"))
    return out


def _regression(check: str, g: GpuSummary, new_pi: float, base_pi: float, t: Thresholds, where_base: str,
                segment: dict | None = None, category: str | None = None) -> CheckResult:
    assert t.max_regression_pct is not None
    allowed = max(base_pi * t.max_regression_pct / 100.0, t.min_regression_us)
    status = PASS if new_pi - base_pi <= allowed + 1e-9 else FAIL
    detail = ""
    if status == PASS and new_pi - base_pi > base_pi * t.max_regression_pct / 100.0 + 1e-9:
        detail = f"+{_ms(new_pi - base_pi)} ms is within the {_ms(t.min_regression_us)} ms noise floor"
    return CheckResult(check, status, new_pi, t.max_regression_pct, "%", **_at(g), segment=segment, category=category,
                       baseline=base_pi, baseline_where=where_base, detail=detail)


def _regression_checks(g: GpuSummary, b: GpuSummary | None, how: str, t: Thresholds) -> list[CheckResult]:
    if b is None:
        return [CheckResult("regression.exposed_comm", SKIP, None, t.max_regression_pct or 0.0, "%", **_at(g),
                            detail="no GPU in the baseline to compare with")]
    where_base = f"baseline {b.label}" + ("" if how == "same rank and GPU" else f" ({how})")
    if g.iterations != b.iterations:
        where_base += f", per iteration: {g.per} vs {b.per}"
    out = [
        _regression("regression.exposed_comm", g, g.totals["exposed_comm_us"] / g.per,
                    b.totals["exposed_comm_us"] / b.per, t, where_base),
        _regression("regression.span", g, g.totals["span_us"] / g.per, b.totals["span_us"] / b.per, t, where_base),
    ]
    cats = sorted(set(g.categories) | set(b.categories),
                  key=lambda c: -max(g.categories[c].time_us / g.per if c in g.categories else 0.0,
                                     b.categories[c].time_us / b.per if c in b.categories else 0.0))
    for c in cats:
        new_pi = g.categories[c].time_us / g.per if c in g.categories else 0.0
        base_pi = b.categories[c].time_us / b.per if c in b.categories else 0.0
        out.append(_regression("regression.category", g, new_pi, base_pi, t, where_base, category=c))
    if t.per in ("microbatch", "layer", "phase", "stage") and t.per in b.segments and t.per in g.segments:
        new_rows, base_rows = g.segments_per_iteration(t.per), b.segments_per_iteration(t.per)
        for k in sorted(set(new_rows) | set(base_rows)):
            n, o = new_rows.get(k), base_rows.get(k)
            if not ((n and n.comm_us > 0) or (o and o.comm_us > 0)):
                continue
            seg = (n or o).keys  # type: ignore[union-attr]
            out.append(_regression("regression.exposed_comm", g, n.exposed_comm_us if n else 0.0,
                                   o.exposed_comm_us if o else 0.0, t, where_base, segment=seg))
    return out


def _warning_checks(gpus: list[GpuSummary], t: Thresholds) -> list[CheckResult]:
    """One check per input file whose loader skipped or repaired something: a warning, or a
    failure with ``--strict`` (a truncated rank must not pass a CI gate unnoticed)."""
    out: list[CheckResult] = []
    seen: set[str] = set()
    for g in gpus:
        if not g.warnings or g.file in seen:
            continue
        seen.add(g.file)
        out.append(CheckResult("loader_warnings", FAIL if t.strict else WARN, float(len(g.warnings)), 0.0, "",
                               **_at(g), detail="; ".join(g.warnings)))
    return out


def _health_checks(gpus: list[GpuSummary], t: Thresholds) -> list[CheckResult]:
    """One check per trace health problem of each input file (load/health.py: dropped graph
    replays, launches without GPU records, no record_shapes, string pids, two writers): a
    warning, or a failure with ``--strict`` (the figures of such a recording are distorted)."""
    out: list[CheckResult] = []
    seen: set[str] = set()
    for g in gpus:
        if not g.health or g.file in seen:
            continue
        seen.add(g.file)
        for h in g.health:
            out.append(CheckResult("trace_health", FAIL if t.strict else WARN, float(h.get("count") or 0), 0.0, "",
                                   **_at(g), category=str(h["key"]), detail=str(h["message"])))
    return out


def run_checks(runs: list, t: Thresholds) -> list[CheckResult]:
    """``--max-wait``: per rank of each run, the exposed waiting for other ranks (the part of its
    communication that waited for the last rank and that no compute hid) as a share of the
    iteration; the line names the straggler.  A run without cross-rank numbers is a SKIP."""
    out: list[CheckResult] = []
    if t.max_wait_pct is None:
        return out
    for run in runs:
        if not run.cross_rank:
            first = run.ranks[0] if run.ranks else None
            out.append(CheckResult("run.wait_pct", SKIP, None, t.max_wait_pct, "%", file=first.file if first else "",
                                   rank=None, device=first.device if first else 0,
                                   device_name=first.device_name if first else None,
                                   detail=f"no cross-rank numbers: {run.reason}"))
            continue
        s = run.straggler
        who = f"; straggler: rank {s.rank}" if s is not None and s.rank is not None else ""
        by_rank = {r.rank: r for r in run.ranks}
        for tm in run.times:
            share = 100.0 * tm.per_iteration(tm.exposed_wait_us) / tm.iteration_us if tm.iteration_us else 0.0
            r = by_rank[tm.rank]
            out.append(CheckResult("run.wait_pct", PASS if share <= t.max_wait_pct + 1e-9 else FAIL, share,
                                   t.max_wait_pct, "%", file=r.file, rank=tm.rank, device=r.device,
                                   device_name=r.device_name,
                                   detail=f"{_ms(tm.per_iteration(tm.exposed_wait_us))} ms/iter of a "
                                          f"{_ms(tm.iteration_us)} ms iteration{who}"
                                          + (f"; {run.partial_note}" if run.partial else "")))
    return out


def evaluate(gpus: list[GpuSummary], t: Thresholds, baseline: list[GpuSummary] | None = None,
             runs: list | None = None) -> list[CheckResult]:
    """Every check the thresholds ask for, GPU by GPU, in a stable order; loader warnings and trace
    health first."""
    out: list[CheckResult] = _warning_checks(gpus, t) + _health_checks(gpus, t)
    pairs = match_gpus(gpus, baseline) if baseline is not None else [(g, None, "") for g in gpus]
    for g, b, how in pairs:
        if t.exposed_checks():
            out.extend(_absolute_checks(g, t))
        if baseline is not None:
            out.extend(_regression_checks(g, b, how, t))
    out.extend(run_checks(runs or [], t))
    return out


def run_gate(paths: Iterable[str], thresholds: Thresholds, rules_file: str | None = None, jobs: int = 1,
             max_bytes: int | None = None, patterns=None, progress=None) -> GateResult:
    """Analyze the inputs (traces, rank directories, or saved analyze documents) and check them.

    A baseline that cannot be read raises ``TraceError`` (nothing to gate against); inputs that
    cannot be analyzed are listed in ``GateResult.errors`` (exit code 2) beside the checks of
    the inputs that could.
    """
    t = thresholds.validate()
    views = [t.per] if t.per != "gpu" else []
    baseline = load_baseline(t.baseline, views, rules_file, max_bytes, patterns) if t.baseline else None
    skipped: list = []
    runs: list = [] if t.max_wait_pct is not None else None
    gpus, errors = load_inputs(list(paths), views=views, kernels=False, rules_file=rules_file, jobs=jobs,
                               max_bytes=max_bytes, patterns=patterns, progress=progress, runs=runs,
                               skipped=skipped)
    return GateResult(thresholds=t, checks=evaluate(gpus, t, baseline, runs), errors=errors,
                      inputs=list(dict.fromkeys(g.file for g in gpus)),
                      notes=[f"skipped {s.path}: {s.reason} (found in a directory)" for s in skipped])


def load_baseline(path: str, views: list[str] | None = None, rules_file: str | None = None,
                  max_bytes: int | None = None, patterns=None) -> list[GpuSummary]:
    """A baseline: an ``analyze --format json`` document (small, kept in the repo) or a trace."""
    from ..errors import NotATraceError
    from .summary import is_document

    if is_document(path) or str(path).lower().endswith(".json") and _looks_like_object_without_events(path):
        return load_document(path)
    gpus, errors = load_inputs([path], views=views or [], kernels=False, rules_file=rules_file,
                               max_bytes=max_bytes, patterns=patterns)
    if errors:
        e = errors[0]
        if isinstance(e, NotATraceError):
            raise TraceError(e.path, "baseline is neither a traceview analyze --format json document nor a trace")
        raise TraceError(e.path, f"baseline: {e.reason}")
    return gpus


def _looks_like_object_without_events(path: str) -> bool:
    """A small JSON file that is not a trace: read it as a document, for a precise error."""
    import os

    try:
        if os.path.getsize(path) > 64 << 20:
            return False
        with open(path, "rb") as f:
            return b"traceEvents" not in f.read()
    except OSError:
        return False
