#!/usr/bin/env python3
"""Benchmark runner: ``traceview analyze`` against ``orjson.loads`` and HTA, same inputs, same run.

For each size (3 MB = the real source trace, 100 MB and 1 GB made from it by
``make_big_trace.py``, generated into ``--data-dir`` when absent) it runs, each in its own
subprocess with its whole process tree sampled from ``/proc``:

* ``traceview analyze FILE`` (the full analysis: load, classification, overlap; the table
  goes to a pipe, as in CI);
* ``orjson.loads`` of the same bytes (the time of the call itself, and the process's RSS);
* with ``--hta``: Meta's HolisticTraceAnalysis (PyPI ``HolisticTraceAnalysis``), installed
  into its own venv (``--hta-venv``) on first use: ``TraceAnalysis(trace_dir=...)`` (parse)
  and ``get_comm_comp_overlap()`` (overlap), timed separately.

Memory is the peak of the *sum* over the process tree (traceview decodes big files in worker
processes) of RSS, and of PSS (RSS with shared pages divided among the processes sharing
them: shared libraries are not counted once per worker).  CPU is user + system time of the
tree (from ``wait4``).  Ratios are other / traceview.

Correctness: the per-GPU results of each big trace must equal the source's scaled by the
repeat count ``K`` of its ``.meta.json`` sidecar: busy, compute, comm, memory, overlap,
exposed times, events, per-stream and per-category time and count times ``K``, and span
``(K - 1) * P + span`` (``P`` the copy period); shares unchanged.

Decoders: ``traceview analyze`` runs with the compiled decoder (when built) and, as the
baseline in the same run, with ``TRACEVIEW_DECODER=python`` (the pure-Python path); the table
gives both and their ratios; the two decoders must give the same event table, exactly (the
per-GPU results are compared too: polars sums in threads, so their last bits may vary run to run).
Start-up is ``import traceview.cli`` and ``traceview --version`` (which names the decoder).
Sizes ending in ``-kineto`` are made with ``make_big_trace.py --shape kineto`` (several lines
per event, fractional microseconds); they are checked by the two decoders' agreement.

``--ranks N`` adds a directory of N ranks (hard links to the largest size, named
``rank{i}.json``) analyzed with ``--jobs 1`` and ``--jobs J`` to show that memory is bounded
by the jobs running at once, not by the number of ranks.

Usage::

    python benchmarks/run.py --data-dir /tmp/bench                 # 3mb, 100mb, 1gb
    python benchmarks/run.py --sizes 3mb,100mb --hta --data-dir /tmp/bench
    python benchmarks/run.py --sizes 1gb --ranks 3 --data-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "fixtures" / "deepseek" / "train.json"
#: size label -> target MiB (None: the source itself)
SIZES = {"3mb": None, "100mb": 100, "1gb": 1024, "100mb-kineto": 100, "1gb-kineto": 1024}
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- measuring a process tree

@dataclass
class Run:
    wall_s: float
    cpu_s: float
    rss_mb: float           # peak of the summed RSS of the tree
    pss_mb: float           # peak of the summed PSS of the tree
    procs: int              # most processes alive at once
    rc: int
    stdout: str = ""
    stderr: str = ""
    inner: dict = field(default_factory=dict)  # times the program reported itself (JSON on its last line)


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except (OSError, ValueError):
        pass
    return out


def _tree(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes (0 when it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


def measure(argv: list[str], interval: float = 0.05, env: dict | None = None) -> Run:
    """Run ``argv``; sample the memory of its process tree until it exits."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    peak_rss = peak_pss = procs = 0
    done = threading.Event()
    result: dict = {}

    def reap() -> None:  # wait4 gives the CPU time of the child and of the children it reaped
        _, status, ru = os.wait4(proc.pid, 0)
        result["wall"] = time.perf_counter() - t0
        result["rc"] = os.waitstatus_to_exitcode(status)
        result["cpu"] = ru.ru_utime + ru.ru_stime
        done.set()

    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    while not done.wait(interval):
        pids = _tree(proc.pid)
        rss = pss = 0
        for p in pids:
            r, s = _mem(p)
            rss, pss = rss + r, pss + s
        peak_rss, peak_pss, procs = max(peak_rss, rss), max(peak_pss, pss), max(procs, len(pids))
    proc.returncode = result["rc"]
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    inner = {}
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        try:
            inner = json.loads(lines[-1])
        except ValueError:
            pass
    return Run(result["wall"], result["cpu"], peak_rss / 2**20, peak_pss / 2**20, procs, result["rc"],
               stdout, stderr, inner)


