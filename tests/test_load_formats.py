"""The formats a trace can come in all give the same numbers (built from a real trace)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from conftest import PROJECT_FIXTURES
from traceview import analyze, load
from traceview.load import rank_from_filename

SRC = PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"


@pytest.fixture(scope="module")
def doc():
    return orjson.loads(gzip.decompress(SRC.read_bytes()))


@pytest.fixture(scope="module")
def baseline():
    return analyze(SRC).gpus[0].to_dict()


def _same(a, b):
    for k in ("span_us", "compute_us", "comm_us", "memory_us", "overlap_us", "exposed_comm_us", "idle_us"):
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-6), k


def test_plain_json_and_pt_trace_suffix(tmp_path, doc, baseline):
    p = tmp_path / "host_123.1700000000.pt.trace.json"
    p.write_bytes(orjson.dumps(doc))
    _same(analyze(p).gpus[0].to_dict(), baseline)


def test_bare_chrome_array(tmp_path, doc, baseline):
    p = tmp_path / "bare.json"
    p.write_bytes(orjson.dumps(doc["traceEvents"]))
    a = analyze(p)
    _same(a.gpus[0].to_dict(), baseline)
    assert a.trace.rank is None  # no distributedInfo, no rank in the name


def test_begin_end_pairs_equal_complete_events(tmp_path, doc, baseline):
    events = []
    for e in doc["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            b = {k: v for k, v in e.items() if k != "dur"}
            b["ph"] = "B"
            events.append(b)
            events.append({"ph": "E", "pid": e["pid"], "tid": e["tid"], "ts": e["ts"] + e["dur"]})
        else:
            events.append(e)
    p = tmp_path / "be.json"
    p.write_bytes(orjson.dumps({"traceEvents": events}))
    _same(analyze(p).gpus[0].to_dict(), baseline)


def test_fractional_timestamps_kept(doc):
    t = load(SRC)
    frac = (t.events["ts"] % 1 != 0).sum()
    assert frac > 0.9 * t.events.height  # Kineto writes ns precision as fractional µs


def test_unknown_fields_and_event_kinds_are_ignored(tmp_path, doc, baseline):
    extra = dict(doc)
    extra["someNewTopLevelKey"] = {"x": [1, 2, 3]}
    extra["traceEvents"] = doc["traceEvents"] + [
        {"ph": "X", "cat": "gpu_new_kind", "name": "?", "pid": 0, "tid": 7, "ts": 1, "dur": 1},
        {"ph": "C", "name": "counter", "pid": 0, "ts": 5, "args": {"v": 1}},
        {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": doc["traceEvents"][-1].get("ts", 0),
         "dur": 0, "args": {"unknown_field": [1], "stream": 7, "device": 0}},
    ]
    p = tmp_path / "extra.json"
    p.write_bytes(orjson.dumps(extra))
    got = analyze(p).gpus[0].to_dict()
    assert got["compute_us"] == pytest.approx(baseline["compute_us"])


@pytest.mark.parametrize("name,rank", [("rank-3.json", 3), ("trace_rank12.json.gz", 12), ("x-TP-5-y.json", 5),
                                       ("worker_rank_0.pt.trace.json", 0), ("plain.json", None)])
def test_rank_from_file_name(name, rank):
    assert rank_from_filename(Path(name)) == rank


def test_to_pandas_for_notebooks():
    t = load(SRC)
    df = t.to_pandas()
    assert len(df) == t.events.height and "ts" in df.columns


def test_segment_patterns_are_configurable(tmp_path):
    from click.testing import CliRunner

    from traceview.cli import main

    pats = tmp_path / "seg.toml"
    pats.write_text('[segments]\nmicrobatch = ["^never$"]\n')
    r = CliRunner().invoke(main, ["analyze", str(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"), "--format", "json",
                                  "--segments", str(pats)])
    assert r.exit_code == 0, r.stderr
    seg = orjson.loads(r.stdout)["traces"][0]["segments"]
    # mb0/mb1 are no longer micro-batch names: everything is one micro-batch
    assert seg["sources"]["microbatch"] == "single"
    assert seg["summary"]["microbatches"] == ["mb0"] and len(seg["by_microbatch"]) == 1
