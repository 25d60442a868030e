"""Bytes -> event columns: locating the event array, cutting it into pieces, and the
reference (per-event) decoding path.

Pieces of the ``traceEvents`` array are decoded one at a time, so peak memory is one piece
plus the columns.  ``fast.decode_piece`` decodes a clean Kineto piece in bulk; anything it
cannot prove it handles identically (NaN, strings where numbers belong, ``B``/``E`` pairs,
odd exporters) comes here: generic JSON, then ``add_event`` on each event, which converts
what it can and counts what it had to skip.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgspec

#: Event categories we keep (lower-cased, legacy Kineto names mapped).  Everything else
#: (python_function stacks, flow arrows, overhead) is skipped at decode time.
CATEGORY_ALIASES = {
    "kernel": "kernel",
    "gpu_memcpy": "gpu_memcpy",
    "gpu_memset": "gpu_memset",
    "memcpy": "gpu_memcpy",
    "memset": "gpu_memset",
    "cpu_op": "cpu_op",
    "operator": "cpu_op",
    "cuda_runtime": "cuda_runtime",
    "runtime": "cuda_runtime",
    "cuda_driver": "cuda_driver",
    "user_annotation": "user_annotation",
    "gpu_user_annotation": "gpu_user_annotation",
}
#: What ``traceview annotate`` adds carries this category.  It is not one of the kept
#: categories above (the only filter), so reading an annotated trace measures the original
#: events alone: the same numbers as the trace before annotation.
ANNOTATION_CATEGORY = "traceview"
assert ANNOTATION_CATEGORY not in CATEGORY_ALIASES
KEPT_PHASES = {"X", "B", "E"}
#: Every phase of the Chrome trace format (other phases of a kept category are skipped and counted).
CHROME_PHASES = frozenset("BEXiICbnestfPNODMVvRcSTpF()")
UNKNOWN_PHASE = "events with a missing or unknown phase ('ph')"


def unknown_phase(ph: Any) -> bool:
    return not isinstance(ph, str) or ph not in CHROME_PHASES

CHUNK_BYTES = 32 << 20


class TraceHeader(msgspec.Struct):
    """Everything of a Kineto trace except its events (decoded separately, in chunks)."""

    distributedInfo: Any = None   # Any, not dict/list: a header key of an odd type must not make
    deviceProperties: Any = None  # the object fail to decode (it would look like a cut file)
    baseTimeNanoseconds: Any = None
    schemaVersion: Any = None
    displayTimeUnit: Any = None


_header_decoder = msgspec.json.Decoder(TraceHeader)

COLUMNS = (
    "kind", "name", "pid", "tid", "ts", "dur", "correlation", "external_id",
    "device", "stream", "input_dims", "bytes", "grid", "annotation",
)

#: ``args`` keys that Kineto (and torch's CUPTI-monitor writer) put on GPU events themselves
#: (torch.autograd.profiler_util lists them): on a CUDA-graph kernel (``graph node id`` set)
#: every other key was added by ``torch.cuda._annotate_cuda_graph_trace`` from the kernel's
#: ``mark_kernels`` scopes, PyTorch 2.12+
KINETO_GPU_ARGS = frozenset({
    "External id", "correlation", "device", "context", "stream", "queued", "kind", "grid", "block",
    "registers per thread", "shared memory", "blocks per SM", "warps per SM", "est. achieved occupancy %",
    "occupancy", "priority", "graph id", "graph node id", "channel", "channel_type", "bytes",
    "memory bandwidth (GB/s)", "fromDevice", "inDevice", "toDevice", "fromContext", "inContext", "toContext",
    "copy kind", "src kind", "dst kind", "flags", "value", "memory kind", "Collective name", "dtype",
    "In msg nelems", "Out msg nelems", "In split size", "Out split size", "Global rank start",
    "Global rank stride", "Group size", "Process Group Name", "Process Group Description",
    "Process Group Ranks", "Rank", "Src Rank", "Dst Rank", "Seq", "Is asynchronized op",
})


def graph_annotation(args: dict) -> str | None:
    """The annotation args of a CUDA-graph kernel as JSON text (``{"layer": "3", ...}``, in their
    order), or None: not a graph node (``graph node id`` absent or 0), or no annotation added."""
    node = args.get("graph node id")
    if node is None or node == 0 or node == "0" or isinstance(node, bool):
        return None
    extra = {str(k): v for k, v in args.items() if k not in KINETO_GPU_ARGS}
    return json.dumps(extra, separators=(",", ":"), ensure_ascii=False) if extra else None


@dataclass
class ColumnBuffer:
    """Column lists filled chunk by chunk; ``skipped`` counts events dropped, by reason."""

    cols: dict[str, list] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    skipped: dict[str, int] = field(default_factory=dict)
    begins: list[tuple] = field(default_factory=list)  # B events, matched later
    ends: list[tuple] = field(default_factory=list)    # E events
    thread_ids: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def thread_key(self, value: Any) -> int | None:
        """pid/tid as an int; strings (Chrome allows them: "GPU 0", SGLang's
        "[TP00-DP00-PP00-EP03] 495") get the stable id ``named_id`` gives them."""
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            return _int(value)  # None outside int64 (the column type)
        if isinstance(value, str):
            if _int(value) is not None:
                return int(value)
            key = self.thread_ids.get(value)
            if key is None:
                key = self.thread_ids[value] = named_id(value)
            return key
        return None


#: pid/tid strings get ids in [NAMED_ID_BASE, NAMED_ID_BASE + 2**56): a hash of the string,
#: so that one name is one id in every file (a diff of two traces pairs them) and in any
#: decoding order; the names are kept (``Trace.thread_names``) and shown instead of the ids.
NAMED_ID_BASE = -(1 << 62)


def named_id(name: str) -> int:
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=7).digest()
    return NAMED_ID_BASE + int.from_bytes(digest, "big")


def _num(value: Any) -> float | None:
    """A finite number or None (bools, strings, NaN and infinities are not times)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            v = float(value)
        except OverflowError:  # an integer literal with hundreds of digits
            return None
        return v if math.isfinite(v) else None
    if isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 63) else None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return _int(int(value))
    if isinstance(value, str) and len(value) < 24 and _DECIMAL.fullmatch(value):
        return _int(int(value))
    return None  # (a string of several '-', "--5", is not a number: int() would raise)


