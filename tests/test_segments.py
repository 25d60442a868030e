"""Segmentation and per-segment exposed communication, on real traces."""

from __future__ import annotations

import gzip

import orjson
import polars as pl
import pytest

import reference as ref
from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from traceview import analyze

EXTRA = PROJECT_FIXTURES / "gpu-extra"


def strip_annotations(src, dst):
    """A copy of a trace without the user's record_function ranges (library ranges stay)."""
    raw = src.read_bytes()
    doc = orjson.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    doc["traceEvents"] = [e for e in doc["traceEvents"]
                          if not (e.get("cat") in ("user_annotation", "gpu_user_annotation")
                                  and not str(e.get("name", "")).startswith("nccl:"))]
    dst.write_bytes(orjson.dumps(doc))
    return dst


def reference_split(kernels: pl.DataFrame, owner_col: str):
    """Pure-Python fair split of exposed/overlapped comm between owners (see docs/metrics.md)."""
    comm = kernels.filter(pl.col("role") == "comm")
    compute = ref.merge(list(zip(*kernels.filter(pl.col("role") == "compute").select("ts", "end").to_numpy().T)))
    owners = {}
    for o, s, e in comm.select(owner_col, "ts", "end").iter_rows():
        owners.setdefault(o, []).append((s, e))
    owners = {o: ref.merge(v) for o, v in owners.items()}
    points = sorted({p for v in owners.values() for iv in v for p in iv} | {p for iv in compute for p in iv})
    exposed = {o: 0.0 for o in owners}
    overlapped = {o: 0.0 for o in owners}
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        who = [o for o, v in owners.items() if any(s < mid < e for s, e in v)]
        covered = any(s < mid < e for s, e in compute)
        for o in who:
            (overlapped if covered else exposed)[o] += (b - a) / len(who)
    return exposed, overlapped


@pytest.mark.parametrize("rank", [0, 1])
def test_tbo_microbatches_sum_to_gpu_totals_and_match_reference(rank):
    a = analysis_of(str(PROJECT_FIXTURES / f"prefill_tbo_rank{rank}.json.gz"))
    seg = a.segmentation
    assert seg.sources["microbatch"] == "annotations" and seg.sources["layer"] == "annotations"
    assert seg.summary()["microbatches"] == ["mb0", "mb1"] and seg.summary()["iterations"] == 2
    t = a.segments("microbatch")
    g = a.gpus[0]
    assert t["exposed_comm_us"].sum() == pytest.approx(g.exposed_comm_us, rel=1e-9)
    assert t["overlapped_comm_us"].sum() == pytest.approx(g.overlap_us, rel=1e-9)
    k = a.kernels.join(seg.labels.select("row", "microbatch"), on="row").with_columns(pl.col("microbatch").fill_null("-"))
    exp, ovl = reference_split(k, "microbatch")
    for mb, e, o in t.select("microbatch", "exposed_comm_us", "overlapped_comm_us").iter_rows():
        assert e == pytest.approx(exp.get(mb, 0.0), abs=1e-6)
        assert o == pytest.approx(ovl.get(mb, 0.0), abs=1e-6)
    # two-batch overlap: each micro-batch's communication is mostly covered by the OTHER's compute
    for row in t.filter(pl.col("comm_us") > 0).iter_rows(named=True):
        assert row["cover_other_mb_us"] > 0.3 * row["comm_us"]
    # per layer: 4 layers x 2 micro-batches x 2 iterations, layer 0 (dense) has no communication
    layers = a.segments("layer").filter(pl.col("layer") != "(none)")
    assert layers.height == 16
    assert layers.filter(pl.col("layer") == "0")["comm_us"].sum() == 0
    assert layers["exposed_comm_us"].sum() == pytest.approx(g.exposed_comm_us, rel=1e-9)


