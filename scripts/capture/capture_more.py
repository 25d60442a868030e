#!/usr/bin/env python3
"""More captures for traceview's labels (issue 13) and run analysis (issue 20), built on capture.py.

Parts
-----
--part ep        N ranks (one process per GPU, NCCL; gloo on --cpu), the DeepSeek-V3-mini of capture.py:
                 prefill_tbo_straggler, decode_tbo_straggler   one rank sleeps D ms on the host before
                                  layer k of every iteration (mb0's pass; --straggler-rank/-layer/-ms);
                 prefill_tbo_imbalance, decode_tbo_imbalance   one rank's router is biased so that one
                                  rank's experts receive 2x the (token, expert) pairs of the others;
                 decode_tbo_cudagraph   two-batch-overlap decode captured in ONE CUDA graph (NCCL
                                  all_to_all inside the graph), replayed once per decode step, with
                                  decode_tbo_cudagraph_eager (the same step, eager, labelled) beside it,
                                  and decode_tbo_cudagraph_annotated (enable_annotations=True) where
                                  torch.cuda.graph takes it. The graph scenarios also run with N = 1.
--part single13  one GPU: the graph scenarios above at world size 1 (NCCL), attn_splitkv_decode (SDPA
                 flash decode over a long KV cache: split-KV + combine kernels), inductor_dense_decode
                 (torch.compile of a Qwen2-shaped decoder), ddp_two_thread_train (DDP, world size 1:
                 forward on the main thread, backward on the autograd engine's device thread).
--finalize SRC   (here, after the device run) gzip traces of SRC into --dest, MANIFEST.json with
                 check_traces.py's numbers and, for graph scenarios, the replay -> (micro-batch, layer)
                 mapping computed from the eager trace beside it.

CPU: --cpu --tiny runs every scenario with gloo (graphs run eagerly there: there is no CUDA graph on CPU).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture as C  # noqa: E402  (sets the NCCL multicast variables first)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

log = C.log
EP_SCENARIOS = ["prefill_tbo_straggler", "decode_tbo_straggler", "prefill_tbo_imbalance", "decode_tbo_imbalance",
                "decode_tbo_cudagraph"]
GRAPH_SCENARIOS = ["decode_tbo_cudagraph"]
SINGLE13 = ["decode_tbo_cudagraph", "attn_splitkv_decode", "attn_splitkv_decode_nolabels", "inductor_dense_decode",
            "ddp_two_thread_train"]


def graph_annotations_supported():
    try:
        return "enable_annotations" in inspect.signature(torch.cuda.graph.__init__).parameters
    except (TypeError, ValueError):
        return False


def trace_kernels(path):
    d = json.load(gzip.open(path) if path.endswith(".gz") else open(path))
    ev = d.get("traceEvents", d) if isinstance(d, dict) else d
    return ev, [e for e in ev if e.get("cat") == "kernel"]


def nccl_kernel_names(path):
    _, ks = trace_kernels(path)
    names = {}
    for k in ks:
        if "nccl" in k["name"].lower():
            names[k["name"]] = names.get(k["name"], 0) + 1
    return names


# ----------------------------------------------------------------------------------------------
# EP part (issue 20 scenarios; graph scenarios also at world size 1 for issue 13)
# ----------------------------------------------------------------------------------------------
def ep_worker(rank, world, args):
    t_start = args.t_start
    cpu = args.cpu
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    if cpu:
        torch.set_num_threads(1)
        dev = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    else:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev,
                                timeout=datetime.timedelta(seconds=240))
    store = dist.distributed_c10d._get_default_store()
    dt = torch.float32 if (cpu and args.fp32) else torch.bfloat16
    cfg = C.DSCfg.tiny() if args.tiny else C.DSCfg()
    if args.heads:
        cfg.n_heads = args.heads
    if args.experts:
        cfg.n_routed_experts = args.experts
    if args.decode_batch:
        cfg.decode_batch_per_rank = args.decode_batch
    if args.prefill_seq:
        cfg.prefill_seq = args.prefill_seq
    if cfg.n_routed_experts % world:
        raise SystemExit(f"{cfg.n_routed_experts} routed experts do not split over {world} ranks")
    outdir = args.out
    os.makedirs(outdir, exist_ok=True)
    info = C.env_info(dev)
    scen = [s for s in (args.scenarios.split(",") if args.scenarios else EP_SCENARIOS) if s]
    if world == 1:
        scen = [s for s in scen if s in GRAPH_SCENARIOS]
    iters = dict(warmup=2, timed=3) if not args.quick else dict(warmup=1, timed=1)
    if not cpu:
        ok, why = C.check_grouped_mm(dev, dt)
    else:
        ok, why = hasattr(torch, "_grouped_mm"), "cpu fallback"
    C.GMM["use"] = ok
    ctx = C.Ctx(dev, rank, world, own_compute_stream=True)
    sdpa = C.SDPA(ctx.cuda)
    model = C.build_ds(cfg, dev, dt, rank, world)
    cos, sin = C.rope_tables(max(cfg.prefill_seq, cfg.decode_kv_len) + 8, cfg.qk_rope_head_dim, 10000.0, dev)
    P, S = cfg.prefill_prompts_per_rank, cfg.prefill_seq
    g = torch.Generator(device=dev)
    g.manual_seed(1000 + rank)
    x_prefill = torch.randn((P, S, cfg.hidden), device=dev, dtype=dt, generator=g)
    Bd, Lkv = cfg.decode_batch_per_rank, cfg.decode_kv_len
    x_decode = torch.randn((Bd, cfg.hidden), device=dev, dtype=dt, generator=g)
    n_layers = len(model.layers)
    caches = None
    E, El, k = cfg.n_routed_experts, model.E_local, cfg.num_experts_per_tok
    model_meta = dict(C.widths(cfg), ep_size=world, n_local_experts=El, local_expert_range=[model.lo, model.hi],
                      dtype=str(dt).replace("torch.", ""), embedding="none (inputs are random hidden states)",
                      lm_head="none", n_layers=n_layers,
                      layer_kinds=["dense"] * cfg.n_dense_layers + ["moe"] * cfg.n_moe_layers)
    base = dict(info, grouped_mm_used=bool(C.GMM["use"]), grouped_mm_check=why,
                expert_gemm="torch._grouped_mm" if C.GMM["use"] else "loop of matmuls over local experts",
                model_name="DeepSeek-V3-mini", model=model_meta, generated_by="scripts/capture/capture_more.py")

    def on_compute(fn):
        """Run fn with ctx.compute as the current stream, fenced against the caller's stream (the
        Timer's events are on the caller's stream)."""
        if not ctx.cuda:
            return fn()
        cur = torch.cuda.current_stream(dev)
        ctx.compute.wait_stream(cur)
        with torch.cuda.stream(ctx.compute):
            r = fn()
        cur.wait_stream(ctx.compute)
        return r

    def prefill_tbo(labels=True):
        ctx.overlap, ctx.labels = True, labels
        outs = [None, None]
        gens = [C.ds_forward_gen(cfg, ctx, model, x_prefill[i], i, dict(kind="prefill", B=1, S=S, cos=cos, sin=sin),
                                 outs, sdpa) for i in range(P)]
        C.run_interleaved(gens)
        ctx.join()
        return torch.cat(outs, 0)

    def decode_tbo(labels=True):
        ctx.overlap, ctx.labels = True, labels
        pos, h = Lkv - 1, Bd // 2
        outs = [None, None]
        gens = [C.ds_forward_gen(cfg, ctx, model, x_decode[i * h:(i + 1) * h], i,
                                 dict(kind="decode", caches=[c[i * h:(i + 1) * h] for c in caches], pos=pos,
                                      cos=cos, sin=sin), outs, sdpa) for i in range(2)]
        C.run_interleaved(gens)
        ctx.join()
        return torch.cat(outs, 0)

    def routing_counts(step):
        """(token, expert) pairs each rank sends to each rank's experts, per MoE layer, in one step
        (unprofiled run of the same step; all_gather'ed: [src][layer][dst])."""
        acc = {}

        def on_route(mb, li, idx):
            owner = torch.div(idx, El, rounding_mode="floor").reshape(-1)
            c = torch.bincount(owner, minlength=world).to(torch.float32)
            acc[li] = acc.get(li, 0) + c
        ctx.on_route = on_route
        with torch.no_grad():
            on_compute(step)
        ctx.on_route = None
        moe = sorted(acc)
        mine = torch.stack([acc[li] for li in moe]).to(dev)  # (layers, world)
        allm = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(allm, mine)
        mat = [[[int(v) for v in allm[s][j].tolist()] for j in range(len(moe))] for s in range(world)]
        recv = [[sum(mat[s][j][d] for s in range(world)) for d in range(world)] for j in range(len(moe))]
        return {"moe_layers": moe, "pairs_sent_src_layer_dst": mat, "pairs_received_per_layer_per_rank": recv,
                "pairs_received_per_rank_step": [sum(recv[j][d] for j in range(len(moe))) for d in range(world)]}

    done = []
    try:
        for name in scen:
            if time.time() - t_start > args.budget:
                log(f"skip {name}: budget")
                continue
            if name.startswith("decode") and caches is None:
                caches = [torch.randn((Bd, Lkv, cfg.kv_lora_rank + cfg.qk_rope_head_dim), device=dev, dtype=dt,
                                      generator=g) for _ in range(n_layers)]
            phase = "prefill" if name.startswith("prefill") else "decode"
            step = prefill_tbo if phase == "prefill" else decode_tbo
            tok_meta = (dict(tokens_per_microbatch=S, prompts_per_rank=P, prompt_len=S, tokens_per_rank=P * S)
                        if phase == "prefill" else
                        dict(tokens_per_microbatch=Bd // 2, requests_per_rank=Bd, kv_len=Lkv))
            meta = dict(base, scenario=name, phase=phase, schedule="tbo", num_microbatches=2, **tok_meta,
                        expert_path=("exact valid rows, host sync per MoE layer and micro-batch" if phase == "prefill"
                                     else "fixed capacity, no host sync"))
            if name.endswith("_straggler"):
                R = args.straggler_rank if args.straggler_rank >= 0 else world - 1
                K, D = args.straggler_layer, args.straggler_ms
                fired = []

                def before_layer(mb, li, R=R, K=K, D=D, fired=fired):
                    if rank == R and li == K and mb in (0, None):
                        fired.append(time.perf_counter())
                        time.sleep(D / 1e3)
                ctx.before_layer = before_layer
                meta["injected"] = {"kind": "host_sleep", "rank": R, "layer": K, "delay_ms": D,
                                    "where": f"time.sleep({D} ms) on the host right before micro-batch 0 launches "
                                             f"layer {K} (its attention), once per iteration; micro-batch 1 reaches "
                                             f"layer {K} after it (TBO order), so both micro-batches' launches "
                                             f"from there on are late by D",
                                    "label_in_trace": "none (find it from the trace)"}
                with torch.no_grad():
                    meta = C.profile_steps(name, lambda: on_compute(step), dev, outdir, rank, world, store, meta,
                                           active=3, labels=True, **iters)
                meta["injected"]["sleeps_on_this_rank"] = len(fired)
                ctx.before_layer = None
            elif name.endswith("_imbalance"):
                src, hot = 0, (1 if world > 1 else 0)
                fr = {"f": world / (world + 1)}  # 2x for uniform routing; bisected below on the real routing

                def route_bias(mb, li, N, src=src, hot=hot, fr=fr):
                    if rank != src:
                        return None
                    b = torch.zeros((N, E), device=dev, dtype=torch.float32)
                    b[:int(round(fr["f"] * N)), hot * El:(hot + 1) * El] = 100.0
                    return b
                ctx.route_bias = route_bias

                def ratio_at(f):
                    fr["f"] = f
                    c = routing_counts(step)
                    r_ = c["pairs_received_per_rank_step"]
                    co = [v for d, v in enumerate(r_) if d != hot]
                    return r_[hot] / (sum(co) / len(co)), c
                lo_f, hi_f = 0.0, 1.0
                for _ in range(7):  # same decisions on every rank (all_gather'ed counts)
                    mid = (lo_f + hi_f) / 2
                    if ratio_at(mid)[0] < 2.0:
                        lo_f = mid
                    else:
                        hi_f = mid
                frac = min((lo_f, hi_f), key=lambda f: abs(ratio_at(f)[0] - 2.0))
                _, counts = ratio_at(frac)
                recv = counts["pairs_received_per_rank_step"]
                cold = [v for d, v in enumerate(recv) if d != hot]
                meta["injected"] = {"kind": "expert_imbalance", "biased_router_rank": src, "hot_rank": hot,
                                    "hot_experts": [hot * El, (hot + 1) * El],
                                    "biased_token_fraction_of_src": round(frac, 4),
                                    "how": "selection scores of the first round(frac*N) tokens of each micro-batch on "
                                           "the biased rank get +100 on the hot rank's experts (weights unbiased)",
                                    "token_counts": counts,
                                    "hot_over_mean_other": round(recv[hot] / (sum(cold) / len(cold)), 3) if cold else None}
                with torch.no_grad():
                    meta = C.profile_steps(name, lambda: on_compute(step), dev, outdir, rank, world, store, meta,
                                           active=3, labels=True, **iters)
                ctx.route_bias = None
            elif name in GRAPH_SCENARIOS:
                metas = graph_scenario(name, ctx, dev, outdir, rank, world, store, meta, decode_tbo, on_compute,
                                       iters, args)
                for m_ in metas:
                    C.write_manifest_line(outdir, m_)
                done.append(name)
                continue
            meta["sdpa_backends_used"] = sorted(sdpa.used)
            C.write_manifest_line(outdir, meta)
            done.append(name)
    except Exception:
        log(f"rank{rank} FAILED after {done}:\n{traceback.format_exc()}")
        raise
    if ctx.cuda:
        torch.cuda.synchronize()
    log(f"rank{rank} done: {done} in {time.time() - t_start:.0f}s")
    dist.destroy_process_group()


def graph_scenario(name, ctx, dev, outdir, rank, world, store, meta, decode_tbo, on_compute, iters, args):
    """Eager TBO decode step (labelled), then the same step captured in one CUDA graph and replayed once
    per decode step; with enable_annotations=True as a third trace where torch supports it."""
    steps = args.graph_steps
    out = []
    with torch.no_grad():
        static_out = on_compute(lambda: decode_tbo(False)).clone()
        em = dict(meta, scenario=name + "_eager", cuda_graph=False, pair=name,
                  note="the same decode step as the graph, launched eagerly with mb/layer labels, for the mapping")
        em = C.profile_steps(name + "_eager", lambda: on_compute(lambda: decode_tbo(True)), dev, outdir, rank,
                             world, store, em, active=steps, labels=True, **iters)
        out.append(em)
        variants = [(name, False)]
        if graph_annotations_supported():
            variants.append((name + "_annotated", True))
        else:
            meta = dict(meta, enable_annotations_supported=False)
        for vname, annot in variants:
            gm = dict(meta, scenario=vname, cuda_graph=bool(ctx.cuda), pair=name + "_eager",
                      graph_steps=steps, enable_annotations=annot,
                      iter_definition="one graph replay = one decode step (both micro-batches, every layer)")
            if ctx.cuda:
                ctx.record_streams = False
                graph = torch.cuda.CUDAGraph()
                kw = dict(stream=ctx.compute, capture_error_mode="thread_local")
                if annot:
                    kw["enable_annotations"] = True
                ctx.labels = annot  # record_function ranges only matter when annotations are kept
                try:
                    with torch.cuda.graph(graph, **kw):
                        res = decode_tbo(annot)
                        static_out.copy_(res)
                except Exception as e:
                    ctx.record_streams = True
                    gm["graph_capture_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    log(f"{vname}: capture failed: {gm['graph_capture_error']}")
                    out.append(gm)
                    continue
                ctx.record_streams = True
                replay = graph.replay
            else:
                def replay():
                    on_compute(lambda: static_out.copy_(decode_tbo(False)))
            gm = C.profile_steps(vname, replay, dev, outdir, rank, world, store, gm, active=steps, labels=False,
                                 steps=True, **iters)
            gm["graph_captured_before_profiling"] = bool(ctx.cuda)
            p = os.path.join(outdir, gm["file"])
            gm["nccl_kernels_in_trace"] = nccl_kernel_names(p)
            if world == 1:
                gm["world_size_1_all_to_all_launches_kernels"] = bool(gm["nccl_kernels_in_trace"])
            out.append(gm)
        em["nccl_kernels_in_trace"] = nccl_kernel_names(os.path.join(outdir, em["file"]))
        if world == 1:
            em["world_size_1_all_to_all_launches_kernels"] = bool(em["nccl_kernels_in_trace"])
    return out


def launch_ep(args):
    if args.world == 1:
        torch.multiprocessing.spawn(ep_worker, args=(1, args), nprocs=1, join=True)
        return
    if not args.cpu and torch.cuda.device_count() < args.world:
        raise SystemExit(f"need {args.world} GPUs, found {torch.cuda.device_count()}")
    torch.multiprocessing.spawn(ep_worker, args=(args.world, args), nprocs=args.world, join=True)


# ----------------------------------------------------------------------------------------------
# single13: split-KV attention decode, Inductor dense decode, DDP two-thread training step
# ----------------------------------------------------------------------------------------------
def profile_decode(name, step_fn, steps, dev, outdir, meta, prepare=None):
    """Profile `steps` decode steps, one ProfilerStep#N each (after one profiler warm-up step)."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    path = os.path.join(outdir, name + ".json")
    timer = C.Timer(dev)
    ms = []
    if prepare:
        prepare()
    sched = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)
    with torch.profiler.profile(activities=acts, record_shapes=True, schedule=sched,
                                on_trace_ready=lambda p: p.export_chrome_trace(path)) as prof:
        for i in range(1 + steps):
            if i == 1:
                prof.add_metadata_json("capture", json.dumps({"scenario": name, "rank": 0, "world_size": 1}))
            r = timer(lambda i=i: step_fn(i))
            if i >= 1:
                ms.append(round(r[0], 3))
            prof.step()
    meta = dict(meta, scenario=name, file=name + ".json", rank=0, world_size=1, iter_ms_profiled=ms,
                iter_ms_profiled_mean=round(sum(ms) / len(ms), 3), profiled_iterations=steps,
                profiler_step_annotations=True, uncompressed_bytes=os.path.getsize(path),
                generated_by="scripts/capture/capture_more.py")
    C.write_manifest_line(outdir, meta)
    log(f"{name}: {meta['uncompressed_bytes'] / 1e6:.2f} MB, steps {ms} ms")
    return meta


def splitkv_decode(args, dev, dt, outdir, info, labels=True):
    """L-layer Qwen2-shaped decoder whose attention is SDPA (flash backend forced) of one query token over a
    long KV cache: the flash kernel splits the KV sequence when batch x heads leave SMs idle (split-KV +
    combine: two kernels per attention call)."""
    cfg = C.QwenCfg.tiny() if args.tiny else C.QwenCfg()
    cfg.n_layers = args.layers
    B, N, steps = (2, 64, 3) if args.tiny else (2, 8192, args.decode_steps)
    m = C.build_qwen(cfg, dev, dt)
    ctx = C.Ctx(dev, 0, 1)
    sdpa = C.SDPA(dev.type == "cuda")
    cos, sin = C.rope_tables(N + steps + 8, cfg.head_dim, cfg.rope_theta, dev)
    g = torch.Generator(device=dev).manual_seed(3)
    kc = [torch.randn((B, cfg.n_kv_heads, N + steps + 1, cfg.head_dim), device=dev, dtype=dt, generator=g)
          for _ in m.layers]
    vc = [torch.randn_like(kc[0]) for _ in m.layers]
    tok = {"t": torch.randint(0, cfg.vocab, (B, 1), device=dev, generator=g)}

    def step(i):
        with torch.no_grad(), (torch.profiler.record_function("decode_step") if labels else contextlib.nullcontext()):
            tok["t"] = C.qwen_decode(cfg, ctx, m, tok["t"], N + i, kc, vc, cos, sin, sdpa)
    with torch.no_grad():
        ctx.labels = False
        for i in range(3):
            step(i)
        ctx.labels = labels
    meta = dict(info, model_name="Qwen2-7B-shaped", n_layers=cfg.n_layers, decode_steps=steps, batch=B,
                context_len=N, phase="decode", num_microbatches=1, record_function_labels=labels,
                model=dict(C.widths(cfg), dtype=str(dt).replace("torch.", "")),
                attention="F.scaled_dot_product_attention, flash backend forced (enable_gqa), 1 query token "
                          "over the cache slice [0, pos]",
                flash_attn_3="not installed on the device (no flash_attn_interface / hopper package); "
                             "these are PyTorch's own FlashAttention-2 kernels (split-KV path)",
                expected_layers=cfg.n_layers * steps)
    meta["sdpa_backends_used"] = sorted(sdpa.used)  # from the warm-up steps (same calls as profiled)
    if sdpa.errors:
        meta["sdpa_flash_error"] = sdpa.errors[:2]
    name = "attn_splitkv_decode" + ("" if labels else "_nolabels")
    return profile_decode(name, step, steps, dev, outdir, meta)


def inductor_decode(args, dev, dt, outdir, info):
    """torch.compile (Inductor) of capture.py's graph-safe dense decode step (static shapes, GPU position)."""
    cfg = C.QwenCfg.tiny() if args.tiny else C.QwenCfg()
    cfg.n_layers = args.layers
    B, N, steps = (2, 16, 3) if args.tiny else (4, 1024, args.decode_steps)
    m = C.build_qwen(cfg, dev, dt)
    cos, sin = C.rope_tables(N + steps + 16, cfg.head_dim, cfg.rope_theta, dev)
    kc = [torch.zeros((B, cfg.n_kv_heads, N + steps + 8, cfg.head_dim), device=dev, dtype=dt) for _ in m.layers]
    vc = [torch.zeros_like(kc[0]) for _ in m.layers]
    ids = torch.randint(0, cfg.vocab, (B, 1), device=dev, generator=torch.Generator(device=dev).manual_seed(4))
    pos_t = torch.tensor([N], device=dev, dtype=torch.long)

    def fwd(ids, pos_t):
        return C.qwen_decode_static(cfg, m, ids, pos_t, kc, vc, cos, sin)
    compiled = torch.compile(fwd, backend="inductor", dynamic=False, fullgraph=True)
    t0 = time.time()
    with torch.no_grad():
        for _ in range(2):
            compiled(ids, pos_t)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.time() - t0
    state = {"ids": ids}

    def step(i):
        with torch.no_grad(), torch.profiler.record_function("decode_step"):
            state["ids"] = compiled(state["ids"], pos_t)
            pos_t.add_(1)
    meta = dict(info, model_name="Qwen2-7B-shaped", n_layers=cfg.n_layers, decode_steps=steps, batch=B,
                context_len=N, phase="decode", num_microbatches=1, record_function_labels=False,
                model=dict(C.widths(cfg), dtype=str(dt).replace("torch.", "")),
                compiler="torch.compile(backend='inductor', dynamic=False, fullgraph=True), default mode "
                         "(no CUDA graphs): Triton kernels triton_{poi,red,per}_fused_* plus extern mm",
                compile_seconds=round(compile_s, 1),
                attention="matmul attention over the whole preallocated cache with a position mask",
                expected_layers=cfg.n_layers * steps)
    return profile_decode("inductor_dense_decode", step, steps, dev, outdir, meta,
                          prepare=lambda: pos_t.fill_(N))


def ddp_worker(rank, world, args):
    """DDP training step on one process (world size 1): forward launches from the main thread, backward
    from the autograd engine's device thread, Adam (foreach) on the main thread."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port + 7))
    cpu = args.cpu
    dev = torch.device("cpu") if cpu else torch.device("cuda", 0)
    if not cpu:
        torch.cuda.set_device(dev)
    backend = "gloo" if cpu else "nccl"
    dist.init_process_group(backend, rank=0, world_size=1)
    dt = torch.float32
    H, V, L, B, T = (32, 100, 2, 2, 8) if args.tiny else (1024, 32000, 4, 8, 512)
    torch.manual_seed(0)
    layers = [torch.nn.TransformerEncoderLayer(H, 8 if H >= 64 else 4, 4 * H, dropout=0.0, batch_first=True,
                                               norm_first=True) for _ in range(L)]
    net = torch.nn.Sequential(torch.nn.Embedding(V, H), *layers, torch.nn.LayerNorm(H), torch.nn.Linear(H, V))
    net = net.to(dev, dt)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=None if cpu else [0], bucket_cap_mb=25)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4, foreach=True)
    x = torch.randint(0, V, (B, T), device=dev)
    y = torch.randint(0, V, (B, T), device=dev)
    main_tid = threading.get_native_id()
    bw_tids = set()

    def hook(grad):
        bw_tids.add(threading.get_native_id())
        return grad
    net[-1].weight.register_hook(hook)

    def step(i):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not cpu):
            out = ddp(x)
            loss = F.cross_entropy(out.view(-1, V).float(), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for i in range(3):
        step(i)
    if not cpu:
        torch.cuda.synchronize()
    info = C.env_info(dev)
    meta = dict(info, model_name="TransformerEncoder LM (DDP)", n_layers=L, hidden=H, vocab=V, batch=B, seq=T,
                phase="train", num_microbatches=1, record_function_labels=False,
                ddp={"backend": backend, "world_size": 1, "bucket_cap_mb": 25},
                optimizer="AdamW(foreach=True)", autocast="bf16" if not cpu else None,
                threads={"main_thread_tid": main_tid, "backward_thread_tids": sorted(bw_tids),
                         "note": "forward + optimizer on the main thread; backward on the autograd engine's "
                                 "device thread (PyTorch's own, not a micro-batch)"},
                expect="no micro-batches: two launching threads are forward/backward of one training step")
    meta = profile_decode("ddp_two_thread_train", step, 2, dev, args.out, meta)
    dist.destroy_process_group()


def single13_main(args):
    scen = [s for s in (args.scenarios.split(",") if args.scenarios else SINGLE13) if s]
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    dt = torch.float32 if (args.cpu and args.fp32) else torch.bfloat16
    info = C.env_info(dev)
    for name in scen:
        if time.time() - args.t_start > args.budget:
            log(f"skip {name}: budget")
            continue
        t0 = time.time()
        try:
            if name == "decode_tbo_cudagraph":
                a = argparse.Namespace(**vars(args))
                a.world, a.scenarios = 1, "decode_tbo_cudagraph"
                launch_ep(a)
            elif name in ("attn_splitkv_decode", "attn_splitkv_decode_nolabels"):
                splitkv_decode(args, dev, dt, args.out, info, labels=name == "attn_splitkv_decode")
            elif name == "inductor_dense_decode":
                inductor_decode(args, dev, dt, args.out, info)
            elif name == "ddp_two_thread_train":
                ctx_ = torch.multiprocessing.get_context("spawn")
                p = ctx_.Process(target=ddp_worker, args=(0, 1, args))
                p.start()
                p.join()
                if p.exitcode != 0:
                    raise RuntimeError(f"ddp worker exit code {p.exitcode}")
            else:
                raise SystemExit(f"unknown scenario {name}")
        except Exception:
            log(f"{name} FAILED:\n{traceback.format_exc()}")
            C.write_manifest_line(args.out, {"scenario": name, "failed": traceback.format_exc()[-1500:]})
        log(f"{name}: {time.time() - t0:.0f}s")
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# finalize (here): gzip, check_traces numbers, graph replay -> (micro-batch, layer) mapping
# ----------------------------------------------------------------------------------------------
LAB = re.compile(r"^(mb(\d+)|layer\.(\d+)|attn|mlp|gate|dispatch|shared_expert|experts|combine|final_norm)$")


def short(name):
    s = name.split("(")[0]
    s = re.sub(r"<.*", "", s)
    return s.replace("void ", "").strip()[:120]


def eager_step_kernels(path):
    """Kernels of the first ProfilerStep of an eager trace (GPU start order), each with the record_function
    labels (mb, layer, phase) that enclosed its launch on the CPU."""
    ev, ks = trace_kernels(path)
    launch = {}
    for e in ev:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in (e.get("args") or {}):
            launch[e["args"]["correlation"]] = e
    ann = [e for e in ev if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    steps = sorted((e for e in ann if e["name"].startswith("ProfilerStep#")), key=lambda e: e["ts"])
    labs = [e for e in ann if LAB.match(e["name"])]
    by_tid = {}
    for a in labs:
        by_tid.setdefault(a["tid"], []).append(a)
    rows = []
    s0 = steps[0] if steps else None
    for kk in sorted(ks, key=lambda e: e["ts"]):
        la = launch.get(kk["args"].get("correlation"))
        if la is None:
            continue
        if s0 is not None and not (s0["ts"] <= la["ts"] <= s0["ts"] + s0["dur"]):
            continue
        mb = layer = phase = None
        for a in by_tid.get(la["tid"], []):
            if a["ts"] <= la["ts"] <= a["ts"] + a["dur"]:
                m = LAB.match(a["name"])
                if m.group(2) is not None:
                    mb = int(m.group(2))
                elif m.group(3) is not None:
                    layer = int(m.group(3))
                else:
                    phase = a["name"]
        rows.append({"name": short(kk["name"]), "stream": kk["args"].get("stream"), "mb": mb, "layer": layer,
                     "phase": phase})
    return rows


def graph_replays(path):
    """Kernels of each cudaGraphLaunch (shared correlation id), GPU start order."""
    ev, ks = trace_kernels(path)
    gl = sorted((e for e in ev if e.get("cat") == "cuda_runtime" and e.get("name", "").startswith("cudaGraphLaunch")),
                key=lambda e: e["ts"])
    by_corr = {}
    for kk in ks:
        by_corr.setdefault(kk["args"].get("correlation"), []).append(kk)
    return [sorted(by_corr.get(g["args"]["correlation"], []), key=lambda e: e["ts"]) for g in gl]


def graph_mapping(eager_path, graph_path):
    """Each replayed kernel -> the eager kernel it is (k-th occurrence of the same kernel name in GPU start
    order), hence its micro-batch, layer and phase."""
    rows = eager_step_kernels(eager_path)
    reps = graph_replays(graph_path)
    res = {"method": "replay kernel = k-th kernel of that name (GPU start order) in the replay <-> k-th of that name "
                     "in the first profiled eager step; eager labels from the record_function ranges (mbN > layer.J "
                     "> phase) around each launch",
           "eager_kernels_per_step": len(rows), "replays": len(reps),
           "kernels_per_replay": [len(r) for r in reps],
           "eager_step": [[r["name"], r["stream"], r["mb"], r["layer"], r["phase"]] for r in rows],
           "eager_step_columns": ["kernel", "eager_stream", "mb", "layer", "phase"]}
    maps, ok = [], True
    for rep in reps:
        seen, idx_of = {}, {}
        for i, r in enumerate(rows):
            idx_of.setdefault(r["name"], []).append(i)
        mp = []
        for kk in rep:
            n = short(kk["name"])
            j = seen.get(n, 0)
            seen[n] = j + 1
            cand = idx_of.get(n, [])
            mp.append(cand[j] if j < len(cand) else None)
        ok = ok and None not in mp and sorted(mp) == list(range(len(rows)))
        maps.append(mp)
    res["replay_kernel_to_eager_index"] = maps
    res["replay_streams"] = sorted({kk["args"].get("stream") for rep in reps for kk in rep})
    res["all_matched_one_to_one"] = ok
    counts = {}
    for r in rows:
        key = f"mb{r['mb']}/layer{r['layer']}"
        counts[key] = counts.get(key, 0) + 1
    res["eager_kernels_per_mb_layer"] = counts
    return res


def finalize(src, dest, notes):
    import check_traces as ct
    entries = []
    for p in sorted(glob.glob(os.path.join(src, "manifest_part_*.jsonl"))):
        for line in open(p):
            if line.strip():
                entries.append(json.loads(line))
    entries.sort(key=lambda e: (e.get("scenario", ""), e.get("rank") or 0))
    os.makedirs(dest, exist_ok=True)
    out = []
    for e in entries:
        if "file" not in e:
            out.append(e)
            continue
        raw = os.path.join(src, e["file"])
        if not os.path.exists(raw):
            raw = raw + ".gz"
            if not os.path.exists(raw):
                log(f"missing {e['file']}")
                continue
        base = os.path.basename(raw).removesuffix(".gz")
        gz = os.path.join(dest, base + ".gz")
        if raw.endswith(".gz"):
            shutil.copyfile(raw, gz)
        else:
            with open(raw, "rb") as f, gzip.GzipFile(gz, "wb", compresslevel=9, mtime=0) as g:
                shutil.copyfileobj(f, g)
        e = dict(e, file=base + ".gz", compressed_bytes=os.path.getsize(gz))
        r = ct.analyze(gz)
        ov = next(iter(r["overlap"].values()), {}) if r["overlap"] else {}
        streams = r["kernels_per_stream"]
        obs = {"kernel_events": r["kernels"],
               "compute_streams": sorted(int(k_.split("stream")[1]) for k_, v in streams.items() if v.get("compute")),
               "comm_streams": sorted(int(k_.split("stream")[1]) for k_, v in streams.items() if v.get("comm")),
               "nccl_kernels": r["nccl_kernels"], "graph_launched_kernels": r.get("graph_launched_kernels", 0),
               "profiler_steps": r["profiler_steps"], "launch_threads": r["launch_threads"],
               "cpu_op_threads": r["cpu_op_threads"]}
        for k_ in ("comm_busy_ms", "compute_busy_ms", "overlap_ms", "exposed_comm_ms", "gpu_span_ms"):
            obs[k_] = ov.get(k_)
        e["observed_by_check_traces"] = obs
        _, ks = trace_kernels(gz)
        att = {}
        for kk in ks:
            if re.search(r"flash|fmha|attn|attention|sdpa", kk["name"], re.I):
                n = short(kk["name"])
                att[n] = att.get(n, 0) + 1
        e["attention_kernels_observed"] = att
        e["memcpy_memset_observed"] = dict(sorted(
            ((n, sum(1 for x in _ if x.get("cat") in ("gpu_memcpy", "gpu_memset") and x.get("name") == n))
             for n in {x.get("name") for x in _ if x.get("cat") in ("gpu_memcpy", "gpu_memset")})))
        out.append(e)
    by_file = {e.get("file"): e for e in out}
    for e in out:
        if e.get("cuda_graph") and e.get("pair"):
            ef = e["pair"] + (f"_rank{e['rank']}" if e.get("world_size", 1) > 1 else "") + ".json.gz"
            if ef in by_file:
                e["replay_mapping"] = graph_mapping(os.path.join(dest, ef), os.path.join(dest, e["file"]))
                e["replay_mapping"]["eager_file"] = ef
    man = {"generated_by": "scripts/capture/capture_more.py (+ capture.py)",
           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "notes": list(notes) + ["observed_by_check_traces: scripts/capture/check_traces.py's numbers per file",
                                   "replay_mapping: see graph_mapping() in scripts/capture/capture_more.py"],
           "files": out}
    with open(os.path.join(dest, "MANIFEST.json"), "w") as f:
        json.dump(man, f, indent=1)
    log(f"wrote {len(out)} entries to {dest}/MANIFEST.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["ep", "single13"])
    ap.add_argument("--out", default="/tmp/traces_more")
    ap.add_argument("--finalize", metavar="SRC")
    ap.add_argument("--dest")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--world", type=int, default=0, help="ranks for --part ep (default: visible GPUs; 2 on --cpu)")
    ap.add_argument("--scenarios", default="", help="ep: " + ",".join(EP_SCENARIOS) + "; single13: " + ",".join(SINGLE13))
    ap.add_argument("--heads", type=int, default=0)
    ap.add_argument("--experts", type=int, default=0)
    ap.add_argument("--decode-batch", type=int, default=0, help="decode requests per rank (default 128)")
    ap.add_argument("--prefill-seq", type=int, default=0, help="prompt length (default 4096)")
    ap.add_argument("--straggler-rank", type=int, default=-1, help="default: the last rank")
    ap.add_argument("--straggler-layer", type=int, default=2)
    ap.add_argument("--straggler-ms", type=float, default=3.0)
    ap.add_argument("--graph-steps", type=int, default=4, help="decode steps (graph replays) profiled")
    ap.add_argument("--layers", type=int, default=4, help="layers of the single13 dense decoders")
    ap.add_argument("--decode-steps", type=int, default=6, help="decode steps profiled (single13)")
    ap.add_argument("--budget", type=float, default=1e9)
    ap.add_argument("--port", type=int, default=29537)
    args = ap.parse_args()
    args.t_start = time.time()
    if args.finalize:
        finalize(args.finalize, args.dest or args.finalize, args.note)
        return
    if args.part == "ep":
        if not args.world:
            args.world = 2 if args.cpu else torch.cuda.device_count()
        launch_ep(args)
    elif args.part == "single13":
        single13_main(args)
    else:
        ap.error("give --part or --finalize")


if __name__ == "__main__":
    main()
