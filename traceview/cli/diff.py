"""``traceview diff``: what changed between two runs, biggest first."""

from __future__ import annotations

import sys

import click
import orjson
from rich.console import Console

from ..errors import TraceError
from ..compare import diff_paths, render_diff
from ..report.text import display_path, json_dumps, one_line
from .common import (EXIT_INPUT, error_line, handle_errors, jobs_option, max_bytes_option, note_skipped, rules_option,
                     segment_patterns, segments_option)
from .gate import write_file
from .progress import LoadProgress


@click.command("diff")
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--kernels", is_flag=True, help="Add kernel-level detail: kernels matched by name + launch grid.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(0, None),
              help="Rows per table (0: all).")
@click.option("--pairs", type=click.IntRange(0, None), default=None,
              help="GPU pairs shown in detail after the per-rank summary, those whose iteration time changed most "
                   "(0: all; default: all up to 3 pairs, else 3).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: findings and tables; json: the traceview.diff/1 document.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to this file.")
@rules_option
@segments_option
@jobs_option
@max_bytes_option
@handle_errors
def diff_cmd(base, new, kernels, top, pairs, fmt, output, rules_file, segments_file, jobs, max_bytes):
    """Compare two runs per GPU: iteration time, exposed communication, kernel categories, micro-batches,
    layers and phases, per iteration, sorted by impact, with the findings that explain the change.

    BASE and NEW are trace files, directories of per-rank traces, or 'analyze --format json' documents.
    GPUs pair up by rank and device, else by position (so rank 0 of one run compares with rank 1).
    """
    skipped: list = []
    result, errors = diff_paths([base], [new], rules_file=rules_file, jobs=jobs, max_bytes=max_bytes,
                                patterns=segment_patterns(segments_file), progress=LoadProgress, skipped=skipped)
    note_skipped(skipped)
    for e in errors:
        error_line(e)
    warned = {g.file: g.warnings for p in result.pairs for g in (p.base, p.new) if g.warnings}
    for file, warnings in warned.items():  # a truncated side makes every per-iteration value suspect
        for w in warnings:
            click.echo(f"traceview: warning: {display_path(file)}: {one_line(w)}", err=True)
    if not result.pairs:
        if not errors:
            error_line(f"{base}: no GPU to compare with {new}")
        sys.exit(EXIT_INPUT)
    if fmt == "json":
        doc = result.to_dict()  # every row: --top shortens the terminal tables only
        if not kernels:
            for p in doc["pairs"]:
                p["kernels"] = None
        text = json_dumps(doc, orjson.OPT_INDENT_2) + "\n"
        if output:
            write_file(output, text)
        else:
            click.echo(text, nl=False)
    else:
        try:
            out = open(output, "w", encoding="utf-8") if output else sys.stdout
        except OSError as e:
            raise TraceError(output, f"cannot write: {e.strerror or e}") from None
        try:
            console = Console(file=out, width=None if out.isatty() else 160, markup=False, emoji=False)
            render_diff(result, console, top=top, kernels=kernels, pairs=pairs)
        finally:
            if output:
                out.close()
    sys.exit(EXIT_INPUT if errors else 0)
