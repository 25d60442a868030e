"""The compiled decoder (``_simd``, simdjson's parser) behind ``fast.decode_piece``, when built.

``_simd`` parses a piece and picks the kept fields into C arrays; it accepts only pieces the
pure-Python fast path would accept and returns None for anything else, so the caller's
Python path stays the reference.  Here its arrays become the same polars frame that path
builds: names, ``Input Dims`` and grid/block come back as codes into the piece's distinct
texts, and those texts are converted by the Python path's own functions (``fast._dims``,
``fast._grid``), once each.

``TRACEVIEW_DECODER=python`` turns it off (tests run both decoders on the same inputs).
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from .decode import CATEGORY_ALIASES, CHROME_PHASES
from .trace import EVENT_KINDS, KIND_DTYPE

try:
    from . import _simd
except ImportError:  # not built (no compiler or no libsimdjson at install time), or its library is gone
    _simd = None

_KINDS = pl.Series(EVENT_KINDS, dtype=KIND_DTYPE)
_SKIP_REASONS = ("events without a name", "events without a valid timestamp",
                 "events without a valid duration", "events with a negative or huge duration")


def _enabled() -> bool:
    if _simd is None or os.environ.get("TRACEVIEW_DECODER", "").strip().lower() in ("python", "pure", "msgspec"):
        return False
    if not getattr(_simd, "DECLINES_GRAPH_NODES", 0):
        return False  # built from an older _simd.cpp: it would drop CUDA-graph annotations (rebuild it)
    _simd.configure({alias: EVENT_KINDS.index(kind) for alias, kind in CATEGORY_ALIASES.items()},
                    "".join(sorted(CHROME_PHASES - {"X", "B", "E"})))
    return True


ENABLED = _enabled()


def describe() -> str:
    """Which decoder loads traces here (``traceview --version`` prints it)."""
    if ENABLED:
        return f"compiled (simdjson {_simd.SIMDJSON_VERSION})"
    if _simd is not None and not getattr(_simd, "DECLINES_GRAPH_NODES", 0):
        return "pure Python (msgspec; the compiled decoder is an older build: rebuild it with pip install -e .)"
    if _simd is not None:
        return "pure Python (msgspec; the compiled decoder is off: TRACEVIEW_DECODER=python)"
    return "pure Python (msgspec; the compiled decoder is not built)"


#: Pieces larger than this (one event of hundreds of MB: a huge kernel name) are declined
#: before anything is allocated: simdjson's DOM needs ~13 bytes per byte of input (tape and
#: structural indexes), which under a memory limit would leave too little for the msgspec path.
MAX_PIECE_BYTES = 256 << 20


def decode(array) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """``[ ... ]`` bytes -> (frame, skipped) as ``fast._decode`` makes them; None: not clean."""
    if len(array) > MAX_PIECE_BYTES:
        return None
    return _frame(_simd.decode(array))


def decode_file(path: str, offset: int, length: int) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """The piece at ``offset`` of ``path``, read and framed by ``_simd`` itself (no Python buffer)."""
    if length > MAX_PIECE_BYTES:
        return None
    return _frame(_simd.decode_file(path, offset, length))


def _frame(r) -> tuple[pl.DataFrame, dict[str, int]] | None:
    if r is None:
        return None
    (n, kind, name, names, pid, pid_ok, tid, tid_ok, ts, dur, corr, corr_ok, ext, ext_ok, dev, dev_ok,
     stream, stream_ok, dims, dims_texts, nbytes, nbytes_ok, grid, grid_texts, skipped) = r
    skipped = {reason: k for reason, k in zip(_SKIP_REASONS, skipped) if k}
    from .fast import SCHEMA, _dims, _grid  # (fast imports this module)

    if n == 0:
        return pl.DataFrame(schema=SCHEMA), skipped
    dims_table = [None] + [_dims(t.encode()) for t in dims_texts]
    grid_table = [None]
    for t in grid_texts:
        g, b = t.encode().split(b"\0")
        grid_table.append(_grid(g, b))
    frame = pl.DataFrame({
        "kind": _KINDS.gather(_codes(kind, np.uint8)),
        "name": pl.Series(names, dtype=pl.Categorical).gather(_codes(name, np.int32)),
        "pid": _ints(pid, pid_ok),
        "tid": _ints(tid, tid_ok),
        "ts": pl.Series(np.frombuffer(ts, np.float64)),
        "dur": pl.Series(np.frombuffer(dur, np.float64)),
        "correlation": _ints(corr, corr_ok),
        "external_id": _ints(ext, ext_ok),
        "device": _ints(dev, dev_ok),
        "stream": _ints(stream, stream_ok),
        "input_dims": pl.Series(dims_table, dtype=pl.Utf8).gather(_codes(dims, np.int32)),
        "bytes": _ints(nbytes, nbytes_ok),
        "grid": pl.Series(grid_table, dtype=pl.Categorical).gather(_codes(grid, np.int32)),
        "annotation": pl.Series([None] * n, dtype=pl.Utf8),  # it declines pieces with graph annotations
    })
    return frame, skipped


def _codes(raw: bytes, dtype) -> pl.Series:
    return pl.Series(np.frombuffer(raw, dtype))


def _ints(values: bytes, ok: bytes | None) -> pl.Series:
    """An Int64 column; ``ok`` (one byte per row, 0 = null) is None when no value is missing."""
    s = pl.Series(np.frombuffer(values, np.int64))
    if ok is None:
        return s
    return s.set(pl.Series(np.frombuffer(ok, np.uint8)) == 0, None)
