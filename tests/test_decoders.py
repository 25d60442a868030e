"""The two decoders (compiled ``_simd`` over simdjson, and the pure-Python msgspec path) give
identical results: the same frames, warnings and errors on every fixture, every corpus case and
timestamps of 16+ significant digits; the compiled one declines (returns None) whatever it cannot
prove it handles identically, and the Python path then decides.

Where the extension is not built the comparisons skip with the reason, unless
``TRACEVIEW_REQUIRE_COMPILED=1`` (CI sets it after installing libsimdjson-dev): then they fail.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from conftest import PROJECT_FIXTURES, ROOT, all_shared_traces, shared, needs_shared
from traceview.cli import main
from traceview.errors import TraceError
from traceview.load import native, reader

CORPUS = ROOT / "tests" / "corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())["cases"]

if not native.ENABLED and os.environ.get("TRACEVIEW_REQUIRE_COMPILED") and not os.environ.get("TRACEVIEW_DECODER"):
    raise RuntimeError("TRACEVIEW_REQUIRE_COMPILED is set but the compiled decoder is not built: " + native.describe())

compiled = pytest.mark.skipif(native._simd is None, reason="the compiled decoder is not built here "
                              "(apt-get install g++ libsimdjson-dev, then pip install .)")


def _load(path: Path, use_compiled: bool, **kw):
    """Trace (or the TraceError) with one decoder, in this process."""
    old = native.ENABLED
    native.ENABLED = use_compiled
    try:
        return reader.load(path, workers=kw.pop("workers", 1), **kw)
    except TraceError as e:
        return e
    finally:
        native.ENABLED = old


def _same(path: Path, **kw) -> None:
    a, b = _load(path, True, **kw), _load(path, False, **kw)
    if isinstance(a, TraceError) or isinstance(b, TraceError):
        assert str(a) == str(b), f"{path.name}: {a!r} vs {b!r}"
        return
    assert_frame_equal(a.events, b.events, categorical_as_str=True)
    # bit for bit: the times, not only equal within a tolerance
    for col in ("ts", "dur", "end"):
        assert a.events[col].to_numpy().tobytes() == b.events[col].to_numpy().tobytes(), col
    assert (a.warnings, a.rank, a.world_size, a.metadata, a.devices) == (b.warnings, b.rank, b.world_size,
                                                                         b.metadata, b.devices)


def _configured() -> None:
    native._simd.configure({alias: native.EVENT_KINDS.index(kind) for alias, kind in native.CATEGORY_ALIASES.items()},
                           "".join(sorted(native.CHROME_PHASES - {"X", "B", "E"})))


REAL = sorted(PROJECT_FIXTURES.rglob("*.json.gz")) + all_shared_traces()


@compiled
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_traces_give_identical_frames(path):
    _same(path)


@compiled
def test_real_traces_are_decoded_by_the_compiled_path():
    """Real traces are clean: no piece of them falls back (else the fast path would be idle); a
    trace with CUDA-graph node ids (annotations under any arg name) is the Python path's by design."""
    _configured()
    for path in REAL:
        if "annotated" in path.name:
            continue
        with reader.open_source(path) as src:
            arr = reader.decode.locate_events(src.raw)
            for off, n in reader.decode.iter_event_cuts(src.raw, arr.start, arr.end):
                piece = reader._trim(src.read(off, n))
                assert native.decode(b"[" + piece + b"]") is not None, f"{path.name}: piece at {off} declined"


@compiled
@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_corpus_case_gives_identical_results(case):
    kw = {}
    if "max_bytes" in case["expect"]:
        kw["max_bytes"] = reader.parse_size(case["expect"]["max_bytes"])
    _same(CORPUS / case["file"], **kw)


@compiled
def test_pieces_decoded_in_threads_equal_one_process(tmp_path):
    """Many small pieces, two threads (the compiled path) vs the Python path in this process."""
    path = PROJECT_FIXTURES / "gpu-extra" / "decode_tbo_rank0.json.gz"
    a = _load(path, True, workers=2, chunk_bytes=256 << 10)
    b = _load(path, False, chunk_bytes=256 << 10)
    assert_frame_equal(a.events, b.events, categorical_as_str=True)
    assert a.warnings == b.warnings