_DECIMAL = re.compile(r"-?\d+")  # one optional minus sign, then decimal digits (as str.isdecimal)


MAX_ABS_TIME_US = 1e17  # ~3,000 years in microseconds: anything larger is corrupt


def add_event(buf: ColumnBuffer, ph: Any, cat: Any, name: Any, pid: Any, tid: Any,
              ts: Any, dur: Any, args: Any) -> None:
    """Append one event to the column lists, or count why it was skipped."""
    if not isinstance(ph, str) or ph not in KEPT_PHASES:
        if unknown_phase(ph) and isinstance(cat, str) and cat.lower() in CATEGORY_ALIASES:
            buf.skip(UNKNOWN_PHASE)  # e.g. a kernel written with "ph": "x": not silently lost
        return
    t = _num(ts)
    if ph == "E":  # Chrome: an 'E' closes its thread's innermost open 'B'; name and cat are optional
        if t is None or abs(t) > MAX_ABS_TIME_US:
            buf.skip("'E' events without a valid timestamp")
        else:
            buf.ends.append((buf.thread_key(pid), buf.thread_key(tid), t, len(buf.begins) + len(buf.ends)))
        return
    kind = CATEGORY_ALIASES.get(cat.lower() if isinstance(cat, str) else None)
    if kind is None or name is None:
        if name is None and kind is not None:
            buf.skip("events without a name")
        if ph == "B" and t is not None and abs(t) <= MAX_ABS_TIME_US:  # placeholder: its 'E' must close it
            buf.begins.append((buf.thread_key(pid), buf.thread_key(tid), t, None) + (None,) * 8
                              + (len(buf.begins) + len(buf.ends),))
        return
    if not isinstance(name, str):
        name = str(name)
    if t is None or abs(t) > MAX_ABS_TIME_US:
        buf.skip("events without a valid timestamp")
        return
    p, th = buf.thread_key(pid), buf.thread_key(tid)
    if isinstance(args, dict):
        corr, ext = args.get("correlation"), args.get("External id")
        dev, stream, nbytes = args.get("device"), args.get("stream"), args.get("bytes")
        d = args.get("Input Dims")
        dims = json.dumps(d) if d is not None else None
        g = args.get("grid")
        grid = f"{json.dumps(g, separators=(',', ':'))}/{json.dumps(args.get('block'), separators=(',', ':'))}" if g is not None else None
        ann = graph_annotation(args)
    else:
        corr = ext = dev = stream = nbytes = dims = grid = ann = None
    if ph == "B":
        buf.begins.append((p, th, t, kind, name, corr, ext, dev, stream, dims, grid, ann,
                           len(buf.begins) + len(buf.ends)))
        return
    d = _num(dur)
    if d is None:
        buf.skip("events without a valid duration")
        return
    if d < 0 or d > MAX_ABS_TIME_US:
        buf.skip("events with a negative or huge duration")
        return
    _append(buf, kind, name, p, th, t, d, corr, ext, dev, stream, dims, nbytes, grid, ann)


