"""Layers, iterations and micro-batches on other people's traces: attention groups, S x L
layer passes, CUDA-graph replays, serving-stack labels, and thread micro-batches only where
threads really are micro-batches."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import polars as pl
import pytest

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from traceview import analyze
from traceview.segment import LevelPatterns
from traceview.segment.levels import level_of

EXTRA = PROJECT_FIXTURES / "gpu-extra"
CAPTURES = PROJECT_FIXTURES / "captures"
TRACELENS = "peers/tracelens/"


def _manifest(path) -> dict:
    m = json.loads((path.parent / "MANIFEST.json").read_text())
    return next(f for f in m["files"] if f["file"] == path.name)


def _without(src, dst, drop: str):
    """A copy of a real trace without the CPU ranges whose name matches ``drop``."""
    doc = json.loads(gzip.open(src).read())
    pat = re.compile(drop)
    doc["traceEvents"] = [e for e in doc["traceEvents"]
                          if not (e.get("cat") in ("user_annotation", "gpu_user_annotation") and pat.search(str(e.get("name"))))]
    dst.write_text(json.dumps(doc))
    return dst


def _layer_passes(a) -> int:
    return a.segmentation.summary()["layer_instances"]


# --- S steps x L layers ------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("ctx", [256, 4096])
def test_prefill_then_decode_steps_give_steps_times_layers(ctx):
    """Qwen2-7B-shaped 4-layer decoder: a prefill pass then 16 decode steps (MANIFEST), no
    ProfilerStep: each prefill/decode_step range is a pass, so 17 x 4 layer passes."""
    path = shared(f"gpu/dense_prefill_decode_ctx{ctx}.json.gz")
    steps = _manifest(path)["decode_steps"]
    a = analysis_of(str(path))
    s = a.segmentation.summary()
    assert s["iterations"] == steps + 1
    assert s["layers"] == 4 and _layer_passes(a) == (steps + 1) * 4
    rows = a.segments("layer").filter(pl.col("layer") != "(none)")
    assert rows.height == (steps + 1) * 4
    assert set(a.segmentation.labels["stage"].drop_nulls().unique().to_list()) == {"prefill", "decode"}


@needs_shared
def test_split_kv_attention_is_one_layer_per_call(tmp_path):
    """Decode attention here is FA2 split-KV: flash_fwd_splitkv_kernel + ..._combine_kernel per
    layer.  Without the layer ranges, layers are inferred from attention groups: still 4 per
    pass, the same kernels in each layer as the annotations say."""
    src = shared("gpu/dense_prefill_decode_ctx1024.json.gz")
    annotated = analysis_of(str(src))
    names = annotated.kernels["name"].cast(pl.Utf8)
    assert names.str.contains("flash_fwd_splitkv_combine_kernel").any()
    stripped = analyze(_without(src, tmp_path / "nolayers.json", r"^(layer\.\d+|attn|mlp|embed|lm_head)$"))
    seg = stripped.segmentation
    assert seg.sources["layer"] == "inferred" and seg.sources["iteration"] == "annotations"
    assert _layer_passes(stripped) == 17 * 4
    # kernel by kernel: the inferred layer of every attention kernel is its annotated layer
    want = annotated.kernels.join(annotated.segmentation.labels, on="row").filter(
        pl.col("category").cast(pl.Utf8).str.starts_with("attention")).sort("ts")["layer"].to_list()
    got = stripped.kernels.join(seg.labels, on="row").filter(
        pl.col("category").cast(pl.Utf8).str.starts_with("attention")).sort("ts")["layer"].to_list()
    assert got == want


@needs_shared
@pytest.mark.parametrize("name,layers", [
    ("inference__sglang_decode__sglang_Qwen3-8B_decode", 36),             # ROCm ll4mi QKV + reduce per layer
    ("inference__sglang_prefilldecode__sglang_Qwen3-8B_prefilldecode", 36),  # CK fmha batch prefill
    ("inference__vllm_decode_full__graph_execution", 24),               # gpt-oss-20b, full graph
    ("inference__vllm_prefilldecode_piecewise__graph_execution", 24),   # gpt-oss-20b, piecewise graphs
])
def test_serving_traces_one_step_of_an_l_layer_model(name, layers):
    """TraceLens's SGLang (Qwen3-8B: 36 layers) and vLLM (gpt-oss-20b: 24 layers) traces hold
    one model step each, named by the stack's own step range: one pass, L layers."""
    a = analysis_of(str(shared(TRACELENS + name + ".json.gz")))
    s = a.segmentation.summary()
    assert s["iterations"] == 1 and a.segmentation.sources["stage"] == "annotations"
    assert s["layers"] == layers and _layer_passes(a) == layers
    assert s["microbatches"] == ["mb0"] and a.segmentation.sources["microbatch"] == "single"  # no communication


