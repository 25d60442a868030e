"""GPU captures of fixtures/captures (scripts/capture/capture_more.py, one H200) against their MANIFEST.json.

The manifest is the ground truth the capture script wrote (layers L, steps S, micro-batches, which thread
launched what, the CUDA-graph replay -> eager kernel mapping) plus check_traces.py's numbers; traceview's
analysis must agree. Where traceview's labels cannot do it yet (issue 13: each replayed kernel's
micro-batch and layer in a CUDA graph) the test is xfail(strict=True) and flips when that lands.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import PROJECT_FIXTURES, analysis_of

CAP = PROJECT_FIXTURES / "captures"
MANIFEST = json.loads((CAP / "MANIFEST.json").read_text())
ENTRIES = {e["scenario"]: e for e in MANIFEST["files"] if "file" in e}
GRAPH = ENTRIES["decode_tbo_cudagraph"]
MAPPING = GRAPH["replay_mapping"]


def analysis(scenario: str):
    return analysis_of(str(CAP / ENTRIES[scenario]["file"]))


def labelled_kernels(scenario: str) -> pl.DataFrame:
    """traceview's kernels (kind == kernel) with their segment labels, in GPU start order."""
    a = analysis(scenario)
    k = a.kernels.filter(pl.col("kind").cast(pl.String) == "kernel")
    return k.join(a.segmentation.labels, on="row", how="left").sort("ts")


def layer_segments(scenario: str) -> int:
    """Distinct (iteration, micro-batch, layer) with a layer: S x L x micro-batches when right."""
    lab = labelled_kernels(scenario).filter(pl.col("layer").is_not_null() & pl.col("iteration").is_not_null())
    return lab.select("iteration", "microbatch", "layer").unique().height


def test_manifest_lists_every_capture():
    on_disk = sorted(p.name for p in CAP.glob("*.json.gz"))
    assert on_disk == sorted(e["file"] for e in ENTRIES.values())
    for e in ENTRIES.values():
        assert (CAP / e["file"]).stat().st_size == e["compressed_bytes"], e["file"]


@pytest.mark.parametrize("scenario", sorted(ENTRIES))
def test_kernel_count_and_iterations_match_the_manifest(scenario):
    e = ENTRIES[scenario]
    obs = e["observed_by_check_traces"]
    k = labelled_kernels(scenario)
    assert k.height == obs["kernel_events"]
    assert analysis(scenario).segmentation.summary()["iterations"] == e["profiled_iterations"] == obs["profiler_steps"]


def test_graph_trace_is_one_launch_per_decode_step():
    """Every replayed kernel shares its cudaGraphLaunch's correlation id and has no External id."""
    k = labelled_kernels("decode_tbo_cudagraph")
    per_launch = k.group_by("correlation").agg(pl.len()).sort("correlation")["len"].to_list()
    assert per_launch == MAPPING["kernels_per_replay"] == [MAPPING["eager_kernels_per_step"]] * GRAPH["graph_steps"]
    assert k["external_id"].null_count() == k.height == GRAPH["observed_by_check_traces"]["graph_launched_kernels"]
    eager_streams = set(labelled_kernels("decode_tbo_cudagraph_eager")["stream"].unique().to_list())
    assert set(k["stream"].unique().to_list()) == set(MAPPING["replay_streams"])
    assert not eager_streams & set(MAPPING["replay_streams"]), "graph replays run on other streams than eager"


def test_eager_labels_agree_with_the_capture_scripts_mapping():
    """traceview's (micro-batch, layer) of each kernel of the first eager step == the capture script's own
    reading of the record_function ranges (a second, independent implementation)."""
    k = labelled_kernels("decode_tbo_cudagraph_eager").filter(pl.col("iteration") == "1")
    mine = [(f"mb{mb}" if mb is not None else None, str(layer) if layer is not None else None)
            for _, _, mb, layer, _ in MAPPING["eager_step"]]
    assert list(zip(k["microbatch"].to_list(), k["layer"].to_list())) == mine