def _append(buf: ColumnBuffer, kind, name, p, th, t, d, corr, ext, dev, stream, dims, nbytes, grid=None,
            ann=None) -> None:
    c = buf.cols
    c["kind"].append(kind)
    c["name"].append(name)
    c["pid"].append(p)
    c["tid"].append(th)
    c["ts"].append(t)
    c["dur"].append(d)
    c["correlation"].append(_int(corr))
    c["external_id"].append(_int(ext))
    c["device"].append(_int(dev))
    c["stream"].append(_int(stream))
    c["input_dims"].append(dims)
    c["bytes"].append(_int(nbytes))
    c["grid"].append(grid)
    c["annotation"].append(ann)


def match_begin_end(buf: ColumnBuffer) -> None:
    """Turn ``B``/``E`` pairs into complete events (per pid/tid, innermost first)."""
    if not buf.begins and not buf.ends:
        return
    # Merge both lists in time order; on equal times, in file order (the last item of each
    # tuple), so both "E then B" (adjacent ranges) and "B then E" (an empty range) pair up.
    timeline = [(b[2], b[-1], 1, i) for i, b in enumerate(buf.begins)]
    timeline += [(e[2], e[-1], 0, i) for i, e in enumerate(buf.ends)]
    timeline.sort()
    stacks: dict[tuple, list[int]] = {}
    for _t, _seq, is_begin, i in timeline:
        if is_begin:
            b = buf.begins[i]
            stacks.setdefault((b[0], b[1]), []).append(i)
            continue
        e = buf.ends[i]
        stack = stacks.get((e[0], e[1]))
        if not stack:
            buf.skip("'E' events without a matching 'B'")
            continue
        p, th, t, kind, name, corr, ext, dev, stream, dims, grid, ann, _seq = buf.begins[stack.pop()]
        if kind is not None:  # None: a range of a category we do not keep
            _append(buf, kind, name, p, th, t, e[2] - t, corr, ext, dev, stream, dims, None, grid, ann)
    unmatched = sum(buf.begins[i][3] is not None for s in stacks.values() for i in s)
    if unmatched:
        buf.skip("'B' events without a matching 'E'", unmatched)
    buf.begins.clear()
    buf.ends.clear()


# --- locating and splitting the event array -------------------------------------------

