"""Trace health on real traces and on copies of them that reproduce each recording problem."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from test_cli_analyze import run
from traceview import analyze
from traceview.errors import TraceError
from traceview.load.health import launches_without_gpu_activity

EXTRA = PROJECT_FIXTURES / "gpu-extra"
GPU = ("kernel", "gpu_memcpy", "gpu_memset")


def _doc(path) -> dict:
    return json.loads(gzip.open(path).read())


def _write(doc, path):
    path.write_text(json.dumps(doc))
    return path


def _keys(a) -> list[str]:
    return [h.key for h in a.health]


def test_clean_captures_are_healthy():
    for path in (PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz", EXTRA / "dense_decode_cudagraph.json.gz",
                 EXTRA / "prefill_dbo_threads_rank1.json.gz", EXTRA / "decode_tbo_copyengine.json.gz"):
        assert analysis_of(str(path)).health == [], path.name


@needs_shared
def test_deepseek_trace_has_no_shapes():
    a = analysis_of(str(shared("deepseek/train.json")))
    assert _keys(a) == ["no_record_shapes"]
    code, out, err = run("analyze", str(shared("deepseek/train.json")), "--strict")
    assert code == 2 and "--strict: trace health: recorded without record_shapes" in err
    assert "trace health:" in out  # the report still prints, and says it


def test_dropped_graph_replays(tmp_path):
    """Remove the recorded kernels of 3 of the 16 replays (what CUPTI does when its buffer overflows)."""
    doc = _doc(EXTRA / "dense_decode_cudagraph.json.gz")
    launches = [e for e in doc["traceEvents"] if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch"]
    gone = {e["args"]["correlation"] for e in launches[5:8]}
    doc["traceEvents"] = [e for e in doc["traceEvents"]
                          if not (e.get("cat") in GPU and e.get("args", {}).get("correlation") in gone)]
    a = analyze(_write(doc, tmp_path / "overflow.json"))
    (h,) = a.health
    assert h.key == "graph_replays_missing" and h.count == 3
    assert "3 of 16 graph launches" in h.message


def test_profiler_without_cuda_activities_says_so(tmp_path):
    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") not in GPU + ("gpu_user_annotation",)]
    path = _write(doc, tmp_path / "cpu_only.json")
    with pytest.raises(TraceError, match="no GPU events, but [0-9,]+ kernel/graph launches on the CPU side"):
        analyze(path)
    missing, total = launches_without_gpu_activity(analysis_of(str(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")).trace.events)
    assert missing == 0 and total > 500


def test_no_record_shapes_on_a_stripped_copy(tmp_path):
    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    for e in doc["traceEvents"]:
        if e.get("cat") == "cpu_op":
            e.get("args", {}).pop("Input Dims", None)
    assert _keys(analyze(_write(doc, tmp_path / "noshapes.json"))) == ["no_record_shapes"]


def test_string_pids_of_a_merged_trace(tmp_path):
    """SGLang's profile merger rewrites every pid to '[TP00-DP00-PP00-EP00] <pid>'."""
    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    for e in doc["traceEvents"]:
        if isinstance(e.get("pid"), int):
            e["pid"] = f"[TP00-DP00-PP00-EP00] {e['pid']}"
    a = analyze(_write(doc, tmp_path / "merged.json"))
    assert "string_pids" in _keys(a)
    assert a.gpus and a.gpus[0].compute_us == pytest.approx(
        analysis_of(str(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")).gpus[0].compute_us)


def test_two_writers_interleaved(tmp_path):
    """Two ranks exporting to one path: both ranks' events in one file (TRT-LLM's comment)."""
    a, b = _doc(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"), _doc(PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz")
    for e in b["traceEvents"]:  # the other process: its own pid (correlation ids restart per process)
        if isinstance(e.get("pid"), int) and e.get("cat") not in GPU + ("gpu_user_annotation",):
            e["pid"] = e["pid"] + 1
    a["traceEvents"] = [x for pair in zip(a["traceEvents"], b["traceEvents"]) for x in pair]
    h = analyze(_write(a, tmp_path / "both.json")).health
    assert [x.key for x in h] == ["interleaved_writers"] and h[0].count > 50


def test_health_in_json():
    code, out, err = run("analyze", str(EXTRA / "dense_decode_cudagraph.json.gz"), "--format", "json")
    assert code == 0
    assert json.loads(out)["traces"][0]["health"] == []
