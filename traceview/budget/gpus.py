"""GPU specs for the budget: the ``GPUSpec`` dataclass (the article's ``GPU_perf``) and its loaders.

Specs are data (``data/gpus.toml``), selectable by name case-insensitively and overridable or
extendable from a user TOML file of the same format.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from traceview.errors import TraceError, UsageError

from . import _toml

__all__ = ["GPUSpec", "Precision", "Link", "load_gpus", "get_gpu", "gpu_from_device", "describe_device", "PRECISIONS",
           "LINKS"]

Precision = Literal["fp8", "bf16", "fp16"]
Link = Literal["nvlink", "scaleout", "hbm"]
PRECISIONS: tuple[str, ...] = ("fp8", "bf16", "fp16")
LINKS: tuple[str, ...] = ("nvlink", "scaleout", "hbm")


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's peaks and the article's derating (``GPU_perf``).

    Rates are effective: ``peak * discount * (sm - comm_sm) / sm`` for tensor FLOPs (SMs given to
    communication kernels do no math), ``peak * discount`` for bandwidths.  ``comm_sm`` is the
    prefill reservation; the phase functions pass ``comm_sm=0`` for decode as the article does.
    """

    name: str
    sm: int
    comm_sm: int
    bf16_tflops: float
    fp8_tflops: float | None
    hbm_gb: float
    hbm_gbps: float
    nvlink_gbps: float
    scaleout_gbps: float
    discount: float = 0.85
    source: str = field(default="", compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)
    family: str = field(default="", compare=False)  # model number in a device name (H100, MI300X)
    form: str = field(default="", compare=False)  # SXM, PCIe, NVL, OAM

    def __post_init__(self) -> None:
        if self.sm <= 0:
            raise UsageError(f"GPU {self.name!r}: sm must be positive")
        if not 0 <= self.comm_sm < self.sm:
            raise UsageError(f"GPU {self.name!r}: comm_sm must be in 0..sm-1 (got {self.comm_sm})")
        for f in ("bf16_tflops", "hbm_gbps", "nvlink_gbps", "scaleout_gbps", "discount"):
            if not getattr(self, f) > 0:
                raise UsageError(f"GPU {self.name!r}: {f} must be positive")
        if self.fp8_tflops is not None and not self.fp8_tflops > 0:
            raise UsageError(f"GPU {self.name!r}: fp8_tflops must be positive (omit it for no FP8)")

    # --- effective rates -------------------------------------------------------------------
    def peak_tflops(self, precision: Precision | str = "bf16") -> float:
        """Datasheet-style peak for a precision; FP8 falls back to BF16 on GPUs without FP8."""
        if precision == "fp8":
            return self.fp8_tflops if self.fp8_tflops is not None else self.bf16_tflops
        if precision in ("bf16", "fp16"):
            return self.bf16_tflops
        raise UsageError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")

    def flops_rate(self, precision: Precision | str = "bf16", comm_sm: int | None = None) -> float:
        """Effective TFLOP/s (= GFLOP per ms): peak x discount x (sm - comm_sm) / sm."""
        reserved = self.comm_sm if comm_sm is None else comm_sm
        if not 0 <= reserved < self.sm:
            raise UsageError(f"comm_sm must be in 0..{self.sm - 1} for {self.name} (got {reserved})")
        return self.peak_tflops(precision) * self.discount * (self.sm - reserved) / self.sm

    def fp8_rate(self, comm_sm: int | None = None) -> float:
        """The article's ``get_fp8_flops``."""
        return self.flops_rate("fp8", comm_sm)

    def bf16_rate(self, comm_sm: int | None = None) -> float:
        """The article's ``get_fp16_flops``."""
        return self.flops_rate("bf16", comm_sm)

    def hbm_rate(self) -> float:
        """Effective memory bandwidth, GB/s (the article's ``get_mem_bw``)."""
        return self.hbm_gbps * self.discount

    def nvlink_rate(self) -> float:
        """Effective scale-up bandwidth per GPU, GB/s (``get_nvlink_bw``)."""
        return self.nvlink_gbps * self.discount

    def scaleout_rate(self) -> float:
        """Effective scale-out bandwidth per GPU, GB/s (the article's ``get_pcie_bw``)."""
        return self.scaleout_gbps * self.discount

    def link_rate(self, link: Link | str) -> float:
        """Effective bandwidth of ``nvlink``, ``scaleout`` or ``hbm``, GB/s."""
        if link == "nvlink":
            return self.nvlink_rate()
        if link == "scaleout":
            return self.scaleout_rate()
        if link == "hbm":
            return self.hbm_rate()
        raise UsageError(f"unknown link {link!r} (known: {', '.join(LINKS)})")

    def replace(self, **changes: Any) -> "GPUSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_comm_sm(self, comm_sm: int) -> "GPUSpec":
        """A copy with another communication-SM reservation (decode: 0)."""
        return self.replace(comm_sm=comm_sm)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["aliases"] = list(self.aliases)
        return d


_FIELDS = {f.name for f in dataclasses.fields(GPUSpec)} - {"name"}
_REQUIRED = ("sm", "comm_sm", "bf16_tflops", "hbm_gb", "hbm_gbps", "nvlink_gbps", "scaleout_gbps")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _builtin_raw() -> dict[str, dict[str, Any]]:
    entry = resources.files("traceview.budget").joinpath("data", "gpus.toml")
    return _toml.loads(entry.read_text(encoding="utf-8"), "gpus.toml")