# ---------------------------------------------------------------- inputs

@dataclass
class Input:
    label: str
    path: Path
    repeats: int = 1
    period_us: float = 0.0
    shape: str = "compact"

    @property
    def mb(self) -> float:
        return self.path.stat().st_size / 2**20


def prepare(label: str, source: Path, data_dir: Path) -> Input:
    target = SIZES[label]
    if target is None:
        return Input(label, source)
    shape = "kineto" if label.endswith("-kineto") else "compact"
    out = data_dir / f"{source.name.split('.')[0]}_{label.replace('mb', 'm').replace('gb', 'g')}.json"
    meta = Path(str(out) + ".meta.json")
    if not (out.exists() and meta.exists()):
        print(f"[generating {out} ({target} MiB, {shape})]", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(HERE / "make_big_trace.py"), str(source), "--target-mb", str(target),
                        "--shape", shape, "-o", str(out)], check=True)
    m = json.loads(meta.read_text())
    return Input(label, out, int(m["repeats"]), float(m["period_us"]), m.get("shape", "compact"))


# ---------------------------------------------------------------- the programs

TRACEVIEW = [sys.executable, "-m", "traceview"]
#: the baseline: the same command on the pure-Python decoder
PURE_ENV = {**os.environ, "TRACEVIEW_DECODER": "python"}

#: One untimed run per input for the correctness check: per-GPU results as JSON.
_RESULTS = """
import json, sys
from traceview.analysis import analyze
a = analyze(sys.argv[1])
print(json.dumps([g.to_dict() for g in a.gpus]))
"""

#: The two decoders' event tables, compared exactly (every column, every bit of ts/dur).
_SAME_EVENTS = """
import json, os, sys
from traceview.load import load, native
a = load(sys.argv[1]).events
os.environ["TRACEVIEW_DECODER"] = "python"  # (spawned decoding processes read it)
native.ENABLED = False
b = load(sys.argv[1]).events
same = a.equals(b) and all(a[c].to_numpy().tobytes() == b[c].to_numpy().tobytes() for c in ("ts", "dur"))
print(json.dumps({"rows": a.height, "same": bool(same)}))
"""

_ORJSON = """
import json, sys, time, orjson
with open(sys.argv[1], "rb") as f:
    raw = f.read()
t = time.perf_counter()
doc = orjson.loads(raw)
print(json.dumps({"loads_s": time.perf_counter() - t}))
"""

_HTA = """
import json, os, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
t = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t_imp = time.perf_counter()
a = TraceAnalysis(trace_dir=sys.argv[1])
t_parse = time.perf_counter()
ov = a.get_comm_comp_overlap(visualize=False)
t_ov = time.perf_counter()
print(json.dumps({"import_s": t_imp - t, "parse_s": t_parse - t_imp, "overlap_s": t_ov - t_parse,
                  "overlap": ov.to_dict("records") if hasattr(ov, "to_dict") else str(ov)}, default=str))
"""


