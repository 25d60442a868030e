"""``traceview analyze``: per-GPU time accounting and kernel categories."""

from __future__ import annotations

import os
import sys

import click
import orjson
from rich.console import Console

from ..analysis import TraceAnalysis, analyze_many, expand_paths
from ..classify import load_rules
from ..errors import TraceError, UsageError
from ..report import json_report, tables, terminal
from ..report.text import clean_frame, device_label, display_path, json_dumps
from .common import (EXIT_INPUT, budget_options, budget_settings, check_engine, engine_options, error_line,
                     handle_errors, jobs_option, max_bytes_option, note_skipped, rules_option, segment_patterns,
                     segments_option)
from .progress import LoadProgress, RankProgress


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "parquet"]), default="table",
              show_default=True, help="table: terminal view; json: the documented schema; csv: one flat table (see "
                                      "--table); parquet: the same table as a Parquet file (needs -o).")
@click.option("--table", "table_name", type=click.Choice(sorted(tables.TABLES) + list(tables.RUN_TABLES)), default="gpus",
              show_default=True, help="Which flat table --format csv prints (ranks, collectives: of a run of several "
                                      "rank files).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout.")
@click.option("--strict", is_flag=True, help="Treat loader warnings (skipped or repaired events, truncation) and trace "
                                             "health problems (dropped graph replays, no record_shapes, string pids, "
                                             "interleaved writers) as errors.")
@click.option("--by", "by", type=click.Choice(["microbatch", "layer", "phase", "iteration", "stage", "stage-phase",
                                               "rank"]),
              multiple=True, help="Add a per-segment table: exposed communication per micro-batch, (layer, micro-batch), "
                                  "phase...; rank: rank x layer tables of exposed communication and waiting (a run). "
                                  "Repeatable.")
