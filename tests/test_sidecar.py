"""A results file (a JSON list) beside the ranks: skipped with a note when scanned, an error when named."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import PROJECT_FIXTURES
from traceview.cli import main


def _dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for r in (0, 1):
        name = f"prefill_tbo_rank{r}.json.gz"
        (d / name).write_bytes((PROJECT_FIXTURES / name).read_bytes())
    (d / "results.json").write_text(json.dumps([{"model": "deepseek-v3", "ms_per_iter": 126.2}, {"ok": True}]))
    return d


def test_scanned_sidecar_is_skipped_with_a_note(tmp_path):
    d = _dir(tmp_path)
    r = CliRunner().invoke(main, ["analyze", str(d)])
    assert r.exit_code == 0, r.stderr
    assert "traceview: note:" in r.stderr and "results.json: skipped, not a trace" in r.stderr
    assert "traceview: error" not in r.stderr and "2 traces" in r.stdout
    r = CliRunner().invoke(main, ["gate", str(d), "--max-exposed-comm", "5%"])
    assert r.exit_code == 0 and "gate: PASS (2 checks)" in r.stdout, r.output
    assert r.stdout.startswith("NOTE  skipped") and "results.json" in r.stdout.splitlines()[0]
    r = CliRunner().invoke(main, ["report", str(d), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0 and "results.json: skipped" in r.stderr


def test_named_sidecar_is_still_an_error(tmp_path):
    d = _dir(tmp_path)
    r = CliRunner().invoke(main, ["analyze", str(d / "results.json")])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"traceview: error: {d / 'results.json'}: not a trace: none of its JSON objects is a trace event"


def test_skipped_and_errors_survive_worker_processes(tmp_path):
    """--jobs 2: the skip (and a TraceError) come back from a worker process intact."""
    import pickle

    from traceview.analysis import SkippedInput
    from traceview.errors import TraceError

    for e in (SkippedInput("a/results.json", "not a trace"), TraceError("b.json", "bad")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and (back.path, back.reason) == (e.path, e.reason)
    r = CliRunner().invoke(main, ["analyze", str(_dir(tmp_path)), "--jobs", "2", "--format", "json"])
    assert r.exit_code == 0 and "results.json: skipped" in r.stderr