def test_graph_replayed_kernels_get_their_eager_microbatch_and_layer():
    """Without annotations: micro-batches from the repeated blocks, layers from the repeating GEMM moved
    back to the layer's input norm: every replayed kernel gets the eager kernel's (micro-batch, layer)."""
    k = labelled_kernels("decode_tbo_cudagraph")
    eager = MAPPING["eager_step"]
    for r, (_, rep) in enumerate(k.group_by("correlation", maintain_order=True)):
        want = [(f"mb{eager[j][2]}" if eager[j][2] is not None else None,
                 str(eager[j][3]) if eager[j][3] is not None else None)
                for j in MAPPING["replay_kernel_to_eager_index"][r]]
        got = list(zip(rep["microbatch"].to_list(), rep["layer"].to_list()))
        # (the final norm and one kernel outside every mbN range have no eager label to compare with)
        assert [g for g, w in zip(got, want) if None not in w] == [w for w in want if None not in w]
        assert sum(None not in w for w in want) == len(want) - 3


@pytest.mark.parametrize("scenario,microbatches", [
    ("decode_tbo_cudagraph_eager", 2),
    ("attn_splitkv_decode", 1),
    ("attn_splitkv_decode_nolabels", 1),  # split-KV + combine: one layer per attention group
    ("inductor_dense_decode", 1),
    ("decode_tbo_cudagraph", 2),          # layers and micro-batches from the replayed kernel order
    ("decode_tbo_cudagraph_annotated", 2),  # from the graph kernel annotations
    ("decode_mb_streams_eager", 2),
    ("decode_mb_streams_cudagraph", 2),   # micro-batches from the replay streams (one branch each)
])
def test_by_layer_gives_steps_times_layers(scenario, microbatches):
    e = ENTRIES[scenario]
    L = e.get("n_layers") or e["model"]["n_layers"]
    assert layer_segments(scenario) == e["profiled_iterations"] * L * microbatches


def test_ddp_step_has_two_launch_threads_and_no_gpu_communication():
    """Forward + optimizer from the main thread, backward from the autograd thread; world size 1: the
    nccl:all_reduce ranges launch no GPU kernel."""
    e = ENTRIES["ddp_two_thread_train"]
    k = labelled_kernels("ddp_two_thread_train")
    threads = {e["threads"]["main_thread_tid"], *e["threads"]["backward_thread_tids"]}
    assert set(k["launch_tid"].unique().to_list()) == threads
    assert set(e["observed_by_check_traces"]["launch_threads"]) == {str(t) for t in threads}
    assert k.filter(pl.col("role").cast(pl.String) == "comm").height == 0 == len(
        e["observed_by_check_traces"]["nccl_kernels"])


def test_ddp_threads_are_not_microbatches():
    assert analysis("ddp_two_thread_train").segmentation.summary()["microbatches"] in ([], ["mb0"])


def test_world_size_1_all_to_all_launches_no_kernel():
    """Recorded answer for issue 13: c10d's one-rank all_to_all is a device copy, in eager and in the graph."""
    for s in ("decode_tbo_cudagraph", "decode_tbo_cudagraph_eager"):
        e = ENTRIES[s]
        assert e["world_size_1_all_to_all_launches_kernels"] is False
        assert e["nccl_kernels_in_trace"] == {} == e["observed_by_check_traces"]["nccl_kernels"]
        assert labelled_kernels(s).filter(pl.col("role").cast(pl.String) == "comm").height == 0
        assert e["memcpy_memset_observed"]["Memcpy DtoD (Device -> Device)"] > 0


@pytest.mark.parametrize("scenario", ["attn_splitkv_decode", "attn_splitkv_decode_nolabels"])
def test_split_kv_attention_is_two_attention_kernels_per_layer_and_step(scenario):
    e = ENTRIES[scenario]
    S_L = e["profiled_iterations"] * e["n_layers"]
    assert e["attention_kernels_observed"] == {"pytorch_flash::flash_fwd_splitkv_kernel": S_L,
                                               "pytorch_flash::flash_fwd_splitkv_combine_kernel": S_L}
    k = labelled_kernels(scenario).with_columns(pl.col("name").cast(pl.String))
    flash = k.filter(pl.col("name").str.contains("flash_fwd_splitkv"))
    assert flash.height == 2 * S_L
    assert flash["category"].cast(pl.String).unique().to_list() == ["attention"]


