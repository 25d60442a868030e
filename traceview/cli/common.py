"""What every command shares: error handling (one line, exit 2) and common options."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import click

from ..errors import TraceError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def error_line(message: "str | TraceError") -> None:
    """One line, whatever the message holds (a file name with a newline, escapes in a trace string);
    a ``TraceError``'s file name is shown with its controls escaped (``\\n``, ``\\xff``)."""
    from ..report.text import display_path, one_line

    if isinstance(message, TraceError):
        message = f"{display_path(message.path)}: {one_line(message.reason)}"
    click.echo(f"traceview: error: {one_line(message)}", err=True)


def note_skipped(skipped) -> None:
    """``traceview: note: <file>: skipped (<why>)`` for each scanned file that held no trace."""
    from ..report.text import one_line

    seen = set()
    for s in skipped:
        if (str(s.path), s.reason) in seen:  # both sides of a diff may scan the same directory
            continue
        seen.add((str(s.path), s.reason))
        click.echo(f"traceview: note: {one_line(s.path)}: skipped, {one_line(s.reason)} (found in a directory; "
                   "name it to get an error instead)", err=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors into ``traceview: error: <file>: <what>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TraceError as e:
            error_line(e)
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
        except BaseException as e:  # a bug (a Rust panic too): still one line, the traceback only on request
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


def budget_options(f):
    """--model, --gpu and the budget's overrides: one declaration for analyze and report."""
    opts = [
        click.option("--model", help="Reconcile against the budget model: a model name (deepseek-v3, ...) or a "
                                     "config.json."),
        click.option("--gpu", "gpu_name", help="GPU spec for --model (H800, H200, H20, B200, ...) [default: from the "
                                               "trace's deviceProperties; a --gpu that contradicts it is used with a "
                                               "warning]."),
        click.option("--convention", type=click.Choice(["complete", "zartbot-2025"]), default="complete",
                     show_default=True, help="Budget model: complete (FLOPs and HBM bytes per op) or zartbot-2025 "
                                             "(the article's FLOP-only model)."),
        click.option("--gpu-file", type=click.Path(dir_okay=False), help="TOML file of extra/overriding GPU specs."),
        click.option("--phase", type=click.Choice(["prefill", "decode"]),
                     help="Budget phase (default: from the trace's shapes)."),
        click.option("--precision", type=click.Choice(["auto", "bf16", "fp8"]), default="auto", show_default=True,
                     help="GEMM precision for the model (auto: fp8 when the kernels are fp8)."),
        click.option("--tokens", type=int, help="Tokens per micro-batch, where the trace has no shapes (or to override)."),
        click.option("--kv-len", type=int, help="KV length for the attention model (override)."),
        click.option("--batch", "n_seqs", type=int, help="Sequences per micro-batch for the attention model (override)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def budget_settings(model, gpu_name, convention, gpu_file, phase, precision, tokens, kv_len, n_seqs) -> dict | None:
    """The budget options as the keyword arguments of the budget reconciliation (None without --model);
    without --gpu the GPU comes from the trace's deviceProperties."""
    if not (model or gpu_name):
        return None
    if not model:
        raise UsageError("--gpu goes with --model (the budget model to reconcile against)")
    from ..budget import get_gpu, load_model

    return dict(model=load_model(model), gpu=get_gpu(gpu_name, gpu_file) if gpu_name else None, phase=phase,
                precision=precision, tokens=tokens, kv_len=kv_len, batch=n_seqs, convention=convention,
                gpu_file=gpu_file)


def engine_options(f):
    """``--engine local|ray`` and ``--address``: where each rank file's map step runs."""
    f = click.option("--address", metavar="ADDR",
                     help="The Ray cluster for --engine ray: auto (the cluster this machine belongs to, the default), "
                          "ray://HEAD:10001 (Ray Client), or local (start a private one-machine cluster).")(f)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Where each rank file is analysed: local processes (--jobs), or Ray tasks, each on the "
                             "node that holds the file (paths may be node-local; see docs/engines.md). Needs "
                             "pip install \"traceview[ray]\".")(f)


def check_engine(engine: str, address: str | None) -> None:
    """Refuse an engine that cannot run here before any work (one line, exit 2)."""
    from ..run.engine import make_engine

    make_engine(engine, address=address)
