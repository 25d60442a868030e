"""The library's core type: one trace file as an event table plus its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    import pandas

#: The kinds of event kept in the table; the first three are GPU activity.
GPU_KINDS = ("kernel", "gpu_memcpy", "gpu_memset")
CPU_KINDS = ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation")
EVENT_KINDS = GPU_KINDS + CPU_KINDS + ("gpu_user_annotation",)
KIND_DTYPE = pl.Enum(list(EVENT_KINDS))


def gpu_text(device: int, given_name: str | None) -> str:
    """A device as a user knows it: its number, or the name its ``pid`` was given as (the one
    spelling every output uses; the internal id of a named device is never shown)."""
    return str(device) if given_name is None else given_name


@dataclass
class Trace:
    """One trace file (one rank), loaded.

    ``events`` has one row per kept event: ``kind`` (kernel, gpu_memcpy, gpu_memset,
    cpu_op, cuda_runtime, cuda_driver, user_annotation, gpu_user_annotation), ``name``
    (categorical), ``pid``, ``tid``, ``ts`` and ``dur`` (microseconds, float), ``end``,
    ``correlation`` and ``external_id`` (links a launch to its kernel), ``device`` and
    ``stream`` (GPU rows: from ``args.device``/``args.stream``, else ``pid``/``tid``),
    ``input_dims`` (JSON text of ``Input Dims`` on CPU ops recorded with shapes) and
    ``bytes`` (memcpy/memset sizes), ``grid`` (a kernel's launch grid/block, "[x,y,z]/[x,y,z]"),
    ``annotation`` (a CUDA-graph kernel's annotation args, JSON text: see ``decode.graph_annotation``).
    """

    path: Path
    events: pl.DataFrame
    rank: int | None = None
    world_size: int | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: human-readable counts of what the loader had to skip or repair
    warnings: list[str] = field(default_factory=list)
    #: the names of ``pid``/``tid`` values given as strings, by the id they got
    thread_names: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def gpu_events(self) -> pl.DataFrame:
        """Kernels, memcpys and memsets: the GPU's activity, sorted by device and time."""
        return self.events.filter(pl.col("kind").is_in(GPU_KINDS)).sort(["device", "ts"])

    def device_entry(self, device: int) -> dict[str, Any] | None:
        """The ``deviceProperties`` entry of ``device``; for a device the trace does not list,
        the entry it still implies (the only one listed, or any one when every listed device
        has the same name: a process that lists only its visible GPU, numbered otherwise);
        None when it implies nothing (see ``unknown_gpu_reason``)."""
        for d in self.devices:
            if d.get("id") == device:
                return d
        if self.devices and len({str(d.get("name")) for d in self.devices}) == 1:
            return self.devices[0]
        return None

    def unknown_gpu_reason(self, device: int) -> str | None:
        """Why the trace cannot name this GPU (None when it can, or lists it without a name)."""
        if self.device_entry(device) is not None:
            return None
        listed = ", ".join(f"{d.get('id')} ({d.get('name') or 'unnamed'})" for d in self.devices[:8])
        return (f"GPU name unknown (device {device} not in deviceProperties"
                + (f", which lists {listed}" if listed else "") + ")")

    def device_name(self, device: int) -> str | None:
        for d in self.devices:
            if d.get("id") == device:
                return d.get("name")
        if device in self.thread_names:
            return self.thread_names[device]  # a pid given as a string ("GPU 0")
        d = self.device_entry(device)
        return None if d is None else d.get("name")

    def graph_launches(self) -> pl.DataFrame:
        """The CUDA/HIP graph launch calls (runtime/driver events named ``*GraphLaunch*``): the
        replays' launching side, read by segmentation and health (found once per trace)."""
        found = self.__dict__.get("_graph_launches")
        if found is None:
            found = self.__dict__["_graph_launches"] = self.events.filter(
                pl.col("kind").is_in(["cuda_runtime", "cuda_driver"])
                & pl.col("name").cast(pl.Utf8).str.contains("(?i)GraphLaunch"))
        return found

    def given_name(self, device: int) -> str | None:
        """The string a ``pid`` was given as ("GPU 0", SGLang's "[TP00-DP00-PP00-EP03] 495"):
        the device's name in every output; None for a numbered device."""
        return self.thread_names.get(device)

    def device_text(self, device: int) -> str:
        """The device as a user knows it: its number, or the name it was given as a string."""
        return gpu_text(device, self.given_name(device))

    def to_pandas(self) -> "pandas.DataFrame":
        """The event table as a pandas DataFrame, for notebooks (needs pandas + pyarrow)."""
        try:
            import pandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError(f"Trace.to_pandas() needs pandas and pyarrow ({e.name} is missing): "
                              "pip install 'traceview[pandas]'") from None
        return self.events.to_pandas()

    def __repr__(self) -> str:
        return (f"Trace({self.name!r}, rank={self.rank}, world_size={self.world_size}, "
                f"events={self.events.height})")
