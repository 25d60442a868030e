"""``traceview annotate``: annotated traces that a trace viewer shows as written, with the
original events unchanged and the same numbers when traceview reads them again.

Every input is a real trace: the EP2 prefill with two-batch overlap (one rank, and both
ranks merged), a copy-engine two-GPU file, the DeepSeek training trace, a serial prefill
(spans that nest) and a CUDA-graph decode (no communication).  The structural validator
(``trace_check.validate``) is independent of the code under test; the added tracks are
cross-checked against ``tests/reference.py``'s plain interval arithmetic.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import reference
import traceview
from conftest import PROJECT_FIXTURES, SHARED, analysis_of, needs_shared, shared
from trace_check import validate
from traceview.annotate import CATEGORY, annotate
from traceview.cli import main

TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
SERIAL0 = PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"
COPY_ENGINE = PROJECT_FIXTURES / "gpu-extra" / "prefill_tbo_copyengine.json.gz"
CUDAGRAPH = PROJECT_FIXTURES / "gpu-extra" / "dense_decode_cudagraph.json.gz"
TRAIN = SHARED / "deepseek" / "train.json"


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def read(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def original(path: Path) -> dict:
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def added(doc: dict, ph: str | None = None) -> list[dict]:
    return [e for e in doc["traceEvents"] if e.get("cat") == CATEGORY and (ph is None or e["ph"] == ph)]


def track_events(doc: dict, name: str) -> dict[int, list[dict]]:
    """pid -> X events of the added thread track called ``name``."""
    tids = {(e["pid"], e["tid"]) for e in added(doc, "M") if e["name"] == "thread_name" and e["args"]["name"] == name}
    out: dict[int, list[dict]] = {}
    for e in added(doc, "X"):
        if (e["pid"], e["tid"]) in tids:
            out.setdefault(e["pid"], []).append(e)
    return out


_cache: dict = {}


def annotated(src: Path, **kw) -> Path:
    """The annotated trace of ``src`` (written once per session and options)."""
    key = (str(src), tuple(sorted(kw.items())))
    if key not in _cache:
        out = Path(_cache.setdefault("_dir", __import__("tempfile").mkdtemp(prefix="tv-annotate-"))) / \
            f"{len(_cache)}.tv.json.gz"
        annotate([src], out, **kw)
        _cache[key] = out
    return _cache[key]


@pytest.fixture(scope="module")
def ep2_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ep2")
    for r in (0, 1):
        shutil.copy(shared(f"gpu/prefill_tbo_rank{r}.json.gz"), d / f"prefill_tbo_rank{r}.json.gz")
    return d


# --- valid by construction ---------------------------------------------------------------------

SINGLE = [TBO0, SERIAL0, COPY_ENGINE, CUDAGRAPH]


@pytest.mark.parametrize("src", SINGLE, ids=lambda p: p.name.split(".")[0])
def test_annotated_single_file_is_valid(src):
    doc = read(annotated(src))
    assert validate(doc) == []
    a = analysis_of(str(src))
    procs = {e["pid"] for e in added(doc, "M") if e["name"] == "process_name"}
    assert len(procs) == len(a.gpus)  # one added process per analysed GPU
    assert doc["traceviewAnnotate"]["left_out"] == ["nothing"]


@needs_shared
def test_annotated_training_trace_is_valid():
    doc = read(annotated(TRAIN))
    assert validate(doc) == []
    assert track_events(doc, "exposed comm")


@pytest.mark.parametrize("src", [TBO0, COPY_ENGINE], ids=lambda p: p.name.split(".")[0])
def test_original_events_and_header_unchanged(src):
    before, after = original(src), read(annotated(src))
    assert [e for e in after["traceEvents"] if e.get("cat") != CATEGORY] == before["traceEvents"]
    assert {k: v for k, v in after.items() if k not in ("traceEvents", "traceviewAnnotate")} == \
        {k: v for k, v in before.items() if k != "traceEvents"}


def test_validator_catches_what_it_should():
    """The validator is not vacuous: overlapping slices, string pids, a reused flow id,
    missing names are each reported."""
    full = read(annotated(TBO0))
    # (what the checks read: traceview's events and the flow arrows; small enough to copy)
    doc = {"traceEvents": [e for e in full["traceEvents"] if e.get("cat") == CATEGORY or e.get("ph") in ("s", "f")]}
    assert validate(doc) == []
    xs = added(doc, "X")
    bad = json.loads(json.dumps(doc))
    ev = [e for e in bad["traceEvents"] if e.get("cat") == CATEGORY and e["ph"] == "X"]
    same = [e for e in ev if e["tid"] == xs[0]["tid"] and e["pid"] == xs[0]["pid"]]
    same[1]["ts"] = same[0]["ts"] + same[0]["dur"] / 2
    same[1]["dur"] = same[0]["dur"] * 10
    assert any("overlaps" in p for p in validate(bad))
    bad = json.loads(json.dumps(doc))
    next(e for e in bad["traceEvents"] if e.get("cat") == CATEGORY)["pid"] = "rank0"
    assert any("not an integer" in p for p in validate(bad))
    bad = json.loads(json.dumps(doc))
    flows = [e for e in bad["traceEvents"] if e.get("ph") == "s"]
    flows[1]["id"] = flows[0]["id"]
    assert any("starts 2 times" in p for p in validate(bad))
    bad = json.loads(json.dumps(doc))
    bad["traceEvents"] = [e for e in bad["traceEvents"] if not (e.get("cat") == CATEGORY and e.get("name") == "thread_name")]
    assert any("no thread_name" in p for p in validate(bad))


# --- the same numbers when read again -------------------------------------------------------------

def _same(x, y, path="") -> None:
    """Equal, numbers to 1e-12 relative: polars sums a group's floats over threads in an order
    that can change the last bit between two runs on the same file."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            _same(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _same(u, v, f"{path}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-9), (path, x, y)
    else:
        assert x == y, (path, x, y)


