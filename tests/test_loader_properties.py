"""Property tests on the loader (hypothesis).

- Random valid event lists, written in any of the shapes exporters use (Kineto object or bare
  array, compact or indented, plain or gzip, X events or B/E pairs), load into exactly the GPU
  intervals that were written.
- Random byte damage to a small real trace never raises anything but ``TraceError``, and what
  loads also analyzes.
- A cut at any offset gives ``TraceError`` or the first N events of the uncut trace, in order.
- The chunk size the decoder splits the event array by changes nothing, even when names hold
  the ``}, {`` the splitter looks for.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import traceview
from conftest import PROJECT_FIXTURES
from traceview.errors import TraceError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def _write(data: bytes, suffix: str = ".json") -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _load(data: bytes, suffix: str = ".json", **kw):
    p = _write(data, suffix)
    try:
        return traceview.load(p, **kw)
    finally:
        p.unlink()


@functools.lru_cache(maxsize=None)
def real_slice(n: int = 60, start: int = 3990) -> tuple[bytes, list[dict]]:
    """``n`` consecutive events of a real trace (Kineto's own pretty text) and their header."""
    doc = json.loads(gzip.decompress((PROJECT_FIXTURES / "prefill_serial_rank0.json.gz").read_bytes()))
    events = doc["traceEvents"][start: start + n]
    doc["traceEvents"] = events
    return json.dumps(doc, indent=2).encode(), events


def _key(events: pl.DataFrame) -> list[tuple]:
    return events.select(pl.col("kind").cast(pl.Utf8), pl.col("name").cast(pl.Utf8), "pid", "tid", "ts",
                         "dur").rows()


# --- 1. valid events round-trip --------------------------------------------------------------------

# Kineto timestamps: microseconds since boot, three decimals; durations from 0 up.
timestamp = st.one_of(st.integers(0, 10**13).map(lambda n: n / 1000), st.floats(-1e9, 1e15, allow_nan=False))
duration = st.one_of(st.just(0.0), st.integers(0, 10**7).map(lambda n: n / 1000), st.floats(0, 1e9))
name = st.one_of(st.sampled_from(["gemm", "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
                                  "void flash_fwd<}, {>(Params)", "Memcpy DtoD (Device -> Device)"]),
                 st.text(min_size=1, max_size=30))


@st.composite
def gpu_event(draw) -> dict:
    dev = draw(st.integers(0, 3))
    stream = draw(st.integers(0, 40))
    e = {"ph": "X", "cat": draw(st.sampled_from(GPU_CATS)), "name": draw(name), "pid": dev, "tid": stream,
         "ts": draw(timestamp), "dur": draw(duration)}
    if draw(st.booleans()):
        e["args"] = {"device": dev, "stream": stream, "correlation": draw(st.integers(0, 2**40))}
    return e


cpu_event = st.fixed_dictionaries({"ph": st.just("X"), "cat": st.sampled_from(["cpu_op", "cuda_runtime"]),
                                   "name": name, "pid": st.just(617), "tid": st.just(617), "ts": timestamp,
                                   "dur": duration})
noise = st.sampled_from([{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "GPU 0"}},
                         {"ph": "s", "id": 1, "pid": 617, "tid": 617, "ts": 5.0, "cat": "ac2g", "name": "ac2g"},
                         {"ph": "i", "name": "mark", "pid": 0, "tid": 0, "ts": 1.0, "s": "g"},
                         {"ph": "X", "cat": "python_function", "name": "f", "pid": 617, "tid": 617, "ts": 1, "dur": 1}])


def _as_begin_end(e: dict) -> list[dict]:
    b = {k: v for k, v in e.items() if k != "dur"}
    b["ph"] = "B"
    return [b, {"ph": "E", "pid": e["pid"], "tid": e["tid"], "ts": e["ts"] + e["dur"]}]


@settings(max_examples=150, **SETTINGS)
@given(gpu=st.lists(gpu_event(), min_size=1, max_size=40), cpu=st.lists(cpu_event, max_size=10),
       other=st.lists(noise, max_size=5), shape=st.sampled_from(["kineto", "bare"]),
       indent=st.sampled_from([None, 1, 4]), gz=st.booleans(), pairs=st.booleans(), seed=st.randoms())
