"""``traceview analyze``: per-GPU time accounting and kernel categories."""

from __future__ import annotations

import sys

import click
import orjson
from rich.console import Console

from ..analysis import TraceAnalysis, analyze_many, expand_paths
from ..classify import load_rules
from ..errors import TraceError
from ..report import json_report, tables, terminal
from .common import EXIT_INPUT, error_line, handle_errors, jobs_option, max_bytes_option, rules_option


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="table: terminal view; json: the documented schema; csv: one flat table (see --table).")
@click.option("--table", "table_name", type=click.Choice(sorted(tables.TABLES)), default="gpus", show_default=True,
              help="Which flat table --format csv prints.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout.")
@click.option("--strict", is_flag=True, help="Treat loader warnings (skipped or repaired events, truncation) as errors.")
@rules_option
@jobs_option
@max_bytes_option
@handle_errors
def analyze_cmd(paths, fmt, table_name, output, strict, rules_file, jobs, max_bytes):
    """Where the GPU time goes: busy compute/comm/memory, overlap, exposed communication,
    idle, per stream and per kernel category, for each rank and GPU.

    PATHS are trace files (.json, .json.gz) or directories of per-rank traces.
    """
    load_rules(rules_file)  # validate the rules file once, before any work
    files = expand_paths(paths)
    results = analyze_many(files, rules_file, jobs, max_bytes)
    failed = [r for r in results if isinstance(r, TraceError)]
    good = [r for r in results if isinstance(r, TraceAnalysis)]
    if strict:
        for a in good:
            for w in a.trace.warnings:
                failed.append(TraceError(a.trace.path, f"--strict: {w}"))
    for e in failed:
        error_line(str(e))
    if good:
        _emit(good, results, fmt, table_name, output)
    sys.exit(EXIT_INPUT if failed else 0)


def _emit(good, results, fmt, table_name, output) -> None:
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "json":
            out.write(orjson.dumps(json_report.analysis_document(results),
                                   option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
        elif fmt == "csv":
            out.write(tables.TABLES[table_name](good).write_csv())
        else:
            console = Console(file=out, width=None if out.isatty() else 160)
            terminal.render_analysis(good, console)
    finally:
        if output:
            out.close()