def test_serial_has_one_microbatch_with_all_comm_exposed():
    a = analysis_of(str(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"))
    t = a.segments("microbatch").filter(pl.col("comm_us") > 0)
    assert t["microbatch"].to_list() == ["mb0"]
    assert t["exposed_comm_us"][0] == pytest.approx(t["comm_us"][0])


@pytest.mark.parametrize("rank", [0, 1])
def test_stripped_annotations_are_inferred_like_the_annotated_run(tmp_path, rank):
    src = PROJECT_FIXTURES / f"prefill_tbo_rank{rank}.json.gz"
    annotated = analysis_of(str(src))
    stripped = analyze(strip_annotations(src, tmp_path / "stripped.json"))
    s = stripped.segmentation
    assert s.sources["microbatch"] == "inferred" and s.sources["layer"] == "inferred"
    assert s.summary()["microbatches"] == annotated.segmentation.summary()["microbatches"]
    assert s.summary()["layers"] == annotated.segmentation.summary()["layers"]
    assert s.summary()["iterations"] == annotated.segmentation.summary()["iterations"]
    want = dict(annotated.segments("microbatch").select("microbatch", "exposed_comm_us").iter_rows())
    got = dict(s and stripped.segments("microbatch").select("microbatch", "exposed_comm_us").iter_rows())
    for mb in ("mb0", "mb1"):
        assert got[mb] == pytest.approx(want[mb], rel=0.05), mb


def test_nolabels_capture_infers_two_microbatches_and_four_layers():
    a = analyze(EXTRA / "prefill_tbo_nolabels_rank0.json.gz")
    s = a.segmentation.summary()
    assert s["microbatches"] == ["mb0", "mb1"] and s["layers"] == 4 and s["iterations"] == 2
    t = a.segments("microbatch")
    assert t["exposed_comm_us"].sum() == pytest.approx(a.gpus[0].exposed_comm_us, rel=1e-9)


def test_vllm_style_threads_are_microbatches():
    a = analyze(EXTRA / "prefill_dbo_threads_rank0.json.gz")
    seg = a.segmentation
    assert seg.sources["microbatch"] == "threads"
    t = a.segments("microbatch").filter(pl.col("microbatch") != "(none)")
    assert t["microbatch"].to_list() == ["mb0", "mb1"]
    assert t["events"].to_list() == [910, 910]  # 784 kernels + memsets/memcpys per thread (manifest)
    assert seg.summary()["iterations"] == 2  # worker-thread launches placed in the main thread's ProfilerStep


@pytest.mark.parametrize("name", ["dense_decode_cudagraph.json.gz", "decode_tbo_rank0.json.gz",
                                  "decode_tbo_copyengine.json.gz", "tp2_dense_decode_rank0.json.gz"])
def test_graphs_decode_and_multi_gpu_traces_segment(name):
    a = analyze(EXTRA / name)
    for by in ("microbatch", "layer", "phase", "iteration"):
        t = a.segments(by)
        assert t.height > 0
        for dev, g in ((g.device, g) for g in a.gpus):
            sub = t.filter(pl.col("device") == dev)
            assert sub["exposed_comm_us"].sum() == pytest.approx(g.exposed_comm_us, rel=1e-9, abs=1e-6)


def test_copy_engine_p2p_is_communication_per_gpu():
    a = analyze(EXTRA / "prefill_tbo_copyengine.json.gz")
    assert [g.device for g in a.gpus] == [0, 1]
    for g in a.gpus:
        assert g.categories["comm.p2p_copy"].time_us > 1000
        assert 0 < g.exposed_comm_ratio < 0.5  # most peer copies hide under compute


@needs_shared
def test_deepseek_train_phases_with_exposed_comm():
    a = analysis_of(str(shared("deepseek/train.json")))
    seg = a.segmentation
    assert seg.sources["phase"] == "annotations"
    t = a.segments("phase")
    phases = set(t["phase"].to_list())
    assert {"attn(F)", "dispatch(F)", "combine(F)", "dispatch(B)", "combine(B)", "mlp(F)", "mlp(B)"} <= phases
    comm_phases = t.filter(pl.col("comm_us") > 0)["phase"].to_list()
    assert set(comm_phases) <= {"dispatch(F)", "dispatch(B)", "combine(F)", "combine(B)"}
    assert t["exposed_comm_us"].sum() == pytest.approx(a.gpus[0].exposed_comm_us, rel=1e-9)


@needs_shared
def test_attention_share_grows_with_context_in_prefill_and_decode():
    """Seed 000's table: attention's share of GPU time rises with context length."""
    shares = {"prefill": [], "decode": []}
    for n in (256, 1024, 2048, 4096):
        a = analysis_of(str(shared(f"gpu/dense_prefill_decode_ctx{n}.json.gz")))
        assert a.segmentation.sources["stage"] == "annotations"
        t = a.segments("stage")
        cats = [c for c in t.columns if c.startswith("cat:")]
        for r in t.iter_rows(named=True):
            total = sum(r[c] or 0 for c in cats)
            shares[r["stage"]].append((r.get("cat:attention") or 0) / total)
    for stage, s in shares.items():
        assert s == sorted(s) and s[-1] > 2 * s[0], (stage, s)


def test_overlap_tax_finds_slower_kernels_beside_comm():
    a = analysis_of(str(PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"))
    tax = a.overlap_tax()
    assert tax.height > 0
    assert tax["tax_us"].sum() > 0  # compute beside the all-to-all runs slower than alone


def test_rank_skew_on_both_ep2_ranks():
    from traceview import analyze_run

    run = analyze_run([PROJECT_FIXTURES / f"prefill_tbo_rank{r}.json.gz" for r in (0, 1)])
    skew = run.skew_table()
    assert set(skew["category"].to_list()) == {"moe.dispatch", "moe.combine"}
    assert skew.filter(pl.col("category") == "moe.dispatch")["collectives"][0] == 24
    assert abs(run.matching.offsets_us[1]) < 100  # same host: clocks agree to within NCCL's end-time jitter


def test_cli_by_microbatch_layer_phase():
    from click.testing import CliRunner

    from traceview.cli import main

    r = CliRunner().invoke(main, ["analyze", str(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"),
                                  "--by", "microbatch", "--by", "layer", "--by", "phase"])
    assert r.exit_code == 0, r.stderr
    assert "by microbatch" in r.stdout and "by layer" in r.stdout and "dispatch" in r.stdout
    r = CliRunner().invoke(main, ["analyze", str(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"), "--format", "json"])
    doc = orjson.loads(r.stdout)
    seg = doc["traces"][0]["segments"]
    assert seg["sources"]["microbatch"] == "annotations"
    assert sum(x["exposed_comm_us"] for x in seg["by_microbatch"]) == pytest.approx(
        doc["traces"][0]["gpus"][0]["exposed_comm_us"])


def _without_user_ranges(src, dst):
    """A copy without the user's mb/layer/phase ranges; the profiler's ProfilerStep and library ranges stay."""
    raw = src.read_bytes()
    doc = orjson.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    doc["traceEvents"] = [e for e in doc["traceEvents"]
                          if not (e.get("cat") in ("user_annotation", "gpu_user_annotation")
                                  and not str(e.get("name", "")).startswith(("nccl:", "ProfilerStep#")))]
    dst.write_bytes(orjson.dumps(doc))
    return dst


@pytest.mark.parametrize("src,share", [
    (PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz", 0.97),        # MLA prefill: attention kernels, TBO
    (EXTRA / "decode_tbo_rank0.json.gz", 0.97),                    # absorbed-MLA decode: no attention kernel
    (EXTRA / "tp2_dense_decode_rank0.json.gz", 1.0),               # dense decode, all-reduce
])
def test_inferred_layers_agree_with_the_layer_ranges(tmp_path, src, share):
    """Each kernel's inferred layer == its layer.N range on the labelled capture, for (nearly) every
    kernel: a layer starts at its input norm (the start found at attention or the repeating GEMM
    moves back over the projections to it), and a dense first layer of an MoE model is a layer."""
    annotated = analysis_of(str(src))
    stripped = analyze(_without_user_ranges(src, tmp_path / "stripped.json"))
    assert stripped.segmentation.sources["layer"] == "inferred"
    a = annotated.kernels.join(annotated.segmentation.labels, on="row").sort("device", "ts", "row")
    s = stripped.kernels.join(stripped.segmentation.labels, on="row").sort("device", "ts", "row")
    labelled = a["layer"].is_not_null()
    agree = ((a["layer"] == s["layer"]) & labelled).sum() / labelled.sum()
    assert agree >= share, agree
    assert stripped.segmentation.summary()["layer_instances"] == annotated.segmentation.summary()["layer_instances"]