def hta_python(venv: Path, install: bool) -> Path | None:
    """The HTA venv's python, installing HTA there first if needed (None: not installable)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import hta"], capture_output=True).returncode == 0:
        return py
    if not install:
        return None
    print(f"[installing HolisticTraceAnalysis into {venv}]", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "HolisticTraceAnalysis"],
                           capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"HTA: cannot create the venv ({e}): skipped", file=sys.stderr)
        return None
    if r.returncode != 0:
        print("HTA: pip could not install HolisticTraceAnalysis: skipped\n" + r.stderr[-2000:], file=sys.stderr)
        return None
    return py


def run_hta(py: Path, inp: Input, timeout_note: str = "") -> Run:
    with tempfile.TemporaryDirectory(prefix="hta-") as d:  # HTA reads a directory of ranks
        os.symlink(inp.path.resolve(), Path(d) / "rank0.json")
        return measure([str(py), "-c", _HTA, d])


# ---------------------------------------------------------------- correctness

def check_scaled(base: list[dict], big: list[dict], k: int, period: float, tol: float = 1e-9) -> tuple[bool, float, str]:
    """Big trace's per-GPU results == base's x K (span: (K-1)*P + span).  (ok, max rel error, first problem).
    (With K = 1 and P = 0: two runs' results against each other.)"""
    worst, problem = 0.0, ""

    def cmp(what: str, want: float, got: float) -> None:
        nonlocal worst, problem
        err = abs(got - want) / max(abs(want), 1.0)
        worst = max(worst, err)
        if err > tol and not problem:
            problem = f"{what}: expected {want!r}, got {got!r}"

    if [g["device"] for g in base] != [g["device"] for g in big]:
        return False, math.inf, "different devices"
    for b, g in zip(base, big):
        dev = f"GPU {b['device']}"
        for key in ("busy_us", "compute_us", "comm_us", "memory_us", "overlap_us", "exposed_comm_us",
                    "exposed_memory_us"):
            cmp(f"{dev} {key}", b[key] * k, g[key])
        cmp(f"{dev} events", b["events"] * k, g["events"])
        cmp(f"{dev} span_us", (k - 1) * period + b["span_us"], g["span_us"])
        cmp(f"{dev} idle_us", (k - 1) * period + b["span_us"] - b["busy_us"] * k, g["idle_us"])
        if set(b["streams"]) != set(g["streams"]):
            problem = problem or f"{dev}: different streams"
        for s, t in b["streams"].items():
            cmp(f"{dev} stream {s}", t * k, g["streams"].get(s, math.nan))
        if set(b["categories"]) != set(g["categories"]):
            problem = problem or f"{dev}: different categories"
        for c, ct in b["categories"].items():
            o = g["categories"].get(c, {"time_us": math.nan, "count": -1, "share": math.nan})
            cmp(f"{dev} {c} time", ct["time_us"] * k, o["time_us"])
            cmp(f"{dev} {c} count", ct["count"] * k, o["count"])
            cmp(f"{dev} {c} share", ct["share"], o["share"])
    return not problem, worst, problem


# ---------------------------------------------------------------- report

def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}x"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3mb,100mb,1gb", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--data-dir", type=Path, default=HERE / "data", help="where generated traces go (gitignored default)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the real trace that is repeated")
    ap.add_argument("--runs", type=int, default=1, help="runs of each measurement; the fastest is reported")
    ap.add_argument("--no-orjson", action="store_true", help="skip the orjson.loads baseline")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check (an extra untimed run)")
    ap.add_argument("--hta", action="store_true", help="also run HTA (installed into --hta-venv if absent)")
    ap.add_argument("--hta-venv", type=Path, default=Path(tempfile.gettempdir()) / "hta-venv")
    ap.add_argument("--hta-sizes", default=None, help="sizes to run HTA on (default: all of --sizes); "
                                                      "HTA needs ~8 min and ~6 GB for 1 GB")
    ap.add_argument("--ranks", type=int, default=0, help="also analyze a directory of N links to the largest size")
    ap.add_argument("--jobs", type=int, default=2, help="--jobs for the --ranks directory (also run with 1)")
    ap.add_argument("--json", type=Path, help="also write the measurements here as JSON")
    ap.add_argument("--no-baseline", action="store_true", help="skip the pure-Python decoder's runs")
    args = ap.parse_args(argv)

    labels = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in labels if s not in SIZES]
    if bad:
        ap.error(f"unknown size(s) {bad}; choose from {list(SIZES)}")
    if not args.source.exists():
        ap.error(f"source trace {args.source} not found (--source)")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    inputs = [prepare(s, args.source, args.data_dir) for s in labels]
    hta_py = None
    hta_labels = set(labels if args.hta_sizes is None else args.hta_sizes.lower().split(","))
    if args.hta:
        hta_py = hta_python(args.hta_venv, install=True)
        if hta_py is None:
            print("HTA is not installable here: its columns are left out", file=sys.stderr)

    def best(argv: list[str], env: dict | None = None) -> Run:
        runs = [measure(argv, env=env) for _ in range(max(1, args.runs))]
        for r in runs:
            if r.rc != 0:
                print(f"FAILED ({r.rc}): {' '.join(argv)}\n{r.stderr[-3000:]}", file=sys.stderr)
        return min(runs, key=lambda r: r.wall_s)

    results = []
    base_gpus = None
    ok_all = True
    decoder = subprocess.run(TRACEVIEW + ["--version"], capture_output=True, text=True).stdout.strip()
    startup = {"import_cli": _summary(best([sys.executable, "-c", "import traceview.cli"])),
               "version": _summary(best(TRACEVIEW + ["--version"])), "decoder": decoder}
    print(f"[{decoder}]", file=sys.stderr, flush=True)
    for inp in inputs:
        print(f"[{inp.label}: {inp.path} ({inp.mb:.0f} MiB, {inp.repeats} copies)]", file=sys.stderr, flush=True)
        res: dict = {"size": inp.label, "file": str(inp.path), "mib": round(inp.mb, 1), "repeats": inp.repeats}
        tv = best(TRACEVIEW + ["analyze", str(inp.path)])
        res["traceview"] = _summary(tv)
        if not args.no_baseline:
            res["pure"] = _summary(best(TRACEVIEW + ["analyze", str(inp.path)], env=PURE_ENV))
        if not args.no_orjson:
            oj = best([sys.executable, "-c", _ORJSON, str(inp.path)])
            res["orjson"] = {**_summary(oj), "loads_s": oj.inner.get("loads_s")}
        if hta_py is not None and inp.label in hta_labels:
            print(f"[{inp.label}: HTA]", file=sys.stderr, flush=True)
            h = run_hta(hta_py, inp)
            res["hta"] = {**_summary(h), **{k: h.inner.get(k) for k in ("import_s", "parse_s", "overlap_s")}}
            ov = h.inner.get("overlap")
            res["hta"]["overlap"] = ov
            if h.rc != 0:
                res["hta"]["error"] = h.stderr.strip().splitlines()[-1:] if h.stderr.strip() else ["failed"]
        if not args.no_check:
            chk = measure([sys.executable, "-c", _RESULTS, str(inp.path)])
            gpus = json.loads(chk.stdout.strip().splitlines()[-1]) if chk.rc == 0 else None
            if not args.no_baseline:  # the two decoders: the same event table, exactly
                ev = measure([sys.executable, "-c", _SAME_EVENTS, str(inp.path)])
                same = ev.rc == 0 and ev.inner.get("same") is True
                res["decoders"] = (f"same events ({ev.inner['rows']:,} rows)" if same else
                                   f"DIFFERENT events {ev.inner or ev.stderr[-300:]}")
                ok_all &= same
                pure = measure([sys.executable, "-c", _RESULTS, str(inp.path)], env=PURE_ENV)
                if pure.rc == 0 and gpus is not None:  # sums in polars' threads: last bits may differ
                    _, worst, _ = check_scaled(json.loads(pure.stdout.strip().splitlines()[-1]), gpus, 1, 0.0)
                    res["decoders"] += f"; per-GPU results within {worst:.0e}"
            if inp.shape == "kineto":
                res["check"] = "decoders " + res.get("decoders", "not compared")
                results.append(res)
                print(json.dumps(res, default=str)[:400], file=sys.stderr, flush=True)
                continue
            if inp.repeats == 1 and inp.path == args.source:
                base_gpus = gpus
                res["check"] = "source"
            elif base_gpus is None:
                chk0 = measure([sys.executable, "-c", _RESULTS, str(args.source)])
                base_gpus = json.loads(chk0.stdout.strip().splitlines()[-1])
            if inp.repeats > 1 or inp.path != args.source:
                ok, worst, problem = check_scaled(base_gpus, gpus or [], inp.repeats, inp.period_us)
                ok_all &= ok
                res["check"] = (f"OK: = source x {inp.repeats} (max rel. error {worst:.1e})" if ok
                                else f"MISMATCH: {problem}")
        results.append(res)
        print(json.dumps(res, default=str)[:400], file=sys.stderr, flush=True)

    multi = None
    if args.ranks > 0:
        multi = run_ranks(inputs[-1], args.ranks, args.jobs, args.data_dir, best)

    print_table(results, multi)
    print_decoders(results, startup)
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "ranks": multi, "startup": startup}, indent=1,
                                        default=str) + "\n")
    return 0 if ok_all else 1