def test_replay_mapping_is_a_permutation_of_the_eager_step():
    n = MAPPING["eager_kernels_per_step"]
    assert MAPPING["all_matched_one_to_one"] is True
    assert len(MAPPING["replay_kernel_to_eager_index"]) == GRAPH["graph_steps"]
    for rep in MAPPING["replay_kernel_to_eager_index"]:
        assert sorted(rep) == list(range(n))


def categories(scenario: str, pattern: str) -> set[str]:
    k = labelled_kernels(scenario).with_columns(pl.col("name").cast(pl.String), pl.col("category").cast(pl.String))
    return set(k.filter(pl.col("name").str.contains(pattern))["category"].to_list())


def test_cudnn_sdpa_is_attention():
    cats = categories("ddp_two_thread_train", "cudnn_generated_fort_native_sdpa")
    assert cats and all(c.startswith("attention") for c in cats)


def test_adam_multi_tensor_apply_is_optimizer():
    cats = categories("ddp_two_thread_train", "multi_tensor_apply_kernel")
    assert cats and all("optim" in c for c in cats)


@pytest.mark.parametrize("scenario", sorted(ENTRIES))
def test_classified_share_of_gpu_time(scenario):
    k = labelled_kernels(scenario).with_columns(pl.col("category").cast(pl.String))
    unclassified = k.filter(pl.col("category") == "unclassified")["dur"].sum()
    assert 1 - unclassified / k["dur"].sum() >= 0.995


# --- PyTorch's CUDA-graph kernel annotations (derived: scripts/capture/annotate_graph_fixture.py) ------

ANNOTATED = ENTRIES["decode_tbo_cudagraph_annotated"]


def _per_segment(scenario: str, keys: list[str]) -> dict:
    """Kernels and device copies (the annotatable graph nodes) per segment: count and GPU time."""
    k = labelled_kernels_all(scenario).filter(pl.col("kind").cast(pl.String).is_in(["kernel", "gpu_memcpy"]))
    g = k.group_by(keys).agg(pl.len().alias("n"), pl.col("dur").sum().alias("us"))
    return {tuple(r[c] for c in keys): (r["n"], r["us"]) for r in g.iter_rows(named=True)}


def labelled_kernels_all(scenario: str) -> pl.DataFrame:
    a = analysis(scenario)
    return a.kernels.join(a.segmentation.labels, on="row", how="left").sort("ts")


def test_annotated_graph_trace_keeps_the_capture_and_adds_node_annotations():
    """The derived trace is the real graph capture plus graph node ids and torch's post-processor's
    args: same kernels, streams and times; every replayed kernel and copy with a node id."""
    plain, ann = labelled_kernels("decode_tbo_cudagraph"), labelled_kernels("decode_tbo_cudagraph_annotated")
    assert ann.height == plain.height and ann["stream"].to_list() == plain["stream"].to_list()
    assert ann["dur"].to_list() == plain["dur"].to_list()
    assert ANNOTATED["annotated_nodes"] == MAPPING["eager_kernels_per_step"] + 49
    text = ann["annotation"].drop_nulls()
    assert text.len() == ann.height - GRAPH["graph_steps"]  # the one kernel outside every label: stream only
    assert json.loads(text[0]).keys() <= {"str", "layer", "microbatch"}


