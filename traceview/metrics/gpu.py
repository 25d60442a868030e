"""Per-GPU time accounting: busy sets per role, overlap, exposed communication, idle.

Definitions (docs/metrics.md states them for users):
  compute, comm, memory = |union of that role's GPU events on the device| (all streams)
  overlap               = |comm ∩ compute|
  exposed_comm          = |comm \\ compute|            (comm that nothing computed under)
  exposed_memory        = |memory \\ (compute ∪ comm)|
  busy                  = |compute ∪ comm ∪ memory|
  span                  = last end - first start of the device's GPU events
  idle                  = span - busy
  identity: compute + exposed_comm + exposed_memory + idle == span
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import polars as pl

from ..timeline import intervals as iv


@dataclass
class CategoryTime:
    time_us: float
    count: int
    share: float  # of the device's summed GPU event time


@dataclass
class GpuMetrics:
    device: int
    span_us: float
    busy_us: float
    compute_us: float
    comm_us: float
    memory_us: float
    overlap_us: float
    exposed_comm_us: float
    exposed_memory_us: float
    idle_us: float
    start_us: float
    end_us: float
    events: int
    streams: dict[int, float] = field(default_factory=dict)
    categories: dict[str, CategoryTime] = field(default_factory=dict)
    name: str | None = None

    @property
    def overlap_ratio(self) -> float | None:
        """Share of communication time hidden under compute (None when there is no comm)."""
        return self.overlap_us / self.comm_us if self.comm_us > 0 else None

    @property
    def exposed_comm_ratio(self) -> float | None:
        return self.exposed_comm_us / self.comm_us if self.comm_us > 0 else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overlap_ratio"] = self.overlap_ratio
        d["exposed_comm_ratio"] = self.exposed_comm_ratio
        d["streams"] = {str(k): v for k, v in self.streams.items()}
        return d


def role_intervals(gpu: pl.DataFrame, role: str) -> iv.Intervals:
    sel = gpu.filter(pl.col("role") == role)
    return sel["ts"].to_numpy(), sel["end"].to_numpy()


def device_metrics(gpu: pl.DataFrame, device: int) -> GpuMetrics:
    """Metrics of one device from its classified GPU events."""
    d = gpu.filter(pl.col("device") == device)
    compute = role_intervals(d, "compute")
    comm = role_intervals(d, "comm")
    memory = role_intervals(d, "memory")
    compute_us = iv.measure(*compute)
    comm_us = iv.measure(*comm)
    memory_us = iv.measure(*memory)
    compute_or_comm = iv.measure(*iv.concat(compute, comm))
    busy_us = iv.measure(*iv.concat(compute, comm, memory))
    start, end = float(d["ts"].min()), float(d["end"].max())
    span = end - start
    streams = {int(s): iv.measure(g["ts"].to_numpy(), g["end"].to_numpy())
               for (s,), g in d.partition_by("stream", as_dict=True).items()}
    total = float(d["dur"].sum())
    cats = (d.group_by("category").agg(pl.col("dur").sum().alias("t"), pl.len().alias("n"))
            .sort("t", descending=True))
    categories = {str(c): CategoryTime(float(t), int(n), float(t) / total if total > 0 else 0.0)
                  for c, t, n in cats.iter_rows()}
    return GpuMetrics(
        device=int(device),
        span_us=span,
        busy_us=busy_us,
        compute_us=compute_us,
        comm_us=comm_us,
        memory_us=memory_us,
        overlap_us=max(0.0, compute_us + comm_us - compute_or_comm),
        exposed_comm_us=max(0.0, compute_or_comm - compute_us),
        exposed_memory_us=max(0.0, busy_us - compute_or_comm),
        idle_us=max(0.0, span - busy_us),
        start_us=start,
        end_us=end,
        events=d.height,
        streams=dict(sorted(streams.items())),
        categories=categories,
    )


def all_devices(gpu: pl.DataFrame) -> list[GpuMetrics]:
    return [device_metrics(gpu, dev) for dev in sorted(gpu["device"].unique().drop_nulls().to_list())]
