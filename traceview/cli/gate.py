"""``traceview gate``: pass or fail a build on exposed communication and regressions."""

from __future__ import annotations

import os
import sys
import time

import click
import orjson

from ..errors import TraceError
from ..gate import config as gate_config
from ..gate.checks import PER_CHOICES, run_gate
from ..gate.junit import github_annotations, step_summary, to_junit
from ..report.text import json_dumps
from .common import (error_line, handle_errors, jobs_option, max_bytes_option, rules_option, segment_patterns,
                     segments_option)
from .progress import LoadProgress


@click.command("gate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--max-exposed-comm", "max_exposed_comm", metavar="PCT",
              help="Fail when exposed communication per iteration is more than this share of the iteration "
                   "time (e.g. 2%): what it costs, whatever the profile's length.")
@click.option("--max-exposed-comm-ms", "max_exposed_comm_ms", metavar="MS",
              help="Fail when exposed communication is more than this time per iteration (2.5, 2.5ms, 800us); "
                   "a trace without iteration marks counts as one iteration.")
@click.option("--max-exposed-of-comm", "max_exposed_of_comm", metavar="PCT",
              help="Fail when more than this share of the communication time is exposed (exposed ÷ comm; "
                   "a small share of a long iteration can still fail it).")
@click.option("--max-wait", "max_wait", metavar="PCT",
              help="A run (several rank traces): fail a rank whose exposed waiting for the other ranks is more than "
                   "this share of its iteration (e.g. 5%); the line names the straggler.")
@click.option("--by", "--per", "per", type=click.Choice(PER_CHOICES), default=None,
              help="Check each GPU (default), each micro-batch, each layer of each micro-batch and iteration, "
                   "each iteration, each phase (e.g. the combine) or each stage; as analyze --by "
                   "(--per is the same option).")
@click.option("--baseline", type=click.Path(),
              help="What to compare with: a document from 'traceview analyze --format json', a trace, or a "
                   "directory of per-rank traces.")
@click.option("--max-regression", "max_regression", metavar="PCT",
              help="Fail when exposed comm, iteration time or a category's time per iteration grows by more than "
                   "this over the baseline (default 5% with --baseline).")
@click.option("--min-regression-ms", "min_regression_ms", metavar="MS",
              help="Noise floor: a regression smaller than this per iteration never fails (default 0.05).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML file with a [tool.traceview.gate] table (default: traceview.toml or pyproject.toml here).")
@click.option("--no-config", is_flag=True, help="Do not read traceview.toml / pyproject.toml.")
@click.option("--strict", is_flag=True, default=None,
              help="Fail when the loader skipped or repaired events (truncated file, events without duration...) "
                   "or the trace has a health problem (dropped graph replays, kernels without GPU records, no "
                   "record_shapes, string pids, two writers); without it they are WARN lines.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: one line per check; json: the traceview.gate/1 document.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write the report to this file.")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write JUnit XML (one test case per check) for the CI's test report.")
@click.option("--github/--no-github", "github", default=None,
              help="Print GitHub Actions annotations (default: when GITHUB_ACTIONS=true).")
@rules_option
@segments_option
@jobs_option
@max_bytes_option
@handle_errors
def gate_cmd(paths, max_exposed_comm, max_exposed_comm_ms, max_exposed_of_comm, max_wait, per, baseline, max_regression,
             min_regression_ms,
             config_file, no_config, strict, fmt, output, junit_file, github, rules_file, segments_file, jobs, max_bytes):
    """Check traces against thresholds and exit 0 (pass), 1 (a check failed) or 2 (input not usable).

    PATHS are trace files, directories of per-rank traces, or 'analyze --format json' documents.
    Thresholds come from the flags, else from [tool.traceview.gate] in traceview.toml / pyproject.toml.
    """
    started = time.monotonic()
    if config_file:
        cfg = gate_config.load(config_file)
    elif no_config:
        cfg = {}
    else:
        found = gate_config.discover(".")
        cfg = gate_config.load(found, required=False) if found else {}
    flags = dict(max_exposed_comm=max_exposed_comm, max_exposed_comm_ms=max_exposed_comm_ms,
                 max_exposed_of_comm=max_exposed_of_comm, max_wait=max_wait, per=per,
                 baseline=baseline, max_regression=max_regression, min_regression_ms=min_regression_ms,
                 strict=strict)
    thresholds = gate_config.thresholds(cfg, flags)
    result = run_gate(paths, thresholds, rules_file=rules_file, jobs=jobs, max_bytes=max_bytes,
                      patterns=segment_patterns(segments_file), progress=LoadProgress)

    for e in result.errors:
        error_line(e)
    if fmt == "json":
        text = json_dumps(result.to_dict(), orjson.OPT_INDENT_2) + "\n"
    else:
        text = "\n".join(result.lines()) + "\n"
    if output:
        write_file(output, text)
    else:
        click.echo(text, nl=False)
    if junit_file:
        write_file(junit_file, to_junit(result, time.monotonic() - started))
    if github if github is not None else os.environ.get("GITHUB_ACTIONS") == "true":
        # workflow commands are read from stdout; keep stdout pure JSON when it carries the report
        to_err = fmt == "json" and not output
        for line in github_annotations(result):
            click.echo(line, err=to_err)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            write_file(summary, step_summary(result), mode="a")
    sys.exit(result.exit_code)


def write_file(path: str, text: str, mode: str = "w") -> None:
    """Write a report file; failing to is an input/environment error (one line, exit 2)."""
    try:
        with open(path, mode, encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise TraceError(path, f"cannot write: {e.strerror or e}") from None
