"""Errors a user can act on: each names the file and the problem in one line."""

from __future__ import annotations


class TraceError(Exception):
    """A trace (or input file) that cannot be analyzed.

    The CLI prints ``traceview: error: <file>: <reason>`` and exits 2; library users
    catch this one type.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # it travels back from worker processes and cluster tasks
        return type(self), (self.path, self.reason)


class UsageError(Exception):
    """A bad option value or configuration (not tied to one trace file)."""


class NotATraceError(TraceError):
    """Valid input that is not a trace at all (e.g. a MANIFEST.json beside the ranks).

    Named explicitly on the command line it is an error; met while scanning a directory
    it is skipped with a note.
    """