def _same_analysis(a, b):
    _same([g.to_dict() for g in a.gpus], [g.to_dict() for g in b.gpus])
    assert a.rank == b.rank and a.trace.warnings == b.trace.warnings
    assert a.trace.events.equals(b.trace.events)  # the loader kept exactly the original events
    assert_frame_equal(a.kernels.drop("row"), b.kernels.drop("row"), check_exact=True)
    for by in ("microbatch", "layer", "iteration", "phase"):
        assert_frame_equal(a.segments(by), b.segments(by), rel_tol=1e-12, abs_tol=1e-9)
    assert a.segmentation.sources == b.segmentation.sources


@pytest.mark.parametrize("src", [TBO0, COPY_ENGINE], ids=lambda p: p.name.split(".")[0])
def test_reanalysing_an_annotated_trace_gives_identical_numbers(src):
    _same_analysis(analysis_of(str(src)), traceview.analyze(annotated(src)))


@needs_shared
def test_reanalysing_annotated_training_trace_is_identical():
    _same_analysis(analysis_of(str(TRAIN)), traceview.analyze(annotated(TRAIN)))


# --- the tracks say what the analysis says ---------------------------------------------------------

@pytest.mark.parametrize("src", [TBO0, COPY_ENGINE], ids=lambda p: p.name.split(".")[0])
def test_exposed_and_class_tracks_match_the_metrics(src):
    a = analysis_of(str(src))
    doc = read(annotated(src))
    exposed = track_events(doc, "exposed comm")
    pid_of = {e["args"]["name"].split("GPU ")[1].split(" ")[0]: e["pid"] for e in added(doc, "M")
              if e["name"] == "process_name"}
    for g in a.gpus:
        pid = pid_of[str(g.device)]
        pieces = exposed.get(pid, [])
        total = sum(e["args"]["exposed_us"] for e in pieces)
        assert math.isclose(total, g.exposed_comm_us, rel_tol=1e-4, abs_tol=1e-3 * (len(pieces) + 1))
        k = a.kernels.filter(pl.col("device") == g.device)
        for cat in k["category"].cast(pl.Utf8).unique().to_list():
            c = k.filter(pl.col("category").cast(pl.Utf8) == cat)
            want = reference.length(reference.merge(list(zip(c["ts"].to_list(), c["end"].to_list()))))
            slices = track_events(doc, f"class {cat}")[pid]
            assert math.isclose(sum(e["args"]["busy_us"] for e in slices), want, rel_tol=1e-6, abs_tol=1e-3 * len(slices))
            assert sum(e["args"]["kernels"] for e in slices) == c.height
        # the in-flight counter is > 0 exactly while communication runs: its time equals comm_us
        counter = sorted((e["ts"], e["args"]["kernels"]) for e in added(doc, "C")
                         if e["pid"] == pid and e["name"] == "in-flight comm kernels")
        busy = sum(t1 - t0 for (t0, v), (t1, _) in zip(counter, counter[1:]) if v > 0)
        assert math.isclose(busy, g.comm_us, rel_tol=1e-6, abs_tol=1e-2)


def test_exposed_share_counter_is_the_iteration_table():
    a = analysis_of(str(TBO0))
    doc = read(annotated(TBO0))
    it = a.segments("iteration").sort("start_us")
    values = [e["args"]["percent"] for e in added(doc, "C") if e["name"] == "exposed comm share of iteration"]
    want = [round(100 * r["exposed_comm_us"] / (r["end_us"] - r["start_us"]), 3) for r in it.iter_rows(named=True)]
    assert [v for v in values if v] == want and len(want) == 2


