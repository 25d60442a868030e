#!/usr/bin/env python3
"""Make a run of N rank traces from one real rank trace, with a known injected straggler.

Every rank is a copy of the source (a real Kineto trace of one rank of an expert-parallel
job) with its own header (``distributedInfo`` rank / world size), its own clock (a
``baseTimeNanoseconds`` that differs between ranks, compensated in ``ts``, plus a residual
offset of up to ``--max-offset-us``), and, on one rank, an injected cause:

- ``--host-delay D --layer K``: the rank's host stalls ``D`` µs before launching layer ``K``
  in every iteration: its CPU events from that point to the iteration's end move by ``D``;
  kernels already queued still run, so the GPU is delayed by ``D`` minus the queue it had
  (and idles with no kernel queued for that long); the iteration's closing synchronisation
  absorbs the rest, and the next iteration starts where the GPU finished;
- ``--expert-stretch X [--layer K]``: the rank's expert GEMMs (``gemm.grouped``; only layer
  ``K``'s when given) run ``X`` times longer (0.3 = +30 %), and what follows on its GPU moves.

Collectives synchronise the ranks: the n-th communication kernel is one collective; on each
rank it starts when that rank gets there and ends, everywhere, when the last rank has
arrived plus its original duration; from then on every rank's GPU runs that much later.
Each iteration's CPU events start where the rank's GPU finished the previous one (the host
synchronises at the end of an iteration); within it, only the injected stall moves them.

So the truth is known: the straggler, the layer, and the delay (``MANIFEST.json``
next to the traces records them).  Deterministic: the same arguments give the same bytes.

Usage::

    python benchmarks/make_run.py fixtures/gpu-extra/decode_tbo_rank0.json.gz -n 8 \
        --straggler 3 --host-delay 2000 --layer 2 -o /tmp/run8
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")
#: a base time one "quarter" earlier (Kineto floors its base to 3-month blocks), for odd ranks
QUARTER_NS = 7_889_238 * 10**9


@dataclass
class Injection:
    straggler: int
    host_delay_us: float = 0.0
    expert_stretch: float = 0.0
    layer: str | None = None


def _source(path: Path) -> dict:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return orjson.loads(raw)


def _base_facts(path: Path, layer: str | None):
    """From traceview's own analysis of the source: comm kernels, injection points, experts."""
    import polars as pl

    import traceview
    from traceview.metrics.segments import labelled

    a = traceview.analyze(path)
    k = labelled(a.kernels, a.segmentation).sort("ts")
    comm = k.filter(pl.col("role") == "comm")
    comm_keys = {(int(c), float(t)): i for i, (c, t) in enumerate(zip(comm["correlation"], comm["ts"]))}
    inst = np.stack([comm["ts"].to_numpy(), comm["end"].to_numpy(), comm["launch_ts"].to_numpy()], axis=1)
    points = []
    if layer is not None:
        sel = k.filter(pl.col("layer") == str(layer))
        points = sorted(sel.group_by("iteration").agg(pl.col("launch_ts").min())["launch_ts"].to_list())
    it_starts = sorted(k.filter(pl.col("iteration") != "(none)").group_by("iteration")
                       .agg(pl.col("launch_ts").min())["launch_ts"].to_list())
    experts = k.filter(pl.col("category") == "gemm.grouped")
    if layer is not None:
        experts = experts.filter(pl.col("layer") == str(layer))
    expert_keys = {(int(c), float(t)): float(d) for c, t, d in
                   zip(experts["correlation"], experts["ts"], experts["dur"])}
    return comm_keys, inst, points, expert_keys, it_starts


class _Steps:
    """A step function: the sum of the amounts whose time is <= t."""

    def __init__(self):
        self.t: list[float] = []
        self.v: list[float] = []

    def add(self, t: float, v: float) -> None:
        i = bisect.bisect_right(self.t, t)
        self.t.insert(i, t)
        self.v.insert(i, v)

    def at(self, t) -> np.ndarray:
        ts = np.asarray(self.t)
        cum = np.concatenate([[0.0], np.cumsum(self.v)])
        return cum[np.searchsorted(ts, np.asarray(t, dtype=float), side="right")] if len(ts) else np.zeros(np.shape(t))


