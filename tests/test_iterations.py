"""Per-iteration time accounting, host-bound idle and the verdict, on real traces."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner

import reference as ref
from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared, trace_id
from traceview.cli import main
from traceview.metrics.segments import labelled

TBO = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
SERIAL = PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"
EXTRA = PROJECT_FIXTURES / "gpu-extra"
CASES = [TBO, SERIAL, EXTRA / "tp2_dense_decode_rank0.json.gz", EXTRA / "dense_decode_cudagraph.json.gz",
         EXTRA / "decode_tbo_copyengine.json.gz"]


@pytest.mark.parametrize("path", CASES, ids=trace_id)
def test_iteration_table_matches_reference(path):
    a = analysis_of(str(path))
    lab = labelled(a.kernels, a.segmentation)
    for g in a.gpus:
        d = lab.filter(pl.col("device") == g.device)
        rows = a.iterations.filter(pl.col("device") == g.device)
        events = [(s, e, r, None if l is None else l) for s, e, r, l in
                  zip(d["ts"].to_list(), d["end"].to_list(), d["role"].cast(str).to_list(), d["launch_ts"].to_list())]
        its: dict = {}
        for s, e, it in zip(d["ts"].to_list(), d["end"].to_list(), d["iteration"].to_list()):
            if it != "(none)":
                its.setdefault(it, []).append((s, e))
        if not its:  # no marks: one window over the span
            its = {"(none)": list(zip(d["ts"].to_list(), d["end"].to_list()))}
        want = ref.iteration_metrics(events, its)
        assert sorted(want) == sorted(rows["iteration"].to_list())
        for r in rows.iter_rows(named=True):
            w = want[r["iteration"]]
            for k, v in w.items():
                assert r[k] == pytest.approx(v, rel=1e-6, abs=1e-3), f"{path.name} {r['iteration']} {k}"
            assert (r["compute_us"] + r["exposed_comm_us"] + r["exposed_memory_us"] + r["idle_us"]
                    == pytest.approx(r["duration_us"]))
        marked = rows.filter(pl.col("iteration") != "(none)")
        if marked.height:  # windows tile the marked part of the span
            assert marked["duration_us"].sum() == pytest.approx(marked["end_us"].max() - marked["start_us"].min())


def test_tbo_prefill_iteration_time_and_what_if_in_default_output():
    r = CliRunner().invoke(main, ["analyze", str(TBO)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    # 252.4 ms over 2 ProfilerSteps; 0.730 ms/iter exposed
    assert "iteration 126.2 ms (mean of 2)" in out
    assert "exposed communication 0.730 ms/iter" in out
    assert "if the exposed communication were hidden: 125.5 ms" in out
    assert "2 micro-batches: the other micro-batch's compute hides" in out
    assert "overlap tax" in out and "911 kernel launches/iter" in out


def test_serial_vs_tbo_iteration_times():
    """The single-batch run is faster per iteration than two-batch overlap (120.5 vs 126.2 ms)."""
    tbo, serial = analysis_of(str(TBO)), analysis_of(str(SERIAL))
    assert serial.iteration_summary(0)["duration_us"] == pytest.approx(120_460, abs=50)
    assert tbo.iteration_summary(0)["duration_us"] == pytest.approx(126_214, abs=50)
    assert tbo.iteration_summary(0)["kernels"] > 1.9 * serial.iteration_summary(0)["kernels"]  # 911 vs 459


def test_by_iteration_has_duration_column_in_terminal_json_csv():
    r = CliRunner().invoke(main, ["analyze", str(TBO), "--by", "iteration", "--no-tax"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "duration" in r.output and "no kernel queued" in r.output and "128.962" in r.output
    r = CliRunner().invoke(main, ["analyze", str(TBO), "--by", "iteration", "--format", "csv"])
    header = r.output.splitlines()[0].split(",")
    assert {"duration_us", "idle_no_queue_us", "if_hidden_us"} <= set(header)
    import orjson

    r = CliRunner().invoke(main, ["analyze", str(TBO), "--format", "json"])
    doc = orjson.loads(r.output)
    t = doc["traces"][0]
    assert [round(x["duration_us"] / 1000, 1) for x in t["iterations"]] == [129.0, 123.5]
    assert round(t["gpus"][0]["per_iteration"]["duration_us"] / 1000, 1) == 126.2
    assert t["segments"]["by_iteration"][0]["duration_us"] == pytest.approx(t["iterations"][0]["duration_us"])


@needs_shared
def test_dense_decode_is_diagnosed_host_bound():
    """GPU idle 72% of the span: most of it with no kernel queued (the CPU was late)."""
    path = shared("gpu/dense_prefill_decode_ctx1024.json.gz")
    a = analysis_of(str(path))
    it = a.iterations  # the prefill pass and 16 decode steps (stage ranges are iterations): windows sum to the span
    assert it.height == 17
    assert it["idle_us"].sum() / it["duration_us"].sum() == pytest.approx(0.719, abs=0.001)
    assert it["idle_no_queue_us"].sum() == pytest.approx(61_287, abs=5)
    r = CliRunner().invoke(main, ["analyze", str(path)], env={"COLUMNS": "250"})
    out = " ".join(r.output.split())
    assert "iteration 6.358 ms (mean of 17)" in out
    assert "host-bound: no kernel queued for 3.605 ms/iter (56.7% of the iteration)" in out
    # and the same split holds against the reference
    test_iteration_table_matches_reference(path)


def test_tp2_dense_decode_host_bound_per_iteration():
    a = analysis_of(str(EXTRA / "tp2_dense_decode_rank0.json.gz"))
    s = a.iteration_summary(0)
    assert s["iterations"] == 3 and s["idle_no_queue_us"] / s["duration_us"] > 0.3
    from traceview.report.verdict import severity, verdict_lines

    assert severity(a, a.gpus[0]) == "bad"
    assert any(l.startswith("host-bound: no kernel queued for 2.209 ms/iter") for l in verdict_lines(a, a.gpus[0]))
