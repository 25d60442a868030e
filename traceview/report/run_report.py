"""The HTML report of a run on any engine: one map/reduce path, then detail where it is needed.

1. the map (``run.engine``): every rank file -> its ``RankSummary``, where the file is;
2. the reduce (``run.reduce_run``) in the driver: the ``RunAnalysis``; the run page
   (``html_run``) is drawn from it for *every* rank;
3. the detail round: the ranks a reader needs (``pick_details``: the straggler, the median
   rank, the rank that waited most; or ``--detail-ranks``) are read again, each by a task on
   the node holding its file (``DetailTask``), which returns that rank's page section as a
   ``Fragment`` (compressed on the way back by the engine);
4. the page is assembled in the driver (``html.assemble``).

The local engine runs the same three steps (in this process or ``jobs`` processes), so the
page of both engines is the same, byte for byte but for the time it was generated.  A single
file skips steps 1-2: its detail is the page.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import TraceError, UsageError
from ..run.engine import Engine, RankTask, make_engine, map_run
from .html import DEFAULT_MAX_EVENTS, Fragment, Report, _per_gpu_budget, assemble, detail_fragment

#: with this many files or fewer, every file gets its detail by default
ALL_DETAIL_UP_TO = 4


def reconcile_one(a, budget: dict, transfer: dict | None) -> tuple[Any, str | None]:
    """``budget.reconcile.reconcile(a, **budget)`` with the run's transfer times; where the
    budget code is missing, (None, why) so the page says the part is unavailable."""
    try:
        from ..budget.reconcile import reconcile
    except (ImportError, AttributeError) as e:
        return None, f"the budget reconciliation is not available here ({type(e).__name__})"
    return reconcile(a, **budget, comm_transfer_us=transfer), None


@dataclass(frozen=True)
class DetailTask(RankTask):
    """The detail round's task: one rank file -> its ``Fragment`` (verdicts, timelines,
    segments, categories, kernels, budget), rendered where the file is read."""

    #: timeline boxes per GPU (shared out by the driver over every detailed GPU); None: from this file alone
    boxes_per_gpu: int | None = None
    max_events: int = DEFAULT_MAX_EVENTS
    budget: dict | None = None
    #: rank -> its transfer time per communication category (from the run), for the budget
    transfer: dict = field(default_factory=dict)
    #: also render what the page says about the file (header, loader warnings): a one-file report
    with_header: bool = False

    def work(self, path: Path, rules_file: str | None) -> Fragment | TraceError | None:
        from ..analysis import ScannedPath, SkippedInput, analyze
        from ..classify import load_rules
        from ..errors import NotATraceError
        from ..load import DEFAULT_MAX_BYTES
        from .html import _header, _warnings

        try:
            a = analyze(path, load_rules(rules_file), self.max_bytes or DEFAULT_MAX_BYTES, self.patterns, self.workers)
        except NotATraceError as e:
            return SkippedInput(e.path, e.reason) if isinstance(path, ScannedPath) else e
        except TraceError as e:
            return e
        rec = note = None
        if self.budget:
            rec, note = reconcile_one(a, self.budget, self.transfer.get(a.rank))
        boxes = self.boxes_per_gpu or _per_gpu_budget(self.max_events, len(a.gpus))
        frag = Fragment(problems=a.strict_problems())
        if self.with_header:
            frag.add(_header([a]))
            frag.add(_warnings([a]))
            frag.title = a.trace.name
        frag.extend(detail_fragment(a, boxes, self.max_events, rec, note, budget_asked=bool(self.budget)))
        return frag


@dataclass
class Detail:
    """A file chosen for detail, and why."""

    file: str
    rank: int | None
    why: str


def pick_details(run, requested: "str | Sequence[int] | None" = None) -> list[Detail]:
    """The files to render in detail, in rank order.

    ``requested``: ``"all"``, rank numbers, or None for the default: every file of a run of at
    most ``ALL_DETAIL_UP_TO``; else the straggler (or, with none named, the rank the others
    waited for most), the median rank by waiting and the rank that waited most (the fastest:
    it arrived first); files that are not one run: the first ``ALL_DETAIL_UP_TO``.
    """
    files: dict[str, int | None] = {}
    for r in run.ranks:
        files.setdefault(r.file, r.rank)
    if requested == "all" or (requested is None and len(files) <= ALL_DETAIL_UP_TO):
        return [Detail(f, rk, "") for f, rk in files.items()]
    if requested is not None:
        by_rank = {rk: f for f, rk in files.items() if rk is not None}
        wanted = sorted(set(int(x) for x in requested))
        missing = [x for x in wanted if x not in by_rank]
        if missing:
            have = sorted(by_rank)
            shown = (", ".join(map(str, have)) if len(have) <= 8 else f"{have[0]}-{have[-1]}") or "none"
            raise UsageError(f"--detail-ranks: no rank {', '.join(map(str, missing))} among the loaded ranks ({shown})")
        return [Detail(by_rank[x], x, "asked for") for x in wanted]
    times = run.times
    if not times:
        return [Detail(f, rk, "one of the first files") for f, rk in list(files.items())[:ALL_DETAIL_UP_TO]]
    why: dict[int, list[str]] = {}
    s = run.straggler
    if s is not None and s.rank is not None:
        why.setdefault(s.rank, []).append("the straggler")
    else:
        t = max(times, key=lambda t: (t.others_waited_us, -t.rank))
        why.setdefault(t.rank, []).append("the rank the others waited for most")
    by_wait = sorted(times, key=lambda t: (t.wait_us, t.rank))
    why.setdefault(by_wait[len(by_wait) // 2].rank, []).append("the median rank by waiting")
    why.setdefault(by_wait[-1].rank, []).append("waited the most (the fastest rank)")
    by_rank = {rk: f for f, rk in files.items()}
    return [Detail(by_rank[rk], rk, " and ".join(w)) for rk, w in sorted(why.items())]


def detail_note(run, details: list[Detail]) -> str:
    """What the page says about which ranks have detail, and how to get the others."""
    n_files = len({r.file for r in run.ranks})
    chosen = ", ".join(f"rank {d.rank}" if d.rank is not None else Path(d.file).name for d in details)
    if len(details) >= n_files:
        return f"Every file has its detail below ({chosen})."
    why = "; ".join(f"rank {d.rank}: {d.why}" for d in details if d.why)
    detailed = {d.file for d in details}
    others = [r.rank for r in run.ranks if r.file not in detailed and r.rank is not None][:2]
    example = ",".join(map(str, others)) or "3,17"
    return (f"Detail below for {chosen} ({why}). The other {n_files - len(details)} files are in the run tables "
            f"above; for their detail, run the report again with --detail-ranks {example} (rank numbers) or "
            "--detail-ranks all.")


def report_run(paths, *, engine: "str | Engine" = "local", jobs: int = 1, address: str | None = None,
               rules_file: str | None = None, patterns=None, max_bytes: int | None = None,
               budget: dict | None = None, max_events: int = DEFAULT_MAX_EVENTS, title: str | None = None,
               detail_ranks: "str | Sequence[int] | None" = None,
               progress: Callable[[Path, int, int], None] | None = None, skipped: list | None = None,
               generated: str | None = None, strict: bool = False) -> tuple[Report | None, Any, list[TraceError]]:
    """The HTML report of ``paths`` (rank files, directories of them) on ``engine``.

    Returns the page (None when no file could be read), the ``RunAnalysis`` (None for one
    file) and the one-line errors of the files that failed (map or detail round); with
    ``strict``, also one per loader warning and trace health problem of every file read.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    eng = make_engine(engine, jobs, address)
    rules_text = Path(rules_file).read_text() if rules_file and eng.name != "local" else None
    base = RankTask(rules_file, max_bytes, patterns, None, rules_text)
    placements = eng.locate(paths, skipped)
    if not placements:
        raise TraceError(str(paths[0]) if paths else ".", "no trace files among the inputs")
    run = None
    errors: list[TraceError] = []
    if len(placements) > 1:
        summaries, errors = map_run(eng, paths, base, progress, placements=placements, skipped=skipped)
        from ..run import reduce_run

        run = reduce_run(summaries, errors)
        details = pick_details(run, detail_ranks)
        gpus = {r.file: r.gpus_in_file for r in run.ranks}
        boxes = _per_gpu_budget(max_events, sum(gpus[d.file] for d in details))
        transfer = {r.rank: run.transfer_by_category(r.rank) for r in run.ranks if r.rank is not None}
    else:
        details = [Detail(placements[0].shown, None, "")]
        boxes, transfer = None, {}
    task = DetailTask(**asdict(base), boxes_per_gpu=boxes, max_events=max_events, budget=budget,
                      transfer=transfer, with_header=run is None)
    by_shown = {p.shown: p for p in placements}
    rendered = {}
    from ..analysis import SkippedInput

    for shown, frag in eng.run([by_shown[d.file] for d in details], task, progress):
        if isinstance(frag, SkippedInput) and skipped is not None:
            skipped.append(frag)
        elif isinstance(frag, TraceError):
            errors.append(frag)
            rendered[str(shown)] = f"{shown}: {frag.reason}"
        elif frag is not None:
            rendered[str(shown)] = frag
    if strict:
        problems = ([(r.file, p) for r in run.ranks for p in r.strict_problems] if run is not None else
                    [(details[0].file, p) for f in rendered.values() if isinstance(f, Fragment) for p in f.problems])
        errors += [TraceError(file, f"--strict: {p}") for file, p in dict.fromkeys(problems)]
    errors = sorted({str(e): e for e in errors}.values(), key=lambda e: str(e.path))
    if run is None:
        frag = rendered.get(details[0].file)
        if not isinstance(frag, Fragment):
            return None, None, errors
        return assemble(title or f"traceview report · {frag.title}", Fragment(), None, [(None, frag)],
                        generated=generated), None, errors
    if not run.ranks:
        return None, run, errors
    from .html import _detail_heading
    from .html_run import run_head

    parts = [(_detail_heading(Path(d.file).name if d.rank is None else d.file, d.rank, d.why),
              rendered.get(d.file, f"{d.file}: not rendered")) for d in details]
    n_files = len({r.file for r in run.ranks})
    page = assemble(title or f"traceview report · {n_files} traces", run_head(run), run, parts,
                    detail_note(run, details), generated=generated)
    return page, run, errors