@click.option("--tax/--no-tax", default=None, help="Show the overlap tax table (default: with --by).")
@budget_options
@rules_option
@segments_option
@jobs_option
@engine_options
@max_bytes_option
@handle_errors
def analyze_cmd(paths, fmt, table_name, output, strict, by, tax, segments_file, model, gpu_name, convention, gpu_file,
                phase, precision, tokens, kv_len, n_seqs, rules_file, jobs, engine, address, max_bytes):
    """Where the GPU time goes, per rank and GPU: the iteration time and what fills it (compute,
    exposed communication, idle and how much of it was the CPU launching late), the what-if if
    the exposed communication were hidden, busy time per stream and per kernel category.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces.

    \b
    Examples:
      traceview analyze prefill_tbo_rank0.json.gz              # verdict, GPU table, categories
      traceview analyze traces/ --jobs 4                       # every rank of a run
      traceview analyze traces/ --by rank                      # the run: straggler, wait vs transfer
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
    if fmt in ("csv", "parquet") and len(by) > 1:
        raise UsageError(f"--format {fmt} writes one table: give one --by (or run once per view)")
    if fmt == "parquet" and not output:
        raise UsageError("--format parquet writes a file: give -o FILE.parquet")
    if fmt in ("csv", "parquet") and by and click.get_current_context().get_parameter_source("table_name").name != "DEFAULT":
        raise UsageError(f"--format {fmt} writes one table: --table and --by do not go together")
    budget = budget_settings(model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs)
    patterns = segment_patterns(segments_file)
    check_engine(engine, address)
    if engine != "local":
        return _analyze_on_engine(paths, fmt, output, by or tax or budget or strict or fmt in ("csv", "parquet"), rules_file,
                                  patterns, engine, address, max_bytes)
    skipped: list = []
    files = expand_paths(paths, skipped)
    # the event tables are needed only by segments, the overlap tax, budgets and JSON: without
    # them, drop each rank's table once measured (memory bounded by --jobs, not by the ranks)
    keep_events = bool(by or tax or budget or fmt == "json")
    with LoadProgress(files) as progress:
        results = analyze_many(files, rules_file, jobs, max_bytes, patterns, keep_events=keep_events,
                               progress=progress, summarize=len(files) > 1, skipped=skipped)
    note_skipped(skipped)
    failed = [r for r in results if isinstance(r, TraceError)]
    good = [r for r in results if isinstance(r, TraceAnalysis)]
    if strict:
        failed += [TraceError(a.trace.path, f"--strict: {p}") for a in good for p in a.strict_problems()]
    for e in failed:
        error_line(e)
    if good:
        from ..run import run_from_analyses

        run = run_from_analyses(results) if len(files) > 1 else None
        _emit(good, results, fmt, table_name, output, by, bool(by) if tax is None else tax, budget, run)
    sys.exit(EXIT_INPUT if failed else 0)


def _emit(good, results, fmt, table_name, output, by=(), tax=False, budget=None, run=None) -> None:
    seg_views = [v for v in by if v != "rank"]
    recs = {}
    if budget:
        from ..budget.reconcile import reconcile

        recs = {id(a): reconcile(a, **budget, comm_transfer_us=run.transfer_by_category(a.rank) if run else None)
                for a in good}
    if fmt == "parquet":  # binary: the strings as they are, no terminal escaping
        try:
            _flat_table(good, table_name, by, run).write_parquet(output)
        except OSError as e:
            raise TraceError(output, f"cannot write: {e.strerror or e}") from None
        return
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "json":
            doc = json_report.analysis_document(results, run=run)
            for t, a in zip(doc["traces"], good):
                if id(a) in recs:
                    t["reconciliation"] = recs[id(a)].to_dict()
            out.write(json_dumps(doc, orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + "\n")
        elif fmt == "csv":
            out.write(clean_frame(_flat_table(good, table_name, by, run)).write_csv())
        else:
            # markup/emoji off: a kernel named "[link=...]" or ":skull:" is printed, not interpreted
            # a pipe gets 160 columns unless COLUMNS says otherwise (as a terminal's width does)
            wide = out.isatty() or os.environ.get("COLUMNS", "").isdigit()
            console = Console(file=out, width=None if wide else 160, markup=False, emoji=False)
            terminal.render_analysis(good, console)
            if run is not None:
                terminal.render_run(run, console)
                if "rank" in by:
                    terminal.render_rank_layers(run, console)
            for view in seg_views:
                for a in good:
                    terminal.render_segments(a, view, console)
            if tax:
                for a in good:
                    terminal.render_tax(a, console)
            for a in good:
                if id(a) in recs:
                    terminal.render_reconciliation(a, recs[id(a)], console)
    finally:
        if output:
            out.close()


def _flat_table(good, table_name, by, run):
    """The one flat table --format csv/parquet writes: a --by view, the rank x layer table, or --table."""
    import polars as pl

    if by == ("rank",):
        return run.by_rank_layer() if run is not None else tables.empty()
    if by:
        frames = [a.segments(by[0]).with_columns(pl.lit(a.trace.name).alias("file"),
                                                 pl.lit(a.rank, dtype=pl.Int64).alias("rank")) for a in good]
        return pl.concat(frames, how="diagonal_relaxed")
    return tables.table(table_name, good, run)


def _analyze_on_engine(paths, fmt, output, unsupported, rules_file, patterns, engine, address, max_bytes) -> None:
    """The run analysis with its map step on another engine (Ray): summaries only, so the
    run's per-rank table, straggler and what-if (``RunAnalysis``), not the per-event views."""
    from ..report.terminal import render_run
    from ..run import analyze_run

    if unsupported:
        raise UsageError(f"--engine {engine} gives the run analysis (per-rank table, straggler, what-if): "
                         "--by, --tax, --model, --strict and --format csv need --engine local")
    with RankProgress() as progress:
        run = analyze_run(paths, rules_file, engine=engine, patterns=patterns, progress=progress, address=address,
                          max_bytes=max_bytes)
    for e in run.errors:
        error_line(e)
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "json":
            out.write(json_dumps({"run": run.to_dict()}, orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                                 | orjson.OPT_SERIALIZE_NUMPY) + "\n")
        else:
            console = Console(file=out, width=None if out.isatty() else 160, markup=False, emoji=False)
            for r in run.ranks:  # the per-rank GPU lines the local engine prints above the run
                console.print(f"{display_path(r.name)}: rank {r.rank}, {device_label(r.device, r.device_name)}: compute {r.gpu.compute_us / 1000:.3f} ms, "
                              f"comm {r.gpu.comm_us / 1000:.3f} ms, exposed {r.gpu.exposed_comm_us / 1000:.3f} ms, "
                              f"span {r.gpu.span_us / 1000:.3f} ms")
            render_run(run, console)
    finally:
        if output:
            out.close()
    sys.exit(EXIT_INPUT if run.errors or not run.ranks else 0)
