"""``annotate(paths, output)``: the analysis written into the trace, for a trace viewer.

One rank: the file's events are copied byte for byte and traceview's tracks are appended.
Several ranks: each rank's events move to their own integer pids (``rank * 1000 + k``), onto
one clock (``align``), with flow ids made unique per rank; arrows link the instances of each
collective across ranks, from the first arrival to the last.  A size budget (``window``,
``max_events``) cuts the output in time; the file says what it left out.
"""

from __future__ import annotations

import gzip
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import polars as pl

from .. import __version__
from ..analysis import ScannedPath, analyze, expand_paths
from ..classify import RuleSet
from ..errors import NotATraceError, TraceError, UsageError
from ..load import DEFAULT_MAX_BYTES, decode
from ..load.reader import open_source, rank_from_filename
from ..metrics.segments import labelled
from ..segment import NONE, LevelPatterns
from . import source
from .align import align
from .events import CATEGORY, device_events, meta, us
from .tracks import DeviceTracks, build, ns

#: Default event budget: ~300 bytes per event keeps the JSON around 300 MB, which the
#: Perfetto UI (wasm, in the browser) still opens; multi-GB JSON makes it run out of memory.
DEFAULT_MAX_EVENTS = 1_000_000
#: Arrows bind a little inside their kernel (at its start + this), not exactly on its edge,
#: where the clock shift's rounding could leave them just outside it.
BIND_US = 0.05
PID_STRIDE = 1000          # multi-rank pids: rank * 1000 + k
ADDED_PID_OFFSET = 500     # the added process of GPU d of a rank: rank * 1000 + 500 + d


@dataclass
class Annotated:
    output: Path
    ranks: list[int | None]
    original_events: int
    added_events: int
    left_out: list[str] = field(default_factory=list)
    alignment: str | None = None

    @property
    def events(self) -> int:
        return self.original_events + self.added_events


@dataclass
class _Rank:
    path: Path
    rank: int | None
    slot: int
    tracks: list[DeviceTracks]
    comm: pl.DataFrame
    windows: dict[str, tuple[float, float]]   # iteration label -> (lo, hi) µs, own clock
    iterations: list[str]
    shift_us: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what the loader said of the input
    # filled by the first pass over the file
    ts: np.ndarray | None = None
    end: np.ndarray | None = None
    pids: dict = field(default_factory=dict)  # original pid -> (sort index or None, process name or None)
    max_id: int = 0
    index: dict = field(default_factory=dict)  # original pid -> its place in the rank's process order


def peek_rank(path: Path, max_bytes: int) -> int | None:
    """The rank a file claims (header ``distributedInfo.rank``, else its name)."""
    with open_source(path, max_bytes) as src:
        arr = decode.locate_events(src.raw)
    if arr is None:
        raise NotATraceError(path, "not a trace: no 'traceEvents' array and not a JSON array of events")
    rank = (arr.header.get("distributedInfo") or {}).get("rank")
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else rank_from_filename(path)