def test_valid_events_round_trip(gpu, cpu, other, shape, indent, gz, pairs, seed):
    if pairs:  # B/E pairs need one range at a time per thread to pair unambiguously: one stream each
        gpu = [dict(e, tid=1000 + i, pid=e["pid"], args={"device": e["pid"], "stream": 1000 + i})
               for i, e in enumerate(gpu)]
    written = []
    for e in gpu:
        written += _as_begin_end(e) if pairs else [e]
    events = written + cpu + other
    seed.shuffle(events)
    if pairs:  # an E must follow its B in the file when both carry the same time
        events.sort(key=lambda e: (e.get("tid", 0), e.get("ph") == "E"))
    doc = {"schemaVersion": 1, "traceEvents": events} if shape == "kineto" else events
    data = json.dumps(doc, indent=indent).encode()
    t = _load(gzip.compress(data) if gz else data, ".json.gz" if gz else ".json")
    assert t.warnings == []
    expected = sorted((e["cat"], e["name"], e["pid"], e["tid"], e["ts"],
                       (e["ts"] + e["dur"]) - e["ts"] if pairs else e["dur"]) for e in gpu)
    got = sorted(t.gpu_events.select(pl.col("kind").cast(pl.Utf8), pl.col("name").cast(pl.Utf8), "device",
                                     "stream", "ts", "dur").rows())
    assert got == expected
    assert t.events.height == len(gpu) + len(cpu)  # the noise (metadata, flows, instants, stacks) is not kept


# --- 2. random damage ---------------------------------------------------------------------------------

@st.composite
def damaged(draw) -> tuple[bytes, bool]:
    data, _ = real_slice(30)
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from(b'{}[]",:\\\x00\xff0-.eE \n'))
        elif op == "delete":
            del data[i: i + draw(st.integers(1, 40))]
        elif op == "insert":
            data[i:i] = draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b'"', b"{", b"]", b"\xc3", b"\\u",
                                              b'"ts": "x", ', b"[" * 2000, b'{"a":' * 1500, b",,", b"null"]))
        elif op == "duplicate":
            j = draw(st.integers(i, min(len(data), i + 400)))
            data[i:i] = data[i:j]
        else:
            del data[i:]
    return bytes(data), draw(st.booleans())


@settings(max_examples=200, **SETTINGS)
@given(damaged())
def test_random_damage_raises_only_trace_error(case):
    data, gz = case
    try:
        t = _load(gzip.compress(data) if gz else data, ".json.gz" if gz else ".json")
    except TraceError as e:
        assert e.reason and "\n" not in e.reason
        return
    a = traceview.analyze(t)  # what loads also analyzes
    for g in a.gpus:
        assert g.busy_us >= 0 and math.isfinite(g.busy_us) and g.busy_us <= g.span_us + 1e-6


@settings(max_examples=60, **SETTINGS)
@given(st.binary(max_size=3000), st.booleans())
def test_arbitrary_bytes_raise_only_trace_error(data, gz):
    try:
        _load(data, ".json.gz" if gz else ".json")
    except TraceError:
        pass


@settings(max_examples=80, **SETTINGS)
@given(st.data())
def test_damaged_gzip_raises_only_trace_error(data):
    raw, _ = real_slice(30)
    gz = bytearray(gzip.compress(raw, mtime=0))
    for _ in range(data.draw(st.integers(1, 3))):
        gz[data.draw(st.integers(0, len(gz) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        t = _load(bytes(gz), ".json.gz")
    except TraceError:
        return
    assert t.warnings or _key(t.events) == _full(raw)  # damage is never silent: a warning, or no effect


# --- 3. truncation at any offset ----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _full(data: bytes) -> list[tuple]:
    return _key(_load(data).events)


@settings(max_examples=200, **SETTINGS)
@given(st.data())
def test_truncation_gives_a_prefix_or_an_error(data):
    raw, _ = real_slice(60)
    cut = data.draw(st.integers(0, len(raw)))
    try:
        t = _load(raw[:cut])
    except TraceError:
        return
    full = _full(raw)
    got = _key(t.events)
    assert got == full[: len(got)]
    assert (cut == len(raw)) == (t.warnings == [])


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_gzip_truncation_gives_a_prefix_or_an_error(data):
    raw, _ = real_slice(60)
    gz = gzip.compress(raw, mtime=0)
    cut = data.draw(st.integers(0, len(gz)))
    try:
        t = _load(gz[:cut], ".json.gz")
    except TraceError:
        return
    got = _key(t.events)
    assert got == _full(raw)[: len(got)]
    assert (cut == len(gz)) == (t.warnings == [])


# --- 4. chunking is invisible -------------------------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(chunk=st.integers(64, 20_000), braces=st.booleans(), indent=st.sampled_from([None, 2]))
def test_chunk_size_changes_nothing(chunk, braces, indent):
    _raw, events = real_slice(200, 3890)
    if braces:
        events = [dict(e, name=f"{e.get('name')}}}, {{x") if e.get("cat") == "kernel" else e for e in events]
    data = json.dumps({"traceEvents": events}, indent=indent).encode()
    whole = _key(_load(data).events)
    assert _key(_load(data, chunk_bytes=chunk, workers=1).events) == whole
