#!/usr/bin/env python3
"""Capture a decode step whose two micro-batches run on their own CUDA streams, eager and as one
CUDA graph (issue 13: micro-batches of graph replays from the replay streams).

Each micro-batch (its own tokens, KV cache and expert routing) runs every layer on its own
``torch.cuda.Stream``, forked from the step's stream and joined at the end (vLLM-style dual-batch
overlap where each micro-batch has its own stream).  Captured in one graph the two chains are
two parallel branches: CUPTI replays them on two streams of their own, concurrently, so the
replay's kernels in GPU start order interleave the micro-batches.  A layer: RMSNorm, QKV
projection, SDPA decode attention over a KV cache, output projection, router + top-k, dispatch
(tokens gathered into the experts' order: a device copy, where a multi-GPU run has its
all-to-all), grouped expert GEMMs (``torch._grouped_mm``, fixed capacity: no host sync), combine
(scatter back: a copy and an index_add).  World size 1, no NCCL.

Writes, into --out: ``decode_mb_streams_eager.json.gz`` (record_function mbN > layer.J > phase
around every launch), ``decode_mb_streams_cudagraph.json.gz`` (the graph replayed once per
profiled step, no annotation inside) and ``manifest_branches.json`` (what was captured).

    python scripts/capture/capture_branches.py --out /tmp/cap          # on a GPU
    python scripts/capture/capture_branches.py --out /tmp/cap --cpu    # eager only, tiny, a dry run
    python scripts/capture/capture_branches.py --finalize /tmp/cap --note "..."   # here: into fixtures/captures
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("attn", "gate", "dispatch", "experts", "combine")


class Model:
    def __init__(self, dev, hidden, heads, experts, inter, layers, topk, dtype):
        g = torch.Generator(device="cpu").manual_seed(0)

        def w(*shape, scale=0.02):
            return (torch.randn(*shape, generator=g) * scale).to(dev, dtype)

        self.hidden, self.heads, self.experts, self.inter, self.topk = hidden, heads, experts, inter, topk
        self.layers = [dict(norm=torch.ones(hidden, device=dev, dtype=dtype), wqkv=w(hidden, 3 * hidden),
                            wo=w(hidden, hidden), router=w(hidden, experts),
                            w1=w(experts, hidden, 2 * inter), w2=w(experts, inter, hidden))
                       for _ in range(layers)]


class MicroBatch:
    """One micro-batch's state: its tokens, KV cache per layer and static buffers (graph-safe)."""

    def __init__(self, model: Model, dev, tokens, kv_len, dtype, seed):
        g = torch.Generator(device="cpu").manual_seed(seed)
        hd = model.hidden // model.heads
        self.x = (torch.randn(tokens, model.hidden, generator=g) * 0.1).to(dev, dtype)
        self.kv = [((torch.randn(tokens, model.heads, kv_len, hd, generator=g) * 0.1).to(dev, dtype),
                    (torch.randn(tokens, model.heads, kv_len, hd, generator=g) * 0.1).to(dev, dtype))
                   for _ in model.layers]
        cap = tokens * model.topk // model.experts  # fixed capacity per expert
        self.cap = cap
        self.offs = torch.arange(1, model.experts + 1, device=dev, dtype=torch.int32) * cap
        self.dispatched = torch.empty(model.experts * cap, model.hidden, device=dev, dtype=dtype)
        self.out = torch.empty_like(self.x)


def rf(name: str, labels: bool):
    return record_function(name) if labels else contextlib.nullcontext()