def _simulate(events, launch_of, comm_keys, inst, inj_steps, stretch, straggler, n, it_starts):
    """Replay the GPU events of every rank in (base) start order with a running shift per rank.

    A GPU event runs no earlier than its base time plus the rank's shift so far (the stream and
    the GPU keep their order), and no earlier than its (delayed) launch plus the launch latency
    it had in the source: so a host stall longer than the queue leaves the GPU idle with no
    kernel queued.  A collective ends on every rank when the last rank has arrived (plus its
    own duration); after it, every rank is at least that late.  A stretched kernel delays its
    rank by the extra time from its end on.
    """
    gpu = []
    for e in events:
        if e.get("cat") in GPU_CATS and isinstance(e.get("ts"), (int, float)):
            args = e.get("args") if isinstance(e.get("args"), dict) else {}
            corr = args.get("correlation")
            ts = float(e["ts"])
            gpu.append((ts, float(e.get("dur", 0.0)), corr, launch_of.get(corr) if corr is not None else None))
    gpu.sort(key=lambda g: g[0])
    shift = np.zeros(n)
    pending: list[tuple[float, int, float]] = []   # (base time, kind, value): raise to / add after that time
    comm_arrive = np.zeros((len(inst), n))
    comm_finish = np.zeros(len(inst))
    seen_t, seen_shift = [], []
    import heapq

    starts = np.asarray(it_starts, dtype=float)
    # CPU shift at the start of each iteration: where the rank's GPU was when the host got there
    it_base = np.zeros((len(starts) + 1, n))
    it_known = np.zeros(len(starts) + 1, dtype=bool)
    it_known[0] = True

    def cpu(launch: float) -> np.ndarray:
        j = int(np.searchsorted(starts, launch, side="right"))
        if not it_known[j]:
            it_base[j], it_known[j] = shift, True
        v = it_base[j].copy()
        if straggler is not None:
            v[straggler] += float(inj_steps[straggler].at(launch)) - float(inj_steps[straggler].at(
                starts[j - 1] if j > 0 else -np.inf))
        return v

    for ts, dur, corr, launch in gpu:
        while pending and pending[0][0] <= ts:
            _, kind, value = heapq.heappop(pending)
            if kind == 0:
                np.maximum(shift, value, out=shift)
            else:
                shift[straggler] += value
        if launch is not None:
            lat = min(max(ts - launch, 0.0), 5.0)
            np.maximum(shift, cpu(launch) + launch + lat - ts, out=shift)
        key = (corr, ts)
        if key in comm_keys:
            i = comm_keys[key]
            comm_arrive[i] = shift
            comm_finish[i] = shift.max()
            heapq.heappush(pending, (ts + dur, 0, float(shift.max())))
        elif straggler is not None and key in stretch:
            heapq.heappush(pending, (ts + dur, 1, stretch[key]))
        seen_t.append(ts)
        seen_shift.append(shift.copy())
    times = np.asarray(seen_t)
    shifts = np.asarray(seen_shift) if seen_shift else np.zeros((0, n))

    def gpu_shift(rank: int, ts: float) -> float:
        i = np.searchsorted(times, ts, side="right") - 1
        return float(shifts[i, rank]) if i >= 0 else 0.0

    def cpu_shift(rank: int, t: float) -> float:
        j = int(np.searchsorted(starts, t, side="right"))
        base = it_base[j, rank] if it_known[j] else it_base[np.nonzero(it_known[:j + 1])[0][-1], rank]
        if straggler is not None and rank == straggler:
            base += float(inj_steps[rank].at(t)) - float(inj_steps[rank].at(starts[j - 1] if j > 0 else -np.inf))
        return float(base)

    return gpu_shift, comm_arrive, comm_finish, cpu_shift