def _hard_numbers(rng: random.Random, n: int) -> list[str]:
    """Timestamps as Kineto writes them (µs with ns fractions: 16-17 significant digits) and
    decimal strings next to halfway points between doubles, where a sloppy parser rounds wrongly."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append(f"{rng.randrange(10**15, 10**16)}.{rng.randrange(1000):03d}")
        elif r < 0.7:  # a halfway point (exact in decimal), nudged by one unit in the 25th digit
            x = rng.uniform(1e9, 1e16)
            m, e = __import__("math").frexp(x)
            lo = __import__("math").ldexp(m, e)
            hi = __import__("math").nextafter(lo, 2 * lo)
            from decimal import Decimal, getcontext
            getcontext().prec = 60
            mid = (Decimal(lo) + Decimal(hi)) / 2
            digits = format(mid, "f")[:26]
            out.append(digits + rng.choice(["", "1", "9"]))
        else:
            out.append(repr(rng.uniform(0, 5e15)) if rng.random() < 0.5 else f"{rng.uniform(0, 1e4):.17g}")
    return out


@compiled
def test_hard_timestamps_are_parsed_exactly_on_both_paths(tmp_path):
    """ts/dur of 16+ significant digits: both decoders give Python's float() of the text, bit for bit."""
    src = json.loads(__import__("gzip").decompress((PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz").read_bytes()))
    events = [e for e in src["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "kernel"][:3000]
    rng = random.Random(18)
    ts, dur = _hard_numbers(rng, len(events)), [f"{rng.uniform(0, 1e4):.17g}" for _ in events]
    lines = []
    for e, t, d in zip(events, ts, dur):
        e = {k: v for k, v in e.items() if k not in ("ts", "dur")}
        body = json.dumps(e)[:-1]
        lines.append(f'{body}, "ts": {t}, "dur": {d}}}')
    path = tmp_path / "hard.json"
    path.write_text('{"traceEvents": [\n' + ",\n".join(lines) + "\n]}")
    want_ts = [float(t) for t in ts]
    want_dur = [float(d) for d in dur]
    for use in (True, False):
        tr = _load(path, use)
        assert tr.events["ts"].to_list() == want_ts
        assert [x.hex() for x in tr.events["dur"].to_list()] == [x.hex() for x in want_dur]
    _same(path)


DECLINED = {  # a clean kernel event, then the one thing that makes the compiled path decline
    "-0 timestamp": '"ts": -0.0',
    "string tid on a kept event": '"tid": "main"',
    "duplicate key": '"name": "b"',
    "float inside Input Dims": '"args": {"Input Dims": [[1.5]]}',
    "escaped surrogate": '"name": "x\\ud800"',
    "invalid JSON in an unread field": '"junk": tru',
    "non-ASCII category": '"cat": "\u212aernel"',
    "string ts": '"ts": "5"',
    "pid as a float": '"pid": 1.0',
    "args not an object": '"args": null',
    "deep nesting": '"args": {"other": ' + "[" * 40 + "]" * 40 + "}",
    "CUDA-graph node (annotation args)": '"args": {"graph node id": 4294967301, "layer": "3", "str": "attn"}',
}


@compiled
@pytest.mark.parametrize("extra", list(DECLINED.values()), ids=list(DECLINED))
def test_unusual_pieces_are_left_to_the_python_path(extra, tmp_path):
    _configured()
    event = '{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1.5, "dur": 2, ' + extra + "}"
    clean = '{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1.5, "dur": 2}'
    assert native.decode(("[" + clean + "]").encode()) is not None
    assert native.decode(("[" + clean + ", " + event + "]").encode()) is None
    path = tmp_path / "t.json"
    path.write_text('{"traceEvents": [' + clean + ", " + event + "]}", encoding="utf-8")
    _same(path)


MALFORMED_BYTES = {"--5": None, "-": None, "": None, "5-": None, "-+5": None, "1e3": None, " 5": None,
                   "-0": 0, "007": 7, "-9223372036854775808": -(1 << 63), "9223372036854775808": None,
                   "\u0663": 3}  # (an Arabic-Indic digit: a decimal digit to Python)


@pytest.mark.parametrize("use_compiled", [False, pytest.param(True, marks=compiled)])
def test_malformed_numeric_strings_in_bytes_are_null_on_both_paths(tmp_path, use_compiled):
    """``"bytes": "--5"`` and its kin on real memcpy events: null (not a number), never a
    traceback, the same on both decoders; the other events keep their real byte counts."""
    src = json.loads(__import__("gzip").decompress((PROJECT_FIXTURES / "prefill_serial_rank0.json.gz").read_bytes()))
    copies = [e for e in src["traceEvents"] if e.get("cat") in ("gpu_memcpy", "gpu_memset")][:60]
    assert len(copies) > len(MALFORMED_BYTES) and all(isinstance(e["args"]["bytes"], int) for e in copies)
    values = list(MALFORMED_BYTES)
    for e, v in zip(copies, values):
        e["args"]["bytes"] = v
    path = tmp_path / "bytes.json"
    path.write_text(json.dumps({"traceEvents": copies}), encoding="utf-8")
    tr = _load(path, use_compiled)
    assert not isinstance(tr, TraceError), tr
    got = tr.events.filter(pl.col("kind").is_in(["gpu_memcpy", "gpu_memset"]))["bytes"].to_list()
    want = [MALFORMED_BYTES[v] for v in values] + [e["args"]["bytes"] for e in copies[len(values):]]
    assert got == want
    _same(path)


def test_decoder_switch_and_version_line():
    """``traceview --version`` names the decoder; TRACEVIEW_DECODER=python forces the pure path."""
    out = CliRunner().invoke(main, ["--version"]).stdout
    assert native.describe() in out and "decoder" in out
    env = {**os.environ, "TRACEVIEW_DECODER": "python", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "traceview", "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "pure Python" in r.stdout, r.stdout + r.stderr


def test_graph_annotations_are_the_same_on_the_per_event_path(tmp_path):
    """The msgspec path re-reads a piece with graph node ids for their annotation args; the per-event
    path (here: forced by one B/E pair in the piece) reads them event by event: the same column."""
    import gzip

    src = PROJECT_FIXTURES / "captures" / "decode_tbo_cudagraph_annotated.json.gz"
    doc = json.loads(gzip.decompress(src.read_bytes()))
    doc["traceEvents"] += [{"ph": "B", "cat": "user_annotation", "name": "x", "pid": 1, "tid": 1, "ts": 1.0},
                           {"ph": "E", "pid": 1, "tid": 1, "ts": 2.0}]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(doc))
    fast, slow = reader.load(src), reader.load(path)
    want = fast.events.filter(fast.events["annotation"].is_not_null())["annotation"].to_list()
    got = slow.events.filter(slow.events["annotation"].is_not_null())["annotation"].to_list()
    assert got == want and len(want) == 2478
    assert json.loads(want[0]).keys() <= {"str", "layer", "microbatch"}
    plain = reader.load(PROJECT_FIXTURES / "captures" / "decode_tbo_cudagraph.json.gz")
    assert plain.events["annotation"].null_count() == plain.events.height  # no node ids: nothing kept