def _summary(r: Run) -> dict:
    return {"wall_s": round(r.wall_s, 2), "cpu_s": round(r.cpu_s, 2), "rss_mb": round(r.rss_mb),
            "pss_mb": round(r.pss_mb), "procs": r.procs, "rc": r.rc}


def run_ranks(inp: Input, n: int, jobs: int, data_dir: Path, best) -> dict:
    d = data_dir / f"ranks{n}_{inp.path.stem}"
    d.mkdir(exist_ok=True)
    for i in range(n):
        link = d / f"rank{i}.json"
        if not link.exists():
            try:
                os.link(inp.path, link)
            except OSError:
                os.symlink(inp.path.resolve(), link)
    out: dict = {"dir": str(d), "ranks": n, "file_mib": round(inp.mb, 1), "by_jobs": {}}
    single = best(TRACEVIEW + ["analyze", str(inp.path)])
    out["one_file"] = _summary(single)
    for j in sorted({1, jobs}):
        print(f"[{n} ranks, --jobs {j}]", file=sys.stderr, flush=True)
        r = best(TRACEVIEW + ["analyze", str(d), "--jobs", str(j)])
        out["by_jobs"][j] = _summary(r)
    return out


def print_decoders(results: list[dict], startup: dict) -> None:
    """The compiled decoder against the pure-Python one (the baseline), same run."""
    print()
    imp, ver = startup["import_cli"], startup["version"]
    print(f"Decoder: {startup['decoder']}; start-up: import traceview.cli {imp['wall_s']:.2f} s "
          f"({imp['cpu_s']:.2f} s cpu), traceview --version {ver['wall_s']:.2f} s ({ver['cpu_s']:.2f} s cpu)")
    print(row(["input", "compiled s (cpu s)", "RSS / PSS MB", "pure-Python s (cpu s)", "RSS / PSS MB",
               "time ratio", "cpu ratio", "results"]))
    print(row(["---"] * 8))
    for r in results:
        tv, pu = r["traceview"], r.get("pure")
        cells = [f"{r['size']} ({r['mib']:.0f} MiB)", f"{tv['wall_s']:.2f} ({tv['cpu_s']:.1f})",
                 f"{tv['rss_mb']} / {tv['pss_mb']}"]
        if pu:
            cells += [f"{pu['wall_s']:.2f} ({pu['cpu_s']:.1f})", f"{pu['rss_mb']} / {pu['pss_mb']}",
                      fmt_ratio(pu["wall_s"] / tv["wall_s"]), fmt_ratio(pu["cpu_s"] / max(tv["cpu_s"], 1e-9))]
        else:
            cells += ["—"] * 4
        cells.append(r.get("decoders", "—"))
        print(row(cells))


