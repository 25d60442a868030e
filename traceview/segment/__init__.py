"""Iterations, stages, micro-batches, layers and phases: from annotations, threads, or inferred."""

from .assign import NONE, Segmentation, segment
from .levels import LEVELS, LevelPatterns

__all__ = ["LEVELS", "NONE", "LevelPatterns", "Segmentation", "segment"]
