"""GPU from the trace, sanity warnings, serving figures and communication against transfer
(issue 15), on the real H200 captures."""

from __future__ import annotations

import orjson
import polars as pl
import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from reference import step_time_ms
from traceview.budget import get_gpu
from traceview.budget.gpus import gpu_from_device
from traceview.budget.reconcile import reconcile
from traceview.cli import main

EXTRA = PROJECT_FIXTURES / "gpu-extra"
PREFILL = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
GiB = 2**30


@pytest.mark.parametrize("name, sms, mem, spec", [
    ("NVIDIA H200", 132, 150109880320, "H200"),            # the captures' own deviceProperties
    ("NVIDIA B200", 148, 191503138816, "B200"),            # peers/tracelens/b200__eager_trace
    ("AMD Instinct MI300X", 304, 206141652992, "MI300X"),  # peers/tracelens sglang
    ("", 304, 206141652992, "MI300X"),                     # peers/tracelens vllm: no name, SMs + memory fit
    ("NVIDIA H100 80GB HBM3", 132, 85_031_714_816, "H100"),
    ("NVIDIA H100 PCIe", 114, 85_031_714_816, "H100-PCIe"),
    ("NVIDIA H100 NVL", 132, 99_857_989_632, "H100-NVL"),
    ("NVIDIA H800", 132, 85_031_714_816, "H800"),
    ("NVIDIA H20", 78, 102_005_473_280, "H20"),
    ("NVIDIA H20", 78, 150_109_880_320, "H20-3e"),
    ("NVIDIA A100-SXM4-40GB", 108, 42_505_273_344, "A100-40GB"),
    ("NVIDIA A100-SXM4-80GB", 108, 85_051_572_224, "A100"),
    ("NVIDIA L40S", 142, 47_697_362_944, "L40S"),
])
def test_device_properties_map_to_a_spec(name, sms, mem, spec):
    assert gpu_from_device({"name": name, "numSms": sms, "totalGlobalMem": mem}).name == spec


def test_unknown_devices_map_to_nothing():
    assert gpu_from_device({"name": "Tesla V100-SXM2-16GB", "numSms": 80, "totalGlobalMem": 16 * GiB}) is None
    assert gpu_from_device({"name": "", "numSms": 77, "totalGlobalMem": 16 * GiB}) is None


def test_analyze_with_model_only_takes_the_gpu_from_the_trace():
    r = CliRunner().invoke(main, ["analyze", str(PREFILL), "--model", "deepseek-v3"])
    assert r.exit_code == 0, r.stderr
    assert "GPU spec H200 (from the trace: NVIDIA H200, 132 SMs" in r.stdout
    assert "warning:" not in r.stdout
    r = CliRunner().invoke(main, ["analyze", str(PREFILL), "--model", "deepseek-v3", "--format", "json"])
    rec = orjson.loads(r.stdout)["traces"][0]["reconciliation"]
    assert rec["gpu"] == "H200" and rec["gpu_source"].startswith("from the trace: NVIDIA H200")
    assert rec["warnings"] == [] and rec["convention"] == "complete"


# --- sanity warnings: the wrong inputs, and none on the right ones -------------------
RIGHT = [(PREFILL, "deepseek-v3"), (PROJECT_FIXTURES / "prefill_serial_rank0.json.gz", "deepseek-v3"),
         (EXTRA / "decode_tbo_rank0.json.gz", "deepseek-v3"), (EXTRA / "tp2_dense_decode_rank0.json.gz", "deepseek-v3"),
         (EXTRA / "prefill_tbo_copyengine.json.gz", "deepseek-v3"), (EXTRA / "dense_decode_cudagraph.json.gz", "qwen2-7b")]


@pytest.mark.parametrize("path, model", RIGHT, ids=lambda x: getattr(x, "name", x))
def test_no_warning_on_right_inputs(path, model):
    rec = reconcile(analysis_of(str(path)), model)
    assert rec.warnings == []


@needs_shared
@pytest.mark.parametrize("rel, model", [("gpu/decode_serial_rank0.json.gz", "deepseek-v3"),
                                        ("gpu/tp2_dense_rank0.json.gz", "deepseek-v3"),
                                        ("gpu/dense_prefill_decode_ctx1024.json.gz", "qwen2-7b")])
def test_no_warning_on_right_shared_inputs(rel, model):
    assert reconcile(analysis_of(str(shared(rel))), model).warnings == []


@pytest.mark.parametrize("kw, option, needle", [
    (dict(gpu="H800"), "--gpu", "--gpu H800 contradicts the trace's device (NVIDIA H200"),
    (dict(phase="decode"), "--phase", "--phase decode contradicts the trace's shapes: its attention has 4096"),
    (dict(model="qwen2-7b"), "--model", "--model qwen2-7b: none of the trace's"),
])
def test_wrong_inputs_warn_naming_the_option(kw, option, needle):
    rec = reconcile(analysis_of(str(PREFILL)), **({"model": "deepseek-v3"} | kw))
    assert any(w.startswith(needle) for w in rec.warnings), rec.warnings
    assert all(option in w for w in rec.warnings), rec.warnings


def test_gpu_h800_on_h200_flags_the_impossible_efficiency():
    """The issue's case: combine above 100% of the H800's peak (the H200 is faster)."""
    rec = reconcile(analysis_of(str(PREFILL)), "deepseek-v3", "H800")
    eff = rec.summary.filter(pl.col("class") == "combine")["efficiency"][0]
    assert eff > 1
    assert any(w.startswith("combine: efficiency") and "check --gpu" in w for w in rec.warnings)


