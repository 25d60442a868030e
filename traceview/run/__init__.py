"""Runs: the ranks of one job analysed together (who made whom wait, and why)."""

from .analysis import RunAnalysis, analyze_run, reduce_run, run_from_analyses, summarize_file
from .summary import RankSummary, summarize

__all__ = ["RankSummary", "RunAnalysis", "analyze_run", "reduce_run", "run_from_analyses", "summarize",
           "summarize_file"]