def test_annotated_graph_trace_segments_like_its_eager_twin():
    """Layers, micro-batches and per-micro-batch figures of the graph replays from their annotations
    equal the eager twin's labelled run (counts exactly; time within what replay timing changes),
    and nothing is called approximate."""
    seg = analysis("decode_tbo_cudagraph_annotated").segmentation
    eager = analysis("decode_tbo_cudagraph_eager").segmentation
    for lvl in ("microbatch", "layer", "phase"):
        assert seg.sources[lvl] == "annotations" == eager.sources[lvl]
    assert seg.approximate == [] and seg.summary()["approximate"] == []
    for key in ("iterations", "microbatches", "layers", "layer_instances", "phases"):
        assert seg.summary()[key] == eager.summary()[key], key
    for keys in (["iteration", "microbatch", "layer"], ["microbatch", "phase"]):
        mine, theirs = _per_segment("decode_tbo_cudagraph_annotated", keys), _per_segment("decode_tbo_cudagraph_eager", keys)
        labelled = {k: v for k, v in mine.items() if k[1] is not None}
        assert {k: n for k, (n, _) in labelled.items()} == {k: n for k, (n, _) in theirs.items() if k[1] is not None}
    mb = {r["microbatch"]: r for r in analysis("decode_tbo_cudagraph_annotated").segments("microbatch").iter_rows(named=True)}
    mb_eager = {r["microbatch"]: r for r in analysis("decode_tbo_cudagraph_eager").segments("microbatch").iter_rows(named=True)}
    for m in ("mb0", "mb1"):
        assert mb[m]["exposed_comm_us"] == mb_eager[m]["exposed_comm_us"] and mb[m]["comm_us"] == mb_eager[m]["comm_us"]
        assert mb[m]["compute_us"] == pytest.approx(mb_eager[m]["compute_us"], rel=0.02)
    layers = analysis("decode_tbo_cudagraph_annotated").segments("layer").filter(pl.col("layer") != "(none)")
    assert layers.height == GRAPH["graph_steps"] * 4 * 2


def test_annotated_graph_labels_are_the_eager_labels_kernel_by_kernel():
    """Each replayed kernel's (micro-batch, layer) from its annotation == the eager kernel it is."""
    k = labelled_kernels("decode_tbo_cudagraph_annotated")
    eager = MAPPING["eager_step"]
    for r, (_, rep) in enumerate(k.group_by("correlation", maintain_order=True)):
        want = [(f"mb{eager[j][2]}" if eager[j][2] is not None else None,
                 str(eager[j][3]) if eager[j][3] is not None else None)
                for j in MAPPING["replay_kernel_to_eager_index"][r]]
        assert list(zip(rep["microbatch"].to_list(), rep["layer"].to_list())) == want


def test_annotated_graph_trace_by_layer_in_the_cli():
    from test_cli_analyze import run

    code, out, err = run("analyze", CAP / ANNOTATED["file"], "--by", "microbatch", "--by", "layer", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)["traces"][0]
    assert doc["segments"]["summary"]["approximate"] == []
    assert doc["segments"]["summary"]["sources"]["microbatch"] == "annotations"


