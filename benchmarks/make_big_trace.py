#!/usr/bin/env python3
"""Make a large, valid Kineto trace from a real one, for load and analysis benchmarks.

The source's events are repeated ``K`` times.  Copy ``k`` is shifted in time by ``k * P``
(``P`` = the source's whole time span plus a gap, rounded up to a whole microsecond, so
copies never overlap), and every id that links events (``correlation``, ``External id``,
flow ``id``, ``Python id``/``Python parent id``, ``Ev Idx``) is offset by ``k * S`` so that
links stay unique and point inside their own copy.  ``ProfilerStep#N`` annotations are
renumbered so that each copy's iterations stay distinct.  Metadata events (``ph: "M"``) and
the profiler's own ``Trace`` span are written once (the span stretched over all copies).

So every per-GPU time (busy, compute, communication, overlap, exposed, per-category time and
count) of the output is exactly ``K`` times the source's, and the span is
``(K - 1) * P + span``: ``benchmarks/run.py`` checks this.

Events are written one per line with ``", "``/``": "`` separators (close to Kineto's own
bytes per event; its indentation makes real files ~15% bigger for the same events, so a
"1 GB" trace made here holds slightly *more* events than a real 1 GB trace).

Usage::

    python benchmarks/make_big_trace.py ../shared/fixtures/deepseek/train.json --target-mb 1024 \
        -o benchmarks/data/train_1g.json

``--shape kineto`` writes the events as the PyTorch profiler does instead: several lines per
event (``ph``/``cat``/``name``/ids on one, ``ts``/``dur`` on the next, ``args`` over several
indented lines) and times with fractional microseconds (``1740461679479712.345``: 19
significant digits, which a decoder must parse exactly).  The fractions are a fixed function
of the event's position, so such a trace is no longer exactly ``K`` times the source: the
runner checks it by comparing the two decoders instead.

A sidecar ``OUT.meta.json`` records the source, the repeat count, the period and the shape.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import orjson

ID_ARGS = ("correlation", "External id", "Python id", "Python parent id", "Ev Idx")
_STEP = re.compile(r"^ProfilerStep#(\d+)$")


def read_trace(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc = orjson.loads(raw)
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    return doc


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Repeater:
    """The source's events, and how to make copy ``k`` of them."""

    def __init__(self, events: list[dict], gap_us: float = 1000.0) -> None:
        self.meta = [e for e in events if e.get("ph") == "M"]
        self.span_event = next((e for e in events if e.get("cat") == "Trace" and e.get("ph") == "X"), None)
        self.events = [e for e in events if e.get("ph") != "M" and e is not self.span_event]
        times = [e["ts"] for e in self.events if _is_num(e.get("ts"))]
        ends = [e["ts"] + (e["dur"] if _is_num(e.get("dur")) else 0) for e in self.events if _is_num(e.get("ts"))]
        self.t0, self.t1 = min(times), max(ends)
        self.period = float(math.ceil(self.t1 - self.t0 + gap_us))
        biggest = 0
        for e in self.events:
            if _is_num(e.get("id")):
                biggest = max(biggest, abs(int(e["id"])))
            a = e.get("args")
            if isinstance(a, dict):
                for k in ID_ARGS:
                    if _is_num(a.get(k)):
                        biggest = max(biggest, abs(int(a[k])))
        self.id_stride = 10 ** len(str(biggest + 1))
        steps = [int(m.group(1)) for e in self.events if isinstance(e.get("name"), str)
                 for m in [_STEP.match(e["name"])] if m]
        self.step_stride = (max(steps) - min(steps) + 1) if steps else 0

    def copy(self, k: int) -> Iterator[dict]:
        shift, ids = k * self.period, k * self.id_stride
        if k == 0:
            yield from self.events
            return
        for e in self.events:
            e = dict(e)
            if _is_num(e.get("ts")):
                e["ts"] = e["ts"] + shift
            if _is_num(e.get("id")):
                e["id"] = e["id"] + ids
            name = e.get("name")
            if self.step_stride and isinstance(name, str) and name.startswith("ProfilerStep#"):
                m = _STEP.match(name)
                if m:
                    e["name"] = f"ProfilerStep#{int(m.group(1)) + k * self.step_stride}"
            a = e.get("args")
            if isinstance(a, dict) and any(_is_num(a.get(f)) for f in ID_ARGS):
                a = dict(a)
                for f in ID_ARGS:
                    if _is_num(a.get(f)) and a[f] >= 0:  # -1 means "none" in Kineto
                        a[f] = a[f] + ids
                e["args"] = a
            yield e


