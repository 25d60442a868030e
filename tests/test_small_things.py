"""Small things that looked like bugs: warnings first, stages by time, short repr, GPU names
of rank-less files, trace names in a 110-column terminal."""

from __future__ import annotations

import gzip

from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from traceview.cli import main

TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
TBO1 = PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"
COPY = PROJECT_FIXTURES / "gpu-extra" / "prefill_tbo_copyengine.json.gz"


def test_loader_warnings_come_first(tmp_path):
    raw = gzip.decompress(TBO0.read_bytes())
    cut = tmp_path / "cut_rank0.json"
    cut.write_bytes(raw[: int(len(raw) * 0.9)])  # a killed job: truncated mid-file
    r = CliRunner().invoke(main, ["analyze", str(cut)], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].startswith("warning: cut_rank0.json: file is truncated")
    assert not any(l.startswith("warning:") for l in lines[2:])
    out = tmp_path / "cut.html"
    assert CliRunner().invoke(main, ["report", str(cut), "-o", str(out)]).exit_code == 0
    html = out.read_text()
    assert html.index("<b>Loader warnings</b>") < html.index('<div class="verdicts">')


@needs_shared
def test_stages_sorted_by_time():
    a = analysis_of(str(shared("gpu/dense_prefill_decode_ctx1024.json.gz")))
    st = a.segments("stage")
    assert st["stage"].to_list()[:2] == ["prefill", "decode"]
    assert st["start_us"].is_sorted()


def test_short_repr_and_notebook_summary():
    a = analysis_of(str(TBO0))
    text = repr(a)
    assert "\n" not in text and len(text) < 300 and text.startswith("TraceAnalysis('prefill_tbo_rank0.json.gz'")
    html = a._repr_html_()
    assert "iteration 126.2 ms" in html and "<table>" in html and len(html) < 5000


def test_rankless_two_gpu_file_names_gpus_plainly():
    r = CliRunner().invoke(main, ["analyze", str(COPY)], env={"COLUMNS": "160"})
    assert r.exit_code == 0
    assert "r?/" not in r.output and "  gpu0: iteration" in r.output and "  gpu1: iteration" in r.output
    header = next(l for l in r.output.splitlines() if l.lstrip().startswith("trace"))
    assert "rank" not in header  # no rank anywhere: no column of "-"


def test_trace_names_whole_in_110_columns():
    r = CliRunner().invoke(main, ["analyze", str(TBO0), str(TBO1)], env={"COLUMNS": "110"})
    assert r.exit_code == 0
    rows = [l for l in r.output.splitlines() if l.lstrip().startswith("prefill_tbo_rank")]
    assert [l.split()[0] for l in rows[:2]] == ["prefill_tbo_rank0", "prefill_tbo_rank1"]
    assert all(len(l) <= 110 for l in r.output.splitlines())
    table = r.output.split("GPU time (ms)", 1)[1].split("r0/gpu0", 1)[0]
    assert "…" not in table and "6.759" in table and "5.927" in table  # idle, the last column, shown
