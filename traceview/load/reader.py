"""Files -> ``Trace``: reading (plain or gzip, with a decompression cap), decoding, metadata."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import polars as pl

from ..errors import NotATraceError, TraceError
from . import decode
from .trace import GPU_KINDS, KIND_DTYPE, Trace

#: Default cap on the bytes one file may decompress to (a gzip bomb stops here).
DEFAULT_MAX_BYTES = int(os.environ.get("TRACEVIEW_MAX_BYTES", 16 << 30))

TRACE_SUFFIXES = (".json", ".json.gz")
_RANK_PATTERNS = (
    re.compile(r"rank[-_]?(\d+)", re.IGNORECASE),
    re.compile(r"(?:^|[-_.])TP[-_]?(\d+)(?:[-_.]|$)"),
)


def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | bytearray:
    """The file's JSON bytes, gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic != b"\x1f\x8b":
                size = os.fstat(f.fileno()).st_size
                if size > max_bytes:
                    raise TraceError(path, f"file is {size} bytes, over the {max_bytes}-byte limit "
                                           "(raise it with --max-bytes)")
                return f.read()
            return _gunzip(path, f, max_bytes)
    except IsADirectoryError:
        raise TraceError(path, "is a directory") from None
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except PermissionError:
        raise TraceError(path, "permission denied") from None
    except OSError as e:
        raise TraceError(path, f"cannot read: {e.strerror or e}") from None


def _gunzip(path: Path, f, max_bytes: int) -> bytearray:
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    member_open = False  # inside a gzip member whose end we have not seen yet
    try:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            while block:
                member_open = True
                out += d.decompress(block, max_bytes + 1 - len(out))
                if len(out) > max_bytes:
                    raise TraceError(path, f"decompresses to more than {max_bytes} bytes "
                                           "(gzip bomb?); raise the limit with --max-bytes")
                block = d.unconsumed_tail
                if d.eof:  # end of one member; concatenated members may follow
                    member_open = False
                    block = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as e:
        # zlib drops the output of the call that failed: decompress again in small steps
        # so that everything before the damage (e.g. zeros after a crash) is kept.
        f.seek(0)
        out = bytearray()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while len(out) <= max_bytes and (block := f.read(4096)):
                while block:  # 4 KiB of deflate data expands to at most ~4 MiB
                    out += d.decompress(block)
                    block = b""
                    if d.eof:  # concatenated members
                        block, d = d.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error:
            pass
        if out.strip():
            raise _TruncatedGzip(out) from None
        raise TraceError(path, f"corrupt gzip data ({e})") from None
    if member_open:
        # Stream cut short (a job killed mid-write): keep what decompressed.
        if not out:
            raise TraceError(path, "gzip stream is truncated before any data")
        raise _TruncatedGzip(out)
    return out


class _TruncatedGzip(Exception):
    def __init__(self, data: bytearray) -> None:
        self.data = data


def rank_from_filename(path: Path) -> int | None:
    for pat in _RANK_PATTERNS:
        m = pat.search(path.name)
        if m:
            return int(m.group(1))
    return None


