"""Loading: trace files -> ``Trace`` (an event table in polars plus metadata)."""

from .reader import DEFAULT_MAX_BYTES, find_trace_files, load, rank_from_filename
from .trace import GPU_KINDS, Trace

__all__ = ["DEFAULT_MAX_BYTES", "GPU_KINDS", "Trace", "find_trace_files", "load", "rank_from_filename"]
