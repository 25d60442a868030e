"""``traceview analyze`` as a user runs it: formats, directories, and every bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, needs_shared, shared
from traceview.cli import main

TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_table_output_on_shipped_fixture():
    code, out, err = run("analyze", TBO0)
    assert code == 0, err
    assert "prefill_tbo_rank0.json.gz" in out and "exposed communication" in out
    assert "moe.dispatch" in out and "gemm.grouped" in out and "attention.mla" in out


def test_json_schema():
    code, out, _ = run("analyze", TBO0, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "traceview.analyze/1"
    (t,) = doc["traces"]
    assert t["rank"] == 0 and t["world_size"] == 2 and t["file"].endswith("prefill_tbo_rank0.json.gz")
    (g,) = t["gpus"]
    for key in ("device", "span_us", "compute_us", "comm_us", "memory_us", "overlap_us", "exposed_comm_us",
                "idle_us", "categories", "streams", "overlap_ratio"):
        assert key in g
    assert g["categories"]["moe.dispatch"]["count"] == 24
    assert set(g["categories"]["moe.dispatch"]) == {"time_us", "count", "share"}
    assert g["overlap_us"] + g["exposed_comm_us"] == pytest.approx(g["comm_us"])


def test_csv_tables(tmp_path):
    code, out, _ = run("analyze", TBO0, "--format", "csv")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.startswith("file,rank,device,span_us")
    code, out, _ = run("analyze", TBO0, "--format", "csv", "--table", "categories", "-o", tmp_path / "c.csv")
    assert code == 0 and "moe.combine" in (tmp_path / "c.csv").read_text()


def test_directory_of_ranks_one_row_each(tmp_path):
    for r in (0, 1):
        shutil.copy(PROJECT_FIXTURES / f"prefill_tbo_rank{r}.json.gz", tmp_path)
    (tmp_path / "MANIFEST.json").write_text('{"files": []}')  # not a trace: skipped in a directory
    code, out, err = run("analyze", tmp_path, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert [t["rank"] for t in doc["traces"]] == [0, 1]


def test_directory_with_a_bad_rank_still_reports_the_good_ones(tmp_path):
    shutil.copy(TBO0, tmp_path / "rank0.json.gz")
    (tmp_path / "rank1.json.gz").write_bytes(TBO0.read_bytes()[:1000])  # gzip cut inside the header
    code, out, err = run("analyze", tmp_path, "--format", "json")
    assert code == 2
    doc = json.loads(out)
    assert [t["rank"] for t in doc["traces"]] == [0]
    assert err.count("\n") == 1 and "rank1.json.gz" in err


def test_user_rules_override(tmp_path):
    rules = tmp_path / "r.toml"
    rules.write_text('[categories]\n"mine.flash" = { role = "compute", help = "x" }\n'
                     '[[rule]]\npattern = "flash_fwd"\ncategory = "mine.flash"\n')
    code, out, _ = run("analyze", TBO0, "--format", "json", "--rules", rules)
    assert code == 0
    cats = json.loads(out)["traces"][0]["gpus"][0]["categories"]
    assert "mine.flash" in cats and "attention.mla" not in cats


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    raw = gzip.decompress(TBO0.read_bytes())
    cases = {}
    p = tmp / "corrupt.json.gz"
    data = bytearray(TBO0.read_bytes())
    data[100:200] = bytes(100)
    p.write_bytes(bytes(data))
    cases["corrupt gzip"] = (p, "gzip")
    p = tmp / "empty.json"
    p.write_bytes(b"")
    cases["empty"] = (p, "empty")
    p = tmp / "config.json"
    p.write_text('{"model": "deepseek", "layers": 61}')
    cases["non-trace JSON"] = (p, "not a trace")
    p = tmp / "cpu_only.json"
    p.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1,
                                              "ts": 0, "dur": 5}]}))
    cases["no GPU events"] = (p, "no GPU events")
    cases["missing file"] = (tmp / "nope.json", "no such file")
    p = tmp / "truncated.json"
    p.write_bytes(raw[:200])
    cases["truncated before any event"] = (p, "truncated")
    p = tmp / "garbage.json"
    p.write_bytes(b"\x00\x01binary garbage")
    cases["binary garbage"] = (p, "not a trace")
    p = tmp / "emptydir"
    p.mkdir()
    cases["empty directory"] = (p, "no trace files")
    return cases


@pytest.mark.parametrize("case", ["corrupt gzip", "empty", "non-trace JSON", "no GPU events", "missing file",
                                  "truncated before any event", "binary garbage", "empty directory"])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, case):
    path, words = _bad_inputs(tmp_path)[case]
    code, out, err = run("analyze", path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"traceview: error: {path}") and words in lines[0]
    assert "Traceback" not in err + out


def test_truncated_trace_is_analyzed_up_to_the_cut(tmp_path):
    raw = gzip.decompress(TBO0.read_bytes())
    p = tmp_path / "killed.json"
    p.write_bytes(raw[: len(raw) * 2 // 3])
    code, out, err = run("analyze", p, "--format", "json")
    assert code == 0, err
    t = json.loads(out)["traces"][0]
    assert any("truncated" in w for w in t["warnings"])
    assert t["gpus"][0]["span_us"] > 0
    code, _out, err = run("analyze", p, "--strict")
    assert code == 2 and "--strict" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any directory")
def test_unreadable_directory(tmp_path):
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        code, _out, err = run("analyze", d)
    finally:
        d.chmod(0o755)
    assert code == 2 and "permission denied" in err


def test_console_script_runs_without_traceback(tmp_path):
    """The installed entry point (or python -m traceview) on a broken file: one line, exit 2."""
    p = tmp_path / "x.json"
    p.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "traceview", "analyze", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("traceview: error:") and "Traceback" not in r.stderr


@needs_shared
def test_shared_directory_of_gpu_traces():
    code, out, err = run("analyze", shared("gpu"), "--format", "json", "--jobs", "2")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["traces"]) == 12 and not doc["errors"]