_TRACE_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_LINE_BOUNDARY = re.compile(rb"\}[ \t\r]*(?:\n\s*,|,[ \t\r]*\n)\s*\{")
_LAST_EVENT = re.compile(rb"\}\s*\]")  # the last event, then the array's end
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # an escaped UTF-16 surrogate


@dataclass
class EventArray:
    """Where the events are in the file, and the top-level metadata around them."""

    start: int          # offset of the first byte after '['
    end: int            # offset of the closing ']' (len(raw) when the file is cut short)
    complete: bool      # False: the array never closes (a job killed mid-write)
    header: dict        # distributedInfo, deviceProperties, ... ({} for a bare array)
    duplicate: bool = False  # "traceEvents" occurs twice: the last one is this array


def locate_events(raw: bytes) -> EventArray | None:
    """Find the ``traceEvents`` array (or a bare top-level array); None if there is none.

    The header keys are read from around the array, wherever they are (before it, after
    it, or both), without decoding the events.  When the key occurs twice at the top
    level, the last one counts (as in ``JSON.parse``) and ``duplicate`` says so.
    """
    head = raw[:64].lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        start = raw.find(b"[") + 1
        last = _last_non_space(raw)  # (raw may be a memory map: no copies of the whole file)
        complete = last >= start and raw[last: last + 1] == b"]"
        return EventArray(start, last if complete else len(raw), complete, {})
    if not head.startswith(b"{"):
        return None
    start = _first_key(raw)
    if start is None:
        return None
    # A repeated top-level key: the last one counts (as in JSON.parse).  Looked for just after
    # the first array opens (``"traceEvents": [], "traceEvents": [...]``) and after it
    # closes, not through the whole file: the events cannot hold the key (a string's quotes
    # are escaped), and scanning gigabytes for it would cost more than decoding them.
    duplicate = False
    later = _last_key(raw, start, min(len(raw), start + (1 << 20)))
    if later is not None:
        start, duplicate = later, True
    prefix = bytes(raw[: start]).lstrip().removeprefix(b"\xef\xbb\xbf")
    found = _array_end(raw, start, prefix)
    if found is not None:
        later = _last_key(raw, found[0], len(raw))
        if later is not None:
            start, duplicate = later, True
            prefix = bytes(raw[: start]).lstrip().removeprefix(b"\xef\xbb\xbf")
            found = _array_end(raw, start, prefix)
    if found is None:
        header = _try_header(prefix + b"]}") or {}
        return EventArray(start, len(raw), False, header, duplicate)
    return EventArray(start, found[0], True, found[1], duplicate)


def _first_key(raw) -> int | None:
    """The offset just after the ``[`` of the first ``"traceEvents": [`` (a key spelled with
    JSON escapes, ``"traceEvent\\u0073"``, when there is no plain one)."""
    m = _TRACE_EVENTS_KEY.search(raw)
    if m is not None:
        return m.end()
    for m in _ESCAPED_KEY.finditer(raw):
        try:
            if json.loads(b'"' + m.group(1) + b'"') == "traceEvents":
                return m.end()
        except ValueError:
            continue
    return None


def _last_key(raw, lo: int, hi: int) -> int | None:
    """The offset after the ``[`` of the last plain ``"traceEvents": [`` in ``raw[lo:hi]``."""
    last, pos = None, lo
    while (pos := raw.find(b'"traceEvents"', pos, hi)) >= 0:
        m = _TRACE_EVENTS_KEY.match(raw, pos)
        if m is not None:
            last = m.end()
        pos += 13
    return last


_ESCAPED_KEY = re.compile(rb'"((?:[^"\\\n]|\\.){0,256}\\(?:[^"\\\n]|\\.){0,256})"\s*:\s*\[')


