"""``traceview report``: the self-contained HTML overlap report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..classify import load_rules
from ..errors import TraceError, UsageError
from .common import (EXIT_INPUT, budget_options, budget_settings, check_engine, engine_options, error_line,
                     handle_errors, jobs_option, max_bytes_option, note_skipped, rules_option, segment_patterns,
                     segments_option)
from .progress import RankProgress


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
@click.option("--detail-ranks", metavar="RANKS",
              help="Ranks drawn in detail (timelines, segments, kernels) below the run page, e.g. 3,17 or all. "
                   "Default: every file of a run of up to 4; else the straggler, the median rank by waiting and "
                   "the rank that waited most. The run page itself always covers every rank.")
@handle_errors
def report_cmd(paths, output, model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs,
               max_events, title, strict, rules_file, segments_file, jobs, engine, address, max_bytes, detail_ranks):
    """Write an HTML report: per-GPU timelines with exposed communication marked, per
    micro-batch and per layer overlap, kernel categories, top and unclassified kernels.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces. Several ranks
    give a run page (every rank on one clock, the straggler, waiting per layer) from each rank's
    summary, then detail for the ranks a reader needs (--detail-ranks); with --engine ray each
    rank file is read by a task on the node that holds it, and the page is the same.
    """
    from ..report.run_report import report_run

    load_rules(rules_file)
    budget = budget_settings(model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs)
    out = Path(output)
    if not out.parent.is_dir():
        raise TraceError(out, "the output's directory does not exist")
    check_engine(engine, address)
    skipped: list = []
    with RankProgress() as progress:
        rep, _run, failed = report_run(paths, engine=engine, jobs=jobs, address=address, rules_file=rules_file,
                                       patterns=segment_patterns(segments_file), max_bytes=max_bytes, budget=budget,
                                       max_events=max_events, title=title, detail_ranks=parse_detail_ranks(detail_ranks),
                                       progress=progress, skipped=skipped, strict=strict)
    note_skipped(skipped)
    for e in failed:
        error_line(e)
    if rep is None:
        sys.exit(EXIT_INPUT)
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(rep.html)
    except OSError as e:
        raise TraceError(out, f"cannot write: {e.strerror or e}") from None
    size = out.stat().st_size
    click.echo(f"wrote {out} ({size / 1e6:.1f} MB, {rep.figures} plots, {rep.boxes:,} timeline boxes for "
               f"{rep.kernels:,} kernels{', reduced' if rep.reduced else ''})", err=True)
    sys.exit(EXIT_INPUT if failed else 0)


def parse_detail_ranks(text: str | None) -> "str | list[int] | None":
    """``all``, or comma-separated rank numbers; a bad list is a one-line usage error."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return "all"
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--detail-ranks {text!r}: give rank numbers (3,17) or all") from None
    if not ranks:
        raise UsageError("--detail-ranks: give rank numbers (3,17) or all")
    return ranks
