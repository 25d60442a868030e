"""The fast path of decoding: one run of well-formed Kineto events -> a polars frame.

``decode.add_event`` converts events one Python call at a time (~5 µs each: 50 s for a
1 GB trace).  Here msgspec decodes a whole piece into typed, untracked structs whose field
types admit only what a clean Kineto trace holds, columns are pulled out with one list
comprehension each over the *kept* events, and validation (timestamps, durations) is a
handful of vectorized polars filters.  Anything else (a field of an unexpected type, NaN,
``B``/``E`` pairs, string thread ids on kept events, ids past int64, bad UTF-8) makes
``decode_piece`` return None, and the caller runs the exact per-event path on that piece:
so the result is always what ``add_event`` would have produced, only faster.

``decode_piece`` is a pure function of bytes (no shared state), so pieces can be decoded
in worker processes (see ``reader.load(workers=...)``).
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence, Union

import msgspec
import numpy as np
import polars as pl

from . import native
from .decode import CATEGORY_ALIASES, CHROME_PHASES, COLUMNS, MAX_ABS_TIME_US, _int, graph_annotation, repair_utf8
from .trace import KIND_DTYPE

_NO_RAW = msgspec.Raw(b"")


class Args(msgspec.Struct, frozen=True, gc=False):
    """The few ``args`` the analysis reads; anything else in ``args`` is skipped unparsed."""

    correlation: int | None = None
    stream: int | None = None
    device: int | None = None
    external_id: int | None = msgspec.field(default=None, name="External id")
    input_dims: msgspec.Raw = msgspec.field(default=_NO_RAW, name="Input Dims")
    bytes: int | str | None = None
    grid: msgspec.Raw = _NO_RAW
    block: msgspec.Raw = _NO_RAW
    graph_node_id: int | None = msgspec.field(default=None, name="graph node id")


_NO_ARGS = Args()


class _AllArgs(msgspec.Struct, tag_field="ph", tag="X", gc=False):
    """A complete event's ``args`` whole: read again only for a piece holding CUDA-graph kernels
    (``graph node id``), whose annotation args have names no struct can list."""

    cat: str | None = None
    args: dict = msgspec.field(default_factory=dict)


#: The two numbers are kept as their JSON text and parsed by polars, many at a time: msgspec
#: parses a float of more than 15 significant digits (a Kineto ``ts`` with its nanoseconds)
#: on a slow, exact path; polars' parser is exact too, and ~10x faster on those.
_NULL = msgspec.Raw(b"null")


class Event(msgspec.Struct, tag_field="ph", tag="X", gc=False):
    """One complete (``ph: "X"``) event as a clean Kineto trace writes it (gc=False: millions, never cyclic)."""

    cat: str | None = None
    name: str | None = None
    pid: int | str | None = None
    tid: int | str | None = None
    ts: msgspec.Raw = _NULL
    dur: msgspec.Raw = _NULL
    args: Args = _NO_ARGS


def _other(ph: str) -> type:
    # (``cat`` as a class attribute: ``e.cat`` is None on these without a type check)
    return msgspec.defstruct(f"Phase{ord(ph)}", [], tag_field="ph", tag=ph, gc=False, namespace={"cat": None})


#: Events of the other phases are only recognized (their fields are skipped unparsed): the
#: loader drops them.  A phase that is none of these ('B'/'E' pairs, which are matched across
#: the whole file, or an unknown or missing phase, which is counted) fails the decode, and the
#: piece goes to the per-event path.
_OTHER = tuple(_other(ph) for ph in sorted(CHROME_PHASES - {"X", "B", "E"}))
_decoder = msgspec.json.Decoder(list[Union[(Event, *_OTHER)]])  # type: ignore[valid-type]
_all_args_decoder = msgspec.json.Decoder(list[Union[(_AllArgs, *_OTHER)]])  # type: ignore[valid-type]
_PAIRS = frozenset({"B", "E"})

#: The frame every piece produces (``kind`` an Enum, ``name``/``grid`` Categorical).
SCHEMA = {
    "kind": KIND_DTYPE, "name": pl.Categorical, "pid": pl.Int64, "tid": pl.Int64, "ts": pl.Float64,
    "dur": pl.Float64, "correlation": pl.Int64, "external_id": pl.Int64, "device": pl.Int64,
    "stream": pl.Int64, "input_dims": pl.Utf8, "bytes": pl.Int64, "grid": pl.Categorical,
    "annotation": pl.Utf8,
}
assert tuple(SCHEMA) == COLUMNS


@dataclass
class Piece:
    """The kept events of one piece, and how many were skipped, by reason."""

    frame: pl.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)


class _Slow(Exception):
    """This piece needs the per-event path."""


def decode_piece(piece: bytes) -> Piece | None:
    """Decode one run of whole events (bytes between ``[`` and ``]``); None: use the slow path."""
    return _decode_array(b"[" + piece + b"]")


def _decode_array(array: bytes | bytearray, compiled: bool = True) -> Piece | None:
    """``decode_piece`` of the events with their brackets: ``[ ... ]``; the compiled decoder
    first when there is one (``native``: it declines what it does not handle identically)."""
    if compiled and native.ENABLED and (done := native.decode(array)) is not None:
        return Piece(*done)
    collecting = gc.isenabled()
    gc.disable()  # nothing here makes cycles; the collector would only walk the new lists
    try:
        try:
            return _decode(array)
        except UnicodeDecodeError:  # as the per-event path does: U+FFFD for bytes that are not UTF-8
            return _decode(repair_utf8(array))
    except (_Slow, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
            OverflowError, TypeError, ValueError, RecursionError, pl.exceptions.PolarsError):
        return None
    finally:
        if collecting:
            gc.enable()


def _decode(array: bytes | bytearray) -> Piece:
    events = _decoder.decode(array)
    cats = {e.cat for e in events}
    kinds = {c: k for c in cats if c is not None and (k := CATEGORY_ALIASES.get(c.lower())) is not None}
    kept = [e for e in events if e.cat in kinds]
    del events
    if not kept:
        return Piece(pl.DataFrame(schema=SCHEMA), {})

    kind = [kinds[e.cat] for e in kept]
    names = [e.name for e in kept]
    pids = [e.pid for e in kept]
    tids = [e.tid for e in kept]
    ts = _numbers([e.ts for e in kept])
    dur = _numbers([e.dur for e in kept])
    args = [e.args for e in kept]
    del kept
    skipped: dict[str, int] = {}
    no_name = pl.Series([n is None for n in names], dtype=pl.Boolean)  # (not a copy of every name: a name may be 500 MB)
    bad_ts = ~no_name & (ts.is_null() | (ts.abs() > MAX_ABS_TIME_US))
    timed = ~no_name & ~bad_ts
    no_dur = timed & dur.is_null()
    bad_dur = timed & ~no_dur & ((dur < 0) | (dur > MAX_ABS_TIME_US))
    for reason, mask in (("events without a name", no_name), ("events without a valid timestamp", bad_ts),
                         ("events without a valid duration", no_dur),
                         ("events with a negative or huge duration", bad_dur)):
        n = int(mask.sum())
        if n:
            skipped[reason] = n
    frame = pl.DataFrame({
        "kind": pl.Series(kind, dtype=KIND_DTYPE),
        "name": pl.Series(names, dtype=pl.Categorical),
        "pid": _thread_ids(pids),
        "tid": _thread_ids(tids),
        "ts": ts,
        "dur": dur,
        "correlation": _ints([a.correlation for a in args]),
        "external_id": _ints([a.external_id for a in args]),
        "device": _ints([a.device for a in args]),
        "stream": _ints([a.stream for a in args]),
        "input_dims": _converted([a.input_dims for a in args], _dims).cast(pl.Utf8),
        "bytes": _ints([a.bytes for a in args]),
        "grid": _converted([a.grid for a in args], _grid, [a.block for a in args]).cast(pl.Categorical),
        "annotation": _graph_annotations(array, kinds) if any(a.graph_node_id for a in args)
        else pl.Series([None] * len(args), dtype=pl.Utf8),
    })
    if skipped:
        frame = frame.filter(timed & ~no_dur & ~bad_dur)
    return Piece(frame, skipped)


def _graph_annotations(array: bytes | bytearray, kinds: dict) -> pl.Series:
    """``decode.graph_annotation`` of each kept event, from the piece decoded again with whole args."""
    events = _all_args_decoder.decode(array)
    return pl.Series([graph_annotation(e.args) for e in events if e.cat in kinds], dtype=pl.Utf8)


def _texts(raws: list[msgspec.Raw]) -> pl.Series:
    """Raw JSON values as one string column (NUL never occurs in JSON text: a safe separator)."""
    text = pl.Series([b"\0".join(raws).decode()], dtype=pl.Utf8).str.split("\0").explode()
    if len(text) != len(raws):
        raise _Slow
    return text


def _numbers(raws: list[msgspec.Raw]) -> pl.Series:
    """JSON numbers (or null) -> Float64, parsed by polars in one go; anything else (a string,
    a bool: what msgspec's ``float | None`` rejects) needs the per-event path."""
    text = _texts(raws)
    values = text.cast(pl.Float64, strict=False)
    if values.null_count() and (values.is_null() & (text != "null")).any():
        raise _Slow
    if values.is_infinite().any():  # past float range ("1e999", 400 digits): the per-event path has its reasons
        raise _Slow
    zero = values == 0.0
    if zero.any() and np.signbit(values.filter(zero).to_numpy()).any():
        raise _Slow  # "-0": json/msgspec read the integer 0, polars the float -0.0
    return values.rename("")


def _converted(raws: list[msgspec.Raw], convert, raws2: list[msgspec.Raw] | None = None) -> pl.Series:
    """``convert(text)`` (``convert(text, text2)``) of each raw JSON value, null where absent;
    each distinct text is converted once, in Python, and mapped back by polars."""
    text = _texts(raws)
    if raws2 is not None:
        text = text + "\0" + _texts(raws2)
    table = {}
    for t in text.unique().to_list():
        if raws2 is not None:
            a, b = t.encode().split(b"\0")
            table[t] = convert(a, b) if a else None
        else:
            table[t] = convert(t.encode()) if t else None
    return text.replace_strict(table, return_dtype=pl.Utf8)


def _thread_ids(values: Sequence) -> pl.Series:
    """pid/tid column; a string id on a kept event (Chrome allows them) needs the slow path,
    which numbers them in file order across the whole file."""
    try:
        return pl.Series(values, dtype=pl.Int64, strict=True)
    except TypeError:
        if any(isinstance(v, str) for v in values):
            raise _Slow from None
        return pl.Series([_int(v) for v in values], dtype=pl.Int64)  # past int64: None, as thread_key


def _ints(values: Sequence) -> pl.Series:
    """An id column; values past int64 or numeric strings get ``decode._int``'s treatment."""
    try:
        return pl.Series(values, dtype=pl.Int64, strict=True)
    except TypeError:
        return pl.Series([_int(v) for v in values], dtype=pl.Int64)


@lru_cache(maxsize=1 << 16)
def _dims(raw: bytes) -> str | None:
    """``Input Dims`` as the per-event path writes it (``json.dumps`` of the value); shapes
    repeat, so each distinct text is converted once."""
    value = json.loads(raw)
    return None if value is None else json.dumps(value)


@lru_cache(maxsize=1 << 14)
def _grid(grid: bytes, block: bytes) -> str | None:
    g = json.loads(grid)
    if g is None:
        return None
    b = json.loads(block) if block else None
    return f"{json.dumps(g, separators=(',', ':'))}/{json.dumps(b, separators=(',', ':'))}"


def decode_file_piece(path: str, offset: int, length: int) -> Piece | None:
    """``decode_piece`` on bytes a worker process reads itself (no copy through a pipe).

    The piece is read straight into a buffer between ``[`` and ``]`` (its trailing commas
    blanked): no copy of it is made (each copy of a 32 MB piece is 8,000 page faults).
    The compiled decoder, when there is one, reads it into its own reused buffer instead.
    """
    if native.ENABLED and (done := native.decode_file(path, offset, length)) is not None:
        return Piece(*done)
    buf = bytearray(length + 2)
    fd = os.open(path, os.O_RDONLY)
    try:
        with memoryview(buf) as view:
            n = os.preadv(fd, [view[1: length + 1]], offset)
    finally:
        os.close(fd)
    if n != length:  # the file changed under us: as the slow path would read it
        del buf[n + 1:]
        buf.append(0)
    buf[0] = ord("[")
    end = n
    while end > 0 and buf[end] in _BLANK:
        end -= 1
    while end > 0 and buf[end] == _COMMA:  # (as bytes.rstrip(b","))
        buf[end] = _SPACE
        end -= 1
    buf[-1] = ord("]")
    return _decode_array(buf, compiled=not native.ENABLED)


_BLANK = frozenset(b" \t\r\n\x0b\x0c")
_COMMA, _SPACE = ord(","), ord(" ")