@needs_shared
def test_vllm_step_range_without_token_count():
    """TraceLens's B200 vLLM trace names its step ``execute_context_1(888_788544)_generation_0(0)``
    (newer vLLM: no token count first). It is the prefill stage and the one iteration, not a phase
    that would switch the inference off: a 36-layer MoE model (36 rope, 72 grouped GEMMs) gives 36 layers."""
    a = analysis_of(str(shared(TRACELENS + "b200__eager_trace.json.gz")))
    s = a.segmentation.summary()
    assert set(a.segmentation.labels["stage"].drop_nulls().to_list()) == {"prefill"}
    assert s["iterations"] == 1 and s["phases"] == []
    cats = a.kernels["category"].cast(pl.Utf8)
    assert (cats == "rope").sum() == 36 and (cats == "gemm.grouped").sum() == 72
    assert s["layers"] == 36 and _layer_passes(a) == 36
    assert s["microbatches"] == ["mb0"]


@needs_shared
def test_serving_stage_labels():
    sgl = analysis_of(str(shared(TRACELENS + "inference__sglang_decode__sglang_Qwen3-8B_decode.json.gz")))
    assert set(sgl.segmentation.labels["stage"].drop_nulls().to_list()) == {"decode"}
    vllm = analysis_of(str(shared(TRACELENS + "inference__vllm_prefilldecode_piecewise__graph_execution.json.gz")))
    assert set(vllm.segmentation.labels["stage"].drop_nulls().to_list()) == {"prefill+decode"}
    pats = LevelPatterns().compiled()
    assert level_of("step[EXTEND bs=15 toks=15360]", pats) == ("stage", "prefill")
    assert level_of("step[DECODE bs=32]", pats) == ("stage", "decode")
    assert level_of("execute_32_context_0(sq0sk0sqsq0sqsk0)_generation_32(sq32sk32785sqsq32sqsk32785)", pats) == \
        ("stage", "decode")
    assert level_of("execute_15360_context_15(sq15360sk15360sqsq15728640sqsk15728640)_generation_0(sq0sk0sqsq0sqsk0)",
                    pats) == ("stage", "prefill")
    assert level_of("a3", pats) == ("microbatch", "mb0") and level_of("b12", pats) == ("microbatch", "mb1")
    assert level_of("execute_context_1(888_788544)_generation_0(0)", pats) == ("stage", "prefill")
    assert level_of("execute_context_0(0_0)_generation_8(8_4104)", pats) == ("stage", "decode")


# --- CUDA graphs -------------------------------------------------------------------------