def test_model_far_from_measured_is_flagged():
    rec = reconcile(analysis_of(str(PREFILL)), "qwen2-7b")
    mla = rec.summary.filter(pl.col("class") == "mla").row(0, named=True)
    assert mla["vs_model"] < 1 / 3  # the model of a 7B attention on DeepSeek's
    assert any(w.startswith("mla: model/measured") and "--model" in w for w in rec.warnings)


@pytest.mark.parametrize("fmt", ["table", "json", "html"])
def test_warnings_and_notes_are_the_same_in_terminal_json_and_html(fmt, tmp_path):
    rec = reconcile(analysis_of(str(PREFILL)), "deepseek-v3", "H800")
    args = [str(PREFILL), "--model", "deepseek-v3", "--gpu", "H800"]
    if fmt == "html":
        out = tmp_path / "r.html"
        r = CliRunner().invoke(main, ["report", *args[:1], "-o", str(out), *args[1:]])
        assert r.exit_code == 0, r.stderr
        import html
        text = html.unescape(out.read_text())
    else:
        r = CliRunner().invoke(main, ["analyze", *args, "--format", fmt])
        assert r.exit_code == 0, r.stderr
        text = r.stdout if fmt == "table" else None
    if fmt == "json":
        doc = orjson.loads(r.stdout)["traces"][0]["reconciliation"]
        assert doc["warnings"] == rec.warnings and doc["notes"] == rec.notes()
        assert set(rec.table().columns) <= set(doc["summary"][0])
        return
    flat = " ".join(text.split())
    for line in rec.warnings + rec.notes() + rec.serving_lines():
        assert " ".join(line.split()) in flat, line
    from traceview.report.text import word

    for col in rec.table().columns:  # in the one vocabulary (report/text.py WORDS); the terminal says gpu
        assert ("gpu" if col == "device" and fmt == "table" else word(col)) in text, col


# --- serving figures ---------------------------------------------------------------------------
@pytest.mark.parametrize("path, phase, tokens", [
    (PREFILL, "prefill", 8192),                       # 2 micro-batches of 4096 tokens per iteration
    (EXTRA / "decode_tbo_rank0.json.gz", "decode", 128),  # 128 requests per rank
])
def test_serving_step_against_a_plain_json_reading(path, phase, tokens):
    rec = reconcile(analysis_of(str(path)), "deepseek-v3")
    row = rec.serving.row(0, named=True)
    assert row["phase"] == phase and row["step"] == ("TPOT" if phase == "decode" else "prefill chunk")
    assert row["step_ms"] == pytest.approx(step_time_ms(path), rel=1e-9)
    assert row["tokens_per_step"] == tokens
    assert row["tokens_per_s"] == pytest.approx(tokens / row["step_ms"] * 1000)
    assert 0 < row["model_step_overlap_ms"] <= row["model_step_ms"]
    modeled = rec.segments.filter(pl.col("model_ms").is_not_null())
    assert row["model_step_ms"] == pytest.approx(modeled["model_ms"].sum() / row["steps"])
    line = rec.serving_lines()[0]
    assert f"measured {row['step_ms']:,.1f} ms" in line and "(overlap)" in line and "(no overlap)" in line


@needs_shared
def test_serving_decode_steps_without_iteration_labels():
    """dense_prefill_decode_ctx1024: a prefill pass of 4 x 1024 tokens, then 16 decode steps of 4
    sequences in one unlabelled stage: the steps come from the attention ops per layer."""
    rec = reconcile(analysis_of(str(shared("gpu/dense_prefill_decode_ctx1024.json.gz"))), "qwen2-7b")
    by = {r["stage"]: r for r in rec.serving.iter_rows(named=True)}
    assert by["decode"]["steps"] == 16 and by["decode"]["tokens_per_step"] == 4
    assert by["prefill"]["steps"] == 1 and by["prefill"]["tokens_per_step"] == 4096


# --- communication against transfer, not waiting ----------------------------------------------
def test_comm_efficiency_against_a_given_transfer_time():
    a = analysis_of(str(PREFILL))
    plain = reconcile(a, "deepseek-v3")
    assert any("including waiting for peers" in n for n in plain.notes())
    iters = a.segmentation.summary()["iterations"]
    d = plain.summary.filter(pl.col("class") == "dispatch").row(0, named=True)
    transfer_us = d["measured_ms"] * iters * 1000 / 4  # say a quarter of the kernel time moved data
    rec = reconcile(a, "deepseek-v3", comm_transfer_us={"moe.dispatch": transfer_us})
    r = rec.summary.filter(pl.col("class") == "dispatch").row(0, named=True)
    assert r["transfer_ms"] == pytest.approx(d["measured_ms"] / 4)
    assert r["efficiency"] == pytest.approx(4 * d["efficiency"])
    c = rec.summary.filter(pl.col("class") == "combine").row(0, named=True)
    assert c["transfer_ms"] is None and c["efficiency"] == pytest.approx(
        plain.summary.filter(pl.col("class") == "combine")["efficiency"][0])
    assert any("against the measured transfer time" in n for n in rec.notes())
    assert "transfer_ms" in rec.table().columns and "transfer_ms" not in plain.table().columns
    with pytest.raises(Exception, match="not a communication class"):
        reconcile(a, "deepseek-v3", comm_transfer_us={"gemm.grouped": 1.0})


def test_explicit_gpu_matching_the_trace_is_quiet():
    rec = reconcile(analysis_of(str(PREFILL)), "deepseek-v3", get_gpu("H200"))
    assert rec.gpu_source == "--gpu" and rec.warnings == []
