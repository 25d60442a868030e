"""End to end on every real trace: numbers equal the simple reference, taxonomy covers them."""

from __future__ import annotations

import pytest

import reference as ref
from conftest import PROJECT_FIXTURES, all_shared_traces, analysis_of, needs_shared, shared, trace_id

SHARED_TRACES = all_shared_traces()
PROJECT_TRACES = sorted(PROJECT_FIXTURES.glob("*.json.gz"))


def _check_against_reference(path):
    a = analysis_of(str(path))
    assert a.gpus, "no GPU found"
    for g in a.gpus:
        k = a.kernels.filter(a.kernels["device"] == g.device)
        want = ref.gpu_metrics(list(zip(k["ts"].to_list(), k["end"].to_list(), k["role"].cast(str).to_list())))
        got = g.to_dict()
        for key, v in want.items():
            assert got[key] == pytest.approx(v, rel=1e-3, abs=1e-3), f"{path.name} gpu{g.device} {key}"
        assert g.compute_us + g.exposed_comm_us + g.exposed_memory_us + g.idle_us == pytest.approx(g.span_us)
        assert sum(c.count for c in g.categories.values()) == k.height  # nothing dropped


@pytest.mark.parametrize("path", PROJECT_TRACES, ids=trace_id)
def test_project_fixtures_match_reference(path):
    _check_against_reference(path)


@needs_shared
@pytest.mark.parametrize("path", SHARED_TRACES, ids=trace_id)
def test_shared_traces_match_reference(path):
    _check_against_reference(path)


@needs_shared
@pytest.mark.parametrize("path", SHARED_TRACES, ids=trace_id)
def test_unclassified_below_half_a_percent(path):
    a = analysis_of(str(path))
    for g in a.gpus:
        total = sum(c.time_us for c in g.categories.values())
        uncl = g.categories.get("unclassified")
        share = (uncl.time_us / total) if uncl else 0.0
        assert share < 0.005, f"{path.name}: {share:.2%} unclassified: {a.unclassified().head(5)}"


@needs_shared
@pytest.mark.parametrize("rank", [0, 1])
def test_serial_exposes_all_communication_and_tbo_hides_most(rank):
    serial = analysis_of(str(shared(f"gpu/prefill_serial_rank{rank}.json.gz"))).gpus[0]
    tbo = analysis_of(str(shared(f"gpu/prefill_tbo_rank{rank}.json.gz"))).gpus[0]
    assert serial.comm_us > 1000 and tbo.comm_us > 1000
    assert serial.exposed_comm_ratio > 0.99
    assert tbo.exposed_comm_ratio < 0.5
    assert tbo.exposed_comm_us < serial.exposed_comm_us


@needs_shared
def test_deepseek_train_categories():
    """DeepSeek's own H800 profile: DeepEP-style dispatch/combine and grouped GEMM are named."""
    a = analysis_of(str(shared("deepseek/train.json")))
    g = a.gpus[0]
    for cat in ("moe.dispatch", "moe.combine", "gemm.grouped", "attention.mla"):
        assert g.categories[cat].time_us > 1000, cat
    assert a.trace.rank == 0 and a.trace.world_size == 64
    # DualPipe overlaps the EP all-to-all almost entirely with the other chunk's compute
    assert g.exposed_comm_ratio < 0.1


@needs_shared
def test_sendrecv_labelled_by_launch_context():
    """NCCL all-to-all is ncclDevKernel_SendRecv; its launch under 'dispatch'/'combine' names it."""
    a = analysis_of(str(shared("gpu/prefill_tbo_rank0.json.gz")))
    k = a.kernels
    sendrecv = k.filter(k["name"].cast(str).str.starts_with("ncclDevKernel_SendRecv"))
    cats = set(sendrecv["category"].cast(str).to_list())
    assert cats == {"moe.dispatch", "moe.combine"}
    assert sendrecv.filter(sendrecv["category"] == "moe.dispatch").height == 24  # 2 a2a x 3 layers x 2 mb x 2 iters
    assert sendrecv.filter(sendrecv["category"] == "moe.combine").height == 12


@needs_shared
def test_tp2_all_reduce_and_b200_multimem():
    tp = analysis_of(str(shared("gpu/tp2_dense_rank0.json.gz"))).gpus[0]
    assert tp.categories["comm.all_reduce"].count == 16  # 2 iterations x 4 layers x 2 all-reduces
    b200 = analysis_of(str(shared("peers/tracelens/b200__eager_trace.json.gz"))).gpus[0]
    assert b200.categories["comm.all_reduce"].time_us > 1000  # multimem_all_reduce_kernel, no 'nccl' in its name