def _check_table(name: str, table: Any, source: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise TraceError(source, f"{name!r} must be a table ([{name}] with fields)")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise TraceError(source, f"[{name}] unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    for key, value in table.items():
        if key in ("source", "family", "form"):
            if not isinstance(value, str):
                raise TraceError(source, f"[{name}] {key} must be a string")
        elif key == "aliases":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise TraceError(source, f"[{name}] aliases must be a list of strings")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraceError(source, f"[{name}] {key} must be a number, got {value!r}")
    return table


def _build(name: str, table: dict[str, Any], source: object) -> GPUSpec:
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise TraceError(source, f"[{name}] missing field(s) {', '.join(missing)}")
    kw = dict(table)
    kw["aliases"] = tuple(kw.get("aliases", ()))
    kw["sm"] = int(kw["sm"])
    kw["comm_sm"] = int(kw["comm_sm"])
    kw.setdefault("fp8_tflops", None)
    try:
        return GPUSpec(name=name, **kw)
    except UsageError as exc:
        raise TraceError(source, str(exc)) from None


def load_gpus(user_file: str | Path | None = None) -> dict[str, GPUSpec]:
    """All known GPUs by canonical name: the shipped table, then ``user_file`` merged over it.

    In ``user_file`` a table whose name (or alias) matches a known GPU overrides only the fields
    it gives (``[H800]\\ncomm_sm = 20``); any other table adds a GPU and must be complete.
    """
    tables: dict[str, dict[str, Any]] = {
        name: _check_table(name, t, "gpus.toml") for name, t in _builtin_raw().items()
    }
    if user_file is not None:
        user = _toml.load_path(user_file)
        for name, t in user.items():
            t = _check_table(name, t, user_file)
            target = _find(tables, name)
            if target is None:
                tables[name] = dict(t)
            else:
                tables[target] = {**tables[target], **t}
    out: dict[str, GPUSpec] = {}
    for name, t in tables.items():
        out[name] = _build(name, t, user_file if user_file is not None else "gpus.toml")
    return out


def _find(tables: dict[str, dict[str, Any]], name: str) -> str | None:
    key = _norm(name)
    for canon, t in tables.items():
        if key == _norm(canon) or key in {_norm(a) for a in t.get("aliases", ())}:
            return canon
    return None


def get_gpu(name: str, user_file: str | Path | None = None) -> GPUSpec:
    """One GPU by name or alias (case-insensitive, ``_`` = ``-``); unknown names raise ``UsageError``."""
    gpus = load_gpus(user_file)
    raw = {n: {"aliases": list(g.aliases)} for n, g in gpus.items()}
    canon = _find(raw, name)
    if canon is None:
        raise UsageError(f"unknown GPU {name!r} (known: {', '.join(gpus)}; add it with --gpu-file)")
    return gpus[canon]


# longest first, so H200 is not read as H20 nor A100 as A10
_FAMILY = re.compile(r"(?i)(?<![A-Z0-9])(GB200|B200|H200|H100|H800|H20|A100|A10|L40S|MI355X|MI325X|MI300X)(?![0-9])")


def describe_device(props: dict[str, Any]) -> str:
    """'NVIDIA H200, 132 SMs, 139.8 GiB' from a Kineto ``deviceProperties`` entry."""
    parts = [str(props.get("name") or "unnamed device")]
    if isinstance(props.get("numSms"), int):
        parts.append(f"{props['numSms']} SMs")
    if isinstance(props.get("totalGlobalMem"), (int, float)):
        parts.append(f"{props['totalGlobalMem'] / 2**30:.1f} GiB")
    return ", ".join(parts)


def gpu_from_device(props: dict[str, Any], user_file: str | Path | None = None) -> GPUSpec | None:
    """The spec of a trace's ``deviceProperties`` entry (name, numSms, totalGlobalMem), or None
    when no known family is in its name.  Within a family the form named in the device name
    (PCIe, NVL) wins, then the spec whose SM count equals numSms, then the nearest memory size
    (H20 96 GB vs H20-3e 141 GB)."""
    name = str(props.get("name") or "")
    m = _FAMILY.search(name)
    sms, mem = props.get("numSms"), props.get("totalGlobalMem")
    gpus = load_gpus(user_file).values()
    if m:
        family = m.group(1).upper()
        cands = [g for g in gpus if g.family.upper() == family]
    elif not name.strip() and isinstance(sms, int) and isinstance(mem, (int, float)) and mem > 0:
        # no name (some ROCm captures): the SM count and a memory size within 10% must both fit
        cands = [g for g in gpus if g.sm == sms and _mem_distance(mem, g) < math.log(1.1)]
    else:
        return None
    if not cands:
        return None
    upper = name.upper()
    named_form = "PCIE" if "PCIE" in upper else "NVL" if "NVL" in upper else None
    if named_form:
        cands = [g for g in cands if g.form.upper() == named_form] or cands
    else:
        cands = [g for g in cands if g.form.upper() not in ("PCIE", "NVL")] or cands
    if isinstance(sms, int):
        cands = [g for g in cands if g.sm == sms] or cands
    if isinstance(mem, (int, float)) and mem > 0:
        cands.sort(key=lambda g: _mem_distance(mem, g))
    return cands[0]


def _mem_distance(mem_bytes: float, g: GPUSpec) -> float:
    """How far totalGlobalMem (bytes, a little under the marketed size in GB or GiB) is from hbm_gb."""
    return min(abs(math.log(mem_bytes / 1e9 / g.hbm_gb)), abs(math.log(mem_bytes / 2**30 / g.hbm_gb)))
