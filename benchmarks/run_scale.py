#!/usr/bin/env python3
"""How the run analysis scales with ranks, on each engine (docs/performance.md, "Runs").

For each N: a run of N ranks made by ``benchmarks/make_run.py`` from one real rank trace
(clock-shifted ranks, one injected straggler; cached under ``--data-dir``), then, each in its
own fresh process, ``traceview.analyze_run`` with the local engine (``--jobs`` processes) and
with the Ray engine on a local Ray cluster this script starts (``--ray-cpus`` CPUs).  Per run:
wall time of the analysis (Ray's start-up shown apart), CPU time of the driver and everything
it started (worker processes, Ray's raylet and workers), the driver's peak RSS (it holds only
summaries: the ranks are parsed in the workers), the pickled summary size per rank, the
straggler found against the injected one, and whether both engines' JSON is equal.

    python benchmarks/run_scale.py --sizes 8,32,64,128 --data-dir /tmp/runs
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "fixtures" / "gpu-extra" / "decode_tbo_rank0.json.gz"


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the live descendants of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(d))
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(kids.get(p, []))
    return total


def child(engine: str, run_dir: str, jobs: int, ray_cpus: int, out: str) -> None:
    """One measurement, in a fresh process (so peak RSS is this run's)."""
    import traceview  # noqa: F401  (imports are not the analysis)
    from traceview.run import analyze_run

    start_s = 0.0
    if engine == "ray":
        import logging

        import ray

        t = time.perf_counter()
        for attempt in range(3):  # on a loaded machine the raylet can miss Ray's start-up deadline
            try:
                ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
                break
            except Exception as e:  # noqa: BLE001  (Ray raises a bare Exception for this)
                print(f"ray start failed ({e}); again", file=sys.stderr)
                ray.shutdown()
                if attempt == 2:
                    raise
        start_s = time.perf_counter() - t
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = time.process_time() + _tree_cpu_s(os.getpid())
    t = time.perf_counter()
    run = analyze_run(run_dir, jobs=jobs, engine=engine)
    wall = time.perf_counter() - t
    tree = _tree_cpu_s(os.getpid())  # Ray's workers, still alive
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # the local engine's worker processes, reaped
    cpu = time.process_time() + tree + ch.ru_utime + ch.ru_stime - cpu0
    sizes = [r.nbytes() for r in run.ranks]
    wire = [len(zlib.compress(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL), 1)) for r in run.ranks]
    held = [r.unpacked_nbytes() for r in run.ranks]
    doc = {"engine": engine, "wall_s": wall, "cpu_s": cpu, "ray_start_s": start_s,
           "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "driver_rss_before_mb": rss0 / 1024, "summary_bytes_mean": sum(sizes) / max(1, len(sizes)),
           "summary_bytes_max": max(sizes, default=0),
           "summary_wire_bytes_mean": sum(wire) / max(1, len(wire)), "summary_unpacked_bytes_mean": sum(held) / max(1, len(held)), "ranks": len(run.ranks), "errors": [str(e) for e in run.errors],
           "straggler": run.straggler.rank if run.straggler else None, "run": run.to_dict()}
    Path(out).write_text(json.dumps(doc, default=str))
    if engine == "ray":
        ray.shutdown()


def _gz_size(p: Path) -> int:
    """Uncompressed size of a .gz (its trailer; exact below 4 GiB)."""
    if p.suffix != ".gz":
        return p.stat().st_size
    with open(p, "rb") as f:
        f.seek(-4, 2)
        return struct.unpack("<I", f.read(4))[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8,32,64,128,256")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/traceview-runs"))
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--jobs", type=int, default=2, help="local engine processes")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--straggler", type=int, default=3)
    p.add_argument("--host-delay", type=float, default=2000.0)
    p.add_argument("--layer", default="2")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "RUN_DIR"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child[0], a.child[1], a.jobs, a.ray_cpus, a.child_out)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows, results = [], []
    for n in map(int, a.sizes.split(",")):
        run_dir = a.data_dir / f"run{n}"
        if not (run_dir / "MANIFEST.json").exists():
            t = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_run.py"), str(a.source), "-n", str(n),
                            "--straggler", str(a.straggler), "--host-delay", str(a.host_delay), "--layer", a.layer,
                            "-o", str(run_dir)], check=True, env=env, stdout=subprocess.DEVNULL)
            print(f"made {run_dir} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        manifest = json.loads((run_dir / "MANIFEST.json").read_text())
        traces = [run_dir / f for f in manifest["files"]]
        trace_mb = sum(_gz_size(f) for f in traces) / len(traces) / 1e6
        docs = {}
        for engine in a.engines.split(","):
            out = a.data_dir / f"result-{n}-{engine}.json"
            subprocess.run([sys.executable, __file__, "--child", engine, str(run_dir), "--child-out", str(out),
                            "--jobs", str(a.jobs), "--ray-cpus", str(a.ray_cpus)], check=True, env=env)
            d = json.loads(out.read_text())
            docs[engine] = d
            found = d["straggler"]
            row = {"ranks": n, "engine": engine, "trace_mb_per_rank": trace_mb, **{k: v for k, v in d.items() if k != "run"},
                   "straggler_ok": found == manifest["injection"]["straggler"]}
            rows.append(row)
            results.append(row)
            print(f"N={n:4d} {engine:5s} wall {d['wall_s']:7.1f} s ({d['wall_s'] / n:5.2f} s/rank) cpu {d['cpu_s']:7.1f} s "
                  f"({d['cpu_s'] / n:5.2f} s/rank) driver peak {d['driver_peak_rss_mb']:6.0f} MB "
                  f"summary {d['summary_bytes_mean'] / 1e3:6.1f} kB/rank (trace {trace_mb:.1f} MB) "
                  f"straggler {found} ({'the injected one' if row['straggler_ok'] else 'WRONG'})"
                  + (f" ray start {d['ray_start_s']:.1f} s" if engine == "ray" else ""), file=sys.stderr, flush=True)
        if len(docs) == 2:
            same = docs["local"]["run"] == docs["ray"]["run"]
            for r in rows[-2:]:
                r["engines_equal"] = same
            print(f"N={n:4d} local and ray JSON {'equal' if same else 'DIFFER'}", file=sys.stderr, flush=True)
    print("| ranks | engine | trace MB/rank (uncompressed) | wall s (s/rank) | CPU s (s/rank) | driver peak RSS MB "
          "| summary kB/rank | straggler (injected " + str(a.straggler) + ") | JSON = local |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['ranks']} | {r['engine']} | {r['trace_mb_per_rank']:.1f} | {r['wall_s']:.1f} ({r['wall_s'] / r['ranks']:.2f}) "
              f"| {r['cpu_s']:.1f} ({r['cpu_s'] / r['ranks']:.2f}) | {r['driver_peak_rss_mb']:.0f} "
              f"| {r['summary_bytes_mean'] / 1e3:.1f} | {r['straggler']} {'ok' if r['straggler_ok'] else 'WRONG'} "
              f"| {'yes' if r.get('engines_equal') else ('-' if 'engines_equal' not in r else 'NO')} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(r["straggler_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
