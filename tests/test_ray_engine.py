"""The Ray engine on a real local Ray cluster (started once for the module): the same run
analysis as the local engine, node-local placement, failed rank tasks, cancellation."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, needs_shared, shared
from traceview.cli import main
from traceview.errors import TraceError, UsageError
from traceview.run import analyze_run
from traceview.run.engine import LocalEngine, RankTask, RayEngine, discover, map_run, place

DECODE = [PROJECT_FIXTURES / "gpu-extra" / f"decode_tbo_rank{r}.json.gz" for r in (0, 1)]
PREFILL = [shared(f"gpu/prefill_tbo_rank{r}.json.gz") for r in (0, 1)]
SMALL = PROJECT_FIXTURES / "gpu-extra" / "tp2_dense_decode_rank0.json.gz"


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed here (pip install "traceview[ray]")')
    if not ray.is_initialized():
        import logging

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def decode_local():
    return analyze_run(DECODE)


def test_without_ray_the_engine_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is not installed
    with pytest.raises(UsageError, match=r'pip install "traceview\[ray\]"'):
        analyze_run(DECODE, engine="ray")
    for cmd in (["analyze"], ["report", "-o", "/tmp/x.html"]):
        r = CliRunner().invoke(main, [*cmd, str(DECODE[0]), "--engine", "ray"])
        assert r.exit_code == 2
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and 'pip install "traceview[ray]"' in lines[0], r.output


def test_same_run_analysis_as_local_decode(ray_cluster, decode_local):
    ray_run = analyze_run(DECODE, engine="ray")
    assert ray_run.to_dict() == decode_local.to_dict()
    assert ray_run.cross_rank and ray_run.straggler is not None  # a real comparison, not two empty runs
    assert [r.file for r in ray_run.ranks] == [str(p) for p in DECODE]


@needs_shared
def test_same_run_analysis_as_local_prefill_directory(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in PREFILL:
        shutil.copy(p, run_dir / p.name)
    shutil.copy(shared("gpu/MANIFEST.json"), run_dir / "MANIFEST.json")  # skipped in a directory, both engines
    local = analyze_run(run_dir)
    on_ray = analyze_run(run_dir, engine="ray")
    assert on_ray.to_dict() == local.to_dict()
    assert local.ranks_loaded == 2 and not local.errors


def test_failed_rank_is_one_error_and_the_run_goes_on(ray_cluster, decode_local, tmp_path):
    for p in DECODE:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "decode_tbo_rank2.json").write_text('{"traceEvents": [{"ph": "X", "name": ')  # cut short
    rel = os.path.relpath(tmp_path)  # relative paths: against the driver's working directory
    done = []

    class Count:
        def expect(self, n):
            done.append(("expect", n))

        def __call__(self, path, d, t):
            done.append(str(path))

    run = analyze_run(rel, engine="ray", progress=Count())
    assert done[0] == ("expect", 3) and sorted(done[1:]) == [os.path.join(rel, n) for n in
                                                             ("decode_tbo_rank0.json.gz", "decode_tbo_rank1.json.gz",
                                                              "decode_tbo_rank2.json")]
    local = analyze_run(rel)
    assert [str(e) for e in run.errors] == [str(e) for e in local.errors]
    assert len(run.errors) == 1 and run.errors[0].path == os.path.join(rel, "decode_tbo_rank2.json")
    assert "\n" not in str(run.errors[0])
    assert run.partial and run.ranks_loaded == 2
    # the good ranks are still the full run analysis
    assert run.to_dict()["straggler"] == decode_local.to_dict()["straggler"]


@dataclass(frozen=True)
class CrashOn(RankTask):
    """A rank task whose worker process dies on one file (as when the OOM killer takes it)."""

    crash_name: str = ""

    def run(self, path):
        if Path(path).name == self.crash_name:
            os._exit(1)
        return super().run(path)


def test_lost_worker_is_that_ranks_error(ray_cluster, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task class travels with the task
    files = [tmp_path / p.name for p in DECODE] + [tmp_path / "decode_tbo_rank9.json.gz"]
    for src, dst in zip(DECODE + [DECODE[1]], files):
        shutil.copy(src, dst)
    summaries, errors = map_run(RayEngine(), [tmp_path], CrashOn(crash_name=files[2].name))
    assert [e.path for e in errors] == [str(files[2])]
    assert "worker process died" in errors[0].reason
    assert sorted(s.rank for s in summaries) == [0, 1]


def test_node_local_files_are_pinned_to_their_node(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in DECODE:
        shutil.copy(p, run_dir / p.name)
    node = ray_cluster.get_runtime_context().get_node_id()
    found, missing = discover([str(run_dir)])
    assert [Path(f.path).name for f in found] == [p.name for p in DECODE] and not missing
    # seen on this node only: each rank task runs there (hard affinity)
    pls = place([str(run_dir)], {node: ("10.0.0.1", found, missing)})
    assert [p.node for p in pls] == [node, node]
    assert [p.shown for p in pls] == [str(run_dir / p.name) for p in DECODE]
    # seen identically on two nodes: shared storage, runs anywhere
    assert {p.node for p in place([str(run_dir)], {node: ("a", found, {}), "other": ("b", found, {})})} == {None}
    # the same names with other contents on a second node: one rank per node, named by node
    other = [type(f)(f.path, f.scanned, f.size + 1, f.mtime_ns, "x") for f in found]
    two = place([str(run_dir)], {node: ("10.0.0.1", found, {}), "n2": ("10.0.0.2", other, {})})
    assert [(p.node, p.shown.split(":")[0]) for p in two] == [(node, "10.0.0.1"), ("n2", "10.0.0.2")] * 2
    # nowhere: one line naming the path as given
    with pytest.raises(TraceError, match=r"no such file or directory \(on any of the 1 Ray node"):
        place(["nope/"], {node: ("10.0.0.1", *discover([os.path.abspath("nope/")]))})


def test_interrupt_cancels_the_rank_tasks_left(ray_cluster, tmp_path):
    for i in range(8):
        shutil.copy(SMALL, tmp_path / f"copy{i}.json.gz")
    engine = RayEngine()

    def interrupt(path, d, t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(engine.map([tmp_path], RankTask(), interrupt))
    assert engine.cancelled  # 2 CPUs: most of the 8 tasks had not finished
    outcomes = []
    for ref in engine.cancelled:
        try:
            ray_cluster.get(ref, timeout=60)
            outcomes.append("finished")
        except ray_cluster.exceptions.TaskCancelledError:
            outcomes.append("cancelled")
    assert "cancelled" in outcomes


def test_cli_analyze_on_ray_matches_local(ray_cluster, decode_local):
    import io

    import orjson
    from rich.console import Console

    from traceview.report.terminal import render_run

    r = CliRunner().invoke(main, ["analyze", *map(str, DECODE), "--engine", "ray", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["run"] == orjson.loads(orjson.dumps(decode_local.to_dict(),
                                                                     option=orjson.OPT_NON_STR_KEYS))
    r = CliRunner().invoke(main, ["analyze", str(DECODE[0]), "--engine", "ray", "--by", "layer"])
    assert r.exit_code == 2 and "--engine local" in r.output
    # the text view of --engine ray is the local engine's run view, from the same RunAnalysis
    r = CliRunner().invoke(main, ["analyze", *map(str, DECODE), "--engine", "ray"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "is the straggler" in r.stdout
    out = io.StringIO()
    render_run(decode_local, Console(file=out, width=250))
    text = out.getvalue()
    assert decode_local.straggler.verdict in text.replace("\n", " ") or "is the straggler" in text
    t0 = decode_local.times[0]
    assert f"{t0.arrived_last}/{t0.collectives}" in text


def test_local_engine_in_processes_equals_in_process(decode_local):
    from traceview.run import reduce_run

    summaries, errors = map_run(LocalEngine(jobs=2), DECODE, RankTask())
    assert not errors and reduce_run(summaries, errors).to_dict() == decode_local.to_dict()


def test_engine_options_refused_where_they_cannot_work(tmp_path):
    r = CliRunner().invoke(main, ["analyze", str(DECODE[0]), "--address", "ray://head:10001"])
    assert r.exit_code == 2 and "--address is for --engine ray" in r.output


# --- the HTML report on Ray: the run page from summaries, detail rendered on the rank's node --------

def _page(paths, engine, **kw):
    from traceview.report.run_report import report_run

    rep, run, errors = report_run(paths, engine=engine, generated="(fixed for the test)", **kw)
    return rep, run, errors


def _headings(html_text):
    import re

    return re.findall(r'<h2 class="rank-detail"[^>]*>Detail: ([^<]*)</h2>', html_text)


def test_report_on_ray_is_the_local_page_decode(ray_cluster, tmp_path):
    local, run, errors = _page(DECODE, "local")
    on_ray, ray_run, ray_errors = _page(DECODE, "ray")
    assert not errors and not ray_errors and run.cross_rank
    assert on_ray.html == local.html
    assert (on_ray.figures, on_ray.boxes, on_ray.kernels) == (local.figures, local.boxes, local.kernels)
    # two ranks: both in detail, with their timelines, under the run page
    assert [h.split(" · ")[0] for h in _headings(local.html)] == ["rank 0", "rank 1"]
    assert "Run: all ranks together" in local.html and local.html.count("<h2>Timeline</h2>") == 2
    # the local engine in processes: the same page again
    assert _page(DECODE, "local", jobs=2)[0].html == local.html


@needs_shared
def test_report_on_ray_is_the_local_page_shared_prefill(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in PREFILL:
        shutil.copy(p, run_dir / p.name)
    shutil.copy(shared("gpu/MANIFEST.json"), run_dir / "MANIFEST.json")
    skipped_local, skipped_ray = [], []
    local = _page([run_dir], "local", skipped=skipped_local)[0]
    on_ray = _page([run_dir], "ray", skipped=skipped_ray)[0]
    assert on_ray.html == local.html and "is the straggler" in local.html
    assert [Path(s.path).name for s in skipped_local] == ["MANIFEST.json"]


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import make_run

    out = tmp_path_factory.mktemp("gen") / "run6"
    make_run.make_run(DECODE[0], 6, out, make_run.Injection(4, host_delay_us=6000.0, layer="2"), iterations=1)
    return out


def test_report_on_ray_of_a_generated_run_details_the_ranks_a_reader_needs(ray_cluster, generated_run):
    local, run, _ = _page([generated_run], "local")
    on_ray, ray_run, _ = _page([generated_run], "ray")
    assert on_ray.html == local.html
    assert run.straggler.rank == 4
    heads = _headings(local.html)
    # the straggler, the median rank by waiting, the rank that waited most: three of the six
    assert len(heads) == 3 and any(h.startswith("rank 4 · ") and h.endswith("the straggler") for h in heads)
    assert any("the median rank by waiting" in h for h in heads) and any("waited the most" in h for h in heads)
    assert "The other 3 files are in the run tables above" in local.html and "--detail-ranks all" in local.html
    # every rank is on the run page all the same: a lane each on the one clock
    assert all(f"rank {r}" in local.html for r in range(6))
    # the detail of the ranks asked for, rendered on Ray
    asked, _, _ = _page([generated_run], "ray", detail_ranks=[0, 5])
    assert [h.split(" · ")[0] for h in _headings(asked.html)] == ["rank 0", "rank 5"]


def test_cli_report_on_ray(ray_cluster, generated_run, tmp_path):
    import re

    pages = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.html"
        r = CliRunner().invoke(main, ["report", str(generated_run), "--engine", engine, "-o", str(out),
                                      "--detail-ranks", "2"])
        assert r.exit_code == 0, r.output
        pages[engine] = re.sub(r"generated [^·]*·", "", out.read_text())
    assert pages["ray"] == pages["local"] and len(_headings(pages["ray"])) == 1
    r = CliRunner().invoke(main, ["report", str(generated_run), "--engine", "ray", "-o", str(tmp_path / "x.html"),
                                  "--detail-ranks", "2,99"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "--detail-ranks: no rank 99 among the loaded ranks (0, 1, 2, 3, 4, 5)" in r.output
