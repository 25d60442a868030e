"""A trace file's original events, one by one, as the bytes the file holds.

The annotated trace keeps every original event unchanged, so they are copied as raw JSON
(``msgspec.Raw``), never re-encoded; only the few fields the writer needs (phase, time,
ids) are decoded beside them.  The file layout around the event array (the Kineto header
before and after ``traceEvents``) is kept as bytes too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import msgspec

from ..errors import TraceError
from ..load import decode
from ..load.reader import DEFAULT_MAX_BYTES, open_source


class Fields(msgspec.Struct, gc=False):
    """What the writer reads of an original event (anything else is only copied)."""

    ph: Any = None
    ts: Any = None
    dur: Any = None
    pid: Any = None
    tid: Any = None
    id: Any = None
    cat: Any = None
    name: Any = None


_raws = msgspec.json.Decoder(list[msgspec.Raw])
_fields = msgspec.json.Decoder(list[Fields])


@dataclass
class Layout:
    """The bytes around the event array: ``prefix`` ends with ``[``; ``suffix`` starts with ``]``."""

    prefix: bytes
    suffix: bytes
    is_object: bool


def layout(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Layout:
    with open_source(path, max_bytes) as src:
        arr = decode.locate_events(src.raw)
        if arr is None:
            raise TraceError(path, "not a trace: no 'traceEvents' array and not a JSON array of events")
        prefix = bytes(src.raw[: arr.start])
        is_object = not prefix.lstrip().lstrip(b"\xef\xbb\xbf").startswith(b"[")
        if arr.complete:
            suffix = bytes(src.raw[arr.end:])
        else:  # a file cut short: close what Kineto would have closed
            suffix = b"]}" if is_object else b"]"
        return Layout(prefix, suffix, is_object)


def events(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[bytes, Fields]]:
    """``(raw JSON of the event, its fields)`` for every whole event of the file, in file order."""
    with open_source(path, max_bytes) as src:
        arr = decode.locate_events(src.raw)
        if arr is None:
            raise TraceError(path, "not a trace: no 'traceEvents' array and not a JSON array of events")
        carry = None
        for offset, length in decode.iter_event_cuts(src.raw, arr.start, arr.end):
            if carry is not None:
                offset, length = carry, offset + length - carry
            piece = src.read(offset, length).strip().rstrip(b",")
            last = offset + length >= arr.end
            got = _decode(piece)
            if got is None and not last:
                carry = offset  # the cut fell inside a string: retry with the next piece
                continue
            if got is None:
                whole = decode.last_whole_events(piece)
                got = _decode(whole) if whole is not None else None
                if got is None:
                    raise TraceError(path, f"invalid JSON in traceEvents near byte {offset}")
            carry = None
            yield from got


def _decode(piece: bytes) -> list[tuple[bytes, Fields]] | None:
    data = b"[" + piece + b"]"
    try:
        raws = _raws.decode(data)
        fields = _fields.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return _decode_lenient(data)
    return [(bytes(r), f) for r, f in zip(raws, fields)]


def _decode_lenient(data: bytes) -> list[tuple[bytes, Fields]] | None:
    """NaN/Infinity or bytes that are not UTF-8: generic JSON, each event written back as JSON
    (the one case where an original event is re-encoded; its values stay the same)."""
    try:
        items = json.loads(bytes(data).decode("utf-8", "replace"))
    except ValueError:
        return None
    out = []
    for e in items:
        raw = json.dumps(e, separators=(",", ":"), allow_nan=True).encode()
        f = Fields(**{k: e.get(k) for k in Fields.__struct_fields__}) if isinstance(e, dict) else Fields()
        out.append((raw, f))
    return out
