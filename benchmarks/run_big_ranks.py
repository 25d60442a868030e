#!/usr/bin/env python3
"""Summary size of a big rank, and the driver's peak for hundreds of such ranks (docs/performance.md).

1. ``--trace T`` (a big rank trace, e.g. 1 GB made by ``benchmarks/make_big_trace.py`` from the
   real EP2 decode rank: ``make_big_trace.py fixtures/gpu-extra/decode_tbo_rank0.json.gz
   --target-mb 1024 -o /tmp/decode_1g.json``) is summarized in a fresh process (the map step of
   one rank task): its wall time and peak RSS, and the summary's bytes as it travels and as the
   driver holds it (tables compressed), unpacked (what a reduce step holds while reading one
   rank's tables), and per table.
2. In another fresh process, the driver of a run of ``--ranks N`` such ranks: N copies of that
   summary, each unpickled on its own (as they arrive from the rank tasks) and renumbered as
   ranks 0..N-1 of world size N, then ``reduce_run``: peak RSS before and after the reduce, its
   time, and the size of the instance table (N x the rank's collectives rows).  Every rank is
   the same trace, so no rank is late: the work of the reduce (matching every collective of
   every rank, wait/transfer, per-rank times) is all there, the straggler is not.

    python benchmarks/run_big_ranks.py --trace /tmp/decode_1g.json --ranks 300
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize_child(trace: str, out: str) -> dict:
    from traceview.run import summarize_file
    from traceview.run.summary import PACKED

    t, cpu = time.perf_counter(), time.process_time()
    (s,) = summarize_file(Path(trace))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu  # the decoder's threads are this process's
    raw = pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)
    Path(out).write_bytes(raw)
    return {"trace_bytes": os.path.getsize(trace), "summarize_wall_s": wall, "summarize_cpu_s": cpu, "map_peak_rss_mb": _peak_mb(),
            "collectives": s.comm.height, "iterations": s.iterations.height,
            "summary_bytes": len(raw), "summary_wire_bytes": len(zlib.compress(raw, 1)),
            "summary_unpacked_bytes": s.unpacked_nbytes(),
            "packed_table_bytes": {k: len(v) for k, v in s._packed.items() if k in PACKED}}


def reduce_child(summary: str, n: int) -> dict:
    from traceview.run import reduce_run

    raw = Path(summary).read_bytes()
    start = _peak_mb()
    sums = []
    for i in range(n):
        s = pickle.loads(raw)
        s.rank, s.world_size, s.file, s.name = i, n, f"rank{i}.json", f"rank{i}.json"
        sums.append(s)
    held = _peak_mb()
    t = time.perf_counter()
    run = reduce_run(sums)
    return {"ranks": n, "driver_start_rss_mb": start, "driver_peak_holding_mb": held,
            "driver_peak_rss_mb": _peak_mb(), "reduce_s": time.perf_counter() - t, "cross_rank": run.cross_rank,
            "instance_rows": run.collectives.height,
            "instance_table_mb": run.matching.instances.estimated_size() / 2**20 if run.matching else 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, help="a big rank trace to summarize")
    p.add_argument("--ranks", default="300", help="driver runs of this many copies (comma-separated)")
    p.add_argument("--summary", type=Path, help="reuse a pickled summary instead of --trace")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, x, y = a.child
        doc = summarize_child(x, y) if kind == "summarize" else reduce_child(x, int(y))
        print(json.dumps(doc))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def child(*args) -> dict:
        r = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, check=True,
                           capture_output=True, text=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    docs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        summary = a.summary
        if summary is None:
            if a.trace is None:
                p.error("give --trace (or --summary)")
            summary = Path(tmp) / "summary.pkl"
            d = docs["map"] = child("summarize", a.trace, summary)
            print(f"map: {d['trace_bytes'] / 2**20:,.0f} MiB trace, {d['collectives']:,} collectives, "
                  f"{d['iterations']} iterations: summarized in {d['summarize_wall_s']:.1f} s wall, {d['summarize_cpu_s']:.1f} s CPU (peak {d['map_peak_rss_mb']:.0f} MiB); "
                  f"summary {d['summary_bytes'] / 1e6:.2f} MB held/travelling ({d['summary_wire_bytes'] / 1e6:.2f} MB "
                  f"zlib), {d['summary_unpacked_bytes'] / 1e6:.2f} MB unpacked", flush=True)
        docs["reduce"] = []
        for n in map(int, a.ranks.split(",")):
            d = child("reduce", summary, n)
            docs["reduce"].append(d)
            print(f"driver, {n} ranks: {d['driver_peak_holding_mb']:.0f} MiB holding the summaries "
                  f"(start {d['driver_start_rss_mb']:.0f}), peak {d['driver_peak_rss_mb']:.0f} MiB after the reduce "
                  f"({d['reduce_s']:.1f} s; {d['instance_rows']:,} instance rows, {d['instance_table_mb']:.0f} MiB)",
                  flush=True)
    if a.json:
        a.json.write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
