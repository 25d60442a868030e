"""CI gate: checks on exposed communication, waiting and regressions.

  checks   thresholds, one ``CheckResult`` per (metric, GPU or segment), ``run_gate`` -> ``GateResult``
  config   thresholds from ``[tool.traceview.gate]`` (pyproject.toml / traceview.toml)
  junit    JUnit XML, GitHub Actions annotations and job summary
  summary  the per-GPU numbers the gate and ``traceview.compare`` read, from a trace or a saved
           ``analyze --format json``
"""

from .checks import CheckResult, GateResult, Thresholds, evaluate, run_gate
from .summary import GpuSummary, from_analysis, from_document, load_inputs

__all__ = ["CheckResult", "GateResult", "GpuSummary", "Thresholds", "evaluate", "from_analysis", "from_document",
           "load_inputs", "run_gate"]
