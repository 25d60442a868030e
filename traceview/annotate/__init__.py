"""Annotated traces: traceview's findings as tracks of the trace, for Perfetto and chrome://tracing."""

from .build import DEFAULT_MAX_EVENTS, Annotated, annotate
from .events import CATEGORY

__all__ = ["CATEGORY", "DEFAULT_MAX_EVENTS", "Annotated", "annotate"]