def annotate(paths: list[str | os.PathLike], output: str | os.PathLike, ranks: list[int] | None = None,
             window: str | None = None, max_events: int = DEFAULT_MAX_EVENTS, rules: RuleSet | None = None,
             patterns: LevelPatterns | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Annotated:
    """Write ``output`` (gzip JSON): the traces of ``paths`` plus traceview's tracks."""
    files = _select(expand_paths(paths), ranks, max_bytes)
    multi = len(files) > 1
    analyses = []
    for path, rank in files:
        a = analyze(path, rules, max_bytes, patterns)
        a.segmentation  # noqa: B018  (what the tracks need of the events, computed while they are here)
        if multi:
            a.rank_summaries  # noqa: B018  (the run analysis's input)
        a.trace.events = None  # type: ignore[assignment]  # memory: one rank's events at a time
        analyses.append((path, a, rank))
    alignment = align({_rank_of(a, r, i): a for i, (_p, a, r) in enumerate(analyses)}) if multi else None
    plans = []
    for slot, (path, a, rank) in enumerate(analyses):
        r = _rank_of(a, rank, slot)
        plans.append(_plan(path, a, a.rank if rank is None else rank, slot,
                           alignment.waits(r) if alignment else None,
                           alignment.shift_us.get(r, 0.0) if alignment else 0.0))
    for p in plans:
        _scan(p, max_bytes, shift=p.shift_us)
    lo, hi, why = _window(plans, window)
    added, flows = _added(plans, alignment, multi)
    keep_lo, keep_hi, left_out = _budget(plans, added, lo, hi, why, max_events)
    out = Path(output)
    n_orig, n_added = _write(out, plans, added, keep_lo, keep_hi, left_out, multi, alignment, max_bytes)
    return Annotated(out, [p.rank for p in plans], n_orig, n_added, left_out,
                     alignment.method if alignment else None)


# --- inputs ---------------------------------------------------------------------------------

def _select(files: list[Path], ranks: list[int] | None, max_bytes: int) -> list[tuple[Path, int | None]]:
    if len(files) == 1 and not ranks:
        return [(files[0], None)]
    claimed: dict[int | None, list[Path]] = {}
    for f in files:
        try:
            claimed.setdefault(peek_rank(f, max_bytes), []).append(f)
        except NotATraceError:
            if not isinstance(f, ScannedPath):  # a manifest beside the ranks is skipped, a named file is not
                raise
    if ranks:
        missing = [r for r in ranks if r not in claimed]
        if missing:
            have = ", ".join(str(r) for r in sorted(r for r in claimed if r is not None)) or "none"
            raise UsageError(f"--ranks: no trace of rank {', '.join(map(str, missing))} (ranks found: {have})")
        claimed = {r: claimed[r] for r in ranks}
    if None in claimed and len(claimed) > 1:
        raise UsageError("files without a rank (no distributedInfo, no rank in the name): "
                         + ", ".join(p.name for p in claimed[None]))
    dup = {r: v for r, v in claimed.items() if len(v) > 1}
    if dup:
        r, v = sorted(dup.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))[0]
        raise UsageError(f"several files claim rank {r}: {', '.join(p.name for p in v)} "
                         "(name the files of one run, or pick ranks with --ranks)")
    return [(v[0], r) for r, v in sorted(claimed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]


def _rank_of(a, rank: int | None, slot: int) -> int:
    """The rank a merged trace files ``a`` under (its slot where it names none)."""
    return rank if rank is not None else (a.rank if a.rank is not None else slot)


def _plan(path: Path, a, rank: int | None, slot: int, waits: dict[int, float] | None, shift_us: float) -> _Rank:
    lab = labelled(a.kernels, a.segmentation)
    windows = {}
    its = lab.filter(pl.col("iteration") != NONE).group_by("iteration").agg(
        pl.min_horizontal(pl.col("ts").min(), pl.col("launch_ts").min()).alias("lo"), pl.col("end").max().alias("hi"))
    for it, lo, hi in its.iter_rows():
        windows[str(it)] = (float(lo), float(hi))
    order = sorted(windows, key=lambda k: windows[k][0])
    comm = a.kernels.filter(pl.col("role") == "comm").select("row", "category", "name", "ts", "end", "dur",
                                                             "device", "pid", "tid")
    return _Rank(path, rank, slot, build(a, waits), comm, windows, order, shift_us, list(a.trace.warnings))


def _scan(p: _Rank, max_bytes: int, shift: float) -> None:
    """First pass: the times of every original event, its processes (with their names and
    sort indexes) and the largest id, so that added ids never collide."""
    dec = msgspec.json.Decoder()
    ts, end = [], []
    max_id = 0
    for raw, f in source.events(p.path, max_bytes):
        if isinstance(f.pid, (int, str)):
            slot = p.pids.setdefault(f.pid, [None, None])
        if f.ph == "M":
            ts.append(np.nan)
            end.append(np.nan)
            if f.name in ("process_name", "process_sort_index") and isinstance(f.pid, (int, str)):
                e = dec.decode(raw)
                args = e.get("args") if isinstance(e, dict) and isinstance(e.get("args"), dict) else {}
                v = args.get("sort_index" if f.name == "process_sort_index" else "name")
                if f.name == "process_sort_index" and isinstance(v, int) and not isinstance(v, bool):
                    slot[0] = v
                elif f.name == "process_name" and isinstance(v, str):
                    slot[1] = v
            continue
        t = f.ts if isinstance(f.ts, (int, float)) and not isinstance(f.ts, bool) else np.nan
        d = f.dur if isinstance(f.dur, (int, float)) and not isinstance(f.dur, bool) else 0.0
        ts.append(t)
        end.append(t + d)
        if isinstance(f.id, int) and not isinstance(f.id, bool):
            max_id = max(max_id, f.id)
    p.ts = np.asarray(ts, dtype=np.float64) + shift
    p.end = np.asarray(end, dtype=np.float64) + shift
    p.max_id = max_id
    p.index = {k: j for j, k in enumerate(_order(p))}
    if len(p.index) >= ADDED_PID_OFFSET:
        raise TraceError(p.path, f"{len(p.index):,} processes: more than a merged trace has pids for per rank "
                                 f"({ADDED_PID_OFFSET})")


# --- what to keep ---------------------------------------------------------------------------

def _window(plans: list[_Rank], window: str | None) -> tuple[float, float, str | None]:
    if window is None:
        return -np.inf, np.inf, None
    spans = [(p.windows[window][0] + p.shift_us, p.windows[window][1] + p.shift_us)
             for p in plans if window in p.windows]
    if not spans:
        have = sorted({i for p in plans for i in p.iterations}, key=lambda s: (len(s), s))
        raise UsageError(f"--window {window}: no such iteration (iterations: {', '.join(have) or 'none found'})")
    return min(s for s, _ in spans), max(e for _, e in spans), f"iteration {window} only"


def _extent(added: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (µs) of each added event, so that a window keeps or drops whole things:
    an async span's ``b`` and ``e`` together, all the steps of one flow arrow together."""
    ts = np.array([e.get("ts", np.nan) for e in added], dtype=np.float64)
    end = ts + np.array([e.get("dur", 0.0) for e in added], dtype=np.float64)
    flows: dict = {}
    for i, e in enumerate(added):
        if e["ph"] == "b":  # device_events writes each span's 'e' right after its 'b'
            assert added[i + 1]["ph"] == "e" and added[i + 1]["name"] == e["name"]
            end[i] = ts[i + 1]
            ts[i + 1] = ts[i]
        elif e["ph"] in ("s", "t", "f"):
            flows.setdefault(e["id"], []).append(i)
    for idx in flows.values():
        ts[idx], end[idx] = ts[idx].min(), ts[idx].max()
    return ts, end


def _in(ts: np.ndarray, end: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Events kept by a time window: those overlapping it (metadata, with no time, always)."""
    return np.isnan(ts) | ((ts <= hi) & (np.maximum(end, ts) >= lo))


def _budget(plans, added, lo, hi, why, max_events):
    left_out: list[str] = []
    a_ts, a_end = _extent(added)
    all_ts = np.concatenate([p.ts for p in plans] + [a_ts])
    all_end = np.concatenate([p.end for p in plans] + [a_end])
    keep = _in(all_ts, all_end, lo, hi)
    if why:
        left_out.append(f"{why}: {int((~keep).sum()):,} events (original and traceview's) outside it left out")
    limit_events = max_events
    max_events -= 1  # room for the note that says what was left out
    if keep.sum() > max_events:
        timed = np.sort(all_ts[keep & ~np.isnan(all_ts)])
        untimed = int((keep & np.isnan(all_ts)).sum())
        room = max(0, max_events - untimed)
        if room == 0:
            raise UsageError(f"--max-events {limit_events:,}: the metadata events alone are {untimed:,}")
        # cut at the end of the last whole iteration that fits, else where the budget runs out
        limit = timed[min(room, timed.size) - 1]
        ends = sorted(p.windows[i][1] + p.shift_us for p in plans for i in p.iterations)
        fitting = [e for e in ends if e <= limit and e >= lo]
        new_hi = fitting[-1] if fitting else limit
        before = int(keep.sum())
        keep = _in(all_ts, all_end, lo, new_hi)
        # events overlapping the cut are kept whole; trim from the cut back if that overflows
        while keep.sum() > max_events and new_hi > lo:
            idx = np.searchsorted(timed, new_hi, side="left") - 1
            new_hi = timed[idx] if idx >= 0 else lo
            keep = _in(all_ts, all_end, lo, new_hi)
        left_out.append(f"--max-events {limit_events:,}: {before - int(keep.sum()):,} events after "
                        f"ts {new_hi:.3f} µs left out" + (" (at an iteration end)" if fitting else ""))
        hi = new_hi
    return lo, hi, left_out


# --- the added events -----------------------------------------------------------------------

def _added(plans: list[_Rank], alignment, multi: bool) -> tuple[list[dict], int]:
    """Every added event (on the common clock), and the number of cross-rank flows."""
    max_id = max([p.max_id for p in plans] + [0])
    stride = max_id + 1
    ids = itertools.count(stride * (len(plans) + 1) + 1 if multi else max_id + 1)
    events: list[dict] = []
    for p in plans:
        used = [k for k in p.pids if isinstance(k, int) and not isinstance(k, bool)]
        free = (max(used) + 1) if used else 0
        for i, dt in enumerate(p.tracks):
            gpu_sort = _sort_of(p, dt.gpu_pid)
            if multi:
                pid = _added_pid(p, dt.device)
                label = f"rank {p.rank} GPU {dt.device}"
            else:
                pid = free + i
                label = f"GPU {dt.device}" + (f" (rank {p.rank})" if p.rank is not None else "")
            events += device_events(dt, pid, label, gpu_sort + 1, int(round(p.shift_us * 1000)), ids)
    # sort order: every original process gets an even index, each added one the next odd one
    for p in plans:
        for orig in p.pids:
            pid = _merged_pid(p, orig) if multi else orig
            if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 32:
                continue  # (a pid a viewer cannot take is left as the profiler wrote it)
            events.append(meta("process_sort_index", pid, {"sort_index": _sort_of(p, orig)}))
            if multi:
                name = p.pids[orig][1]
                events.append(meta("process_name", pid, {"name": f"rank {p.rank}: {name or orig}"}))
    n_flows = 0
    if multi and alignment is not None and alignment.collectives.height:
        flows, n_flows = _collective_flows(plans, alignment, ids)
        events += flows
    return events, n_flows


def _order(p: _Rank) -> list:
    """The rank's original processes in their own display order (sort index, then pid)."""
    return sorted(p.pids, key=lambda k: (p.pids[k][0] if p.pids[k][0] is not None else
                                         (k if isinstance(k, int) else 1 << 40), str(k)))


def _sort_of(p: _Rank, orig) -> int:
    """Even sort index of an original process; its GPU's added process takes the odd one after."""
    return 2 * (p.slot * PID_STRIDE + p.index.get(orig, len(p.index)))


def _merged_pid(p: _Rank, orig) -> int:
    """pid in a merged trace: rank * 1000 + k (k: the process's place in the rank's order)."""
    return (p.rank if p.rank is not None else p.slot) * PID_STRIDE + p.index[orig]


def _added_pid(p: _Rank, device: int) -> int:
    """pid of traceview's process for GPU ``device`` of a rank in a merged trace."""
    return (p.rank if p.rank is not None else p.slot) * PID_STRIDE + ADDED_PID_OFFSET + device


def _collective_flows(plans: list[_Rank], al, ids) -> tuple[list[dict], int]:
    """One arrow per collective instance: first arrival -> ... -> last arrival (bound to the
    kernels on the GPU stream tracks), so the late rank is where the arrow ends."""
    by_rank = {p.rank: p for p in plans}
    where = pl.concat([p.comm.select("row", "pid", "tid", "ts", "dur", pl.col("name").cast(pl.Utf8),
                                     pl.lit(p.rank, dtype=pl.Int64).alias("rank")) for p in plans])
    c = al.collectives.join(where, on=["rank", "row"]).sort("instance", "arrival_us", "rank")
    out: list[dict] = []
    n = 0
    for (inst,), g in c.partition_by("instance", as_dict=True, maintain_order=True).items():
        if g.height < 2:
            continue
        fid = next(ids)
        n += 1
        rows = g.rows(named=True)
        # args on the arrow's start only: viewers merge a flow's steps and warn of args given twice
        last = rows[0]["last_rank"]
        args = {"instance": int(inst), "kernel": rows[0]["name"], "first_rank": rows[0]["rank"],
                "late_rank": None if last is None else int(last),
                "skew_us": round(float(rows[-1]["arrival_us"] - rows[0]["arrival_us"]), 3),
                "wait_us": {str(r["rank"]): round(float(r["wait_us"]), 3) for r in rows}}
        for i, r in enumerate(rows):
            p = by_rank[r["rank"]]
            ph = "s" if i == 0 else ("f" if i == len(rows) - 1 else "t")
            ev = {"ph": ph, "cat": CATEGORY, "name": "collective", "id": fid, "pid": _merged_pid(p, r["pid"]),
                  "tid": r["tid"], "ts": us(int(ns(r["ts"] + p.shift_us + min(BIND_US, r["dur"] / 2))))}
            if ph == "s":
                ev["args"] = args
            else:
                ev["bp"] = "e"
            out.append(ev)
    return out, n


# --- writing --------------------------------------------------------------------------------

def _write(out: Path, plans: list[_Rank], added: list[dict], lo: float, hi: float, left_out: list[str],
           multi: bool, alignment, max_bytes: int) -> tuple[int, int]:
    if not out.parent.is_dir():
        raise TraceError(out, "the output's directory does not exist")
    enc = msgspec.json.Encoder()
    dec = msgspec.json.Decoder()
    a_ts, a_end = _extent(added)
    keep_added = _in(a_ts, a_end, lo, hi)
    kept_added = [e for e, k in zip(added, keep_added) if k]
    info = {"version": __version__, "category": CATEGORY,
            "inputs": [{"file": p.path.name, "rank": p.rank, "clock_shift_us": p.shift_us, "warnings": p.warnings}
                       for p in plans],
            "clock_alignment": alignment.method if alignment else None,
            "left_out": left_out or ["nothing"]}
    note = {"ph": "i", "s": "g", "cat": CATEGORY, "name": "traceview annotate", "pid": kept_added[0]["pid"] if kept_added else 0,
            "tid": 0, "ts": us(int(ns(lo))) if np.isfinite(lo) else _first_ts(kept_added), "args": info}
    n_orig = 0
    tmp = out.with_name(out.name + ".part")
    try:
        with gzip.open(tmp, "wb", compresslevel=6) as f:
            if multi:
                f.write(b'{"traceviewAnnotate":' + enc.encode(info) + b',"displayTimeUnit":"ms","traceEvents":[\n')
                suffix = b"]}\n"
            else:
                lay = source.layout(plans[0].path, max_bytes)
                body = lay.prefix.lstrip().lstrip(b"\xef\xbb\xbf").lstrip()
                if lay.is_object:
                    f.write(b'{"traceviewAnnotate":' + enc.encode(info) + b"," + body[1:])
                    suffix = lay.suffix
                else:
                    f.write(b'{"traceviewAnnotate":' + enc.encode(info) + b',"traceEvents":[')
                    suffix = lay.suffix + b"}"
            first = True
            stride = max(q.max_id for q in plans) + 1
            for p in plans:
                keep = _in(p.ts, p.end, lo, hi)
                for i, (raw, _fields) in enumerate(source.events(p.path, max_bytes)):
                    if not keep[i]:
                        continue
                    if multi:
                        raw = enc.encode(_moved(dec.decode(raw), p, stride))
                    if not first:
                        f.write(b",\n")
                    f.write(raw)
                    first = False
                    n_orig += 1
            for e in [note] + kept_added:
                if not first:
                    f.write(b",\n")
                f.write(enc.encode(e))
                first = False
            f.write(b"\n" + suffix.lstrip())
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TraceError(out, f"cannot write: {e.strerror or e}") from None
    return n_orig, len(kept_added) + 1


def _first_ts(events: list[dict]) -> float:
    ts = [e["ts"] for e in events if "ts" in e]
    return min(ts) if ts else 0.0


def _moved(e: dict, p: _Rank, stride: int) -> dict:
    """An original event of a merged trace: its rank's pid, the common clock, a flow id of its own."""
    if not isinstance(e, dict):
        return e
    if "pid" in e:
        e["pid"] = _merged_pid(p, e["pid"]) if e["pid"] in p.pids else e["pid"]
    if p.shift_us and isinstance(e.get("ts"), (int, float)) and not isinstance(e.get("ts"), bool):
        e["ts"] = round(e["ts"] + p.shift_us, 3)
    if e.get("ph") in ("s", "t", "f") and "id" in e:
        i = e["id"]
        e["id"] = i + stride * (p.slot + 1) if isinstance(i, int) and not isinstance(i, bool) else f"{p.rank}:{i}"
    return e
