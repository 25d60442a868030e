"""Run the memory-limit cases of issue 19 once, under an address-space limit, and print each outcome.

The inputs (``scripts/make_scale_cases.py``, from a real kernel event): one kernel whose name is
500 MB, and a valid head followed by 1 GB of NUL bytes.  Each goes through ``analyze``,
``report``, ``gate`` and ``diff`` in a child process whose address space is capped (as
``ulimit -v 4000000`` does: 4,000,000 KiB); the tool must succeed or print one line naming the
file, never a traceback.  The table printed is what docs/limits.md records.

    python scripts/run_memory_limits.py [/tmp/traceview-limits] [--limit-kib 4000000]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cases():
    spec = importlib.util.spec_from_file_location("make_scale_cases", ROOT / "scripts" / "make_scale_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_limited(args: list[str], limit_bytes: int, timeout: int = 900) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of ``traceview ARGS`` under the limit."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "traceview", *args], capture_output=True, text=True, timeout=timeout,
                       preexec_fn=cap, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="/tmp/traceview-limits")
    ap.add_argument("--limit-kib", type=int, default=4_000_000)
    ap.add_argument("--name-mb", type=int, default=500)
    ap.add_argument("--nul-mb", type=int, default=1024)
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    mod = _cases()
    k = mod.real_kernel()
    files = {"name": mod.huge_name(out / f"name-{opts.name_mb}M.json", opts.name_mb << 20, k),
             "nuls": mod.nuls_after_head(out / f"nuls-{opts.nul_mb}M.json", opts.nul_mb << 20, k)}
    limit = opts.limit_kib * 1024
    print(f"address-space limit: {opts.limit_kib:,} KiB (ulimit -v {opts.limit_kib})")
    for what, p in files.items():
        for cmd in (["analyze", str(p)], ["analyze", "--jobs", "2", str(p), str(p)],
                    ["report", "-o", os.devnull, str(p)], ["gate", "--no-config", "--max-exposed-comm", "50%", str(p)],
                    ["diff", str(p), str(p)]):
            code, so, se, secs = run_limited(cmd, limit)
            lines = [ln for ln in se.splitlines() if ln.strip()]
            shown = lines[0] if lines else (so.splitlines()[0] if so.strip() else "")
            bad = "Traceback" in se or "internal error" in se or code not in (0, 1, 2)
            shown_cmd = " ".join(Path(c).name if c.startswith("/") else c for c in cmd)
            print(f"{shown_cmd:70} exit {code}  {secs:6.1f} s  {'BAD ' if bad else ''}{shown[:240]}", flush=True)


if __name__ == "__main__":
    main()
