"""The Ray engine on a real cluster of several raylet nodes on this one machine
(``ray.cluster_utils.Cluster``): discovery once per node, each rank task on a node that holds
its file, shared storage counted once, and a node lost mid-run.

All the nodes of a one-machine cluster see one filesystem, so "a file on node B's local disk"
is made by the discovery function each node runs (``RayEngine(discover_fn=...)``): the real
``discover`` on that node, keeping only the files the test put on that node's disk.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PROJECT_FIXTURES
from traceview.run import reduce_run
from traceview.run.engine import RankTask, RayEngine, discover, map_run

ray = pytest.importorskip("ray", reason='Ray is not installed here (pip install "traceview[ray]")')

SOURCE = PROJECT_FIXTURES / "gpu-extra" / "decode_tbo_rank0.json.gz"
N_RANKS = 4


def discover_own_disk(paths, disks, log):
    """``discover`` on this node, seeing only the file names ``disks`` gives this node id
    (all files for a node not in ``disks``); each call appends its node id to ``log``."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    with open(log, "a") as f:
        f.write(node + "\n")
    found, missing = discover(paths)
    if node not in disks:
        return found, missing
    kept = [f for f in found if Path(f.path).name in disks[node]]
    return kept, ({} if kept else {p: "no such file or directory" for p in paths})


@dataclass(frozen=True)
class SlowOn(RankTask):
    """A rank task that takes a minute on one file (so its node can be killed under it)."""

    slow_name: str = ""

    def run(self, path):
        if Path(path).name == self.slow_name:
            time.sleep(60)
        return super().run(path)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # a dead node is noticed in about a second (defaults: tens of seconds)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 300, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    c.wait_for_nodes()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's functions travel by value
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import make_run

    out = tmp_path_factory.mktemp("nodes") / "run"
    make_run.make_run(SOURCE, N_RANKS, out, make_run.Injection(2, host_delay_us=6000.0, layer="2"), iterations=1)
    (out / "MANIFEST.json").unlink()
    return out


def _node_ids(c, workers):
    return [c.head_node.node_id] + [w.node_id for w in workers]


def test_node_local_files_run_on_their_node_and_discovery_runs_once_per_node(cluster, run_dir, tmp_path):
    c, workers = cluster
    head, w1, w2 = _node_ids(c, workers)
    names = sorted(p.name for p in run_dir.iterdir())
    disks = {head: names[:1], w1: names[1:3], w2: names[3:]}  # every rank on exactly one node's disk
    log = tmp_path / "discovered.log"
    eng = RayEngine(discover_fn=lambda paths: discover_own_disk(paths, disks, str(log)))
    summaries, errors = map_run(eng, [run_dir], RankTask())
    assert not errors
    calls = log.read_text().split()
    assert sorted(calls) == sorted([head, w1, w2])  # one discovery task per node, on that node
    assert eng.discovered == {head: 1, w1: 2, w2: 1}
    where = {Path(f).name: n for f, n in eng.ran_on.items()}
    assert where == {name: node for node, files in disks.items() for name in files}
    run = reduce_run(summaries, errors)
    assert run.cross_rank and run.ranks_loaded == N_RANKS and run.straggler.rank == 2


def test_a_shared_path_seen_by_every_node_is_one_rank_each(cluster, run_dir, tmp_path):
    c, workers = cluster
    log = tmp_path / "discovered.log"
    eng = RayEngine(discover_fn=lambda paths: discover_own_disk(paths, {}, str(log)))
    summaries, errors = map_run(eng, [run_dir], RankTask())
    assert len(log.read_text().split()) == 3 and set(eng.discovered.values()) == {N_RANKS}
    assert not errors and sorted(s.rank for s in summaries) == list(range(N_RANKS))  # none counted twice
    assert len(eng.ran_on) == N_RANKS
    run = reduce_run(summaries, errors)
    assert run.cross_rank and not run.partial and run.reason is None


def test_report_detail_is_rendered_on_the_node_holding_the_file(cluster, run_dir, tmp_path):
    from traceview.report.run_report import report_run

    c, workers = cluster
    head, w1, w2 = _node_ids(c, workers)
    names = sorted(p.name for p in run_dir.iterdir())
    disks = {head: names[:1], w1: names[1:3], w2: names[3:]}
    eng = RayEngine(discover_fn=lambda paths: discover_own_disk(paths, disks, str(tmp_path / "log")))
    rep, run, errors = report_run([run_dir], engine=eng, detail_ranks=[2, 3], generated="-")
    assert not errors and run.straggler.rank == 2
    # the detail round ran on the nodes holding ranks 2 and 3 (the last run of the engine)
    where = {Path(f).name: n for f, n in eng.ran_on.items()}
    assert where == {names[2]: w1, names[3]: w2}
    local, _, _ = report_run([run_dir], engine="local", detail_ranks=[2, 3], generated="-")
    assert rep.html == local.html


def test_a_node_lost_mid_run_is_that_ranks_error(cluster, run_dir, tmp_path):
    c, workers = cluster
    head, w1, w2 = _node_ids(c, workers)
    names = sorted(p.name for p in run_dir.iterdir())
    lost = names[3]
    disks = {head: names[:2], w1: names[2:3], w2: [lost]}
    eng = RayEngine(discover_fn=lambda paths: discover_own_disk(paths, disks, str(tmp_path / "log")))
    done = []

    def progress(path, d, t):
        done.append(Path(path).name)
        if len(done) == N_RANKS - 1:  # the others are in; the lost rank's task is still running on w2
            c.remove_node(workers[1], allow_graceful=False)

    t = time.monotonic()
    summaries, errors = map_run(eng, [run_dir], SlowOn(slow_name=lost), progress)
    assert time.monotonic() - t < 50  # the loss is noticed, not waited out
    assert [Path(e.path).name for e in errors] == [lost]
    assert "\n" not in str(errors[0]) and errors[0].reason.startswith("rank task lost"), errors[0].reason
    run = reduce_run(summaries, errors)
    assert run.partial and run.ranks_loaded == N_RANKS - 1 and run.cross_rank
    assert run.partial_note == f"partial run: {N_RANKS - 1} of {N_RANKS} ranks loaded"
