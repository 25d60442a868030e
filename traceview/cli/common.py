"""What every command shares: error handling (one line, exit 2) and common options."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import click

from ..errors import TraceError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def error_line(message: str) -> None:
    """One line, whatever the message holds (a file name with a newline, escapes in a trace string)."""
    from ..report.text import one_line

    click.echo(f"traceview: error: {one_line(message)}", err=True)


def note_skipped(skipped) -> None:
    """``traceview: note: <file>: skipped (<why>)`` for each scanned file that held no trace."""
    from ..report.text import one_line

    for s in skipped:
        click.echo(f"traceview: note: {one_line(s.path)}: skipped, {one_line(s.reason)} (found in a directory; "
                   "name it to get an error instead)", err=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors into ``traceview: error: <file>: <what>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TraceError as e:
            error_line(str(e))
            sys.exit(EXIT_INPUT)
        except UsageError as e:
            error_line(str(e))
            sys.exit(EXIT_INPUT)
        except MemoryError:
            error_line("out of memory (try a smaller --max-bytes or fewer --jobs)")
            sys.exit(EXIT_INPUT)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            sys.exit(EXIT_OK)
        except Exception as e:  # a bug: still one line, the traceback only on request
            if os.environ.get("TRACEVIEW_DEBUG"):
                raise
            error_line(f"internal error: {type(e).__name__}: {e} (set TRACEVIEW_DEBUG=1 for a traceback)")
            sys.exit(EXIT_INPUT)

    return wrapper


def parse_size(value: str) -> int:
    """'16G', '500M', '1024' -> bytes."""
    from ..load.reader import parse_size as size

    n = size(value)
    if n is None:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 16G, 500M)")
    return n


def _max_bytes(ctx: click.Context, _param, value: str) -> int:
    env = os.environ.get("TRACEVIEW_MAX_BYTES")
    if env is not None and ctx.get_parameter_source("max_bytes") == click.core.ParameterSource.DEFAULT:
        from ..load.reader import parse_size as size

        if size(env) is None:  # the loader fell back to 16 GiB: say so rather than ignore it
            raise click.BadParameter(f"TRACEVIEW_MAX_BYTES={env!r} is not a size (e.g. 16G, 500M)")
    return parse_size(value)


def max_bytes_option(f):
    from ..load import DEFAULT_MAX_BYTES

    return click.option("--max-bytes", default=str(DEFAULT_MAX_BYTES), show_default=True, callback=_max_bytes,
                        help="Refuse files that are (or decompress to) more than this; e.g. 16G.")(f)


def rules_option(f):
    return click.option("--rules", "rules_file", type=click.Path(dir_okay=False),
                        help="A TOML file of extra classification rules, tried before the built-in ones.")(f)


def segments_option(f):
    return click.option("--segments", "segments_file", type=click.Path(dir_okay=False),
                        help="TOML with [segments] naming patterns (iteration, stage, microbatch, layer, not_phase).")(f)


def segment_patterns(segments_file):
    """The ``--segments`` file's patterns (None: the defaults)."""
    from ..segment import LevelPatterns

    return LevelPatterns.from_file(segments_file) if segments_file else None


def jobs_option(f):
    return click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 256),
                        help="Analyze this many rank files in parallel processes.")(f)
