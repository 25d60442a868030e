"""traceview: where the GPU time goes in LLM inference traces.

    >>> import traceview
    >>> a = traceview.analyze("prefill_tbo_rank0.json.gz")
    >>> a.gpus[0].exposed_comm_us
"""

from .analysis import TraceAnalysis, analyze, analyze_many, expand_paths, rank_skew
from .classify import classify, load_rules
from .errors import TraceError, UsageError
from .load import Trace, load

__version__ = "0.1.0"

__all__ = ["Trace", "TraceAnalysis", "TraceError", "UsageError", "analyze", "analyze_many",
           "classify", "expand_paths", "load", "rank_skew", "load_rules", "__version__"]
