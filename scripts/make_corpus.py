"""Generate ``tests/corpus/``: malformed and odd trace files, each with its expected outcome.

Every case is derived from a small slice of a real trace (``fixtures/prefill_serial_rank0.json.gz``),
damaged in one way: cut short at many offsets (inside the header, a string, a number, between
events, inside a gzip stream), corrupt gzip, non-traces, wrong types, NaN and huge values, B/E
pairs gone wrong, hostile names, deep nesting, a small gzip bomb...  ``cases.json`` beside the
files says, for each, what ``traceview analyze`` must do: exit 0 with these event counts, this
busy time and these warnings, or exit 2 with a one-line reason holding these words.

The expectations are computed here from the events as written, by a few lines of reference
logic that share no code with traceview (which events are valid complete events, the union of
GPU intervals per device), so the corpus test checks traceview against the trace format's
rules rather than against itself.

Deterministic: same fixture, same bytes (gzip mtime 0, a fixed random seed).
Run: ``python scripts/make_corpus.py`` (rewrites ``tests/corpus/``).
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import random
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "fixtures" / "prefill_serial_rank0.json.gz"
OUT = ROOT / "tests" / "corpus"

BASE_WINDOW = (3890, 4090)   # 200 events: CUDA runtime calls, flows, 26 kernels (2 NCCL)
SMALL_WINDOW = (3990, 4050)  # 60 events (14 KB) for the plain-text truncations

KEPT_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset", "cpu_op", "operator", "cuda_runtime",
             "runtime", "cuda_driver", "user_annotation", "gpu_user_annotation"}
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"}
MAX_TIME = 1e17  # documented limit on |ts| and dur (microseconds)


# --- the real trace, as byte spans ------------------------------------------------------

class Source:
    """The fixture's bytes, the byte span of every event, and the text around the array."""

    def __init__(self, path: Path) -> None:
        self.raw = gzip.decompress(path.read_bytes())
        text = self.raw.decode("utf-8")
        m = re.search(r'"traceEvents"\s*:\s*\[', text)
        assert m is not None
        dec = json.JSONDecoder()
        self.spans: list[tuple[int, int]] = []
        i = text.index("{", m.end())
        while True:
            _obj, end = dec.raw_decode(text, i)
            self.spans.append((i, end))
            j = end
            while text[j] in " \r\n\t":
                j += 1
            if text[j] == "]":
                break
            j += 1
            while text[j] in " \r\n\t":
                j += 1
            i = j
        assert self.raw.isascii()  # byte offsets == character offsets
        self.head = self.raw[: m.end()]
        self.tail = self.raw[j:]

    def pretty(self, lo: int, hi: int) -> tuple[bytes, list[tuple[int, int]]]:
        """Kineto's own text for events lo..hi, and each event's span in it."""
        body = self.raw[self.spans[lo][0]: self.spans[hi - 1][1]]
        data = self.head + b"\n  " + body + b"\n  " + self.tail
        shift = len(self.head) + 3 - self.spans[lo][0]
        return data, [(a + shift, b + shift) for a, b in self.spans[lo:hi]]

    def events(self, lo: int, hi: int) -> list[dict]:
        return [json.loads(self.raw[a:b]) for a, b in self.spans[lo:hi]]

    def header(self) -> dict:
        doc = json.loads(self.head + self.tail)
        del doc["traceEvents"]
        return doc


# --- reference semantics (the trace format's rules, not traceview's code) --------------------

def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, int):
        try:
            v = float(v)
        except OverflowError:
            return None
    if isinstance(v, float) and math.isfinite(v):
        return v
    return None


def complete_event(e: Any) -> tuple[str, float, float] | None:
    """(category, ts, dur) of a valid complete ('X') event of a kept category, else None."""
    if not isinstance(e, dict) or e.get("ph") != "X":
        return None
    cat = e.get("cat")
    if not isinstance(cat, str) or cat.lower() not in KEPT_CATS or e.get("name") is None:
        return None
    ts, dur = _number(e.get("ts")), _number(e.get("dur"))
    if ts is None or abs(ts) > MAX_TIME or dur is None or not 0 <= dur <= MAX_TIME:
        return None
    return cat.lower(), ts, dur


def _device(e: dict) -> Any:
    args = e.get("args")
    dev = args.get("device") if isinstance(args, dict) else None
    return dev if isinstance(dev, int) and not isinstance(dev, bool) else e.get("pid")


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def expect_ok(events: list[Any], extra_gpu: list[tuple[Any, float, float]] = (), **more) -> dict:
    """Expected counts for a trace whose valid events are ``events`` (plus ranges from B/E pairs)."""
    kept, per_dev = 0, {}
    gpu = 0
    for e in events:
        c = complete_event(e)
        if c is None:
            continue
        kept += 1
        if c[0] in GPU_CATS:
            gpu += 1
            per_dev.setdefault(str(_device(e)), []).append((c[1], c[1] + c[2]))
    for dev, ts, dur in extra_gpu:
        kept += 1
        gpu += 1
        per_dev.setdefault(str(dev), []).append((ts, ts + dur))
    busy = sum(union_length(v) for v in per_dev.values())
    out = {"exit": 0, "events": kept, "gpu_events": gpu, "busy_us": busy, "warnings": []}
    out.update(more)
    return out


def expect_error(*words: str) -> dict:
    return {"exit": 2, "words": list(words)}


def warn(*words: str) -> dict:
    """One expected warning: every word must appear in it."""
    return {"words": list(words)}


# --- writing --------------------------------------------------------------------------------

