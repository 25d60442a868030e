"""CI gate and run diff: checks on exposed communication and regressions, and what changed.

  checks   thresholds, one ``CheckResult`` per (metric, GPU or segment), ``run_gate`` -> ``GateResult``
  config   thresholds from ``[tool.traceview.gate]`` (pyproject.toml / traceview.toml)
  junit    JUnit XML, GitHub Actions annotations and job summary
  diff     per-iteration comparison of two runs with findings (``diff_paths``)
  summary  the per-GPU numbers both compare, from a trace or a saved ``analyze --format json``
  render   the terminal view of a diff
"""

from .checks import CheckResult, GateResult, Thresholds, evaluate, run_gate
from .diff import DiffResult, GpuDiff, diff_paths, diff_summaries
from .summary import GpuSummary, from_analysis, from_document, load_inputs

__all__ = ["CheckResult", "DiffResult", "GateResult", "GpuDiff", "GpuSummary", "Thresholds", "diff_paths",
           "diff_summaries", "evaluate", "from_analysis", "from_document", "load_inputs", "run_gate"]