def test_interleaved_microbatches_are_async_nested_ones_are_slices():
    tbo = read(annotated(TBO0))
    names = {e["args"]["name"] for e in added(tbo, "M") if e["name"] == "thread_name"}
    assert {"mb0 (async)", "mb1 (async)"} <= names and "micro-batches and layers" not in names
    begins = [e for e in added(tbo, "b")]
    layers = analysis_of(str(TBO0)).segments("layer").filter(pl.col("layer") != "(none)")
    assert sum(1 for e in begins if e["name"].startswith("layer ")) == layers.height
    # each layer span is the layer's time in the segment table (to the margin kept for viewers)
    ends = {(e["id"], e["name"], e["ts"]) for e in added(tbo, "e")}
    for e in begins:
        if e["name"].startswith("layer "):
            row = layers.filter((pl.col("layer") == e["args"]["layer"]) & (pl.col("microbatch") == e["args"]["microbatch"])
                                & (pl.col("iteration") == e["args"]["iteration"])).row(0, named=True)
            assert abs(e["ts"] - row["start_us"]) <= 0.01
            assert any(i == e["id"] and n == e["name"] and abs(t - row["end_us"]) <= 0.01 for i, n, t in ends)
            assert math.isclose(e["args"]["exposed_comm_us"], round(row["exposed_comm_us"], 3))
    serial = read(annotated(SERIAL0))
    names = {e["args"]["name"] for e in added(serial, "M") if e["name"] == "thread_name"}
    assert "micro-batches and layers" in names and not added(serial, "b")


# --- several ranks --------------------------------------------------------------------------------

