"""``traceview analyze``: per-GPU time accounting and kernel categories."""

from __future__ import annotations

import sys

import click
import orjson
from rich.console import Console

from ..analysis import TraceAnalysis, analyze_many, expand_paths, rank_skew, skew_caveats
from ..classify import load_rules
from ..errors import TraceError, UsageError
from ..report import json_report, tables, terminal
from ..report.text import clean_frame
from .common import (EXIT_INPUT, error_line, handle_errors, note_skipped, jobs_option, max_bytes_option, rules_option,
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
@click.option("--model", help="Reconcile against the budget model: a model name (deepseek-v3, ...) or a config.json.")
@click.option("--gpu", "gpu_name", help="GPU spec for --model (H800, H200, H20, B200, ...).")
@click.option("--gpu-file", type=click.Path(dir_okay=False), help="TOML file of extra/overriding GPU specs.")
@click.option("--phase", type=click.Choice(["prefill", "decode"]), help="Budget phase (default: from the trace's shapes).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp8"]), default="auto", show_default=True,
              help="GEMM precision for the model (auto: fp8 when the kernels are fp8).")
@click.option("--tokens", type=int, help="Tokens per micro-batch, where the trace has no shapes (or to override).")
@click.option("--kv-len", type=int, help="KV length for the attention model (override).")
@click.option("--batch", "n_seqs", type=int, help="Sequences per micro-batch for the attention model (override).")
@rules_option
@segments_option
@jobs_option
@max_bytes_option
@handle_errors
def analyze_cmd(paths, fmt, table_name, output, strict, by, tax, segments_file, model, gpu_name, gpu_file, phase,
                precision, tokens, kv_len, n_seqs, rules_file, jobs, max_bytes):
    """Where the GPU time goes: busy compute/comm/memory, overlap, exposed communication,
    idle, per stream and per kernel category, for each rank and GPU.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces.
    """
    load_rules(rules_file)  # validate the rules file once, before any work
    if fmt == "csv" and len(by) > 1:
        raise UsageError("--format csv writes one table: give one --by (or run once per view)")
    if fmt == "csv" and by and click.get_current_context().get_parameter_source("table_name").name != "DEFAULT":
        raise UsageError("--format csv writes one table: --table and --by do not go together")
    budget = None
    if model or gpu_name:
        if not (model and gpu_name):
            raise UsageError("--model and --gpu go together")
        from ..budget import get_gpu, load_model

        budget = dict(model=load_model(model), gpu=get_gpu(gpu_name, gpu_file), phase=phase, precision=precision,
                      tokens=tokens, kv_len=kv_len, batch=n_seqs)
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
            console = Console(file=out, width=None if out.isatty() else 160, markup=False, emoji=False)
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
