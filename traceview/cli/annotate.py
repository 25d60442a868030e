"""``traceview annotate``: the analysis as tracks of the trace, for Perfetto / chrome://tracing."""

from __future__ import annotations

import click

from ..classify import load_rules
from ..errors import UsageError
from .common import handle_errors, max_bytes_option, rules_option, segment_patterns, segments_option


def _ranks(_ctx, _param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        ranks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of ranks (e.g. 0,3)") from None
    if not ranks or any(r < 0 for r in ranks):
        raise click.BadParameter(f"{value!r} is not a list of ranks (e.g. 0,3)")
    return ranks


@click.command("annotate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The annotated trace to write (gzip JSON; e.g. run.tv.json.gz).")
@click.option("--ranks", callback=_ranks, help="Only these ranks of a run directory, in one file on one clock "
                                               "(e.g. 0,3).")
@click.option("--window", metavar="N", help="Only iteration N (its GPU work and the launches that queued it).")
@click.option("--max-events", default=None, type=click.IntRange(1000, None),
              help="Cut the output in time (at an iteration end where possible) to at most this many events "
                   "[default: 1,000,000, ~300 MB of JSON, which the Perfetto UI still opens].")
@rules_option
@segments_option
@max_bytes_option
@handle_errors
def annotate_cmd(paths, output, ranks, window, max_events, rules_file, segments_file, max_bytes):
    """Write a trace that Perfetto (ui.perfetto.dev) and chrome://tracing open, with
    traceview's findings as tracks: every original event unchanged, plus, beside each GPU, a
    process with its kernel classes, exposed communication (layer, micro-batch, kernel;
    waiting vs transfer across ranks), iterations, micro-batches and layers, and counters
    (communication kernels in flight, exposed share of each iteration).

    PATHS: one trace file, or a run's directory (or files) of per-rank traces; several ranks
    are merged into one file on one clock, with arrows linking each collective's instances
    across ranks.  traceview ignores its own events when it reads an annotated trace.
    """
    from ..annotate import DEFAULT_MAX_EVENTS, annotate

    rules = load_rules(rules_file)
    if window is not None and not window.strip():
        raise UsageError("--window needs an iteration label (e.g. --window 2)")
    res = annotate(list(paths), output, ranks=ranks, window=window,
                   max_events=max_events or DEFAULT_MAX_EVENTS, rules=rules,
                   patterns=segment_patterns(segments_file), max_bytes=max_bytes)
    size = res.output.stat().st_size
    ranks_txt = "" if len(res.ranks) < 2 else f", ranks {', '.join(str(r) for r in res.ranks)}"
    click.echo(f"wrote {res.output} ({size / 1e6:.1f} MB gzip, {res.original_events:,} original + "
               f"{res.added_events:,} traceview events{ranks_txt})", err=True)
    for line in res.left_out:
        click.echo(f"left out: {line}", err=True)
