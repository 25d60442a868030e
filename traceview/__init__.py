"""traceview: where the GPU time goes in LLM inference traces.

    >>> import traceview
    >>> a = traceview.analyze("prefill_tbo_rank0.json.gz")
    >>> a.gpus[0].exposed_comm_us
"""

from .analysis import TraceAnalysis, analyze, analyze_many, expand_paths
from .classify import classify, load_rules
from .errors import TraceError, UsageError
from .load import Trace, load
from .run import RankSummary, RunAnalysis, analyze_run

__version__ = "0.1.0"

__all__ = ["RankSummary", "RunAnalysis", "Trace", "TraceAnalysis", "TraceError", "UsageError", "analyze",
           "analyze_many", "analyze_run", "classify", "expand_paths", "load", "load_rules", "__version__"]
