"""Scale features without timing: progress callbacks, --jobs, dropping event tables, worker decoding."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from traceview.analysis import analyze, analyze_many
from traceview.cli import main
from traceview.cli.progress import LoadProgress
from traceview.load import load

from conftest import PROJECT_FIXTURES

RANKS = sorted(PROJECT_FIXTURES.glob("prefill_tbo_rank*.json.gz"))


def _gpus(results):
    """Per-GPU results; sums to 12 significant digits (polars' grouped float sums can differ in
    the last bit between processes whose categorical codes were assigned in another order)."""
    def r(v):
        if isinstance(v, float):
            return float(f"{v:.12g}")
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return v
    return [[r(g.to_dict()) for g in a.gpus] for a in results]


def test_progress_reaches_the_end_and_jobs_give_the_same_results():
    seen = []
    one = analyze_many(RANKS, progress=lambda p, d, t: seen.append((p.name, d, t)))
    assert {name for name, _, _ in seen} == {p.name for p in RANKS}
    assert all(d <= t for _, d, t in seen)
    for p in RANKS:  # each file's last call says it is done
        assert [(d, t) for name, d, t in seen if name == p.name][-1][0] == [(d, t) for name, d, t in seen
                                                                             if name == p.name][-1][1]
    done = []
    two = analyze_many(RANKS, jobs=2, progress=lambda p, d, t: done.append(p.name))
    assert sorted(done) == sorted(p.name for p in RANKS)
    assert _gpus(one) == _gpus(two)


def test_without_event_tables_the_metrics_are_the_same():
    full = analyze_many(RANKS)
    slim = analyze_many(RANKS, jobs=2, keep_events=False)
    assert _gpus(full) == _gpus(slim)
    assert all(a.trace.events is None for a in slim)
    assert [a.kernels.height for a in full] == [a.kernels.height for a in slim]


def test_decoding_in_worker_processes_changes_nothing():
    path = RANKS[0]
    a = load(path, workers=1, chunk_bytes=1 << 16)
    b = load(path, workers=2, chunk_bytes=1 << 16)
    assert a.events.equals(b.events, null_equal=True)
    assert a.warnings == b.warnings


def test_progress_bar_is_hidden_off_a_terminal(capsys):
    with LoadProgress(RANKS) as bar:  # pytest's stderr is not a terminal
        bar(RANKS[0], 1, 2)
    assert bar.bar is None
    assert capsys.readouterr().err == ""


def test_progress_bar_counts_bytes():
    bar = LoadProgress(RANKS, enabled=True)
    bar.bar.console.quiet = True
    with bar:
        bar(RANKS[0], 1, 2)
        assert bar.bar.tasks[0].completed == bar.sizes[str(RANKS[0])] // 2
        bar(RANKS[0], 2, 2)
        bar(RANKS[1], 2, 2)
        assert bar.bar.tasks[0].completed == sum(bar.sizes.values())


@pytest.mark.parametrize("args", [[], ["--format", "csv", "--table", "categories"], ["--by", "microbatch"],
                                  ["--format", "json"]])
def test_cli_directory_with_jobs(tmp_path, args):
    for p in RANKS:
        shutil.copy(p, tmp_path / p.name)
    r1 = CliRunner().invoke(main, ["analyze", str(tmp_path), *args])
    r2 = CliRunner().invoke(main, ["analyze", str(tmp_path), "--jobs", "2", *args])
    assert r1.exit_code == 0, r1.output
    assert r2.exit_code == 0, r2.output
    assert len(r1.output) > 0 and len(r2.output) > 0


def test_analyze_accepts_workers():
    a = analyze(RANKS[0], workers=2)
    b = analyze(RANKS[0])
    assert _gpus([a]) == _gpus([b])
