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


# --- cross-rank skew: shown for every directory of ranks, and never from a wrong pairing -------------

def _copy(names, d: Path) -> Path:
    d.mkdir()
    for n in names:
        shutil.copy(PROJECT_FIXTURES / n, d / n)
    return d


def test_skew_is_shown_without_by_for_a_directory_of_ranks(tmp_path):
    d = _copy(["prefill_tbo_rank0.json.gz", "prefill_tbo_rank1.json.gz"], tmp_path / "ep2")
    code, out, err = run("analyze", d)
    assert code == 0, err
    assert "Collective skew between ranks" in out and "moe.dispatch" in out
    assert "different numbers" not in out


def test_two_files_of_one_rank_analyze_without_skew(tmp_path):
    """The project's fixtures/ holds rank 0 twice (serial and tbo): every view works, skew says why it is absent."""
    d = _copy(["prefill_tbo_rank0.json.gz", "prefill_tbo_rank1.json.gz", "prefill_serial_rank0.json.gz"],
              tmp_path / "dup")
    for args in ([], ["--by", "microbatch"], ["--tax"]):
        code, out, err = run("analyze", d, *args)
        assert code == 0, err
        assert "two files claim one rank (rank 0: prefill_serial_rank0.json.gz, prefill_tbo_rank0.json.gz)" in out
        assert "Collective skew between ranks" not in out
    code, out, err = run("analyze", d, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["skew"] is None and "claim one rank" in doc["skew_caveats"][0]
    assert doc["run"]["cross_rank"] is False and "claim one rank" in doc["run"]["reason"]
    code, out, err = run("report", d, "-o", tmp_path / "r.html")
    assert code == 0, err
    assert "two files claim one rank" in (tmp_path / "r.html").read_text()


def test_ranks_of_different_runs_are_flagged(tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    shutil.copy(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz", d / "rank0.json.gz")
    raw = gzip.decompress((PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz").read_bytes())
    (d / "rank1.json").write_bytes(raw[: len(raw) // 2])  # rank 1 cut short: fewer collectives
    code, out, err = run("analyze", d)
    assert code == 0, err
    assert "no cross-rank numbers: no collective matched across ranks (" in out
    assert "rank 0 12, rank 1 2" in out and "rank 1: trace cut short" in out


def test_csv_of_a_view_has_a_stable_column_order_and_one_table():
    heads = {run("analyze", TBO0, "--by", "layer", "--format", "csv")[1].splitlines()[0] for _ in range(3)}
    assert len(heads) == 1
    cats = [c for c in heads.pop().split(",") if c.startswith("cat:")]
    assert cats == sorted(cats) and "cat:gemm.grouped" in cats
    code, _, err = run("analyze", TBO0, "--by", "layer", "--by", "microbatch", "--format", "csv")
    assert code == 2 and "give one --by" in err
    code, _, err = run("analyze", TBO0, "--by", "layer", "--table", "categories", "--format", "csv")
    assert code == 2 and "--table and --by do not go together" in err


def test_json_document_holds_every_view_and_gates_per_iteration(tmp_path):
    doc_path = tmp_path / "doc.json"
    code, _, err = run("analyze", TBO0, "--format", "json", "-o", doc_path)
    assert code == 0, err
    seg = json.loads(doc_path.read_text())["traces"][0]["segments"]
    for view in ("microbatch", "layer", "phase", "iteration", "stage", "stage_phase"):
        assert seg[f"by_{view}"], view
    assert [r["iteration"] for r in seg["by_iteration"]] == ["1", "2"]
    code, out, err = run("gate", doc_path, "--max-exposed-comm", "50%", "--per", "iteration", "--no-config")
    assert code == 0, err
    assert out.count("PASS  exposed comm") == 2 and "iteration 2" in out


def test_a_rule_with_an_undeclared_category_is_refused(tmp_path):
    rules = tmp_path / "typo.toml"
    rules.write_text('[[rule]]\npattern = "flash_fwd"\ncategory = "atention.mla"\n')
    code, out, err = run("analyze", TBO0, "--rules", rules)
    assert code == 2 and out == ""
    assert err.strip() == (f"traceview: error: {rules}: rule 1: category 'atention.mla' is not declared: add it under "
                           '[categories] ("atention.mla" = { role = "compute" }) or use a known one')


@pytest.mark.parametrize("extra", [["--table", "collectives"], ["--table", "ranks"], ["--by", "microbatch"]])
def test_parquet_is_the_csv_table(tmp_path, extra):
    """--format parquet writes the very table --format csv prints (the run's collectives of the EP2 decode
    pair, its ranks, a --by view), typed; without -o it is a usage error."""
    import polars as pl

    ranks = [PROJECT_FIXTURES / "gpu-extra" / f"decode_tbo_rank{r}.json.gz" for r in (0, 1)]
    code, _, err = run("analyze", *ranks, *extra, "--format", "parquet", "-o", tmp_path / "t.parquet")
    assert code == 0, err
    code, out, _ = run("analyze", *ranks, *extra, "--format", "csv", "-o", tmp_path / "t.csv")
    assert code == 0
    pq, csv = pl.read_parquet(tmp_path / "t.parquet"), pl.read_csv(tmp_path / "t.csv")
    assert pq.columns == csv.columns and pq.height == csv.height > 1
    for c in pq.columns:
        if pq[c].dtype.is_numeric() and csv[c].dtype.is_numeric():
            assert (pq[c].cast(pl.Float64) - csv[c].cast(pl.Float64)).abs().max() <= 1e-6 * (1 + pq[c].abs().max())
    code, _, err = run("analyze", *ranks, "--format", "parquet")
    assert code == 2 and "give -o FILE.parquet" in err
