"""``traceview analyze``: per-GPU time accounting and kernel categories."""

from __future__ import annotations

import os
import sys

import click
import orjson
from rich.console import Console

from ..analysis import TraceAnalysis, analyze_many, expand_paths, rank_skew, skew_caveats
from ..classify import load_rules
from ..errors import TraceError, UsageError
from ..report import json_report, tables, terminal
from ..report.text import clean_frame
from .common import (EXIT_INPUT, budget_options, budget_settings, error_line, handle_errors, note_skipped, jobs_option, max_bytes_option, rules_option,
                     segment_patterns, segments_option)
from .progress import LoadProgress


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="table: terminal view; json: the documented schema; csv: one flat table (see --table).")
@click.option("--table", "table_name", type=click.Choice(sorted(tables.TABLES)), default="gpus", show_default=True,
              help="Which flat table --format csv prints.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout.")
@click.option("--strict", is_flag=True, help="Treat loader warnings (skipped or repaired events, truncation) as errors.")
@click.option("--by", "by", type=click.Choice(["microbatch", "layer", "phase", "iteration", "stage", "stage-phase"]),
              multiple=True, help="Add a per-segment table: exposed communication per micro-batch, (layer, micro-batch), "
                                  "phase...  Repeatable.")
@click.option("--tax/--no-tax", default=None, help="Show the overlap tax table (default: with --by).")
@budget_options
@rules_option
@segments_option
@jobs_option
@max_bytes_option
@handle_errors
def analyze_cmd(paths, fmt, table_name, output, strict, by, tax, segments_file, model, gpu_name, gpu_file, phase,
                precision, tokens, kv_len, n_seqs, rules_file, jobs, max_bytes):
    """Where the GPU time goes, per rank and GPU: the iteration time and what fills it (compute,
    exposed communication, idle and how much of it was the CPU launching late), the what-if if
    the exposed communication were hidden, busy time per stream and per kernel category.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces.

    \b
    Examples:
      traceview analyze prefill_tbo_rank0.json.gz              # verdict, GPU table, categories
      traceview analyze traces/ --jobs 4                       # every rank of a run
      traceview analyze t.json.gz --by iteration               # duration, idle, what-if per step
      traceview analyze t.json.gz --by microbatch --tax        # two-batch overlap and its cost
      traceview analyze t.json.gz --by phase                   # attn / dispatch / experts / combine
      traceview analyze t.json.gz --model deepseek-v3 --gpu H200   # measured vs modeled
      traceview analyze t.json.gz --format json -o out.json    # docs/json-schema.md

    \b
    Words (docs/metrics.md defines each number):
      exposed comm       communication while no compute kernel ran on that GPU:
                         it costs iteration time (the verdict gives it as a share
                         of the iteration; "exposed % of comm" is exposed / comm)
      no kernel queued   idle time with nothing launched and not yet run: the GPU
                         waited for the CPU (host-bound)
      overlap tax        how much longer compute kernels ran beside communication
                         than the same kernel with the same shapes ran alone
      cover by other mb  a micro-batch's communication hidden under the other
                         micro-batches' compute: what two-batch overlap bought
    """
    load_rules(rules_file)  # validate the rules file once, before any work
    if fmt == "csv" and len(by) > 1:
        raise UsageError("--format csv writes one table: give one --by (or run once per view)")
    if fmt == "csv" and by and click.get_current_context().get_parameter_source("table_name").name != "DEFAULT":
        raise UsageError("--format csv writes one table: --table and --by do not go together")
    budget = budget_settings(model, gpu_name, gpu_file, phase, precision, tokens, kv_len, n_seqs)
    patterns = segment_patterns(segments_file)
    files = expand_paths(paths)
    # the event tables are needed only by segments, the overlap tax, budgets and JSON: without
    # them, drop each rank's table once measured (memory bounded by --jobs, not by the ranks)
    keep_events = bool(by or tax or budget or fmt == "json")
    skipped: list = []
    with LoadProgress(files) as progress:
        results = analyze_many(files, rules_file, jobs, max_bytes, patterns, keep_events=keep_events,
                               progress=progress, skipped=skipped)
    note_skipped(skipped)
    failed = [r for r in results if isinstance(r, TraceError)]
    good = [r for r in results if isinstance(r, TraceAnalysis)]
    if strict:
        for a in good:
            for w in a.trace.warnings:
                failed.append(TraceError(a.trace.path, f"--strict: {w}"))
    for e in failed:
        error_line(str(e))
    if good:
        _emit(good, results, fmt, table_name, output, by, bool(by) if tax is None else tax, budget)
    sys.exit(EXIT_INPUT if failed else 0)


def _emit(good, results, fmt, table_name, output, by=(), tax=False, budget=None) -> None:
    recs = {}
    if budget:
        from ..budget.reconcile import reconcile

        recs = {id(a): reconcile(a, **budget) for a in good}
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "json":
            doc = json_report.analysis_document(results)
            for t, a in zip(doc["traces"], good):
                if id(a) in recs:
                    t["reconciliation"] = recs[id(a)].to_dict()
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
        elif fmt == "csv":
            if by:
                import polars as pl

                frames = [a.segments(by[0]).with_columns(pl.lit(a.trace.name).alias("file"),
                                                         pl.lit(a.rank, dtype=pl.Int64).alias("rank")) for a in good]
                out.write(clean_frame(pl.concat(frames, how="diagonal_relaxed")).write_csv())
            else:
                out.write(clean_frame(tables.TABLES[table_name](good)).write_csv())
        else:
            # markup/emoji off: a kernel named "[link=...]" or ":skull:" is printed, not interpreted
            # a pipe gets 160 columns unless COLUMNS says otherwise (as a terminal's width does)
            wide = out.isatty() or os.environ.get("COLUMNS", "").isdigit()
            console = Console(file=out, width=None if wide else 160, markup=False, emoji=False)
            terminal.render_analysis(good, console)
            for view in by:
                for a in good:
                    terminal.render_segments(a, view, console)
            if tax:
                for a in good:
                    terminal.render_tax(a, console)
            if len(good) > 1:
                terminal.render_skew(*rank_skew(good), console, caveats=skew_caveats(good))
            for a in good:
                if id(a) in recs:
                    terminal.render_reconciliation(a, recs[id(a)], console)
    finally:
        if output:
            out.close()