def layer(model: Model, mb: MicroBatch, j: int, h: torch.Tensor, labels: bool) -> torch.Tensor:
    p = model.layers[j]
    T, H, nh = h.shape[0], model.hidden, model.heads
    with rf("attn", labels):
        n = torch.nn.functional.rms_norm(h, (H,), p["norm"])
        q, k, v = (n @ p["wqkv"]).split(H, dim=-1)
        kc, vc = mb.kv[j]
        q = q.view(T, nh, 1, H // nh)
        a = torch.nn.functional.scaled_dot_product_attention(q, kc, vc)
        h = h + a.reshape(T, H) @ p["wo"]
    with rf("gate", labels):
        n = torch.nn.functional.rms_norm(h, (H,), p["norm"])
        scores = (n @ p["router"]).float().softmax(-1)
        top_w, top_e = scores.topk(model.topk, dim=-1)
        # fixed capacity: the i-th (token, choice) of expert e goes to slot e*cap + (i mod cap)
        flat_e = top_e.reshape(-1)
        order = torch.argsort(flat_e * (T * model.topk) + torch.arange(flat_e.numel(), device=h.device))
        token_of = (order // model.topk)[: model.experts * mb.cap]
    with rf("dispatch", labels):
        mb.dispatched.copy_(n.index_select(0, token_of))
    with rf("experts", labels):
        y = torch._grouped_mm(mb.dispatched, p["w1"], offs=mb.offs)
        gate, up = y.chunk(2, dim=-1)
        y = torch._grouped_mm(torch.nn.functional.silu(gate) * up, p["w2"], offs=mb.offs)
    with rf("combine", labels):
        w = top_w.reshape(-1)[order][: model.experts * mb.cap].to(y.dtype).unsqueeze(-1)
        h = h.index_add(0, token_of, y * w)
    return h


def step(model: Model, mbs: list[MicroBatch], streams, labels: bool) -> None:
    """Both micro-batches, each on its own stream, launched layer by layer in turn."""
    main = torch.cuda.current_stream() if streams else None
    for s in streams:
        s.wait_stream(main)
    hs = [mb.x for mb in mbs]
    for j in range(len(model.layers)):
        for m, mb in enumerate(mbs):
            with (torch.cuda.stream(streams[m]) if streams else contextlib.nullcontext()):
                with rf(f"mb{m}", labels), rf(f"layer.{j}", labels):
                    hs[m] = layer(model, mb, j, hs[m], labels)
    for m, mb in enumerate(mbs):
        with (torch.cuda.stream(streams[m]) if streams else contextlib.nullcontext()):
            mb.out.copy_(hs[m])
    for s in streams:
        main.wait_stream(s)


def profiled(path: str, fn, steps: int, cuda: bool) -> list[float]:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    times = []
    sched = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)  # ProfilerStep#N ranges
    with profile(activities=acts, record_shapes=True, schedule=sched) as prof:
        for i in range(steps + 1):
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i:  # the warm-up step is not recorded
                times.append((time.perf_counter() - t) * 1e3)
            prof.step()
    raw = path.removesuffix(".gz")
    prof.export_chrome_trace(raw)
    with open(raw, "rb") as f, gzip.open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    os.remove(raw)
    return times


def finalize(src: str, note: str) -> None:
    """Copy the two traces into fixtures/captures and add their entries to its MANIFEST.json, with
    check_traces.py's numbers (an implementation independent of traceview)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    dest = here.parents[1] / "fixtures" / "captures"
    meta = json.loads((Path(src) / "manifest_branches.json").read_text())
    names = sorted(meta["files"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "checks.json"
        subprocess.run([sys.executable, str(here / "check_traces.py"), *(str(Path(src) / n) for n in names),
                        "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
        checks = {c["file"]: c for c in json.loads(out.read_text())}
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    scenarios = {n.removesuffix(".json.gz") for n in names}
    manifest["files"] = [e for e in manifest["files"] if e.get("scenario") not in scenarios]
    for n in names:
        shutil.copyfile(Path(src) / n, dest / n)
        c, f = checks[n], meta["files"][n]
        ov = next(iter(c["overlap"].values()))
        entry = {k: v for k, v in meta.items() if k != "files"}
        entry.update(f, scenario=n.removesuffix(".json.gz"), file=n, rank=0,
                     generated_by="scripts/capture/capture_branches.py", note=note,
                     pair=next(x for x in scenarios if x != n.removesuffix(".json.gz")),
                     profiler_step_annotations=True, compressed_bytes=(dest / n).stat().st_size,
                     observed_by_check_traces={
                         "kernel_events": c["kernels"], "profiler_steps": c["profiler_steps"],
                         "graph_launched_kernels": c["launch_api_calls"].get("cudaGraphLaunch", 0) and c["kernels"],
                         "kernels_per_stream": c["kernels_per_stream"], "nccl_kernels": c["nccl_kernels"],
                         "memcpy": c["memcpy"], "comm_busy_ms": ov["comm_busy_ms"],
                         "compute_busy_ms": ov["compute_busy_ms"], "gpu_span_ms": ov["gpu_span_ms"]})
        manifest["files"].append(entry)
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"added {', '.join(names)} to {dest / 'MANIFEST.json'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--finalize", metavar="DIR", help="copy a capture's traces into fixtures/captures + MANIFEST")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    if a.finalize:
        return finalize(a.finalize, a.note)
    if not a.out:
        ap.error("--out is required")
    os.makedirs(a.out, exist_ok=True)
    cuda = not a.cpu and torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    dims = dict(hidden=2048, heads=16, experts=16, inter=1024, layers=4, topk=2) if cuda else \
        dict(hidden=64, heads=4, experts=4, inter=32, layers=4, topk=2)
    tokens, kv_len = (64, 2048) if cuda else (8, 16)
    model = Model(dev, dtype=dtype, **dims)
    mbs = [MicroBatch(model, dev, tokens, kv_len, dtype, seed=1 + m) for m in range(2)]
    streams = [torch.cuda.Stream() for _ in mbs] if cuda else []
    meta = dict(model=dims, tokens_per_microbatch=tokens, kv_len=kv_len, num_microbatches=2, n_layers=dims["layers"],
                profiled_iterations=a.steps, torch_version=torch.__version__, world_size=1,
                gpu_name=torch.cuda.get_device_name() if cuda else "cpu", dtype=str(dtype),
                schedule="each micro-batch on its own torch.cuda.Stream, launched layer by layer in turn; "
                         "forked from and joined to the step's stream",
                phases=list(PHASES), files={})
    with torch.no_grad():
        for _ in range(2):
            step(model, mbs, streams, False)
        if cuda:
            torch.cuda.synchronize()
        ref = [mb.out.clone() for mb in mbs]
        name = "decode_mb_streams_eager.json.gz"
        meta["files"][name] = dict(cuda_graph=False, record_function_labels=True,
                                   iter_ms=profiled(os.path.join(a.out, name), lambda: step(model, mbs, streams, True),
                                                    a.steps, cuda))
        if cuda:
            graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on the capture stream, as torch's docs do
                step(model, mbs, streams, False)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                step(model, mbs, streams, False)
            graph.replay()
            torch.cuda.synchronize()
            meta["graph_matches_eager"] = all(torch.allclose(r.float(), mb.out.float(), atol=1e-2, rtol=1e-2)
                                              for r, mb in zip(ref, mbs))
            name = "decode_mb_streams_cudagraph.json.gz"
            meta["files"][name] = dict(cuda_graph=True, record_function_labels=False,
                                       iter_definition="one graph replay = one decode step (both micro-batches)",
                                       iter_ms=profiled(os.path.join(a.out, name), graph.replay, a.steps, cuda))
    with open(os.path.join(a.out, "manifest_branches.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
