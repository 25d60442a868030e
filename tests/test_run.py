"""The run analysis (traceview.run): ranks, clocks, wait vs transfer, the straggler and its cause.

Real rank pairs (fixtures/gpu-extra, ../shared/fixtures/gpu) check the wait/transfer split
against the simple implementation in tests/reference.py; generated runs
(benchmarks/make_run.py, from a real rank trace) check that an injected cause is found.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

import reference
from conftest import PROJECT_FIXTURES, ROOT, needs_shared, shared
from traceview.load.identity import identity_from_name
from traceview.metrics.segments import labelled
from traceview.run import analyze_run

sys.path.insert(0, str(ROOT / "benchmarks"))
import make_run  # noqa: E402

EXTRA = PROJECT_FIXTURES / "gpu-extra"
DECODE_TBO = [EXTRA / "decode_tbo_rank0.json.gz", EXTRA / "decode_tbo_rank1.json.gz"]
SOURCE = DECODE_TBO[0]


@functools.lru_cache(maxsize=None)
def run_of(*paths: str):
    return analyze_run([Path(p) for p in paths])


# --- ranks from file names -------------------------------------------------------------------

@pytest.mark.parametrize("name,rank,source", [
    ("1733-TP-3-DP-0-PP-0-EP-3.trace.json.gz", 3, "sglang file name"),
    ("1733-TP-5.trace.json.gz", 5, "sglang file name"),
    ("1733-TP-2-EXTEND.trace.json.gz", 2, "sglang file name"),
    ("dp0_pp0_tp0_dcp0_ep5_rank5.1796150907396914550.pt.trace.json.gz", 5, "vllm file name"),
    ("myprefix_dp1_pp0_tp1_dcp0_ep3_rank3.1796150907396914550.pt.trace.json.gz", 3, "vllm file name"),
    ("trace-rank-12.json", 12, "file name (-rank-N)"),
    ("worker_rank7.1796150907396914550.pt.trace.json", 7, "file name (rankN)"),
    ("host-a_1234.1796150907396914550.pt.trace.json.gz", None, None),
])
def test_rank_from_serving_stack_file_names(name, rank, source):
    ident = identity_from_name(name)
    assert (ident.rank, ident.source) == (rank, source)


def test_vllm_coordinates_are_kept():
    assert identity_from_name("dp1_pp0_tp2_dcp0_ep6_rank6.1.pt.trace.json").coords == {
        "dp": 1, "pp": 0, "tp": 2, "dcp": 0, "ep": 6}


# --- wait vs transfer, against the simple implementation -----------------------------------------

def _reference_split(paths):
    import traceview

    per_rank = {}
    for p in paths:
        a = traceview.analyze(p)
        k = labelled(a.kernels, a.segmentation)
        firsts = (k.filter(pl.col("iteration") != "(none)").group_by("iteration").agg(pl.col("ts").min())
                  .sort("ts")["iteration"].to_list())
        order = {it: i for i, it in enumerate(firsts)}
        per_rank[a.rank] = [(s, e, str(role), order.get(it, -1), str(cat)) for s, e, role, it, cat in
                            k.select("ts", "end", "role", "iteration", "category").iter_rows()]
    return reference.run_wait_transfer(per_rank)


def _check_split(paths):
    run = run_of(*map(str, paths))
    assert run.cross_rank, run.reason
    ref = _reference_split(paths)
    for t in run.times:
        comm, wait, transfer, exposed, exposed_wait, exposed_transfer = ref[t.rank]
        assert t.comm_us == pytest.approx(comm, abs=1e-3)
        assert t.wait_us == pytest.approx(wait, abs=1e-3)
        assert t.transfer_us == pytest.approx(transfer, abs=1e-3)
        assert t.exposed_comm_us == pytest.approx(exposed, abs=1e-3)
        assert t.exposed_wait_us == pytest.approx(exposed_wait, abs=1e-3)
        assert t.exposed_transfer_us == pytest.approx(exposed_transfer, abs=1e-3)
        # the identities the tables rely on
        assert t.wait_us + t.transfer_us == pytest.approx(t.comm_us)
        assert t.exposed_wait_us + t.exposed_transfer_us == pytest.approx(t.exposed_comm_us)
    return run


def test_wait_transfer_split_on_the_ep2_decode_tbo_fixture():
    run = _check_split(DECODE_TBO)
    # most of the NCCL time of this decode is waiting for the peer, not moving data
    assert sum(t.wait_us for t in run.times) > sum(t.transfer_us for t in run.times)


@needs_shared
@pytest.mark.parametrize("pair", ["prefill_tbo", "prefill_serial", "decode_serial", "tp2_dense"])
def test_wait_transfer_split_on_shared_ep2_pairs(pair):
    _check_split([shared(f"gpu/{pair}_rank0.json.gz"), shared(f"gpu/{pair}_rank1.json.gz")])


def test_instances_follow_the_definitions():
    run = run_of(*map(str, DECODE_TBO))
    c = run.collectives
    per = c.group_by("instance").agg(pl.col("dur_us").min().alias("mn"), pl.len().alias("n"),
                                     pl.col("transfer_us").first(), pl.col("arrival_us").max().alias("last"),
                                     pl.col("last_rank").first(), pl.col("rank").sort_by("arrival_us").last().alias("r"))
    assert (per["n"] == 2).all()
    assert (per["transfer_us"] == per["mn"]).all()
    named = per.filter(pl.col("last_rank").is_not_null())
    assert (named["last_rank"] == named["r"]).all()
    assert ((c["wait_us"] - (c["dur_us"] - c["transfer_us"])).abs() < 1e-9).all()
    # clocks: one host, so collectives end together once aligned
    assert run.matching.end_spread_median_us < 20


@pytest.mark.parametrize("n", [3, 6])
def test_instances_of_many_ranks_against_group_by(generated, n):
    """The reduce puts the instance table in (instance, rank) order by arithmetic and takes each
    instance's figures as row reductions: the same as plain group-bys over the table, for an odd
    and an even number of ranks (the median's two cases), and each rank's kernels in order."""
    out, _ = generated(f"inst{n}", n, make_run.Injection(1, host_delay_us=6000.0, layer="2"), iterations=1)
    run = analyze_run(out)
    c = run.collectives
    assert c["instance"].to_list() == sorted(c["instance"].to_list()) and c.height == n * c["instance"].n_unique()
    keys = c.select("iteration", "category", "ordinal").unique(maintain_order=True)
    assert keys.height == c["instance"].n_unique()
    assert keys.sort("iteration", "category", "ordinal").rows() == keys.rows()  # instances numbered in key order
    per = c.group_by("instance").agg(pl.col("dur_us").min().alias("mn"), pl.col("arrival_us").median().alias("med"),
                                     (pl.col("arrival_us").max() - pl.col("arrival_us").min()).alias("spread"),
                                     (pl.col("end_us").max() - pl.col("end_us").min()).alias("end_spread"),
                                     pl.col("rank").sort_by("arrival_us", "rank").last().alias("last_by_sort"))
    c = c.join(per, on="instance")
    assert (c["transfer_us"] == c["mn"]).all() and (c["late_us"] == c["arrival_us"] - c["med"]).all()
    assert (c["start_spread_us"] == c["spread"]).all() and (c["end_spread_us"] == c["end_spread"]).all()
    named = c.filter(pl.col("last_rank").is_not_null())
    assert named.height and (named["start_spread_us"] > 1 + 2 * named["end_spread_us"]).all()
    ties = named.filter(pl.col("arrival_us").max().over("instance").eq(pl.col("arrival_us")).sum().over("instance") == 1)
    assert (ties["last_rank"] == ties["last_by_sort"]).all()
    assert (c["arrived_last"] == (c["rank"] == c["last_rank"]).fill_null(False)).all()
    # each rank's rows are its own kernels, once each, on the run's clock, the n-th of a category
    # in an iteration its n-th kernel of that category
    for r in run.ranks:
        mine = run.matching.instances.filter(pl.col("rank") == r.rank)
        own = r.comm_table().with_columns(pl.int_range(pl.len()).over("it", "category").alias("nth"))
        j = mine.join(own, on="idx", suffix="_own")
        assert j.height == mine.height == mine["idx"].n_unique() == own.height
        assert (j["ordinal"] == j["nth"]).all() and (j["category"].cast(pl.Utf8) == j["category_own"]).all()
        assert j["arrival"].to_list() == pytest.approx((j["ts"] + run.matching.to_common(r.rank)).to_list(), abs=1e-6)


def test_summary_tables_travel_compressed_and_come_back_the_same():
    import pickle

    import traceview

    (s,) = traceview.analyze(SOURCE).rank_summaries
    back = pickle.loads(pickle.dumps(s))
    assert "comm" not in vars(back) and set(vars(back)["_packed"]) >= {"comm", "window_compute", "exposed_start"}
    assert back.comm.equals(s.comm) and back.window_compute.equals(s.window_compute) and back.layers.equals(s.layers)
    assert (back.exposed_start == s.exposed_start).all() and (back.compute_end == s.compute_end).all()
    assert s.nbytes() < s.unpacked_nbytes() and s.comm.height == 54
    # the reduce reads them with plain strings and int64, as before they were compacted
    assert back.comm_table().schema["name"] == pl.Utf8 and back.comm_table().schema["idx"] == pl.Int64



@pytest.mark.parametrize("path,unlink", [(SOURCE, 0), (SOURCE, 5), (EXTRA / "tp2_dense_decode_rank0.json.gz", 0),
                                         (EXTRA / "tp2_dense_decode_rank0.json.gz", 3)],
                         ids=["decode_tbo", "decode_tbo-unlinked", "tp2_dense", "tp2_dense-unlinked"])
def test_idle_with_no_kernel_queued_in_summaries_matches_reference(path, unlink):
    """The run summary measures the per-iteration table's idle sets (timeline/idle.py) in its
    own windows: per iteration and per communication kernel's window, against brute force.
    ``unlink``: every n-th GPU event loses its launch link (no real capture here has such
    events), which must count as queued from the latest end before it, in both tables."""
    import dataclasses

    import traceview

    a = traceview.analyze(path)
    if unlink:
        k = a.kernels.with_columns(pl.when(pl.int_range(pl.len()) % unlink == 0).then(None)
                                   .otherwise(pl.col("launch_ts")).alias("launch_ts"))
        a = dataclasses.replace(a, kernels=k)
    (s,) = a.rank_summaries
    d = labelled(a.kernels, a.segmentation).filter(pl.col("device") == s.device)
    events = [(b, e, str(r), l) for b, e, r, l in zip(d["ts"].to_list(), d["end"].to_list(),
                                                       d["role"].cast(str).to_list(), d["launch_ts"].to_list())]
    assert any(l is None for *_x, l in events) == bool(unlink)
    it = s.iterations
    want = reference.idle_no_queue_in_windows(events, list(zip(it["start"].to_list(), it["end"].to_list())))
    assert it["idle_no_queue_us"].to_list() == pytest.approx(want, rel=1e-6, abs=1e-3)
    if "dense" in path.name:
        assert sum(want) > 1000  # host-bound: a real amount to agree on
    c = s.comm
    win_start = [min(b for b, *_x in events)] + c["ts"].to_list()[:-1]  # from the previous comm kernel's start
    want = reference.idle_no_queue_in_windows(events, list(zip(win_start, c["ts"].to_list())))
    assert c["win_idle_no_queue_us"].to_list() == pytest.approx(want, rel=1e-6, abs=1e-3)
    # the per-iteration table reads the same sets: its windows differ, its total over the marked span agrees
    rows = a.iterations.filter(pl.col("device") == s.device)
    span = reference.idle_no_queue_in_windows(events, [(rows["start_us"].min(), rows["end_us"].max())])
    assert rows["idle_no_queue_us"].sum() == pytest.approx(span[0], rel=1e-6, abs=1e-3)


# --- the straggler on the real EP2 decode with two-batch overlap ---------------------------------

def test_straggler_verdict_on_the_ep2_decode_tbo_fixture():
    run = run_of(*map(str, DECODE_TBO))
    s = run.straggler
    assert s.rank == 0 and s.cause is not None
    assert s.verdict.startswith(f"rank 0 is the straggler: last at {s.arrived_last}/54 collectives")
    # the others' waiting at its late arrivals, summed by hand
    c = run.collectives
    waited = c.filter((pl.col("last_rank") == 0) & (pl.col("rank") != 0))["wait_us"].sum() / 3
    assert s.others_waited_us_per_iteration == pytest.approx(waited)
    assert s.cause.kind == "expert_imbalance" and s.cause.layers


# --- generated runs with a known cause ------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return functools.partial(_generate, base)


def _generate(base, name, n, inj, iterations=None):
    out = base / name
    if not out.exists():
        make_run.make_run(SOURCE, n, out, inj, iterations=iterations)
    return out, json.loads((out / "MANIFEST.json").read_text())


@pytest.mark.parametrize("n,straggler", [(4, 2), (8, 5)])
def test_host_stall_is_found(generated, n, straggler):
    out, manifest = generated(f"host{n}", n, make_run.Injection(straggler, host_delay_us=6000.0, layer="2"))
    run = analyze_run(out)
    assert run.cross_rank and not run.partial
    s = run.straggler
    assert s.rank == straggler
    assert s.cause.kind == "host_bound"
    assert s.cause.layers == ["2"]
    # the host's stall shows whole in its launch gaps, the GPU-visible part as lateness
    assert s.cause.excess_us_per_iteration["launch gap"] == pytest.approx(6000.0, rel=0.05)
    assert s.late_us_per_iteration == pytest.approx(manifest["late_us_per_iteration"], rel=0.05)
    # clock offsets (residual after the base times) recovered
    for r, off in manifest["clock_offset_us"].items():
        assert run.matching.offsets_us[int(r)] == pytest.approx(off, abs=1.0)


def test_expert_stretch_is_found(generated):
    out, manifest = generated("experts8", 8, make_run.Injection(3, expert_stretch=0.5, layer="2"))
    run = analyze_run(out)
    s = run.straggler
    assert s.rank == 3 and s.cause.kind == "expert_imbalance" and s.cause.layers == ["2"]
    assert s.cause.excess_us_per_iteration[f"compute gemm.grouped"] == pytest.approx(
        manifest["late_us_per_iteration"], rel=0.05)
    imb = run.imbalance.filter(pl.col("layer") == "2")
    assert (imb["slowest_rank"] == 3).all() and (imb["max_over_mean"] > 1.3).all()
    assert (imb["combine_wait_others_us"] > 0).all()


def test_sixty_four_ranks(generated):
    out, manifest = generated("host64", 64, make_run.Injection(37, host_delay_us=6000.0, layer="2"), iterations=1)
    run = analyze_run(out, jobs=2)
    assert run.ranks_loaded == 64 and run.straggler.rank == 37
    assert run.straggler.cause.layers == ["2"]
    assert run.straggler.late_us_per_iteration == pytest.approx(manifest["late_us_per_iteration"], rel=0.05)
    assert max(r.nbytes() for r in run.ranks) < 2 << 20


def test_what_if_is_bounded_by_the_measured_iteration(generated):
    out, _ = generated("host4", 4, make_run.Injection(2, host_delay_us=6000.0, layer="2"))
    w = analyze_run(out).what_if
    assert w.without_exposed_comm_us <= w.without_waiting_us <= w.iteration_us


# --- what is not one run --------------------------------------------------------------------------

def test_two_files_claiming_one_rank_are_refused_by_name(tmp_path):
    for i in (0, 1):
        shutil.copy(DECODE_TBO[0], tmp_path / f"copy{i}.json.gz")
    run = analyze_run(tmp_path)
    assert not run.cross_rank and "two files claim one rank" in run.reason
    assert "copy0.json.gz" in run.reason and "copy1.json.gz" in run.reason


def test_ranks_of_different_runs_get_no_cross_rank_numbers():
    run = analyze_run([DECODE_TBO[0], PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"])
    assert not run.cross_rank and run.straggler is None and run.reason


def test_partial_run_says_so(generated, tmp_path):
    out, _ = generated("host4", 4, make_run.Injection(2, host_delay_us=6000.0, layer="2"))
    for r in (0, 2):
        shutil.copy(out / f"rank{r}.json.gz", tmp_path)
    run = analyze_run(tmp_path)
    assert run.partial and run.ranks_loaded == 2 and run.world_size == 4
    assert run.caveats[0].startswith("partial run: 2 of 4 ranks loaded")
    assert run.to_dict()["partial"] is True


# --- the gate on a run ------------------------------------------------------------------------------

def test_gate_max_wait_fails_the_ranks_that_waited_and_names_the_straggler(generated):
    from click.testing import CliRunner

    from traceview.cli import main

    out, _ = generated("host4", 4, make_run.Injection(2, host_delay_us=6000.0, layer="2"))
    r = CliRunner().invoke(main, ["gate", str(out), "--max-wait", "5%", "--no-config"])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stdout.splitlines() if "exposed waiting for other ranks" in x]
    assert len(lines) == 4 and all("straggler: rank 2" in x for x in lines)
    assert [x.split()[0] for x in lines] == ["FAIL", "FAIL", "PASS", "FAIL"]
    # the figure is the run's: exposed waiting per iteration over the iteration
    run = analyze_run(out)
    t0 = run.times[0]
    assert f"{100 * t0.per_iteration(t0.exposed_wait_us) / t0.iteration_us:.1f}% of the iteration" in lines[0]
    r = CliRunner().invoke(main, ["gate", str(out), "--max-wait", "50%", "--no-config"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["gate", str(SOURCE), "--max-wait", "5%", "--no-config"])
    assert r.exit_code == 0 and "SKIP  exposed waiting for other ranks" in r.stdout


# --- diff of two runs -------------------------------------------------------------------------------

def test_diff_of_runs_leads_with_one_table_across_ranks(generated):
    from click.testing import CliRunner

    from traceview.cli import main

    a, _ = generated("host4", 4, make_run.Injection(2, host_delay_us=6000.0, layer="2"))
    b, _ = generated("experts8", 8, make_run.Injection(3, expert_stretch=0.5, layer="2"))
    r = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "different numbers of GPUs (base 4, new 8)" in out
    assert out.index("per rank, ms per iteration") < out.index("traceview diff ·")
    assert out.count("traceview diff ·") == 3 and "details for the 3 of 4 GPUs" in out
    r = CliRunner().invoke(main, ["diff", str(a), str(b), "--format", "json"])
    doc = json.loads(r.stdout)
    assert len(doc["summary"]) == 4 and doc["warnings"] and len(doc["pairs"]) == 4
    row = doc["summary"][2]
    pair = doc["pairs"][2]
    span = next(t for t in pair["totals_per_iteration"] if t["metric"] == "span_us")
    assert row["iteration_delta_us"] == pytest.approx(span["delta_us"])


def test_budget_reconciles_communication_against_the_runs_transfer():
    """With a run, dispatch/combine efficiency is against the transfer (waiting left out)."""
    import orjson
    from click.testing import CliRunner

    from traceview.cli import main

    run = run_of(*map(str, DECODE_TBO))
    tr = run.transfer_by_category(0)
    c = run.collectives.filter(pl.col("rank") == 0)
    assert tr["moe.dispatch"] == pytest.approx(c.filter(pl.col("category") == "moe.dispatch")["transfer_us"].sum())
    assert tr["moe.dispatch"] < c.filter(pl.col("category") == "moe.dispatch")["dur_us"].sum()
    r = CliRunner().invoke(main, ["analyze", *map(str, DECODE_TBO), "--model", "deepseek-v3", "--format", "json"])
    assert r.exit_code == 0, r.output
    rec = orjson.loads(r.stdout)["traces"][0]["reconciliation"]
    d = next(x for x in rec["summary"] if x["class"] == "dispatch")
    assert d["transfer_ms"] is not None and d["transfer_ms"] < d["measured_ms"]