def _array_end(raw, start: int, prefix: bytes) -> tuple[int, dict] | None:
    """(offset of the closing ``]``, header) of the array opened just before ``start``; None
    when it never closes (a file cut short) or the text after it is not the object's end.

    Fast guess first: the right ``]`` makes ``prefix + ']' + rest`` a valid object, and the
    earliest one that does wins (keys after the events may hold lists of objects).  A ``]``
    inside the events never works, so the search stops a little past the first success.
    When the text after the events is long or full of ``]`` (a ``systemTraceEvents``
    string, metadata lists), the exact way: one pass of msgspec over the array, without
    building it, which stops where the array ends.
    """
    idx, found, first, tries, since = len(raw), None, None, 0, 0
    while tries < 64:
        idx = raw.rfind(b"]", start - 1, idx)
        if idx < 0:
            return found or first
        if found is not None and (since >= 4 or idx < found[0] - (1 << 20)):
            return found  # well inside the events now
        before = raw[max(start - 1, idx - 256): idx].rstrip()
        if before and not before.endswith((b"}", b"[")):  # a list inside an event, not the array
            continue
        tries += 1
        header = _try_header(prefix + raw[idx:])
        if header is not None:
            first = first or (idx, header)
        if header is not None and _ends_events(raw, start, idx):
            found, since = (idx, header), 0
        elif found is not None:
            since += 1
    exact = _exact_end(raw, start)
    if exact is not None:
        header = _try_header(prefix + raw[exact:])
        if header is not None:
            return exact, header
    return found or first


def _ends_events(raw, start: int, idx: int) -> bool:
    """Whether the text just before ``idx`` is the end of a run of events (not, say, the
    ``[`` of an empty list among the keys after the array)."""
    lo = max(start, idx - (1 << 20))
    tail = bytes(raw[lo: idx])
    if lo > start:
        m = _BOUNDARY.search(tail)
        if m is None:
            return True  # one event of over 1 MiB: cannot tell cheaply, take it
        tail = tail[m.end() - 1:]
    data = b"[" + tail.strip().rstrip(b",") + b"]"
    try:
        return isinstance(msgspec.json.decode(data), list)
    except msgspec.DecodeError:
        return _is_json(data)
    except UnicodeDecodeError:
        return _is_json(repair_utf8(data))


def _exact_end(raw, start: int) -> int | None:
    """The offset of the ``]`` that closes the array opened at ``start - 1``, by decoding it
    (as a ``msgspec.Raw``: validated, not built); None when it does not close."""
    with memoryview(raw) as view:
        part = view[start - 1:]
        try:
            value = msgspec.json.decode(part, type=msgspec.Raw)
            n = len(value)
            del value
        except msgspec.DecodeError as e:
            m = re.search(r"trailing characters \(byte (\d+)\)", str(e))
            if m is None:
                return None
            n = int(m.group(1))
        finally:
            part.release()
    end = raw.rfind(b"]", start - 1, start - 1 + n)
    return end if end >= 0 else None


def _try_header(data: bytes) -> dict | None:
    try:
        h = _header_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    except UnicodeDecodeError:  # a header string that is not UTF-8
        return _try_header(bytes(data).decode("utf-8", "replace").encode())
    out = {f: getattr(h, f) for f in h.__struct_fields__ if getattr(h, f) is not None}
    if not isinstance(out.get("distributedInfo", {}), dict):
        del out["distributedInfo"]
    if not isinstance(out.get("deviceProperties", []), list):
        del out["deviceProperties"]
    return out


def _last_non_space(raw) -> int:
    """Index of the last non-whitespace byte (-1 if none), reading only the file's tail."""
    end = len(raw)
    while end > 0:
        begin = max(0, end - 4096)
        tail = raw[begin:end].rstrip()
        if tail:
            return begin + len(tail) - 1
        end = begin
    return -1