def make_run(source: Path, n: int, out: Path, inj: Injection | None = None, max_offset_us: float = 200.0,
             compress: bool = True, iterations: int | None = None) -> dict:
    """Write ``n`` rank traces under ``out``; returns the manifest (also written there).

    ``iterations``: keep only the source's first that many iterations (smaller files)."""
    doc = _source(source)
    comm_keys, inst, points, expert_keys, it_starts = _base_facts(source, inj.layer if inj else None)
    events = doc["traceEvents"]
    launch_of = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and isinstance(e.get("args"), dict):
            c = e["args"].get("correlation")
            if c is not None:
                launch_of[c] = float(e["ts"])
    if iterations is not None and iterations < len(it_starts):
        cut = it_starts[iterations]

        def before_cut(e) -> bool:
            if not isinstance(e.get("ts"), (int, float)):
                return True
            args = e.get("args") if isinstance(e.get("args"), dict) else {}
            t = launch_of.get(args.get("correlation"), e["ts"]) if e.get("cat") in GPU_CATS else e["ts"]
            return t < cut and not (e.get("name", "").startswith("ProfilerStep#") and e["ts"] >= cut)

        events = [e for e in events if before_cut(e)]
        it_starts = it_starts[:iterations]
        points = [t for t in points if t < cut]

    # per rank: host injection steps (CPU time); stretched expert kernels (extra µs at their end)
    inj_steps = [_Steps() for _ in range(n)]
    stretch: dict = {}
    if inj is not None:
        for t in points if inj.host_delay_us else []:
            inj_steps[inj.straggler].add(t, inj.host_delay_us)
        if inj.expert_stretch:
            stretch = {key: d * inj.expert_stretch for key, d in expert_keys.items()}
    sim = _simulate(events, launch_of, comm_keys, inst, inj_steps, stretch, inj.straggler if inj else None, n,
                    it_starts)
    gpu_shift, comm_arrive, comm_finish, cpu_shift = sim
    out.mkdir(parents=True, exist_ok=True)
    base_ns = int(doc.get("baseTimeNanoseconds") or 0)
    files = []
    offsets = {}
    for r in range(n):
        offset = ((r * 7919) % 101) / 100.0 * 2 * max_offset_us - max_offset_us if r else 0.0
        base_r = base_ns - QUARTER_NS if r % 2 else base_ns
        base_shift_us = (base_ns - base_r) / 1000.0  # ts grows by this when the base is earlier
        offsets[r] = offset
        new = []
        for e in events:
            if "ts" not in e or not isinstance(e.get("ts"), (int, float)):
                new.append(e)
                continue
            e = dict(e)
            ts = float(e["ts"])
            cat = e.get("cat")
            args = e.get("args") if isinstance(e.get("args"), dict) else {}
            if cat in GPU_CATS:
                corr = args.get("correlation")
                key = (corr, ts)
                if cat == "kernel" and key in comm_keys:
                    i = comm_keys[key]
                    start_shift, end_shift = comm_arrive[i, r], comm_finish[i]
                    dur = float(e.get("dur", 0.0))
                    e["dur"] = float(dur + end_shift - start_shift)
                    shift = start_shift
                else:
                    shift = float(gpu_shift(r, ts))
                    if r == (inj.straggler if inj else -1) and key in stretch:
                        e["dur"] = float(e["dur"]) + stretch[key]
            else:
                shift = cpu_shift(r, ts)
                if isinstance(e.get("dur"), (int, float)):
                    end = ts + float(e["dur"])
                    e["dur"] = float(max(0.0, end + cpu_shift(r, end) - (ts + shift)))
            e["ts"] = float(ts + shift + offset + base_shift_us)
            new.append(e)
        d = dict(doc)
        d["traceEvents"] = new
        d["baseTimeNanoseconds"] = base_r
        dist = dict(d.get("distributedInfo") or {"backend": "nccl"})
        dist.update(rank=r, world_size=n)
        d["distributedInfo"] = dist
        name = f"rank{r}.json.gz" if compress else f"rank{r}.json"
        data = orjson.dumps(d)
        (out / name).write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if compress else data)
        files.append(name)
    manifest = {"source": str(source), "world_size": n, "files": files, "injection": asdict(inj) if inj else None,
                "clock_offset_us": offsets,
                "late_us_per_iteration": float((comm_arrive.max(axis=1) - np.median(comm_arrive, axis=1)).sum()
                                               / max(1, len(it_starts))),
                "iterations": len(it_starts)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("-n", type=int, default=8)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--straggler", type=int, default=None)
    p.add_argument("--host-delay", type=float, default=0.0, help="µs before --layer, every iteration")
    p.add_argument("--expert-stretch", type=float, default=0.0, help="0.3 = expert GEMMs 30%% longer")
    p.add_argument("--layer", default=None)
    p.add_argument("--max-offset-us", type=float, default=200.0)
    p.add_argument("--iterations", type=int, default=None, help="keep only the first K iterations of the source")
    a = p.parse_args(argv)
    inj = None
    if a.straggler is not None:
        inj = Injection(a.straggler, a.host_delay, a.expert_stretch, a.layer)
    m = make_run(a.source, a.n, a.out, inj, a.max_offset_us, iterations=a.iterations)
    print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
