"""Comparing two runs: what changed, per rank and GPU, per iteration, biggest first.

  diff     per-iteration comparison of two runs with findings (``diff_paths``), and the one-row-per-rank
           summary that comes first
  render   the terminal view of a diff
"""

from .diff import DiffResult, GpuDiff, diff_paths, diff_summaries
from .render import render_diff

__all__ = ["DiffResult", "GpuDiff", "diff_paths", "diff_summaries", "render_diff"]
