"""Tables of time: per GPU, per stream, per category (and per segment, in segments.py)."""

from .gpu import CategoryTime, GpuMetrics, all_devices, device_metrics

__all__ = ["CategoryTime", "GpuMetrics", "all_devices", "device_metrics"]
