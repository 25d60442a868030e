"""When a GPU was idle, and whether any kernel was queued then: the one definition of
"idle with no kernel queued" that the per-iteration table (``metrics/iterations.py``) and the
run summaries (``run/summary.py``) both measure, each over its own windows.

A GPU event is *queued* from its launch (the ``cudaLaunchKernel`` / graph launch that queued
it, on the host clock that Kineto shares with the GPU) to its start.  An event whose launch is
not in the trace (no ``correlation`` link) counts as queued from the latest end of the
device's earlier events: that never makes idle look host-bound on a guess (docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import intervals as iv


@dataclass(frozen=True)
class IdleSets:
    """Disjoint sorted interval sets over one device's span [first start, last end]."""

    busy: iv.Intervals       #: any GPU event running
    idle: iv.Intervals       #: span \\ busy
    no_queue: iv.Intervals   #: idle \\ queued: the GPU waited for the host
    unlinked: np.ndarray     #: per event (in the order given): its launch is not in the trace


def queued_from(ts: np.ndarray, end: np.ndarray, launch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event (sorted by start): when it was queued, and whether that is a stand-in
    (no launch linked: the latest end of the earlier events)."""
    launch = np.asarray(launch, dtype=np.float64)
    unlinked = ~np.isfinite(launch)
    prev_end = np.concatenate([[ts[0]], np.maximum.accumulate(end)[:-1]]) if len(ts) else ts
    return np.where(unlinked, prev_end, launch), unlinked


def idle_sets(ts: np.ndarray, end: np.ndarray, launch: np.ndarray | None) -> IdleSets:
    """Busy, idle and idle-with-no-kernel-queued of one device's GPU events (sorted by start)."""
    ts = np.asarray(ts, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    if launch is None:
        launch = np.full(len(ts), np.nan)
    busy = iv.union(ts, end)
    if len(ts) == 0:
        return IdleSets(busy, busy, busy, np.zeros(0, dtype=bool))
    q, unlinked = queued_from(ts, end, launch)
    keep = ts > q
    queued = iv.union(q[keep], ts[keep])
    idle = iv.subtract((np.array([ts.min()]), np.array([end.max()])), busy)
    return IdleSets(busy, idle, iv.subtract(idle, queued), unlinked)
