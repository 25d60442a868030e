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


# --- --strict on trace health: gate, analyze, report --------------------------------------------

def _replays_dropped(tmp_path):
    """The real full-graph decode with the kernels of 3 of its 16 replays removed (CUPTI overflow)."""
    doc = _doc(EXTRA / "dense_decode_cudagraph.json.gz")
    launches = [e for e in doc["traceEvents"] if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch"]
    gone = {e["args"]["correlation"] for e in launches[5:8]}
    doc["traceEvents"] = [e for e in doc["traceEvents"]
                          if not (e.get("cat") in GPU and e.get("args", {}).get("correlation") in gone)]
    return _write(doc, tmp_path / "overflow.json")


def _kernels_dropped(tmp_path):
    """A real capture with a third of its kernel records removed (dropped activity records)."""
    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    gone = {id(e) for e in kernels[::3]}
    doc["traceEvents"] = [e for e in doc["traceEvents"] if id(e) not in gone]
    return _write(doc, tmp_path / "dropped.json")


def test_gate_warns_on_health_and_strict_fails_with_a_line_per_problem(tmp_path):
    import xml.etree.ElementTree as ET

    path = _replays_dropped(tmp_path)
    code, out, err = run("gate", path, "--max-exposed-comm", "100%")
    assert code == 0, err
    lines = out.strip().splitlines()
    (warn,) = [x for x in lines if x.startswith("WARN")]
    assert warn.startswith("WARN  trace health: graph replays missing (3 of 16 graph launches have no recorded kernels")
    assert "allowed (--strict fails them)" in warn and "[overflow.json]" in warn
    assert lines[-1].endswith(", 1 trace health problem)") and lines[-1].startswith("gate: PASS")

    code, out, err = run("gate", path, "--max-exposed-comm", "100%", "--strict", "--junit", tmp_path / "j.xml",
                         "--github")
    assert code == 1, err
    fails = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert len(fails) == 1 and "graph replays missing" in fails[0] and "--strict: none allowed" in fails[0]
    (ann,) = [x for x in out.splitlines() if x.startswith("::error")]
    assert "trace health" in ann and "3 of 16 graph launches" in ann
    (failure,) = ET.parse(tmp_path / "j.xml").getroot().iter("failure")
    assert failure.get("type") == "trace_health" and "3 of 16 graph launches" in failure.get("message")


def test_gate_strict_reads_health_from_a_saved_document_and_each_problem(tmp_path):
    """Two problems in one real capture (kernel records dropped, no record_shapes): two FAIL lines;
    the saved analyze document carries them to the gate as the trace does."""
    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    gone = {id(e) for e in kernels[::3]}
    doc["traceEvents"] = [e for e in doc["traceEvents"] if id(e) not in gone]
    for e in doc["traceEvents"]:
        if e.get("cat") == "cpu_op":
            e.get("args", {}).pop("Input Dims", None)
    path = _write(doc, tmp_path / "two.json")
    code, out, _ = run("analyze", path, "--format", "json", "-o", tmp_path / "two.analyze.json")
    assert code == 0
    for src in (path, tmp_path / "two.analyze.json"):
        code, out, err = run("gate", src, "--max-exposed-comm", "100%", "--strict", "--format", "json")
        assert code == 1, err
        fails = [c for c in json.loads(out)["checks"] if c["status"] == "fail"]
        assert sorted(c["category"] for c in fails) == ["launches_without_gpu_activity", "no_record_shapes"]
        assert all(c["check"] == "trace_health" and c["message"].startswith("FAIL  trace health:") for c in fails)


@needs_shared
def test_gate_strict_fails_train_json_without_shapes():
    code, out, _ = run("gate", shared("deepseek/train.json"), "--max-exposed-comm", "100%", "--strict")
    assert code == 1 and "FAIL  trace health: no record shapes (recorded without record_shapes" in out


def test_analyze_and_report_strict_fail_on_health(tmp_path):
    path = _kernels_dropped(tmp_path)
    a = analyze(path)
    assert _keys(a) == ["launches_without_gpu_activity"]
    code, out, err = run("analyze", path, "--strict")
    assert code == 2 and err.count("--strict: trace health:") == 1 and "kernel launches have no GPU record" in err
    html = tmp_path / "r.html"
    code, _, err = run("report", path, "-o", html, "--strict")
    assert code == 2 and "--strict: trace health:" in err and html.stat().st_size > 0
    code, _, err = run("report", path, "-o", html)
    assert code == 0, err


# --- a GPU missing from deviceProperties ---------------------------------------------------------

def _without_device_entries(tmp_path, keep):
    doc = _doc(PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz")  # its kernels run on device 1
    doc["deviceProperties"] = [d for d in doc["deviceProperties"] if keep(d)]
    return _write(doc, tmp_path / "nodev.json")


def test_gpu_missing_from_device_properties_named_from_the_rest(tmp_path):
    """Device 1's entry removed: the other listed device is the same GPU model, so the name stands."""
    a = analyze(_without_device_entries(tmp_path, lambda d: d["id"] != 1))
    assert [g.device for g in a.gpus] == [1] and a.gpus[0].name == "NVIDIA H200"
    assert "gpu_name_unknown" not in _keys(a)
    from traceview.budget.reconcile import reconcile
    assert reconcile(a, "deepseek-v3").gpu.name == "H200"


def test_gpu_missing_from_device_properties_says_unknown(tmp_path):
    """No entry for device 1 and none that implies it (entries for other devices with other names):
    the output and health say so, and the budget refuses to pick a GPU."""
    doc = _doc(PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz")
    h200 = doc["deviceProperties"][0]
    doc["deviceProperties"] = [h200, {**h200, "id": 2, "name": "NVIDIA B200", "numSms": 148}]
    path = _write(doc, tmp_path / "mixed.json")
    a = analyze(path)
    assert a.gpus[0].name is None
    (h,) = [h for h in a.health if h.key == "gpu_name_unknown"]
    assert h.message.startswith("GPU name unknown (device 1 not in deviceProperties, which lists 0 (NVIDIA H200), "
                                "2 (NVIDIA B200))")
    code, out, err = run("analyze", path)
    assert code == 0 and "GPU name unknown (device 1 not in deviceProperties" in out
    code, out, err = run("analyze", path, "--model", "deepseek-v3")
    assert code == 2 and "GPU name unknown (device 1 not in deviceProperties" in err and "give --gpu" in err
    code, out, err = run("analyze", path, "--model", "deepseek-v3", "--gpu", "H200")
    assert code == 0, err
    for empty in (_without_device_entries(tmp_path, lambda d: False),):
        assert "GPU name unknown (device 1 not in deviceProperties)" in analyze(empty).health[0].message


@needs_shared
def test_sglang_rank_lists_only_its_visible_gpu():
    """TraceLens's SGLang MI300X traces: kernels on device 9, deviceProperties lists one device (0)."""
    a = analysis_of(str(shared("peers/tracelens/inference__sglang_decode__sglang_Qwen3-8B_decode.json.gz")))
    assert [g.device for g in a.gpus] == [9] and a.gpus[0].name == "AMD Instinct MI300X"
    assert "gpu_name_unknown" not in _keys(a)


def test_gate_on_a_capture_without_cuda_activities_is_an_input_error(tmp_path):
    """Every GPU record removed (a profiler run with activities=[CPU]): not a pass on nothing, an
    input error naming why (exit 2), as analyze says it."""
    import xml.etree.ElementTree as ET

    doc = _doc(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz")
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") not in GPU + ("gpu_user_annotation",)]
    path = _write(doc, tmp_path / "cpu_only.json")
    code, out, err = run("gate", path, "--max-exposed-comm", "100%", "--junit", tmp_path / "j.xml")
    assert code == 2 and "profiler ran without CUDA activities" in err and len(err.strip().splitlines()) == 1
    (error,) = ET.parse(tmp_path / "j.xml").getroot().iter("error")
    assert "kernel/graph launches on the CPU side" in error.get("message")
