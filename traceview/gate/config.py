"""Gate thresholds kept in the repository: ``[tool.traceview.gate]`` in pyproject.toml or traceview.toml.

```toml
[tool.traceview.gate]          # in traceview.toml a plain [gate] table works too
max_exposed_comm = "2%"        # exposed comm per iteration as a share of the iteration time
max_exposed_comm_ms = 2.5      # exposed comm per iteration (a number is milliseconds; "800us" works)
max_exposed_of_comm = "50%"    # exposed ÷ communication time (opt-in)
by = "microbatch"              # gpu | microbatch | layer | iteration | phase | stage ("per" works too)
baseline = "perf/baseline.json"  # relative to this file
max_regression = "5%"
min_regression_ms = 0.05       # noise floor for regressions, per iteration
strict = true                  # loader warnings (skipped/repaired events, truncation) fail the gate
```

Discovery (without ``--config``): ``traceview.toml`` in the current directory, else
``pyproject.toml`` there when it has a ``[tool.traceview.gate]`` table.  Command-line flags
override the file, key by key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

from ..errors import TraceError, UsageError
from .checks import PER_CHOICES, Thresholds, parse_duration_us, parse_percent

KEYS = ("max_exposed_comm", "max_exposed_comm_ms", "max_exposed_of_comm", "max_wait", "by", "per", "baseline",
        "max_regression", "min_regression_ms", "strict")
CONFIG_NAMES = ("traceview.toml", "pyproject.toml")


def _read_toml(p: Path) -> dict:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(p, f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TraceError(p, f"invalid TOML: {e}") from None


def _gate_table(data: dict, path: Path) -> dict | None:
    tool = data.get("tool", {})
    table = tool.get("traceview", {}).get("gate") if isinstance(tool, dict) and isinstance(tool.get("traceview"), dict) \
        else None
    if table is None and path.name != "pyproject.toml":
        table = data.get("gate")
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.traceview.gate] must be a table")
    return table


def discover(cwd: str | Path = ".") -> Path | None:
    """The config file that applies in ``cwd``, or None."""
    d = Path(cwd)
    t = d / "traceview.toml"
    if t.is_file():
        return t
    p = d / "pyproject.toml"
    if p.is_file():
        try:
            if _gate_table(_read_toml(p), p) is not None:
                return p
        except (TraceError, UsageError):
            return p  # let load() report what is wrong with it
    return None


def load(path: str | Path, required: bool = True) -> dict[str, Any]:
    """The gate table of ``path``, checked: unknown keys and bad values are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(p, "no such file" if not p.exists() else "not a file")
    table = _gate_table(_read_toml(p), p)
    if table is None:
        if required:
            raise UsageError(f"{p}: no [tool.traceview.gate] table" + ("" if p.name == "pyproject.toml" else
                                                                         " (or [gate])"))
        return {}
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise UsageError(f"{p}: [tool.traceview.gate]: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    out = dict(table)
    if "by" in out and "per" in out:
        raise UsageError(f"{p}: [tool.traceview.gate]: give 'by' or 'per' (the same setting), not both")
    if "by" in out:
        out["per"] = out.pop("by")
    if "baseline" in out:
        if not isinstance(out["baseline"], str):
            raise UsageError(f"{p}: [tool.traceview.gate]: baseline must be a path string")
        b = Path(out["baseline"])
        out["baseline"] = str(b if b.is_absolute() else p.resolve().parent / b)
    out["_source"] = str(p)
    return out


def thresholds(config: dict[str, Any], flags: dict[str, Any]) -> Thresholds:
    """Merge the file's table with command-line flags (a flag given wins) and parse every value."""
    src = config.get("_source")

    def pick(key: str, flag: str) -> tuple[Any, str]:
        if flags.get(key) is not None:
            return flags[key], flag
        return config.get(key), f"{src}: {key}" if src else flag

    v, name = pick("max_exposed_comm", "--max-exposed-comm")
    pct = parse_percent(v, name) if v is not None else None
    v, name = pick("max_exposed_comm_ms", "--max-exposed-comm-ms")
    ms = parse_duration_us(v, name) if v is not None else None
    v, name = pick("max_wait", "--max-wait")
    wait = parse_percent(v, name) if v is not None else None
    v, name = pick("max_exposed_of_comm", "--max-exposed-of-comm")
    of_comm = parse_percent(v, name) if v is not None else None
    v, name = pick("max_regression", "--max-regression")
    reg = parse_percent(v, name) if v is not None else None
    v, name = pick("min_regression_ms", "--min-regression-ms")
    floor = parse_duration_us(v, name) if v is not None else None
    per, name = pick("per", "--by")
    if per is not None and per not in PER_CHOICES:
        raise UsageError(f"{name}: {str(per)[:40]!r} is not one of {', '.join(PER_CHOICES)}")
    baseline, _ = pick("baseline", "--baseline")
    strict, name = pick("strict", "--strict")
    if strict is not None and not isinstance(strict, bool):
        raise UsageError(f"{name}: {str(strict)[:40]!r} is not true or false")
    t = Thresholds(max_exposed_comm_pct=pct, max_exposed_comm_us=ms, max_exposed_of_comm_pct=of_comm, per=per or "gpu",
                   baseline=str(baseline) if baseline else None, max_regression_pct=reg, strict=bool(strict),
                   max_wait_pct=wait)
    if floor is not None:
        t.min_regression_us = floor
    return t
