"""The ``traceview`` command: a thin layer over the library (each command parses options,
calls ``traceview`` functions and picks a report)."""

from __future__ import annotations

import click

from .. import __version__
from ..load.native import describe as describe_decoder
from .analyze import analyze_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="traceview",
                      message=f"%(prog)s %(version)s (decoder: {describe_decoder()})")
def main() -> None:
    """traceview: where the GPU time goes in LLM inference traces (PyTorch profiler / Chrome JSON)."""


main.add_command(analyze_cmd)

def _register(module: str, attr: str) -> None:
    """Commands live one per module (cli/<command>.py); register those that exist."""
    import importlib

    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as e:  # pragma: no cover - a command not written yet
        if e.name != f"{__name__}.{module}":
            raise
        return
    main.add_command(getattr(mod, attr))


for _module, _attr in (("budget", "budget"), ("report", "report_cmd"), ("gate", "gate_cmd"), ("diff", "diff_cmd"),
                      ("annotate", "annotate_cmd")):
    _register(_module, _attr)