def iter_event_cuts(raw, start: int, end: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of successive runs of whole events, about ``chunk_bytes`` each.

    Runs are cut at ``}, {`` boundaries, preferring one with a line break in it (a string
    cannot hold a raw line break, so such a cut is never inside a name); the caller
    validates each run by decoding it, so a cut that falls inside a nested object or a string
    (the piece would not be balanced) is detected and retried with the next piece.
    Only the bytes around each cut are read (``raw`` may be a memory map).
    """
    pos = start
    while pos < end:
        target = pos + chunk_bytes
        m = None
        if target < end:
            window = min(end, target + (1 << 20))
            m = _LINE_BOUNDARY.search(raw, target, window) or _BOUNDARY.search(raw, target, end)
        if m is None:
            yield pos, end - pos
            return
        cut = m.start() + 1  # just after the '}'
        yield pos, cut - pos
        pos = m.end() - 1     # the next event's '{'


def iter_event_chunks(raw, start: int, end: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Yield ``(piece, piece_start)`` for successive runs of whole events (see ``iter_event_cuts``)."""
    for offset, length in iter_event_cuts(raw, start, end, chunk_bytes):
        yield raw[offset: offset + length], offset


def last_whole_events(piece: bytes) -> bytes | None:
    """The longest prefix of ``piece`` that ends at an event boundary and decodes.

    Used on the last piece of a truncated file, so that every complete event is kept.
    """
    window = max(0, len(piece) - (4 << 20))
    cuts = [m.start() + 1 for m in _BOUNDARY.finditer(piece, window)]
    stripped = piece.rstrip()
    if stripped.endswith(b"}"):
        cuts.append(len(stripped))
    cuts += [m.start() + 1 for m in _LAST_EVENT.finditer(piece, window)]  # cut inside the tail
    for cut in sorted(set(cuts))[::-1][:64]:
        candidate = piece[:cut]
        try:
            msgspec.json.decode(b"[" + candidate + b"]")
            return candidate
        except msgspec.DecodeError:
            if (b"NaN" in candidate or b"Infinity" in candidate) and _is_json(b"[" + candidate + b"]"):
                return candidate
        except UnicodeDecodeError:  # not UTF-8 inside a string: repair as decode_chunk does
            return last_whole_events(bytes(piece).decode("utf-8", "replace").encode())
    return None


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


def cut_short(piece: bytes) -> bool:
    """Whether ``piece`` ends inside an event (a file cut short), rather than being damaged inside."""
    try:
        msgspec.json.decode(b"[" + piece.strip().rstrip(b",") + b"]")
    except msgspec.DecodeError as e:
        return "truncated" in str(e)
    except ValueError:
        return False
    return False


def decode_chunk(buf: ColumnBuffer, piece: bytes) -> bool:
    """Decode one run of events into ``buf``, event by event. False if the bytes are not whole events.

    The reference path: generic JSON (NaN and Infinity allowed), then ``add_event`` on each
    event.  ``fast.decode_piece`` gives the same result in bulk and leaves to this path
    only the pieces it cannot prove it handles identically.
    """
    data = b"[" + piece.strip().rstrip(b",") + b"]"
    try:
        events = json.loads(data)
    except UnicodeDecodeError:  # strings that are not UTF-8 (names from odd exporters): U+FFFD them
        return decode_chunk(buf, repair_utf8(piece))
    except ValueError:  # RecursionError (absurd nesting) propagates: load() reports it
        return False
    if not isinstance(events, list):
        return False
    if _SURROGATE.search(data):  # "\ud800" alone is valid JSON but not UTF-8: U+FFFD it in names
        for e in events:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                e["name"] = e["name"].encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    for e in events:
        if not isinstance(e, dict):
            buf.skip("entries in traceEvents that are not objects")
            continue
        add_event(buf, e.get("ph"), e.get("cat"), e.get("name"), e.get("pid"), e.get("tid"),
                  e.get("ts"), e.get("dur"), e.get("args"))
    return True


def repair_utf8(piece: bytes) -> bytes:
    return bytes(piece).decode("utf-8", "replace").encode()