@needs_shared
def test_ep2_directory_merged_on_one_clock(ep2_dir, tmp_path):
    out = tmp_path / "run.tv.json.gz"
    code, _o, err = run("annotate", ep2_dir, "-o", out)
    assert code == 0, err
    doc = read(out)
    assert validate(doc, all_integer_pids=True) == []
    before = [original(ep2_dir / f"prefill_tbo_rank{r}.json.gz")["traceEvents"] for r in (0, 1)]
    kept = [e for e in doc["traceEvents"] if e.get("cat") != CATEGORY]
    assert len(kept) == sum(len(b) for b in before)
    # pids: rank * 1000 + k, each named after its rank
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e.get("ph") == "M" and e["name"] == "process_name"
             and e.get("cat") == CATEGORY}
    for e in kept:
        assert e["pid"] // 1000 in (0, 1) and names[e["pid"]].startswith(f"rank {e['pid'] // 1000}")
    # original flow ids made unique per rank: rank 1's ac2g arrows are rank 0's plus an offset
    ids = [{e["id"] for e in kept if e.get("ph") == "s" and e["pid"] // 1000 == r} for r in (0, 1)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    # one arrow per collective instance the run analysis matched, first arrival -> last arrival,
    # with the run's waiting per rank
    run_c = traceview.analyze_run(ep2_dir).collectives
    starts = sorted((e for e in added(doc, "s") if e["name"] == "collective"), key=lambda e: e["id"])
    finishes = sorted((e for e in added(doc, "f") if e["name"] == "collective"), key=lambda e: e["id"])
    assert len(starts) == len(finishes) == run_c["instance"].n_unique() > 0
    for s, f in zip(starts, finishes):
        inst = run_c.filter(pl.col("instance") == s["args"]["instance"]).sort("arrival_us")
        assert s["pid"] // 1000 == inst["rank"][0] == s["args"]["first_rank"] and f["pid"] // 1000 == inst["rank"][-1]
        assert s["args"]["wait_us"] == {str(r): round(w, 3) for r, w in zip(inst["rank"], inst["wait_us"])}
        late = inst.filter(pl.col("arrived_last"))["rank"].to_list()
        assert s["args"]["late_rank"] == (late[0] if late else None)
        assert math.isclose(s["args"]["skew_us"], inst["arrival_us"][-1] - inst["arrival_us"][0], abs_tol=1e-3)
    assert any(s["args"]["late_rank"] is not None for s in starts)
    # waiting vs transfer: every exposed piece is split between the two
    for pieces in track_events(doc, "exposed comm").values():
        for e in pieces:
            assert math.isclose(e["args"]["waiting_us"] + e["args"]["transfer_us"], e["args"]["exposed_us"], abs_tol=2e-3)
    assert any(e["args"]["waiting_us"] > 0 for p in track_events(doc, "exposed comm").values() for e in p)
    # ... and per rank the exposed waiting / transfer are the run analysis's figures
    table = traceview.analyze_run(ep2_dir).ranks_table()
    for row in table.iter_rows(named=True):
        pieces = track_events(doc, "exposed comm")[row["rank"] * 1000 + 500 + row["rank"]]  # EP2: rank r drives GPU r
        for key, arg in (("exposed_wait_us", "waiting_us"), ("exposed_transfer_us", "transfer_us")):
            want = row[key]  # (the whole trace's total)
            assert math.isclose(sum(e["args"][arg] for e in pieces), want, rel_tol=1e-3, abs_tol=1e-3 * len(pieces))


@needs_shared
def test_ranks_option_and_ranks_that_clash(ep2_dir, tmp_path):
    out = tmp_path / "r1.tv.json.gz"
    code, _o, err = run("annotate", ep2_dir, "-o", out, "--ranks", "1")
    assert code == 0, err
    doc = read(out)
    assert [i["rank"] for i in doc["traceviewAnnotate"]["inputs"]] == [1] and validate(doc) == []
    code, _o, err = run("annotate", ep2_dir, "-o", out, "--ranks", "0,3")
    assert code == 2 and err.count("\n") == 1 and "rank 3" in err
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(TBO0, clash / TBO0.name)
    shutil.copy(SERIAL0, clash / SERIAL0.name)  # another run's rank 0
    code, _o, err = run("annotate", clash, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "several files claim rank 0" in err and "Traceback" not in err
    code, _o, err = run("annotate", shared("gpu"), "-o", out)  # rankless files beside ranked ones
    assert code == 2 and err.count("\n") == 1 and "files without a rank" in err


# --- the size budget ------------------------------------------------------------------------------

def test_window_keeps_one_iteration_and_says_so():
    out = annotated(TBO0, window="2")
    doc = read(out)
    assert validate(doc) == []
    assert any(l.startswith("iteration 2 only") for l in doc["traceviewAnnotate"]["left_out"])
    b = traceview.analyze(out)
    from traceview.metrics.segments import labelled
    lab = labelled(b.kernels, b.segmentation)
    its = lab["iteration"].unique().to_list()
    assert "2" in its and "1" not in its
    full = analysis_of(str(TBO0)).segments("iteration").filter(pl.col("iteration") == "2")
    assert_frame_equal(b.segments("iteration").filter(pl.col("iteration") == "2"), full)
    names = {e["name"] for e in added(doc, "X")}
    assert "iteration 2" in names and "iteration 1" not in names


def test_max_events_cuts_in_time_and_says_what_was_left_out(tmp_path):
    out = tmp_path / "small.tv.json.gz"
    code, _o, err = run("annotate", TBO0, "-o", out, "--max-events", "5000")
    assert code == 0 and "left out: --max-events 5,000" in err
    doc = read(out)
    assert len(doc["traceEvents"]) <= 5000 and validate(doc) == []
    note = next(e for e in added(doc, "i") if e["name"] == "traceview annotate")
    assert note["args"]["left_out"] == doc["traceviewAnnotate"]["left_out"] and "--max-events" in note["args"]["left_out"][0]
    cut = max(e["ts"] for e in doc["traceEvents"] if isinstance(e.get("ts"), (int, float)) and e.get("ph") != "M")
    assert cut < max(e["ts"] for e in original(TBO0)["traceEvents"] if isinstance(e.get("ts"), (int, float)))


def test_bad_options_one_line_exit_2(tmp_path):
    for args, words in (((TBO0, "-o", tmp_path / "o.json.gz", "--window", "9"), "no such iteration"),
                        ((TBO0, "-o", tmp_path / "no" / "o.json.gz"), "directory does not exist"),
                        ((TBO0, "-o", tmp_path / "o.json.gz", "--ranks", "x"), "not a list of ranks"),
                        ((tmp_path / "missing.json", "-o", tmp_path / "o.json.gz"), "no such file")):
        code, _o, err = run("annotate", *args)
        assert code == 2 and words in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("*.part"))


def test_cut_short_and_bare_array_inputs(tmp_path):
    """A trace cut short by a killed job (the prefill cut at two thirds) and a bare event
    array: complete, valid output; the cut is stated; the same numbers when read again."""
    raw = gzip.decompress(TBO0.read_bytes())
    cut = tmp_path / "cut_rank0.json"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    bare = tmp_path / "bare_rank0.json"
    bare.write_text(json.dumps(json.loads(raw)["traceEvents"]))
    for src in (cut, bare):
        out = tmp_path / (src.stem + ".tv.json.gz")
        annotate([src], out)
        doc = read(out)
        assert validate(doc) == []
        a, b = traceview.analyze(src), traceview.analyze(out)
        _same([g.to_dict() for g in a.gpus], [g.to_dict() for g in b.gpus])
        assert doc["traceviewAnnotate"]["inputs"][0]["warnings"] == a.trace.warnings
    assert any("truncated" in w for w in read(tmp_path / "cut_rank0.tv.json.gz")["traceviewAnnotate"]["inputs"][0]["warnings"])
