"""``traceview diff`` on the real EP2 prefill traces: serial vs two-batch overlap, rank vs rank,
runs of different lengths, kernel detail, saved documents, and bad inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, needs_shared, shared
from traceview.cli import main
from traceview.compare import diff_paths, diff_summaries
from traceview.gate.summary import from_analysis

SERIAL0 = PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"
TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
TBO1 = PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def one_iteration_trace(src: Path, dst: Path) -> Path:
    """A real trace cut to its first profiler step: CPU events before step 2, the GPU work they launched.

    Gives a run of a different length (1 iteration instead of 2) of the very same workload.
    """
    d = json.load(gzip.open(src))
    ev = d["traceEvents"]
    steps = sorted((e["ts"], e["name"]) for e in ev
                   if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#"))
    step2 = steps[1][0]
    gpu = {"kernel", "gpu_memcpy", "gpu_memset"}
    cpu = [e for e in ev if e.get("cat") not in gpu | {"gpu_user_annotation", "ac2g"}
           and ("ts" not in e or float(e["ts"]) < step2)]
    corr = {e["args"]["correlation"] for e in cpu
            if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    kept = [e for e in ev if e.get("cat") in gpu and e.get("args", {}).get("correlation") in corr]
    last = max(float(e["ts"]) + float(e.get("dur", 0)) for e in kept)
    ann = [e for e in ev if e.get("cat") == "gpu_user_annotation" and float(e["ts"]) < last]
    d["traceEvents"] = cpu + kept + ann
    with gzip.open(dst, "wt") as f:
        json.dump(d, f)
    return dst


@pytest.fixture(scope="session")
def tbo0_one_iteration(tmp_path_factory) -> Path:
    return one_iteration_trace(TBO0, tmp_path_factory.mktemp("short") / "prefill_tbo_rank0_1iter.json.gz")


@pytest.fixture(scope="module")
def serial_vs_tbo():
    result, errors = diff_paths([str(SERIAL0)], [str(TBO0)])
    assert not errors
    (d,) = result.pairs
    return d


def test_serial_vs_tbo_explains_the_difference(serial_vs_tbo):
    d = serial_vs_tbo
    kinds = {f.kind: f for f in d.findings}
    # communication hidden: exposed comm per iteration 3.03 ms (all of it) -> 0.73 ms (11%)
    hidden = kinds["comm_hidden"]
    assert hidden.base == pytest.approx(6052.34 / 2, rel=1e-3) and hidden.new == pytest.approx(1460.64 / 2, rel=1e-3)
    assert "100.0% -> 11.3%" in hidden.text
    # compute kernels slower: the same work takes more kernel time, mostly the expert GEMMs
    slower = kinds["compute_kernels"]
    assert slower.text.startswith("compute kernels slower") and slower.new > slower.base * 1.05
    assert "most in gemm.grouped" in slower.text
    assert d.categories[0].category == "gemm.grouped" and d.categories[0].delta == pytest.approx(6537.6, rel=1e-3)
    same = kinds["same_kernels"]
    assert "launched 2x as often" in same.text and same.new > same.base * 1.1
    assert kinds["overlap_tax"].base == 0 and kinds["overlap_tax"].new > 0
    # iteration time up: matches the step times the capture script measured (120.27 / 126.16 ms)
    it = kinds["iteration_time"]
    assert it.text.startswith("iteration time up")
    assert it.base == pytest.approx(120_272, rel=0.01) and it.new == pytest.approx(126_155, rel=0.01)
    # the explanation adds up: span = compute + exposed comm + exposed memory + idle
    t = {x.metric: x.delta for x in d.totals}
    assert t["span_us"] == pytest.approx(t["compute_us"] + t["exposed_comm_us"] + t["exposed_memory_us"] + t["idle_us"],
                                         abs=1.0)
    assert kinds["phase_exposed"].text.startswith("largest exposed-comm change by phase: dispatch")


def test_categories_segments_sorted_by_impact(serial_vs_tbo):
    d = serial_vs_tbo
    deltas = [abs(c.delta) for c in d.categories]
    assert deltas == sorted(deltas, reverse=True)
    for view in ("microbatch", "layer", "phase"):
        imp = [s.impact for s in d.segments[view]]
        assert imp and imp == sorted(imp, reverse=True)
    layers = {s.label: s for s in d.segments["layer"]}
    # each MoE layer hides most of its communication; the dense layer 0 has none
    for l in ("layer 1", "layer 2", "layer 3"):
        assert layers[l].new_exposed < 0.4 * layers[l].base_exposed
    assert layers["layer 0"].base_exposed == layers["layer 0"].new_exposed == 0
    # launches double (each op runs once per micro-batch), so mean kernel time halves
    g = next(c for c in d.categories if c.category == "gemm.grouped")
    assert (g.base_count, g.new_count) == (6, 12) and g.new_mean < g.base_mean


def test_cli_diff_serial_tbo_text_and_kernels():
    code, out, err = run("diff", SERIAL0, TBO0, "--kernels")
    assert code == 0, err
    for words in ("iteration time up", "communication hidden", "compute kernels slower", "100.0% -> 11.3%",
                  "gemm.grouped", "by microbatch", "by layer", "by phase", "kernels (name + launch grid)",
                  "[132,1,1]/[384,1,1]"):
        assert words in out, words
    code, out2, _ = run("diff", SERIAL0, TBO0)
    assert code == 0 and "kernels (name + launch grid)" not in out2


def test_json_document():
    code, out, err = run("diff", SERIAL0, TBO0, "--format", "json", "--kernels")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "traceview.diff/1" and doc["units"] == "microseconds per iteration"
    (p,) = doc["pairs"]
    assert p["matched_by"] == "same rank and GPU" and p["base"]["iterations"] == p["new"]["iterations"] == 2
    tot = {t["metric"]: t for t in p["totals_per_iteration"]}
    assert tot["exposed_comm_us"]["delta_us"] < -2000 and tot["span_us"]["delta_us"] > 5000
    grouped = next(k for k in p["kernels"] if k["category"] == "gemm.grouped")
    assert grouped["status"] == "both" and grouped["base_count"] == 6 and grouped["new_count"] == 12
    assert grouped["mean_delta_us"] < 0
    assert {f["kind"] for f in p["findings"]} >= {"iteration_time", "comm_hidden", "compute_kernels"}
    code, out, _ = run("diff", SERIAL0, TBO0, "--format", "json")
    assert json.loads(out)["pairs"][0]["kernels"] is None


def test_across_ranks_pairs_by_position():
    result, _ = diff_paths([str(TBO0)], [str(TBO1)])
    (d,) = result.pairs
    assert d.matched_by == "by position" and (d.base.rank, d.new.rank) == (0, 1)
    kinds = {f.kind: f for f in d.findings}
    assert "comm_exposed" in kinds and "24.0%" in kinds["comm_exposed"].text
    assert kinds["iteration_time"].text.startswith("iteration time about the same")
    # rank 1 waits in combine: the phase with the largest exposed-comm change
    assert d.segments["phase"][0].label in ("combine", "dispatch")
    assert kinds["phase_exposed"].text.startswith("largest exposed-comm change by phase: combine")
    assert "at the same launch count" in kinds["same_kernels"].text


def test_runs_of_different_lengths_are_normalized(tbo0_one_iteration):
    result, errors = diff_paths([str(TBO0)], [str(tbo0_one_iteration)])
    assert not errors
    (d,) = result.pairs
    assert (d.base.iterations, d.new.iterations) == (2, 1)
    assert any("iterations differ" in n for n in d.notes)
    span = d.total("span_us")
    # one step of the same workload: per-iteration values agree; raw totals would differ 2x
    assert span.new == pytest.approx(span.base, rel=0.05)
    for c in d.categories:
        assert c.new_count == c.base_count, c.category  # same launches per iteration
        if c.base_time > 1000 and c.role == "compute":  # (communication varies step to step: not compared)
            assert c.new_time == pytest.approx(c.base_time, rel=0.1), c.category
    assert d.total("exposed_comm_us").new == pytest.approx(857.75, rel=1e-3)  # iteration 1 alone
    assert not any(k.kind in ("comm_hidden", "comm_exposed") and abs(k.new - k.base) > 200 for k in d.findings)


def test_same_run_has_no_change():
    a = from_analysis(__import__("conftest").analysis_of(str(TBO0)))
    result = diff_summaries(a, a)
    (d,) = result.pairs
    assert all(t.delta == 0 for t in d.totals) and all(c.delta == 0 for c in d.categories)
    assert d.findings[0].text.startswith("iteration time about the same")
    assert all(k.status == "both" and k.delta == 0 for k in d.kernels)


def test_document_against_trace(tmp_path):
    doc = tmp_path / "base.json"
    code, out, _ = run("analyze", SERIAL0, "--format", "json", "-o", doc)
    assert code == 0
    code, out, err = run("diff", doc, TBO0)
    assert code == 0, err
    assert "communication hidden" in out and "kernel-level detail needs traces" in out
    result, _ = diff_paths([str(doc)], [str(TBO0)])
    traced, _ = diff_paths([str(SERIAL0)], [str(TBO0)])
    a, b = result.pairs[0], traced.pairs[0]
    for x, y in zip(a.totals, b.totals):
        assert x.base == pytest.approx(y.base) and x.new == pytest.approx(y.new)
    assert [c.category for c in a.categories] == [c.category for c in b.categories]
    assert {v: [s.label for s in r] for v, r in a.segments.items()} == \
        {v: [s.label for s in r] for v, r in b.segments.items()}


def test_bad_inputs_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "traceview.analyze/1", "traces": [')
    for args in ([SERIAL0, tmp_path / "missing.json.gz"], [bad, TBO0], [tmp_path, TBO0]):
        code, out, err = run("diff", *args)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("traceview: error: "), err
        assert "Traceback" not in err


@needs_shared
def test_decode_serial_vs_tbo_on_shared_traces():
    result, errors = diff_paths([str(shared("gpu/decode_serial_rank0.json.gz"))],
                                [str(PROJECT_FIXTURES / "gpu-extra" / "decode_tbo_rank0.json.gz")])
    assert not errors
    (d,) = result.pairs
    kinds = {f.kind: f for f in d.findings}
    assert d.base.iterations == d.new.iterations == 3
    assert "comm_hidden" in kinds and kinds["comm_hidden"].new < 0.2 * kinds["comm_hidden"].base


def _gpu(rank, device, span=1000.0, exposed=100.0, iterations=1, cats=None):
    from traceview.gate.summary import CategoryStat, GpuSummary

    totals = dict(span_us=span, busy_us=span, compute_us=span - exposed, comm_us=2 * exposed, memory_us=0.0,
                  overlap_us=exposed, exposed_comm_us=exposed, exposed_memory_us=0.0, idle_us=0.0)
    cats = cats or {"gemm.dense": (span - exposed, 10), "moe.dispatch": (2 * exposed, 2)}
    return GpuSummary(f"r{rank}.json", rank, device, iterations, totals,
                      {c: CategoryStat(t, n) for c, (t, n) in cats.items()},
                      {"gemm.dense": "compute", "moe.dispatch": "comm"})


def test_pairing_and_unmatched_gpus():
    base = [_gpu(0, 0), _gpu(1, 1)]
    new = [_gpu(1, 1, exposed=300.0), _gpu(2, 2), _gpu(3, 3)]
    result = diff_summaries(base, new, views=[])
    pairs = [(d.base.rank, d.new.rank, d.matched_by) for d in result.pairs]
    # rank 1 finds rank 1; rank 2 takes the baseline GPU at its position (rank 1); rank 3 has none
    assert pairs == [(1, 1, "same rank and GPU"), (1, 2, "by position")]
    assert result.unmatched == ["base rank 0 GPU 0 (r0.json)", "new rank 3 GPU 3 (r3.json)"]
    d = result.pairs[0]
    assert d.total("exposed_comm_us").delta == 200.0
    assert any(f.kind == "comm_exposed" for f in d.findings)
    assert d.kernels is None and d.segments == {}


def test_per_iteration_normalisation_by_hand():
    base = [_gpu(0, 0, span=3000.0, exposed=300.0, iterations=3,
                 cats={"gemm.dense": (2700.0, 30), "moe.dispatch": (600.0, 6)})]
    new = [_gpu(0, 0, span=2000.0, exposed=200.0, iterations=2,
                cats={"gemm.dense": (1800.0, 20), "moe.dispatch": (400.0, 4)})]
    (d,) = diff_summaries(base, new, views=[]).pairs
    assert all(t.delta == 0 for t in d.totals)
    assert all(c.delta == 0 and c.base_count == c.new_count and c.base_mean == c.new_mean for c in d.categories)
    assert d.notes[0].startswith("iterations differ (base 3, new 2)")


def test_a_truncated_side_is_warned_about_not_read_as_a_speedup(tmp_path):
    raw = gzip.decompress(TBO1.read_bytes())
    cut = tmp_path / "trunc1.json"
    cut.write_bytes(raw[: len(raw) * 2 // 3])  # a job killed mid-write: its last iteration is partial
    code, out, err = run("diff", TBO1, cut)
    assert code == 0
    assert err.startswith("traceview: warning: ") and "trunc1.json: file is truncated" in err
    assert "note: new trunc1.json: loader warning: file is truncated" in out
    code, out, _ = run("diff", TBO1, cut, "--format", "json")
    (pair,) = json.loads(out)["pairs"]
    assert any("loader warning" in n for n in pair["notes"])


def test_a_sidecar_in_a_compared_directory_is_noted_once(tmp_path):
    """A manifest beside the ranks is skipped with a note, as in analyze, and named once even when both
    sides scan the same directory; the diff itself still runs."""
    import shutil

    shutil.copy(SERIAL0, tmp_path / "rank0.json.gz")
    (tmp_path / "MANIFEST.json").write_text('{"files": {}}')
    code, out, err = run("diff", tmp_path, tmp_path)
    assert code == 0 and "iteration time" in out
    notes = [ln for ln in err.splitlines() if ln.startswith("traceview: note:")]
    assert notes == [f"traceview: note: {tmp_path / 'MANIFEST.json'}: skipped, not a trace: JSON without "
                     "'traceEvents' (a sidecar) (found in a directory; name it to get an error instead)"], err