def test_cuda_graph_decode_iterations_and_layers(tmp_path):
    """16 replays of a full-graph 4-layer decode step (MANIFEST): the replayed kernels share
    their cudaGraphLaunch and carry no annotation.  Attention is bmm + softmax here (no
    attention kernel): layers come from the repeating GEMM; iterations from the step ranges,
    or without them from the graph launches."""
    path = EXTRA / "dense_decode_cudagraph.json.gz"
    steps = _manifest(path)["decode_steps"]
    a = analysis_of(str(path))
    assert a.segmentation.summary()["iterations"] == steps
    assert a.segmentation.sources["layer"] == "inferred"
    assert _layer_passes(a) == steps * 4
    bare = analyze(_without(path, tmp_path / "nosteps.json", r"^decode_step_graph$"))
    assert bare.segmentation.sources["iteration"] == "inferred"
    assert bare.segmentation.summary()["iterations"] == steps
    assert _layer_passes(bare) == steps * 4


# --- micro-batches -----------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("rank", [0, 1])
def test_thread_microbatches_numbered_by_first_launch(rank):
    """vLLM-style DBO: two worker threads, each launching its micro-batch's compute and
    all-to-alls.  mb0 is the thread that launched first, on every rank (tids are arbitrary)."""
    a = analysis_of(str(EXTRA / f"prefill_dbo_threads_rank{rank}.json.gz"))
    seg = a.segmentation
    assert seg.sources["microbatch"] == "threads" and seg.approximate == []
    k = a.kernels.join(seg.labels.select("row", "microbatch"), on="row").filter(pl.col("microbatch").is_in(["mb0", "mb1"]))
    first = k.group_by("microbatch").agg(pl.col("launch_ts").min(), pl.col("launch_tid").unique())
    first = {r[0]: (r[1], r[2]) for r in first.iter_rows()}
    assert first["mb0"][0] < first["mb1"][0]
    assert len(first["mb0"][1]) == 1 and first["mb0"][1] != first["mb1"][1]
    t = a.segments("microbatch").filter(pl.col("microbatch") != "(none)")
    assert t["events"].to_list() == [910, 910]
    comm = k.filter(pl.col("role") == "comm").group_by("microbatch").agg(pl.len()).sort("microbatch")["len"].to_list()
    assert comm == [18, 18]  # each micro-batch its own dispatch (2) and combine (1) x 3 MoE layers x 2 iterations


@needs_shared
def test_no_thread_microbatches_for_training_or_without_communication():
    train = analysis_of(str(shared("deepseek/train.json")))
    assert train.segmentation.sources["microbatch"] != "threads"
    for path in (shared("gpu/dense_prefill_decode_ctx256.json.gz"),
                 shared(TRACELENS + "inference__sglang_prefilldecode__sglang_Qwen3-8B_prefilldecode.json.gz")):
        seg = analysis_of(str(path)).segmentation
        assert seg.sources["microbatch"] == "single" and seg.summary()["microbatches"] == ["mb0"]


def test_forward_backward_threads_are_not_microbatches(tmp_path):
    """A DDP-style step: forward launched by the main thread, backward (with the gradient
    communication) by the autograd thread, one after the other.  Derived from the real DBO
    capture by moving one thread's launches after the other's: the threads no longer
    interleave, so they are not micro-batches."""
    src = EXTRA / "prefill_dbo_threads_rank0.json.gz"
    doc = json.loads(gzip.open(src).read())
    a = analysis_of(str(src))
    tids = a.kernels.join(a.segmentation.labels, on="row").group_by("microbatch").agg(
        pl.col("launch_tid").first()).sort("microbatch")["launch_tid"].to_list()
    first, second = tids[0], tids[1]
    events = doc["traceEvents"]
    span = max(float(e.get("ts", 0)) + float(e.get("dur", 0) or 0) for e in events if "ts" in e)
    start = min(float(e["ts"]) for e in events if "ts" in e)
    for e in events:  # the second thread's CPU work (and the kernels it launched) moved past the end
        if e.get("tid") == second and "ts" in e and e.get("ph") != "M":
            e["ts"] = float(e["ts"]) + (span - start)
    corr = {e.get("args", {}).get("correlation") for e in events if e.get("tid") == second and e.get("cat") == "cuda_runtime"}
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("args", {}).get("correlation") in corr:
            e["ts"] = float(e["ts"]) + (span - start)
    out = tmp_path / "sequential_threads.json"
    out.write_text(json.dumps(doc))
    seq = analyze(out)
    assert seq.segmentation.sources["microbatch"] != "threads"
    assert first != second