def load(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> Trace:
    """Load one trace file (``.json``, ``.json.gz``, Kineto object or bare Chrome array)."""
    try:
        return _load(Path(path), max_bytes)
    except RecursionError:  # the JSON decoders recurse once per nesting level
        raise TraceError(path, "JSON nested too deeply (limit: a few hundred levels)") from None


def _load(path: Path, max_bytes: int) -> Trace:
    notes: list[str] = []
    try:
        raw = read_bytes(path, max_bytes)
    except _TruncatedGzip as t:
        raw = t.data
        notes.append("gzip stream is cut short or corrupt at the end: analyzed what decompressed")
    if not raw.strip():
        raise TraceError(path, "file is empty")
    arr = decode.locate_events(raw)
    if arr is None:
        raise NotATraceError(path, "not a trace: no 'traceEvents' array and not a JSON array of events")
    buf = decode.ColumnBuffer()
    salvaged = False
    complete = arr.complete
    carry, carries = None, 0  # start of a piece whose cut fell inside a string: retried with the next
    for piece, offset in decode.iter_event_chunks(raw, arr.start, arr.end):
        if carry is not None:
            piece, offset = raw[carry: offset + len(piece)], carry
        if decode.decode_chunk(buf, piece):
            carry = None
            continue
        last_piece = offset + len(piece) >= arr.end
        if not last_piece and carries < 8 and decode.cut_short(piece):
            carry, carries = offset, carries + 1
            continue
        whole = decode.last_whole_events(piece)
        if last_piece and complete and decode.cut_short(piece):
            complete = False  # the ']' taken for the array's end was inside the last, cut-off event
        if not complete and last_piece:
            if whole is not None:
                decode.decode_chunk(buf, whole)
            salvaged = True
            break
        raise TraceError(path, f"invalid JSON in traceEvents near byte {offset + (len(whole) if whole else 0)}")
    del raw
    if not complete:
        if not salvaged and not buf.cols["ts"]:
            raise TraceError(path, "file is truncated before its first complete event")
        notes.append("file is truncated (the writer stopped mid-file): analyzed every complete "
                     f"event up to the cut ({len(buf.cols['ts'])} events)")
    decode.match_begin_end(buf)
    for reason, n in sorted(buf.skipped.items()):
        notes.append(f"{n} {reason} skipped")
    events = _to_frame(buf)
    if events.filter(pl.col("kind").is_in(GPU_KINDS)).height == 0:
        raise TraceError(path, "no GPU events (kernels, memcpys, memsets) in this trace")
    header = arr.header
    dist = header.get("distributedInfo") or {}
    rank = _as_int(dist.get("rank"))
    if rank is None:
        rank = rank_from_filename(path)
    devices = [d for d in (header.get("deviceProperties") or []) if isinstance(d, dict)]
    return Trace(
        path=path,
        events=events,
        rank=rank,
        world_size=_as_int(dist.get("world_size")),
        devices=devices,
        metadata={k: v for k, v in header.items() if k != "deviceProperties"},
        warnings=notes,
    )


def _as_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _to_frame(buf: decode.ColumnBuffer) -> pl.DataFrame:
    c = buf.cols
    df = pl.DataFrame(
        {
            "kind": pl.Series(c["kind"], dtype=pl.Utf8).cast(KIND_DTYPE),
            "name": pl.Series(c["name"], dtype=pl.Utf8).cast(pl.Categorical),
            "pid": pl.Series(c["pid"], dtype=pl.Int64),
            "tid": pl.Series(c["tid"], dtype=pl.Int64),
            "ts": pl.Series(c["ts"], dtype=pl.Float64),
            "dur": pl.Series(c["dur"], dtype=pl.Float64),
            "correlation": pl.Series(c["correlation"], dtype=pl.Int64),
            "external_id": pl.Series(c["external_id"], dtype=pl.Int64),
            "device": pl.Series(c["device"], dtype=pl.Int64),
            "stream": pl.Series(c["stream"], dtype=pl.Int64),
            "input_dims": pl.Series(c["input_dims"], dtype=pl.Utf8),
            "bytes": pl.Series(c["bytes"], dtype=pl.Int64),
            "grid": pl.Series(c["grid"], dtype=pl.Utf8).cast(pl.Categorical),
        }
    )
    gpu = pl.col("kind").is_in(GPU_KINDS)
    return df.with_columns(
        device=pl.when(gpu).then(pl.coalesce("device", "pid")).otherwise(pl.col("device")),
        stream=pl.when(gpu).then(pl.coalesce("stream", "tid")).otherwise(pl.col("stream")),
        end=pl.col("ts") + pl.col("dur"),
    )


def find_trace_files(directory: Path) -> list[Path]:
    """Trace files directly inside ``directory`` (sorted), by suffix."""
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except PermissionError:
        raise TraceError(directory, "permission denied (cannot list the directory)") from None
    files = [p for p in entries if p.name.endswith(TRACE_SUFFIXES)]
    if not files:
        raise TraceError(directory, "no trace files (*.json, *.json.gz) in this directory")
    return files
