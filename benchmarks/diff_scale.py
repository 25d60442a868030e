"""How ``traceview diff`` scales with the number of kernels (issue 19: 2 million kernels each).

Writes two traces of N kernels (``scripts/make_scale_cases.py``: one real kernel event repeated
with 50 names, back to back on one stream) and two of N/8, then, in this one process:

* times ``diff`` at N/8 (the baseline run) and at N, and prints their ratio: 8 is linear;
* times loading the two N-kernel files alone, and prints diff / load: what the diff adds to
  reading its inputs, a figure that depends less on how fast (or how shared) the machine is.

Wall and CPU seconds are both printed (CPU: this process's threads and its worker processes;
on a shared machine the CPU figures are the steadier ones).  Two inputs over
``compare.diff.SIDE_BY_SIDE_BYTES`` are analysed in two processes at once.

    python benchmarks/diff_scale.py [--kernels 2000000] [--dir /tmp/traceview-diff-scale]

No assertion: the numbers are for docs/limits.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "traceview" not in sys.modules and not any(Path(p, "traceview").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(ROOT))  # (PYTHONPATH chooses which traceview runs: compare two checkouts)


def _make_scale_cases():
    spec = importlib.util.spec_from_file_location("make_scale_cases", ROOT / "scripts" / "make_scale_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pair(mod, out: Path, n: int, k: dict) -> tuple[Path, Path]:
    base = out / f"kernels-{n}.json"
    if not base.exists():
        mod.many_kernels(base, n, k=k)
    new = out / f"kernels-{n}-new.json"
    if not new.exists():
        shutil.copyfile(base, new)
    return base, new


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished worker processes."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _diff_seconds(base: Path, new: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds, worker processes included) of one diff."""
    from traceview.compare import diff_paths

    t, c = time.perf_counter(), _cpu()
    result, errors = diff_paths([str(base)], [str(new)])
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    assert result.pairs and not errors, errors
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", type=int, default=2_000_000)
    ap.add_argument("--dir", default="/tmp/traceview-diff-scale")
    opts = ap.parse_args()
    out = Path(opts.dir)
    out.mkdir(parents=True, exist_ok=True)
    mod = _make_scale_cases()
    k = mod.real_kernel()
    n, small = opts.kernels, opts.kernels // 8
    big_pair, small_pair = _pair(mod, out, n, k), _pair(mod, out, small, k)

    import traceview

    _diff_seconds(*_pair(mod, out, 1000, k))  # warm up (imports, rules)
    t_small = _diff_seconds(*small_pair)
    t_big = _diff_seconds(*big_pair)
    t, c = time.perf_counter(), _cpu()
    for p in big_pair:
        traceview.load(p)
    t_load, c_load = time.perf_counter() - t, _cpu() - c
    print(f"diff of {small:,} vs {small:,} kernels: {t_small[0]:.2f} s ({t_small[1]:.2f} s CPU) (baseline)")
    print(f"diff of {n:,} vs {n:,} kernels: {t_big[0]:.2f} s ({t_big[1]:.2f} s CPU)")
    print(f"ratio: {t_big[0] / t_small[0]:.1f}x the baseline ({t_big[1] / t_small[1]:.1f}x in CPU time) for "
          f"{n / small:.0f}x the kernels (linear: {n / small:.0f}x)")
    print(f"loading the two {n:,}-kernel files alone: {t_load:.2f} s ({c_load:.2f} s CPU); diff / load: "
          f"{t_big[0] / t_load:.2f} ({t_big[1] / c_load:.2f} in CPU time)")


if __name__ == "__main__":
    main()