def test_annotated_fixture_is_what_the_script_builds():
    """The committed fixture is the script's output (torch's own post-processor; skipped without torch)."""
    pytest.importorskip("torch.cuda._annotate_cuda_graph_trace")
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("annotate_graph_fixture",
                                                  CAP.parent.parent / "scripts" / "capture" / "annotate_graph_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc, entry = mod.build()
    assert doc == json.loads(gzip.open(CAP / ANNOTATED["file"]).read())
    assert entry["annotated_nodes"] == ANNOTATED["annotated_nodes"]


def test_unannotated_replays_get_the_annotated_micro_batches():
    """Kernels and copies of the plain graph trace: the micro-batch inferred from the repeated blocks ==
    the one its annotation gives in the derived twin (the same events), for every labelled event."""
    plain = labelled_kernels_all("decode_tbo_cudagraph")
    ann = labelled_kernels_all("decode_tbo_cudagraph_annotated")
    assert plain["ts"].to_list() == ann["ts"].to_list()
    both = plain.select("kind", "microbatch", "layer").with_columns(ann["microbatch"].alias("truth"),
                                                                     ann["layer"].alias("truth_layer"))
    both = both.filter(pl.col("truth").is_not_null() & pl.col("kind").cast(pl.String).is_in(["kernel", "gpu_memcpy"]))
    assert both.height == 3 * (779 - 1 + 48)
    assert (both["microbatch"] == both["truth"]).all()
    assert (both["layer"] == both["truth_layer"]).all()


# --- micro-batches captured on their own streams: one graph branch each (capture_branches.py) ----------

def test_graph_branches_are_micro_batches_side_by_side():
    """Each micro-batch captured on its own stream: the graph replays the two branches on two CUPTI
    streams at once (their kernels interleave in GPU order), so the launch order cannot split them and
    the streams do: each replay stream is one micro-batch, mb0 the one whose first kernel started first."""
    e = ENTRIES["decode_mb_streams_cudagraph"]
    a = analysis("decode_mb_streams_cudagraph")
    seg = a.segmentation
    assert seg.sources["microbatch"] == "inferred" and seg.summary()["microbatches"] == ["mb0", "mb1"]
    assert seg.approximate and "by the replay streams running the same kernels side by side (100%" in seg.approximate[0]
    k = labelled_kernels_all("decode_mb_streams_cudagraph").filter(pl.col("kind").cast(pl.String).is_in(["kernel", "gpu_memcpy"]))
    per_stream = k.group_by("stream").agg(pl.col("microbatch").unique(), pl.col("ts").min()).sort("ts")
    assert per_stream["microbatch"].to_list() == [["mb0"], ["mb1"]]
    assert len(e["observed_by_check_traces"]["kernels_per_stream"]) == 2
    kern = k.filter(pl.col("kind").cast(pl.String) == "kernel").sort("ts")
    streams = kern.filter(pl.col("iteration") == "1")["stream"].to_list()
    assert sum(x != y for x, y in zip(streams, streams[1:])) > 20  # side by side: GPU order interleaves them


def test_graph_branches_segment_like_the_eager_run():
    """Kernel by kernel: the k-th kernel of a micro-batch in a replay is the k-th kernel that micro-batch
    launched in an eager step (a branch keeps its capture order); its name agrees with the eager run's,
    and its layer (from attention groups, each start moved back to the layer's input norm) with the
    record_function labels."""
    graph = labelled_kernels_all("decode_mb_streams_cudagraph").filter(pl.col("kind").cast(pl.String) == "kernel")
    eager = labelled_kernels_all("decode_mb_streams_eager").filter(pl.col("kind").cast(pl.String) == "kernel")
    ok = total = 0
    for it in ("1", "2", "3"):
        for mb in ("mb0", "mb1"):
            g = graph.filter((pl.col("iteration") == it) & (pl.col("microbatch") == mb)).sort("ts")
            e = eager.filter((pl.col("iteration") == it) & (pl.col("microbatch") == mb)).sort("ts")
            assert g["name"].cast(pl.String).to_list() == e["name"].cast(pl.String).to_list()
            ok += sum(x == y for x, y in zip(g["layer"].to_list(), e["layer"].to_list()))
            total += g.height
    assert total == ENTRIES["decode_mb_streams_eager"]["observed_by_check_traces"]["kernel_events"]
    assert ok == total  # the norm and QKV projection before the attention kernel: in its layer


def test_annotated_graph_without_step_ranges_counts_an_iteration_per_launch(tmp_path):
    """Graph annotations give micro-batch and layer, not the iteration: without ProfilerStep ranges each
    cudaGraphLaunch is one (3 x 4 layer passes, as with the ranges)."""
    import gzip

    from traceview import analyze

    doc = json.loads(gzip.open(CAP / ANNOTATED["file"]).read())
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not str(e.get("name", "")).startswith("ProfilerStep#")]
    path = tmp_path / "nosteps.json"
    path.write_text(json.dumps(doc))
    seg = analyze(path).segmentation
    assert seg.sources["iteration"] == "inferred" and seg.sources["microbatch"] == "annotations"
    assert seg.summary()["iterations"] == 3 and seg.summary()["layer_instances"] == 12 and seg.approximate == []
