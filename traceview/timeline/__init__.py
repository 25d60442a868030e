"""Interval algebra: unions, intersections and differences of GPU busy time."""

from . import intervals

__all__ = ["intervals"]