class Corpus:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.cases: list[dict] = []
        self.names: set[str] = set()

    def add(self, name: str, data: bytes, expect: dict, what: str, gz: bool = False) -> None:
        fname = f"{len(self.cases) + 1:03d}-{name}" + (".json.gz" if gz else ".json")
        assert name not in self.names, name
        self.names.add(name)
        if gz:
            data = gzip.compress(data, 9, mtime=0)
        (self.out / fname).write_bytes(data)
        self.cases.append({"file": fname, "what": what, "expect": expect})

    def add_raw(self, name: str, data: bytes, expect: dict, what: str, suffix: str = ".json") -> None:
        fname = f"{len(self.cases) + 1:03d}-{name}{suffix}"
        assert name not in self.names, name
        self.names.add(name)
        (self.out / fname).write_bytes(data)
        self.cases.append({"file": fname, "what": what, "expect": expect})

    def finish(self) -> None:
        doc = {"source": str(SOURCE.relative_to(ROOT)), "generator": "scripts/make_corpus.py",
               "cases": self.cases}
        (self.out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")


def dumps(doc: Any) -> bytes:
    """Compact JSON; NaN/Infinity written as JavaScript literals (as some exporters do)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=True, ensure_ascii=False).encode()


def trace_doc(header: dict, events: list[Any]) -> dict:
    doc = dict(header)
    doc["traceEvents"] = events
    return doc


# --- the cases ------------------------------------------------------------------------------------

def truncations(c: Corpus, src: Source) -> None:
    """A job killed mid-write: the plain Kineto text cut at many kinds of offset."""
    data, spans = src.pretty(*SMALL_WINDOW)
    events = src.events(*SMALL_WINDOW)
    array_at = len(src.head)
    c.add_raw("small-whole", data, expect_ok(events), "the 60-event slice, plain Kineto text (the uncut original)")
    whole_file = c.cases[-1]["file"]
    rng = random.Random(8)
    offsets: dict[str, int] = {}
    offsets["header-start"] = 6
    offsets["header-middle"] = array_at // 2
    offsets["header-in-key"] = data.index(b'"traceEvents"') + 6
    offsets["header-before-bracket"] = array_at - 1
    offsets["header-after-bracket"] = array_at
    for k in (0, 1, 2, 7, 20, 33, 50, 58):
        a, b = spans[k]
        ev = data[a:b]
        name_at = ev.find(b'"name": "')
        offsets[f"ev{k}-in-name"] = a + name_at + 9 + rng.randrange(1, 8)
        ts_at = ev.find(b'"ts": ')
        offsets[f"ev{k}-in-ts"] = a + ts_at + 6 + rng.randrange(1, 12)
        offsets[f"ev{k}-after-close"] = b
        offsets[f"ev{k}-after-comma"] = b + 1
    for k in (3, 12, 40):
        a, b = spans[k]
        args_at = data.find(b'"args"', a, b)
        if args_at > 0:
            offsets[f"ev{k}-in-args"] = args_at + rng.randrange(10, 30)
        offsets[f"ev{k}-before-close"] = b - 1
    tail_at = spans[-1][1]
    offsets["tail-before-bracket"] = tail_at + 2
    offsets["tail-after-bracket"] = data.index(b"]", tail_at) + 1
    offsets["tail-in-key"] = data.index(b'"traceName"', tail_at) + 5
    offsets["tail-before-brace"] = len(data) - 1
    for label, cut in sorted(offsets.items(), key=lambda kv: kv[1]):
        whole = [e for e, (a, b) in zip(events, spans) if b <= cut]
        exp = _truncated_expectation(whole, cut, array_at, "truncated", prefix_of=whole_file)
        c.add_raw(f"cut-{label}", data[:cut], exp, f"plain Kineto trace cut at byte {cut} ({label})")


def _truncated_expectation(whole: list[dict], cut: int, array_at: int, word: str,
                           extra_warnings: list[dict] = (), prefix_of: str | None = None) -> dict:
    if cut < array_at:
        return expect_error("not a trace")
    if not whole:
        return expect_error("truncated")
    exp = expect_ok(whole)
    if exp["gpu_events"] == 0:
        return expect_error("no GPU events")
    exp["warnings"] = [warn(word), *extra_warnings]
    if prefix_of:
        exp["prefix_of"] = prefix_of  # the events are the first N of the uncut trace, in order
    return exp


def bare_truncations(c: Corpus, src: Source) -> None:
    """A plain Chrome array (compact, one event per line), cut short."""
    events = src.events(*SMALL_WINDOW)
    parts = [dumps(e) for e in events]
    data = b"[" + b",\n".join(parts) + b"]\n"
    spans, pos = [], 1
    for p in parts:
        spans.append((pos, pos + len(p)))
        pos += len(p) + 2
    c.add_raw("bare-array", data, expect_ok(events), "a bare Chrome JSON array of the same events")
    whole_file = c.cases[-1]["file"]
    for frac in (0.1, 0.23, 0.37, 0.5, 0.61, 0.77, 0.9, 0.99):
        cut = int(len(data) * frac)
        whole = [e for e, (a, b) in zip(events, spans) if b <= cut]
        c.add_raw(f"bare-cut-{int(frac * 100)}", data[:cut],
                  _truncated_expectation(whole, cut, 1, "truncated", prefix_of=whole_file),
                  f"bare Chrome array cut at byte {cut}")
    c.add_raw("bare-cut-before-bracket", data[:-2], expect_ok(events, warnings=[warn("truncated")]),
              "bare array missing only its closing ']'")


def gzip_truncations(c: Corpus, src: Source) -> None:
    """A .json.gz whose gzip stream stops early (a killed writer, a partial copy)."""
    data, spans = src.pretty(*BASE_WINDOW)
    events = src.events(*BASE_WINDOW)
    gz = gzip.compress(data, 9, mtime=0)
    c.add_raw("gz-whole", gz, expect_ok(events), "the 200-event base slice, gzip", suffix=".json.gz")
    whole_file = c.cases[-1]["file"]
    for frac in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        cut = int(len(gz) * frac)
        c.add_raw(f"gz-cut-{int(frac * 100):02d}", gz[:cut], _gz_cut_expectation(gz[:cut], data, spans, events, whole_file),
                  f"gzip stream cut at compressed byte {cut} of {len(gz)}", suffix=".json.gz")
    for back in (1, 4, 8, 9):  # inside the trailer (CRC32, ISIZE) or the last deflate bytes
        cut = len(gz) - back
        c.add_raw(f"gz-cut-trailer-{back}", gz[:cut], _gz_cut_expectation(gz[:cut], data, spans, events, whole_file),
                  f"gzip stream missing its last {back} byte(s)", suffix=".json.gz")
    for cut in (3, 10, 11):  # inside the gzip header, or right after it
        c.add_raw(f"gz-cut-header-{cut}", gz[:cut], expect_error("gzip"), f"gzip file of {cut} bytes",
                  suffix=".json.gz")
    # the text cut short, then gzipped whole (a gzip written after the crash)
    for k in (5, 60, 120, 199):
        cut = spans[k][0] + 40
        whole = [e for e, (a, b) in zip(events, spans) if b <= cut]
        c.add(f"gz-of-cut-text-{k}", data[:cut],
              _truncated_expectation(whole, cut, len(src.head), "truncated", prefix_of=whole_file),
              f"complete gzip of a text cut inside event {k}", gz=True)


def _gz_cut_expectation(part: bytes, data: bytes, spans, events, whole_file: str) -> dict:
    """What decompresses from these bytes is the data that is there (zlib is the ground truth)."""
    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(part)
    assert data.startswith(out)
    if not out.strip():
        return expect_error("gzip" if not out else "empty")
    whole = [e for e, (a, b) in zip(events, spans) if b <= len(out)]
    if len(out) == len(data):
        return expect_ok(events, warnings=[warn("gzip")])
    array_at = data.index(b"[", data.index(b'"traceEvents"')) + 1
    return _truncated_expectation(whole, len(out), array_at, "truncated", [warn("gzip")], whole_file)


def gzip_damage(c: Corpus, src: Source) -> None:
    """Bit flips in the gzip header, body, CRC and size; members; bombs; gzip of non-JSON."""
    data, spans = src.pretty(*BASE_WINDOW)
    events = src.events(*BASE_WINDOW)
    gz = gzip.compress(data, 9, mtime=0)
    whole_file = next(x["file"] for x in c.cases if x["file"].endswith("-gz-whole.json.gz"))
    flips = {
        "magic1": (0, 0x01, expect_error("not a trace")),
        "magic2": (1, 0x80, expect_error("not a trace")),
        "method": (2, 0x01, expect_error("gzip")),
        "flag-text": (3, 0x01, expect_ok(events)),  # FTEXT is only a hint
        "flag-hcrc": (3, 0x02, expect_error("gzip")),
        "flag-reserved": (3, 0x80, expect_error("gzip")),
        "mtime": (5, 0x10, expect_ok(events)),
        "xfl": (8, 0x04, expect_ok(events)),
        "os": (9, 0x02, expect_ok(events)),
        "crc": (len(gz) - 6, 0x01, expect_ok(events, warnings=[warn("gzip", "checksum")], prefix_of=whole_file)),
        "isize": (len(gz) - 2, 0x20, expect_ok(events, warnings=[warn("gzip", "checksum")], prefix_of=whole_file)),
    }
    for label, (pos, bit, exp) in flips.items():
        d = bytearray(gz)
        d[pos] ^= bit
        c.add_raw(f"gz-flip-{label}", bytes(d), exp, f"gzip with bit {bit:#x} of byte {pos} flipped",
                  suffix=".json.gz")
    rng = random.Random(80)
    for k in range(8):  # flips inside the deflate data: salvage what came before, or refuse
        pos = 10 + (len(gz) - 18) * (k + 1) // 9
        d = bytearray(gz)
        d[pos] ^= 1 << rng.randrange(8)
        c.add_raw(f"gz-flip-body-{k}", bytes(d),
                  {"exit": "either", "ok": {"warnings_any": ["gzip data is corrupt"],
                                            "max_gpu_events": expect_ok(events)["gpu_events"]},
                   "words_any": ["gzip", "JSON", "truncated", "no GPU events", "not a trace"]},
                  f"gzip with one bit flipped in the deflate data at byte {pos}", suffix=".json.gz")
    zeros = gz[: len(gz) // 2] + bytes(4096)
    c.add_raw("gz-cut-then-zeros", zeros,
              {"exit": "either", "ok": {"warnings_any": ["gzip"], "prefix_of": whole_file},
               "words_any": ["gzip", "truncated", "no GPU events"]},
              "half a gzip stream followed by 4 KiB of zeros (a crash on some filesystems)", suffix=".json.gz")
    # concatenated members: valid gzip (what `cat a.gz b.gz` gives)
    thirds = [data[: len(data) // 3], data[len(data) // 3: 2 * len(data) // 3], data[2 * len(data) // 3:]]
    c.add_raw("gz-members-3", b"".join(gzip.compress(p, 9, mtime=0) for p in thirds), expect_ok(events),
              "three concatenated gzip members holding one trace", suffix=".json.gz")
    c.add_raw("gz-member-empty-first", gzip.compress(b"", 9, mtime=0) + gz, expect_ok(events),
              "an empty gzip member, then the trace", suffix=".json.gz")
    c.add_raw("gz-trailing-junk", gz + b"\x00junk",
              expect_ok(events, warnings=[warn("not gzip", "ignored")], prefix_of=whole_file),
              "a whole gzip member followed by bytes that are not gzip", suffix=".json.gz")
    c.add("gz-empty", b"", expect_error("empty"), "gzip of an empty file", gz=True)
    c.add("gz-whitespace", b" \n\t\n", expect_error("empty"), "gzip of whitespace", gz=True)
    c.add("gz-not-json-text", NOT_JSON_TEXT, expect_error("not a trace"), "gzip of a text file", gz=True)
    c.add("gz-of-gz", gz, expect_error("not a trace"), "a trace gzipped twice", gz=True)
    c.add_raw("gz-magic-only", b"\x1f\x8b", expect_error("gzip"), "only the gzip magic", suffix=".json.gz")
    # a small bomb: 10 MiB of spaces inside a valid trace, tested with --max-bytes 1M
    kernel = next(e for e in events if e.get("cat") == "kernel")
    bomb = b'{"traceEvents": [' + b" " * (10 << 20) + dumps(kernel) + b"]}"
    c.add("gz-bomb-10M", bomb, dict(expect_error("decompresses to more than", "max-bytes"), max_bytes="1M"),
          "gzip that decompresses to 10 MiB, analyzed with --max-bytes 1M", gz=True)
    c.add("plain-over-limit", src.pretty(*SMALL_WINDOW)[0], dict(expect_error("over the", "max-bytes"), max_bytes="1K"),
          "a plain trace larger than --max-bytes 1K")


NOT_JSON_TEXT = b"""# traceview

Reads PyTorch-profiler traces. This is a README, not a trace: a user passed the wrong file.

    traceview analyze run/ --format json
"""


def not_traces(c: Corpus, src: Source) -> None:
    """Input that is empty, not JSON, or JSON that is not a trace."""
    events = src.events(*BASE_WINDOW)
    one = dumps([e for e in events if e.get("cat") == "kernel"][0])
    cases = {
        "empty": (b"", expect_error("empty")),
        "whitespace": (b"  \n\t\r\n  ", expect_error("empty")),
        "bom-only": (b"\xef\xbb\xbf", expect_error("not a trace")),
        "text": (NOT_JSON_TEXT, expect_error("not a trace")),
        "binary": (bytes(random.Random(1).randrange(256) for _ in range(3000)), expect_error("not a trace")),
        "png-header": (b"\x89PNG\r\n\x1a\n" + bytes(100), expect_error("not a trace")),
        "json-number": (b"42\n", expect_error("not a trace")),
        "json-string": (b'"traceEvents"', expect_error("not a trace")),
        "json-null": (b"null", expect_error("not a trace")),
        "json-true": (b"true", expect_error("not a trace")),
        "object-without-events": (dumps({"schemaVersion": 1, "model": "deepseek-v3", "layers": 61}),
                                  expect_error("not a trace")),
        "manifest-like": (dumps({"traces": [{"file": "rank0.json.gz", "events": 3}]}), expect_error("not a trace")),
        "empty-object": (b"{}", expect_error("not a trace")),
        "empty-array": (b"[]", expect_error("no GPU events")),
        "empty-trace-events": (b'{"traceEvents": []}', expect_error("no GPU events")),
        "array-of-numbers": (b"[1, 2, 3]", expect_error("no GPU events")),
        "array-of-strings": (b'["a", "b"]', expect_error("no GPU events")),
        "array-of-nulls": (b"[null, null]", expect_error("no GPU events")),
        "array-of-arrays": (b"[[1], [2]]", expect_error("no GPU events")),
        "trace-events-object": (b'{"traceEvents": {"0": ' + one + b"}}", expect_error("not a trace")),
        "trace-events-string": (b'{"traceEvents": "[' + one.replace(b'"', b'\\"') + b']"}', expect_error("not a trace")),
        "trace-events-null": (b'{"traceEvents": null}', expect_error("not a trace")),
        "trace-events-number": (b'{"traceEvents": 5}', expect_error("not a trace")),
        "trace-events-true": (b'{"traceEvents": true}', expect_error("not a trace")),
        "utf16-trace": (("{\"traceEvents\": [" + one.decode() + "]}").encode("utf-16"),
                        expect_ok([json.loads(one)])),  # (decoded since round two: see encodings())
        "json-lines": (b"\n".join(dumps(e) for e in events[:20]), expect_error("not a trace")),
        "xml": (b'<?xml version="1.0"?><traceEvents/>', expect_error("not a trace")),
        "cpu-only": (dumps({"traceEvents": [e for e in events if e.get("cat") not in GPU_CATS]}),
                     expect_error("no GPU events")),
        "metadata-only": (dumps({"traceEvents": [{"ph": "M", "name": "process_name", "pid": 0,
                                                  "args": {"name": "GPU 0"}}]}), expect_error("no GPU events")),
    }
    for name, (data, exp) in cases.items():
        c.add_raw(name, data, exp, name.replace("-", " "))


def _kernel_indices(events: list[dict]) -> list[int]:
    return [i for i, e in enumerate(events) if e.get("cat") == "kernel"]


def field_damage(c: Corpus, src: Source) -> None:
    """One kind of damage on N kernels of the 200-event slice; the rest must be analyzed."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    pick = kidx[1::2][:12]  # 12 of the 26 kernels

    def mutated(fn: Callable[[dict], Any], idx=pick) -> list[Any]:
        evs = copy.deepcopy(base)
        for i in idx:
            r = fn(evs[i])
            if r is not None:
                evs[i] = r
        return evs

    def drop(key):
        return lambda e: {k: v for k, v in e.items() if k != key}

    def setv(key, value):
        def f(e):
            e[key] = value
        return f

    n = len(pick)
    simple: dict[str, tuple[Callable, list[dict], str]] = {
        "no-ts": (drop("ts"), [warn(f"{n} ", "timestamp")], "12 kernels without ts"),
        "no-dur": (drop("dur"), [warn(f"{n} ", "duration")], "12 kernels without dur"),
        "no-name": (drop("name"), [warn(f"{n} ", "name")], "12 kernels without name"),
        "name-null": (setv("name", None), [warn(f"{n} ", "name")], "12 kernels with name null"),
        "no-ph": (drop("ph"), [warn(f"{n} ", "phase")], "12 kernels without ph"),
        "ph-lowercase": (setv("ph", "x"), [warn(f"{n} ", "phase")], "12 kernels with ph 'x' (phases are case-sensitive)"),
        "ph-unknown": (setv("ph", "Q"), [warn(f"{n} ", "phase")], "12 kernels with an unknown phase"),
        "ph-list": (setv("ph", ["X"]), [warn(f"{n} ", "phase")], "12 kernels with ph a list"),
        "ph-instant": (setv("ph", "i"), [], "12 kernels as instant events ('i': a real phase, not a duration)"),
        "no-cat": (drop("cat"), [], "12 kernels without cat: not GPU events"),
        "cat-int": (setv("cat", 7), [], "12 kernels with cat a number"),
        "cat-uppercase": (setv("cat", "Kernel"), [], "cat 'Kernel' (categories are case-insensitive)"),
        "ts-string": (lambda e: e.__setitem__("ts", repr(e["ts"])), [], "ts as a numeric string"),
        "dur-string": (lambda e: e.__setitem__("dur", repr(e["dur"])), [], "dur as a numeric string"),
        "dur-abc": (setv("dur", "abc"), [warn(f"{n} ", "duration")], "dur 'abc'"),
        "ts-abc": (setv("ts", "12.5.3"), [warn(f"{n} ", "timestamp")], "ts '12.5.3'"),
        "ts-null": (setv("ts", None), [warn(f"{n} ", "timestamp")], "ts null"),
        "ts-bool": (setv("ts", True), [warn(f"{n} ", "timestamp")], "ts true"),
        "ts-list": (setv("ts", [1, 2]), [warn(f"{n} ", "timestamp")], "ts a list"),
        "dur-object": (setv("dur", {"us": 5}), [warn(f"{n} ", "duration")], "dur an object"),
        "ts-nan": (setv("ts", float("nan")), [warn(f"{n} ", "timestamp")], "ts NaN"),
        "ts-inf": (setv("ts", float("inf")), [warn(f"{n} ", "timestamp")], "ts Infinity"),
        "ts-minus-inf": (setv("ts", float("-inf")), [warn(f"{n} ", "timestamp")], "ts -Infinity"),
        "dur-nan": (setv("dur", float("nan")), [warn(f"{n} ", "duration")], "dur NaN"),
        "dur-inf": (setv("dur", float("inf")), [warn(f"{n} ", "duration")], "dur Infinity"),
        "dur-negative": (setv("dur", -5.0), [warn(f"{n} ", "negative")], "dur -5"),
        "dur-huge": (setv("dur", 1e20), [warn(f"{n} ", "huge")], "dur 1e20 us"),
        "ts-huge": (setv("ts", 1e20), [warn(f"{n} ", "timestamp")], "ts 1e20 us"),
        "dur-zero": (setv("dur", 0), [], "12 kernels of zero duration"),
        "args-null": (setv("args", None), [], "args null"),
        "args-list": (setv("args", [1, 2, 3]), [], "args a list"),
        "args-string": (setv("args", "stream 7"), [], "args a string"),
        "args-odd-types": (lambda e: e["args"].update({"correlation": "x", "stream": 2 ** 70, "device": -1.5,
                                                       "grid": "many", "block": {"x": 1}, "External id": 1e300}),
                           [], "args fields of the wrong types"),
        "pid-string": (lambda e: e.update(pid=str(e["pid"]), tid=f"stream {e['tid']}"), [],
                       "pid '0' and tid 'stream 7' as strings"),
        "pid-huge": (lambda e: e.update(pid=2 ** 80, tid=-(2 ** 70)), [], "pid/tid beyond 64 bits"),
        "pid-float": (lambda e: e.update(pid=1e300, tid=float("nan")), [], "pid 1e300, tid NaN"),
        "name-number": (setv("name", 12345), [], "name a number"),
        "name-object": (setv("name", {"kernel": ["a", 1]}), [], "name an object"),
    }
    for label, (fn, warnings, what) in simple.items():
        evs = mutated(fn)
        exp = expect_ok(evs, warnings=warnings)
        c.add(label, dumps(trace_doc(header, evs)), exp, what, gz=True)
    # whole-trace edits
    evs = copy.deepcopy(base)
    for i in kidx:
        evs[i]["ph"] = "x"
    gpu_left = [e for e in evs if complete_event(e) and complete_event(e)[0] in GPU_CATS]
    c.add("ph-lowercase-all", dumps(trace_doc(header, evs)),
          expect_error("no GPU events", f"{len(kidx)} events with a missing or unknown phase") if not gpu_left
          else expect_ok(evs, warnings=[warn(f"{len(kidx)} ", "phase")]), "every kernel with ph 'x'", gz=True)
    only_kernels = [e for e in evs if e.get("cat") == "kernel"]
    c.add("ph-lowercase-only", dumps(trace_doc(header, only_kernels)),
          expect_error("no GPU events", f"{len(kidx)} events with a missing or unknown phase"),
          "a trace of kernels only, every one with ph 'x'", gz=True)
    evs = copy.deepcopy(base)
    for i in kidx:
        evs[i]["dur"] = 0
    c.add("zero-length-only", dumps(trace_doc(header, evs)), expect_ok(evs), "every kernel of zero duration", gz=True)
    t0 = min(e["ts"] for e in base if "ts" in e)
    for label, shift in (("clock-near-zero", -t0), ("clock-negative", -t0 - 5e5), ("clock-near-1e15", 1e15 - t0),
                         ("clock-near-1e16", 1e16 - t0)):
        evs = copy.deepcopy(base)
        for e in evs:
            if isinstance(e.get("ts"), (int, float)):
                e["ts"] = e["ts"] + shift
        c.add(label, dumps(trace_doc(header, evs)), expect_ok(evs, tolerance_us=2.0 * len(kidx)),
              f"every timestamp shifted by {shift:.6g} us", gz=True)
    evs = copy.deepcopy(base)
    evs.insert(10, 17)
    evs.insert(50, "kernel")
    evs.insert(90, None)
    evs.insert(120, [1, 2])
    c.add("non-objects-in-events", dumps(trace_doc(header, evs)),
          expect_ok(evs, warnings=[warn("4 ", "not objects")]), "4 entries that are not objects", gz=True)
    # Kineto text with CRLF line ends, a BOM, surrounding whitespace
    data, _spans = src.pretty(*BASE_WINDOW)
    c.add("crlf", data.replace(b"\n", b"\r\n"), expect_ok(base), "Windows line ends", gz=True)
    small, _ = src.pretty(*SMALL_WINDOW)
    c.add_raw("bom-kineto", b"\xef\xbb\xbf" + small, expect_ok(src.events(*SMALL_WINDOW)), "UTF-8 BOM + Kineto trace")
    c.add("bom-bare-array", b"\xef\xbb\xbf" + dumps(base), expect_ok(base), "UTF-8 BOM + bare array", gz=True)
    c.add("padded", b"\n\n   \t" + data + b"\n\n   \n", expect_ok(base), "whitespace around the trace", gz=True)
    c.add("bare-array-200", dumps(base), expect_ok(base), "a bare Chrome array of the 200 events", gz=True)
    c.add("minified", dumps(trace_doc(header, base)), expect_ok(base), "minified Kineto JSON", gz=True)
    c.add("pretty-indent-8", json.dumps(trace_doc(header, base), indent=8).encode(), expect_ok(base),
          "indented by 8", gz=True)
    c.add("events-first", dumps({"traceEvents": base, **header}), expect_ok(base),
          "traceEvents before the header keys", gz=True)
    c.add("trailing-garbage", data + b"\n}}garbage", expect_ok(base, warnings=[warn("truncated")]),
          "bytes after the closing brace (taken as damage at the end: everything before it is kept)", gz=True)
    c.add("two-documents", data + data, {"exit": "either", "words_any": ["JSON"],
                                         "ok": {"events": expect_ok(base)["events"]}},
          "two traces concatenated in one file", gz=True)
    dup = data.replace(b'"traceEvents": [', b'"traceEvents": [], "traceEvents": [', 1)
    c.add("duplicate-trace-events-key", dup, expect_ok(base, warnings=[warn("twice", "the last one")]),
          "the traceEvents key twice (the last one counts, as in JSON.parse)", gz=True)
    nested_key = dumps({"meta": {"traceEvents": [1, 2]}, "traceEvents": base})
    c.add("nested-trace-events-key", nested_key, expect_ok(base, warnings=[warn("twice", "the last one")]),
          "a 'traceEvents' key inside a header object before the real one", gz=True)
    # duplicate keys inside events: the last one counts (as in JSON.parse and Python)
    text = dumps(trace_doc(header, base))
    k = base[kidx[0]]
    old = b'"dur":' + json.dumps(k["dur"]).encode()
    assert text.count(old) >= 1
    text2 = text.replace(b'"ts":' + json.dumps(k["ts"]).encode() + b',' + old,
                         b'"ts":1,"ts":' + json.dumps(k["ts"]).encode() + b',"dur":999999,' + old, 1)
    c.add("duplicate-keys", text2, expect_ok(base), "an event with ts and dur given twice (the last counts)", gz=True)
    # header damage
    for label, edit in {
        "header-rank-string": lambda h: h["distributedInfo"].update(rank="zero"),
        "header-dist-string": lambda h: h.update(distributedInfo="rank 0"),
        "header-devices-object": lambda h: h.update(deviceProperties={"id": 0}),
        "header-devices-junk": lambda h: h.update(deviceProperties=[1, "x", None, {"id": "0", "name": 5}]),
        "header-display-ns": lambda h: h.update(displayTimeUnit="ns"),
        "header-schema-string": lambda h: h.update(schemaVersion="v999"),
    }.items():
        h = copy.deepcopy(header)
        edit(h)
        c.add(label, dumps(trace_doc(h, base)), expect_ok(base), label.replace("-", " "), gz=True)


def begin_end(c: Corpus, src: Source) -> None:
    """Kernels written as B/E pairs (other exporters), and every way such pairs go wrong."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    sel = kidx[:10]

    def split(evs, i, e_fields=("ph", "ts", "pid", "tid")):
        e = evs[i]
        b = {k: v for k, v in e.items() if k != "dur"}
        b["ph"] = "B"
        end = {"ph": "E", "ts": e["ts"] + e["dur"], "pid": e["pid"], "tid": e["tid"]}
        end = {k: end[k] for k in e_fields if k in end}
        return b, end

    def build(mode: str):
        evs = copy.deepcopy(base)
        pairs, extra = [], []
        for i in sel:
            b, end = split(evs, i)
            pairs.append((i, b, end))
        out, ranges, warns = [], [], []
        removed = set(sel)
        for j, e in enumerate(evs):
            if j not in removed:
                out.append(e)
                continue
            _i, b, end = next(p for p in pairs if p[0] == j)
            orig = base[j]
            pos = sel.index(j)
            if mode == "pairs" or (mode != "pairs" and pos >= 3):
                out += [b, end]
                ranges.append((_device(orig), orig["ts"], orig["dur"]))
            elif mode == "no-e":
                out.append(b)
            elif mode == "no-b":
                out.append(end)
            elif mode == "e-before-b":  # long before anything else on the thread
                end["ts"] = min(x["ts"] for x in base if "ts" in x) - 1000.0 - pos
                out += [end, b]
            elif mode == "duplicate-b":
                out += [b, dict(b), end]
                ranges.append((_device(orig), orig["ts"], orig["dur"]))
            elif mode == "e-with-name":
                end.update(name=b["name"], cat="kernel")
                out += [b, end]
                ranges.append((_device(orig), orig["ts"], orig["dur"]))
        if mode == "no-e":
            warns = [warn("3 ", "'B'", "without a matching 'E'")]
        elif mode == "no-b":
            warns = [warn("3 ", "'E'", "without a matching 'B'")]
        elif mode == "e-before-b":
            warns = [warn("3 ", "without a matching 'E'"), warn("3 ", "without a matching 'B'")]
        elif mode == "duplicate-b":
            warns = [warn("3 ", "without a matching 'E'")]
        flat = [e for e in out if not (isinstance(e, dict) and e.get("ph") in ("B", "E"))]
        return out, expect_ok(flat, extra_gpu=ranges, warnings=warns)

    for mode, what in (("pairs", "10 kernels as B/E pairs (E carries only ph, ts, pid, tid)"),
                       ("e-with-name", "B/E pairs whose E repeats name and cat"),
                       ("no-e", "3 of 10 B events never closed"),
                       ("no-b", "3 of 10 E events with no B"),
                       ("e-before-b", "3 E events written before (and earlier than) their B"),
                       ("duplicate-b", "3 B events written twice")):
        evs, exp = build(mode)
        c.add(f"begin-end-{mode}", dumps(trace_doc(header, evs)), exp, what, gz=True)
    # nested ranges and zero-length ranges on one thread (B then E at the same time)
    ev = [{"ph": "B", "cat": "kernel", "name": "outer", "pid": 0, "tid": 7, "ts": 100.0},
          {"ph": "B", "cat": "kernel", "name": "inner", "pid": 0, "tid": 7, "ts": 110.0},
          {"ph": "E", "pid": 0, "tid": 7, "ts": 120.0},
          {"ph": "B", "cat": "kernel", "name": "empty", "pid": 0, "tid": 7, "ts": 130.0},
          {"ph": "E", "pid": 0, "tid": 7, "ts": 130.0},
          {"ph": "E", "pid": 0, "tid": 7, "ts": 150.0},
          {"ph": "B", "cat": "python_function", "name": "py", "pid": 0, "tid": 7, "ts": 160.0},
          {"ph": "B", "cat": "kernel", "name": "after", "pid": 0, "tid": 7, "ts": 170.0},
          {"ph": "E", "pid": 0, "tid": 7, "ts": 180.0},
          {"ph": "E", "pid": 0, "tid": 7, "ts": 190.0}]
    c.add("begin-end-nested", dumps({"traceEvents": ev}),
          expect_ok([], extra_gpu=[(0, 100.0, 50.0), (0, 110.0, 10.0), (0, 130.0, 0.0), (0, 170.0, 10.0)]),
          "nested B/E, a zero-length range, and a range of an ignored category around a kernel", gz=True)


def overlaps(c: Corpus, src: Source) -> None:
    """Kernels overlapping on one stream: legal under programmatic dependent launch (PDL)."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    for label, frac in (("pdl-overlap-10pct", 0.1), ("pdl-overlap-50pct", 0.5), ("pdl-contained", 1.0)):
        evs = copy.deepcopy(base)
        for a, b in zip(kidx[::2], kidx[1::2]):
            prev, nxt = evs[a], evs[b]
            if frac >= 1.0:  # the next kernel starts and ends inside the previous one
                nxt["ts"] = prev["ts"] + prev["dur"] * 0.25
                nxt["dur"] = prev["dur"] * 0.5
            else:
                nxt["ts"] = prev["ts"] + prev["dur"] * (1 - frac)
        c.add(label, dumps(trace_doc(header, evs)), expect_ok(evs),
              "kernels overlapping their predecessor on the same stream (counted once in the union)", gz=True)
    evs = copy.deepcopy(base)
    dupes = [copy.deepcopy(evs[i]) for i in kidx[:5]]
    evs += dupes
    c.add("duplicate-events", dumps(trace_doc(header, evs)), expect_ok(evs),
          "5 kernel events written twice (busy time counts them once)", gz=True)


def hostile_names(c: Corpus, src: Source) -> None:
    """Names that try to drive a terminal, hide text, or exhaust memory."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    names = {
        "name-ansi": "gemm\x1b[31mRED\x1b[0m\x1b[2J\x1b[H",
        "name-osc52": "gemm\x1b]52;c;cm0gLXJmIH4=\x07tail",
        "name-osc8-link": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
        "name-title": "\x1b]0;pwned\x07gemm",
        "name-c1-csi": "gemm\x9b31mred",
        "name-rtl-override": "nccl\u202eredro\u202c_AllReduce",
        "name-bidi-isolates": "a\u2066b\u2067c\u2068d\u2069e\u200f",
        "name-zero-width": "ne\u200bgemm\ufeff\u2060",
        "name-control": "k\x00\x01\x07\x08\x7fernel",
        "name-newlines": "kernel\nwarning: forged line\r\n",
        "name-cjk-emoji": "注意力_kernel_🔥_Ω≈ç√",
        "name-rich-markup": "[link=https://evil.example]x[/link][bold red]boom[/]:skull:",
        "name-html": "<script>alert(1)</script>&amp;",
        "name-100kb": "void big_kernel<" + "T," * 50_000 + ">()",
    }
    for label, name in names.items():
        evs = copy.deepcopy(base)
        for i in kidx[:4]:
            evs[i]["name"] = name
        named = {"name": name} if len(name) < 1000 else {"name_len": len(name), "name_start": name[:40]}
        c.add(label, dumps(trace_doc(header, evs)), dict(expect_ok(evs), **named), f"kernel name {label[5:]}",
              gz=True)
    evs = copy.deepcopy(base)
    text = dumps(trace_doc(header, evs))
    k = evs[kidx[0]]["name"].encode()
    c.add("name-lone-surrogate-escaped", text.replace(json.dumps(k.decode()).encode(), b'"gemm\\ud800x"', 1),
          {"exit": "either", "words_any": ["JSON"], "ok": {"events": expect_ok(base)["events"]}},
          "an escaped lone UTF-16 surrogate in a name", gz=True)
    bad = text.replace(json.dumps(k.decode()).encode(), b'"gemm\xff\xfe\xc0latin1"', 1)
    c.add("name-invalid-utf8", bad, expect_ok(base), "raw bytes that are not UTF-8 in a name", gz=True)
    raw_nul = text.replace(json.dumps(k.decode()).encode(), b'"gemm\x00raw"', 1)
    c.add("name-raw-control-byte", raw_nul, {"exit": "either", "words_any": ["JSON"],
                                             "ok": {"events": expect_ok(base)["events"]}},
          "a raw NUL byte inside a JSON string (invalid JSON)", gz=True)


def nesting(c: Corpus, src: Source) -> None:
    """Deeply nested values: must not crash the decoder with RecursionError."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    text = dumps(trace_doc(header, base))
    k = dumps(base[kidx[0]])
    for depth, ok in ((50, True), (200, True), (10_000, False), (100_000, False)):
        for where in ("args", "event", "header"):
            deep = b"[" * depth + b"]" * depth
            if where == "args":
                new = k[:-2] + b',"deep":' + deep + b"}}"
                data = text.replace(k, new, 1)
            elif where == "event":
                deep_obj = b'{"a":' * depth + b"1" + b"}" * depth
                data = text.replace(k, k[:-1] + b',"extra":' + deep_obj + b"}", 1)
            else:
                data = b'{"deep":' + deep + b"," + text[1:]
            exp = expect_ok(base) if ok else expect_error("nested too deeply")
            c.add(f"nested-{where}-{depth}", data, exp, f"{depth} levels of nesting in {where}", gz=True)


def more_values(c: Corpus, src: Source) -> None:
    """Added later (at the end, so earlier case numbers stay put): values and files the first
    sections missed."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    pick = kidx[1::2][:12]
    n = len(pick)
    c.add_raw("gz-zero-bytes", b"", expect_error("empty"), "a .json.gz file of 0 bytes (not even a gzip header)",
              suffix=".json.gz")
    for label, raw, warning, what in (
        ("dur-bigint", b"1" + b"0" * 400, "duration", "dur an integer literal of 401 digits"),
        ("ts-bigint", b"-1" + b"0" * 400, "timestamp", "ts a negative integer literal of 401 digits"),
        ("ts-string-nan", b'"NaN"', "timestamp", "ts the string 'NaN'"),
        ("dur-string-inf", b'"Infinity"', "duration", "dur the string 'Infinity'"),
        ("ts-minus-huge", b"-1e20", "timestamp", "ts -1e20 us"),
        ("dur-exponent", b"1e-320", None, "dur a denormal 1e-320 (a valid, tiny number)"),
    ):
        key = "dur" if label.startswith("dur") else "ts"
        evs, marked = copy.deepcopy(base), copy.deepcopy(base)
        for i in pick:
            marked[i][key] = "@@VALUE@@"  # written as JSON text no encoder would produce
            evs[i][key] = json.loads(raw)
        data = dumps(trace_doc(header, marked)).replace(b'"@@VALUE@@"', raw)
        exp = expect_ok(evs, warnings=[warn(f"{n} ", warning)] if warning else [])
        c.add(label, data, exp, what, gz=True)


# --- round two (issue 19): other exporters, encodings, compression formats ----------------------

def _without_device_args(e: dict) -> dict:
    """The event as an exporter without Kineto's args.device/args.stream writes it."""
    e = copy.deepcopy(e)
    if isinstance(e.get("args"), dict):
        e["args"] = {k: v for k, v in e["args"].items() if k not in ("device", "stream")}
    return e


def exporters(c: Corpus, src: Source) -> None:
    """Valid traces that other exporters write: string pid/tid, header keys after the events,
    content after the events, an escaped key, a repeated key."""
    header = src.header()
    base = src.events(*BASE_WINDOW)
    kidx = _kernel_indices(base)
    for label, names, what in (
        ("exp-pid-names", ["GPU 0"], "pid 'GPU 0' and tid 'Stream 7' as strings, no args.device"),
        ("exp-pid-sglang", ["[TP00-DP00-PP00-EP03] 495"], "SGLang's merged pid '[TP00-DP00-PP00-EP03] 495'"),
        ("exp-pid-two-gpus", ["GPU 0", "GPU 1"], "two GPUs named by strings ('GPU 0', 'GPU 1'), kernels alternating"),
    ):
        evs = copy.deepcopy(base)
        gpu_idx = [i for i, e in enumerate(evs) if e.get("cat") in GPU_CATS]
        for n, i in enumerate(gpu_idx):
            evs[i] = _without_device_args(evs[i])
            evs[i]["pid"] = names[n % len(names)]
            evs[i]["tid"] = f"Stream {7 + n % 2}"
        c.add(label, dumps(trace_doc(header, evs)), expect_ok(evs, device_names=sorted(names)), what, gz=True)
    # header keys after a large event array (the rank must still come from distributedInfo)
    h = copy.deepcopy(header)
    h["distributedInfo"] = dict(h.get("distributedInfo") or {}, rank=2, world_size=4,
                                pg_config=[{"pg_name": str(i), "ranks": [0, 1, 2, 3]} for i in range(40)])
    h["deviceProperties"] = [dict(d, id=i) for i in range(8) for d in (h.get("deviceProperties") or [{}])[:1]]
    big = base * 20
    c.add("exp-header-after-events", dumps({"traceEvents": big, **h}),
          expect_ok(big, rank=2, world_size=4), "distributedInfo (40 process groups) and 8 deviceProperties "
          "after 4,000 events", gz=True)
    after = {
        "exp-trailer-object": {"trailer": {"producer": "perfetto", "lists": [{"a": [1, 2]}, {"b": []}] * 30}},
        "exp-system-trace-events": {"systemTraceEvents": "# tracer: nop\n" + "  <idle>-0 [000] }] {[ ]\n" * 200},
        "exp-metadata-keys-after": {"metadata": {"args": [[{"x": [1]}]] * 50}, "otherData": {"version": "1"},
                                    "stackFrames": {}, "samples": []},
    }
    for label, extra in after.items():
        doc = {**header, "traceEvents": base, **extra}
        c.add(label, dumps(doc), expect_ok(base, rank=_rank_of(header)),
              f"a Chrome/Perfetto trace with {', '.join(extra)} after the events", gz=True)
    text = dumps({"traceEvents": base, **header})
    c.add("exp-escaped-key", text.replace(b'"traceEvents"', b'"traceEvent\\u0073"', 1), expect_ok(base),
          "the key spelled with a JSON escape: \"traceEvent\\u0073\"", gz=True)
    text = dumps(trace_doc(header, base))
    c.add("exp-two-keys-last-empty", text[:-1] + b',"traceEvents":[]}',
          expect_error("no GPU events", "twice", "the last one"),
          "the real events, then a second, empty traceEvents (the last counts: refused, saying why)", gz=True)


def _rank_of(header: dict) -> int | None:
    dist = header.get("distributedInfo")
    return dist.get("rank") if isinstance(dist, dict) else None


def encodings(c: Corpus, src: Source) -> None:
    """UTF-16 and UTF-32 text, with and without a byte-order mark, plain and gzipped."""
    header = src.header()
    events = src.events(*SMALL_WINDOW)
    text = json.dumps(trace_doc(header, events))
    for codec, bom in (("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00"),
                       ("utf-32-be", b"\x00\x00\xfe\xff")):
        data = text.encode(codec)
        c.add_raw(f"enc-{codec}-bom", bom + data, expect_ok(events, rank=_rank_of(header)), f"{codec} with a BOM")
        c.add_raw(f"enc-{codec}-no-bom", data, expect_ok(events), f"{codec} without a BOM")
    c.add("enc-utf-16-gz", "\ufeff".encode("utf-16-le") + text.encode("utf-16-le"), expect_ok(events),
          "UTF-16 with a BOM, gzipped", gz=True)
    cut = text.encode("utf-16-le")
    c.add_raw("enc-utf-16-cut", cut[: len(cut) * 2 // 3 + 1], {"exit": 0, "warnings": [warn("truncated")]},
              "UTF-16 cut short at an odd byte (half a character)")


def _tar_gz(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), 9, mtime=0)


def _zip(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def compressions(c: Corpus, src: Source) -> None:
    """Traces compressed other ways than gzip, told by their magic bytes (not their names)."""
    import bz2
    import lzma

    import lz4.frame
    import zstandard

    data, _spans = src.pretty(*BASE_WINDOW)
    events = src.events(*BASE_WINDOW)
    zstd = zstandard.ZstdCompressor(level=19).compress(data)
    packed = {
        "zstd": zstd, "bzip2": bz2.compress(data, 9), "xz": lzma.compress(data),
        "lz4": lz4.frame.compress(data, content_checksum=True),
    }
    for fmt, blob in packed.items():
        suffix = {"zstd": ".json.zst", "bzip2": ".json.bz2", "xz": ".json.xz", "lz4": ".json.lz4"}[fmt]
        c.add_raw(f"z-{fmt}", blob, expect_ok(events), f"the base slice, {fmt}-compressed", suffix=suffix)
        c.add_raw(f"z-{fmt}-cut", blob[: len(blob) // 2],
                  {"exit": "either", "words_any": [f"{fmt} stream ends before its first block (truncated or empty)"],
                   "ok": {"warnings_any": [f"{fmt} stream is cut short"]}},
                  f"{fmt} stream cut in half (what decompressed before the cut is kept)", suffix=suffix)
    c.add_raw("z-zstd-named-gz", zstd, expect_ok(events), "a zstd file named .json.gz", suffix=".json.gz")
    c.add_raw("z-zstd-two-frames", zstd + zstd[:0] + zstandard.ZstdCompressor().compress(b" "), expect_ok(events),
              "two zstd frames (the second holds a space)", suffix=".json.zst")
    c.add_raw("z-zstd-trailing-junk", zstd + b"junk after the frame",
              expect_ok(events, warnings=[warn("not zstd", "ignored")]), "bytes after the zstd frame",
              suffix=".json.zst")
    c.add_raw("z-xz-corrupt", lzma.compress(data)[:40] + b"\x00" * 64, expect_error("corrupt xz data"),
              "an xz header, then zeros", suffix=".json.xz")
    c.add_raw("z-zip-one", _zip({"rank0.json": data}), expect_ok(events), "a zip holding one trace", suffix=".zip")
    c.add_raw("z-zip-two", _zip({"rank0.json": data, "rank1.json": data}),
              expect_error("a zip archive of 2 files", "rank0.json", "extract it"),
              "a zip holding two ranks (a run directory)", suffix=".zip")
    c.add_raw("z-tar-gz-run", _tar_gz({"run/rank0.json": data, "run/rank1.json": data}),
              expect_error("a tar archive", "run/rank0.json", "extract it"), "a .tar.gz of a run directory",
              suffix=".tar.gz")
    c.add_raw("z-bomb-xz", lzma.compress(b'{"traceEvents": [' + b" " * (8 << 20) + b"]}"),
              dict(expect_error("decompresses to more than", "max-bytes"), max_bytes="1M"),
              "xz that decompresses to 8 MiB, analyzed with --max-bytes 1M", suffix=".json.xz")


def _released(fmt: str, blob: bytes) -> bytes:
    """What the format's own incremental decompressor releases from these bytes (the ground
    truth of a cut stream: a library, not traceview, says whether any data came out)."""
    import bz2
    import lzma
    import zlib

    import lz4.frame
    import zstandard

    d = {"gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), "bzip2": bz2.BZ2Decompressor,
         "xz": lzma.LZMADecompressor, "lz4": lz4.frame.LZ4FrameDecompressor,
         "zstd": zstandard.ZstdDecompressor().decompressobj}[fmt]()
    try:
        return d.decompress(blob)
    except Exception:  # (a header cut inside: nothing released)
        return b""


def compressed_cuts(c: Corpus, src: Source) -> None:
    """Each compression format cut inside its magic bytes, just after its header, and early in
    its first block: the error names the format ("zstd stream ends before its first block")."""
    import bz2
    import lzma

    import lz4.frame
    import zstandard

    data, _spans = src.pretty(*BASE_WINDOW)
    packed = {"gzip": gzip.compress(data, 9, mtime=0), "zstd": zstandard.ZstdCompressor(level=19).compress(data),
              "bzip2": bz2.compress(data, 9), "xz": lzma.compress(data), "lz4": lz4.frame.compress(data)}
    header = {"gzip": 10, "zstd": 6, "bzip2": 4, "xz": 12, "lz4": 7}  # each format's fixed header
    for fmt, blob in packed.items():
        for where, n in (("in-magic", 2), ("after-header", header[fmt]), ("first-block", header[fmt] + 8)):
            part = blob[:n]
            assert _released(fmt, part) == b"", (fmt, where)  # nothing decompresses from these bytes
            c.add_raw(f"zcut-{fmt}-{where}", part,
                      expect_error(f"{fmt} stream ends before its first block (truncated or empty)"),
                      f"a {fmt} stream cut {where.replace('-', ' ')} ({n} bytes), named .json", suffix=".json")
    zipped = _zip({"rank0.json": data})
    c.add_raw("zcut-zip-in-magic", zipped[:3], expect_error("zip archive ends before its first member"),
              "a zip archive cut inside its magic bytes (3 bytes)", suffix=".zip")
    c.add_raw("zcut-zip-half", zipped[: len(zipped) // 2], expect_error("zip archive is cut short", "central directory"),
              "a zip archive cut in half (its central directory, written last, is gone)", suffix=".zip")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    src = Source(SOURCE)
    c = Corpus(OUT)
    truncations(c, src)
    bare_truncations(c, src)
    gzip_truncations(c, src)
    gzip_damage(c, src)
    not_traces(c, src)
    field_damage(c, src)
    begin_end(c, src)
    overlaps(c, src)
    hostile_names(c, src)
    nesting(c, src)
    more_values(c, src)
    exporters(c, src)
    encodings(c, src)
    compressions(c, src)
    compressed_cuts(c, src)
    c.finish()
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(c.cases)} cases, {size / 1e6:.2f} MB in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
