"""The ``traceview`` command: a thin layer over the library (each command parses options,
calls ``traceview`` functions and picks a report)."""

from __future__ import annotations

import click

from .. import __version__
from .analyze import analyze_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="traceview")
def main() -> None:
    """traceview: where the GPU time goes in LLM inference traces (PyTorch profiler / Chrome JSON)."""


main.add_command(analyze_cmd)

try:  # commands whose modules may be added independently
    from .budget import budget

    main.add_command(budget)
except ImportError:  # pragma: no cover
    pass
