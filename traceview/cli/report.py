"""``traceview report``: the self-contained HTML overlap report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..analysis import TraceAnalysis, analyze_many, expand_paths
from ..classify import load_rules
from ..errors import TraceError, UsageError
from .common import (EXIT_INPUT, budget_options, budget_settings, check_engine, engine_options, error_line,
                     handle_errors, jobs_option, max_bytes_option, note_skipped, rules_option, segment_patterns,
                     segments_option)
from .progress import LoadProgress


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (one self-contained file; opens offline).")
@budget_options
@click.option("--max-events", default=20_000, show_default=True, type=click.IntRange(100, 2_000_000),
              help="Kernel boxes drawn, shared among the GPUs' timelines (each GPU gets at least "
                   "min(N, 500), so a timeline stays readable); beyond its share a GPU's short kernels are "
                   "merged into time bins (the page says so).")
@click.option("--title", help="Page title (default: from the file names).")
@click.option("--strict", is_flag=True, help="As analyze --strict: loader warnings and trace health problems are "
                                             "errors (the page is still written; exit code 2).")
@rules_option
@segments_option
@jobs_option
@engine_options
@max_bytes_option
@handle_errors
def report_cmd(paths, output, model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs,
               max_events, title, strict, rules_file, segments_file, jobs, engine, address, max_bytes):
    """Write an HTML report: per-GPU timelines with exposed communication marked, per
    micro-batch and per layer overlap, kernel categories, top and unclassified kernels.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces.
    """
    from ..report.html import write_html

    load_rules(rules_file)
    budget = budget_settings(model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs)
    out = Path(output)
    if not out.parent.is_dir():
        raise TraceError(out, "the output's directory does not exist")
    check_engine(engine, address)
    if engine != "local":
        # the page draws every kernel of every rank: it reads event tables, which stay on the nodes
        raise UsageError(f"report --engine {engine}: the HTML page needs the run page built from summaries "
                         "(not yet); use analyze --engine ray for the run analysis, or report --engine local")
    skipped: list = []
    files = expand_paths(paths, skipped)
    with LoadProgress(files) as progress:
        results = analyze_many(files, rules_file, jobs, max_bytes, segment_patterns(segments_file), progress=progress,
                               summarize=len(files) > 1, skipped=skipped)
    note_skipped(skipped)
    failed = [r for r in results if isinstance(r, TraceError)]
    good = [r for r in results if isinstance(r, TraceAnalysis)]
    if strict:
        failed += [TraceError(a.trace.path, f"--strict: {p}") for a in good for p in a.strict_problems()]
    for e in failed:
        error_line(e)
    if not good:
        sys.exit(EXIT_INPUT)
    from ..run import run_from_analyses

    run = run_from_analyses(results) if len(files) > 1 else None
    recs, note = (None, None)
    if budget:
        recs, note = reconcile_all(good, budget, run)
    try:
        rep = write_html(good, out, max_events=max_events, reconciliations=recs, budget_note=note, title=title,
                         run=run)
    except OSError as e:
        raise TraceError(out, f"cannot write: {e.strerror or e}") from None
    size = out.stat().st_size
    click.echo(f"wrote {out} ({size / 1e6:.1f} MB, {rep.figures} plots, {rep.boxes:,} timeline boxes for "
               f"{rep.kernels:,} kernels{', reduced' if rep.reduced else ''})", err=True)
    sys.exit(EXIT_INPUT if failed else 0)


def reconcile_all(good: list[TraceAnalysis], budget: dict, run=None) -> tuple[dict | None, str | None]:
    """Per analysis, ``traceview.budget.reconcile.reconcile(a, **budget)`` (with the run's
    transfer times when there is a run); where the budget
    code is missing, (None, why) so the page says the part is unavailable."""
    try:
        from ..budget.reconcile import reconcile
    except (ImportError, AttributeError) as e:
        return None, f"the budget reconciliation is not available here ({type(e).__name__})"
    return {id(a): reconcile(a, **budget, comm_transfer_us=run.transfer_by_category(a.rank) if run else None)
            for a in good}, None