@pytest.mark.parametrize("rank", [0, 1])
def test_inferred_microbatches_say_they_are_approximate(rank):
    a = analysis_of(str(EXTRA / f"prefill_tbo_nolabels_rank{rank}.json.gz"))
    seg = a.segmentation
    assert seg.sources["microbatch"] == "inferred"
    assert seg.approximate and "approximate" in seg.approximate[0]
    assert seg.summary()["approximate"] == seg.approximate
    assert analysis_of(str(PROJECT_FIXTURES / f"prefill_tbo_rank{rank}.json.gz")).segmentation.approximate == []


# --- the single-GPU captures for this issue (fixtures/captures, MANIFEST entries) ----------

@pytest.mark.parametrize("name", ["attn_splitkv_decode_nolabels", "inductor_dense_decode"])
def test_captured_decoders_give_steps_times_layers(name):
    """FA2 split-KV decode without labels (two attention kernels per layer) and a
    torch.compile'd decoder (Inductor kernels, matmul attention): S x L = 6 x 4 layer passes."""
    path = CAPTURES / f"{name}.json.gz"
    m = _manifest(path)
    a = analysis_of(str(path))
    s = a.segmentation.summary()
    assert a.segmentation.sources["layer"] == "inferred"
    assert s["iterations"] == m["profiled_iterations"] and s["layers"] == m["n_layers"]
    assert _layer_passes(a) == m["expected_layers"] == m["profiled_iterations"] * m["n_layers"]
    assert a.segments("layer").filter(pl.col("layer") != "(none)").height == m["expected_layers"]


def test_ddp_forward_backward_threads_are_not_microbatches():
    """A real DDP step: forward + optimizer from the main thread, backward from the autograd
    thread (MANIFEST threads): one micro-batch."""
    path = CAPTURES / "ddp_two_thread_train.json.gz"
    threads = _manifest(path)["threads"]
    a = analysis_of(str(path))
    launch_tids = set(a.kernels["launch_tid"].drop_nulls().unique().to_list())
    assert {threads["main_thread_tid"], *threads["backward_thread_tids"]} <= launch_tids
    assert a.segmentation.sources["microbatch"] == "single" and a.segmentation.summary()["microbatches"] == ["mb0"]
    cats = set(a.kernels["category"].cast(pl.Utf8).to_list())
    assert {"optimizer", "attention", "embedding"} <= cats  # foreach AdamW, cuDNN SDPA fprop/bprop, embedding bwd


def test_graph_tbo_decode_microbatches_and_layers_from_kernel_order():
    """DeepSeek-V3-mini decode with two-batch overlap, the whole step one CUDA graph replayed 3
    times: no annotation inside, no communication kernel (world size 1: the all-to-alls are
    copies).  The number of micro-batches comes from the rounds of layer starts before each
    expert block; each replay's kernels are then cut into blocks repeated once per micro-batch
    (the j-th copy is mb j); layers from the repeating GEMM: 3 steps x 2 micro-batches x 4
    layers.  Checked kernel by kernel against the eager run's labels (MANIFEST replay_mapping):
    every kernel's micro-batch (the launch-order inference alone: 84%) and layer; still said to be
    approximate (inferred, not read)."""
    path = CAPTURES / "decode_tbo_cudagraph.json.gz"
    rm = _manifest(path)["replay_mapping"]
    eager, index = rm["eager_step"], rm["replay_kernel_to_eager_index"]
    a = analysis_of(str(path))
    seg = a.segmentation
    assert seg.sources["microbatch"] == "inferred" and seg.summary()["microbatches"] == ["mb0", "mb1"]
    assert seg.approximate and "in CUDA-graph replays by the repetition" in seg.approximate[0]  # and it says so
    assert seg.summary()["iterations"] == rm["replays"] and seg.summary()["layers"] == 4
    rows = a.segments("layer").filter(pl.col("layer") != "(none)")
    assert rows.height == rm["replays"] * 2 * 4
    k = a.kernels.join(seg.labels, on="row").filter(pl.col("kind") == "kernel").sort("ts")
    for r in range(rm["replays"]):
        kr = k.filter(pl.col("iteration") == str(r + 1))
        truth = [eager[i] for i in index[r]]
        assert kr.height == len(truth) == rm["kernels_per_replay"][r]
        mb_ok = sum(f"mb{t[2]}" == m for t, m in zip(truth, kr["microbatch"].to_list()))
        layer_ok = sum(str(t[3]) == lay for t, lay in zip(truth, kr["layer"].to_list()))
        assert layer_ok == sum(t[3] is not None for t in truth)  # all but the final norm (in no layer)
        assert mb_ok == sum(t[2] is not None for t in truth) == kr.height - 1  # one kernel is outside mbN ranges