def print_table(results: list[dict], multi: dict | None) -> None:
    print()
    print(row(["input", "traceview s (cpu s)", "traceview RSS / PSS MB", "orjson.loads s", "orjson RSS MB",
               "orjson/tv time", "orjson/tv RSS", "HTA parse+overlap s", "HTA RSS MB", "HTA/tv time",
               "HTA/tv RSS", "check"]))
    print(row(["---"] * 12))
    for r in results:
        tv, oj, h = r["traceview"], r.get("orjson"), r.get("hta")
        cells = [f"{r['size']} ({r['mib']:.0f} MiB, x{r['repeats']})",
                 f"{tv['wall_s']:.2f} ({tv['cpu_s']:.1f})", f"{tv['rss_mb']} / {tv['pss_mb']}"]
        if oj and oj.get("loads_s") is not None:
            cells += [f"{oj['loads_s']:.2f}", f"{oj['rss_mb']}", fmt_ratio(oj["loads_s"] / tv["wall_s"]),
                      fmt_ratio(oj["rss_mb"] / tv["rss_mb"])]
        else:
            cells += ["—"] * 4
        if h and h.get("parse_s") is not None:
            t = h["parse_s"] + h["overlap_s"]
            cells += [f"{h['parse_s']:.1f} + {h['overlap_s']:.1f}", f"{h['rss_mb']}", fmt_ratio(t / tv["wall_s"]),
                      fmt_ratio(h["rss_mb"] / tv["rss_mb"])]
        else:
            cells += ["—" if not h else "failed"] + ["—"] * 3
        cells.append(r.get("check", "—"))
        print(row(cells))
    if multi:
        print()
        print(f"Directory of {multi['ranks']} ranks of {multi['file_mib']:.0f} MiB each ({multi['dir']}):")
        print(row(["run", "wall s", "cpu s", "peak RSS MB (sum)", "peak PSS MB (sum)", "processes"]))
        print(row(["---"] * 6))
        o = multi["one_file"]
        print(row(["one file", f"{o['wall_s']:.1f}", f"{o['cpu_s']:.1f}", str(o["rss_mb"]), str(o["pss_mb"]),
                   str(o["procs"])]))
        for j, s in multi["by_jobs"].items():
            print(row([f"{multi['ranks']} ranks, --jobs {j}", f"{s['wall_s']:.1f}", f"{s['cpu_s']:.1f}",
                       str(s["rss_mb"]), str(s["pss_mb"]), str(s["procs"])]))


if __name__ == "__main__":
    sys.exit(main())