def _kineto_number(v: Any, i: int) -> str:
    """A time with a nanosecond fraction (a fixed function of the position ``i``)."""
    if isinstance(v, bool) or not _is_num(v) or v != int(v):
        return json.dumps(v)
    return f"{int(v)}.{(i * 7919) % 1000:03d}"


def kineto_event(e: dict, i: int, enc: json.JSONEncoder) -> str:
    """One event laid out over several lines, as Kineto writes them."""
    head = ", ".join(f"{json.dumps(k)}: {enc.encode(v)}" for k, v in e.items() if k not in ("ts", "dur", "args"))
    lines = ["{", f"    {head}" + ("," if any(k in e for k in ("ts", "dur", "args")) else "")]
    times = ", ".join(f'"{k}": {_kineto_number(e[k], i + n)}' for n, k in enumerate(("ts", "dur")) if k in e)
    if times:
        lines.append(f"    {times}" + ("," if "args" in e else ""))
    if "args" in e:
        a = e["args"]
        if isinstance(a, dict) and a:
            body = ",\n".join(f"      {json.dumps(k)}: {enc.encode(v)}" for k, v in a.items())
            lines.append('    "args": {\n' + body + "\n    }")
        else:
            lines.append(f'    "args": {enc.encode(a)}')
    return "\n  ".join(lines) + "\n  }"


def write_trace(doc: dict, rep: Repeater, repeats: int, out, shape: str = "compact") -> None:
    """Write the header keys that came before ``traceEvents``, the events, then the rest."""
    enc = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)
    if shape == "kineto":
        events = 0

        def line(e: dict) -> str:
            nonlocal events
            events += 1
            return kineto_event(e, events, enc)
    else:
        line = enc.encode
    keys = list(doc)
    split = keys.index("traceEvents")
    out.write(b"{\n")
    for k in keys[:split]:
        out.write(f"  {json.dumps(k)}: {enc.encode(doc[k])},\n".encode())
    out.write(b'  "traceEvents": [\n')
    first = True
    for e in rep.meta:
        out.write((b"" if first else b",\n") + b"  " + enc.encode(e).encode())
        first = False
    if rep.span_event is not None:
        span = dict(rep.span_event)
        span["dur"] = (repeats - 1) * rep.period + (rep.t1 - span.get("ts", rep.t0))
        out.write((b"" if first else b",\n") + b"  " + enc.encode(span).encode())
        first = False
    for k in range(repeats):
        lines = [line(e) for e in rep.copy(k)]
        if lines:
            out.write((b"" if first else b",\n") + ("  " + ",\n  ".join(lines)).encode())
            first = False
    out.write(b"\n  ]")
    for k in keys[split + 1:]:
        out.write(f",\n  {json.dumps(k)}: {enc.encode(doc[k])}".encode())
    out.write(b"\n}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a real trace (.json or .json.gz)")
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--target-mb", type=float, help="approximate output size in MiB (uncompressed)")
    size.add_argument("--repeats", type=int, help="exact number of copies")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output file (.json, or .json.gz to gzip)")
    ap.add_argument("--shape", choices=("compact", "kineto"), default="compact",
                    help="compact: one event per line, integer times; kineto: several lines per event, "
                         "fractional microseconds")
    args = ap.parse_args(argv)

    doc = read_trace(args.source)
    rep = Repeater(doc["traceEvents"])
    if args.repeats:
        repeats = args.repeats
    else:
        enc = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)
        if args.shape == "kineto":
            per_copy = sum(len(kineto_event(e, 0, enc).encode()) + 4 for e in rep.copy(1))
        else:
            per_copy = sum(len(enc.encode(e).encode()) + 4 for e in rep.copy(1))
        repeats = max(1, round(args.target_mb * (1 << 20) / per_copy))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if args.output.name.endswith(".gz") else open
    with opener(args.output, "wb") as f:
        write_trace(doc, rep, repeats, f, args.shape)
    meta = {"source": str(args.source), "repeats": repeats, "period_us": rep.period, "shape": args.shape,
            "events_per_copy": len(rep.events), "bytes": args.output.stat().st_size}
    Path(str(args.output) + ".meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{args.output}: {repeats} copies of {args.source.name}, {meta['bytes'] / (1 << 20):.1f} MiB",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