def test_graph_annotation_args_read_as_range_names():
    """mark_kernels scopes as torch's post-processor writes them into a graph kernel's args: a string
    scope is {"str": name}; dict keys that name a level take their value as that level."""
    from traceview.segment.levels import level_of_arg

    pats = LevelPatterns().compiled()
    assert level_of_arg("str", "layer.7", pats) == ("layer", "7")
    assert level_of_arg("str", "attn", pats) == ("phase", "attn")
    assert level_of_arg("annotation", "nccl:all_to_all", pats) is None  # a library range is no phase
    assert level_of_arg("layer", "3", pats) == ("layer", "3")
    assert level_of_arg("microbatch", "1", pats) == ("microbatch", "mb1")
    assert level_of_arg("mb", 0, pats) == ("microbatch", "mb0")
    assert level_of_arg("stage", "decode", pats) == ("stage", "decode")
    assert level_of_arg("stage", "EXTEND", pats) == ("stage", "prefill")
    assert level_of_arg("iteration", "12", pats) == ("iteration", "12")
    assert level_of_arg("phase", "combine", pats) == ("phase", "combine")
    assert level_of_arg("module", "model.layers.5", pats) == ("layer", "5")
    assert level_of_arg("block", "2", pats) == ("layer", "2")
    from traceview.segment.assign import _scope_values

    assert _scope_values('["mb1", "layer.4"]') == ["mb1", "layer.4"] and _scope_values("attn") == ["attn"]


def test_tandem_blocks_pick_micro_batches_not_layer_pairs():
    """Blocks of a replay built from the real TBO graph's own kernel names: mb0/mb1 copies of each stage,
    four identical layers (so pairs of layers also repeat): the most blocks wins, one stage each; and
    a 61-layer replay of 6,100 kernels takes well under a second (cached per distinct replay)."""
    import time

    from traceview.segment.assign import _tandem_blocks

    k = analysis_of(str(CAPTURES / "decode_tbo_cudagraph.json.gz")).kernels
    names = k.filter((pl.col("kind") == "kernel") & (pl.col("correlation") == k["correlation"].min())).sort("ts")["name"]
    codes = names.cast(pl.Utf8).rank("dense").cast(pl.Int64).to_numpy()
    body = codes[:40]
    seq = np.concatenate([body, body, body, body])            # stage S of mb0, mb1, then the same stage again
    got = _tandem_blocks(seq, 2, np.ones(len(seq), dtype=bool))
    assert got.tolist() == [0] * 40 + [1] * 40 + [0] * 40 + [1] * 40
    big = np.concatenate([np.concatenate([codes[:50], codes[:50]]) for _ in range(61)])
    t = time.perf_counter()
    assert (_tandem_blocks(big, 2, np.ones(len(big), dtype=bool)) >= 0).all()
    assert time.perf_counter() - t < 3
