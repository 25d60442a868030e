"""The tracks traceview adds beside each analysed GPU, built from the analysis (never from
a second measurement): kernel classes, exposed communication, iterations, micro-batches and
layers, and counters.  Times here are integer nanoseconds on the trace's own clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..analysis import TraceAnalysis
from ..metrics.segments import labelled
from ..segment import NONE
from ..timeline import intervals as iv
from .spans import Span, pack, settle

#: Names kept per added slice (args): the longest-running kernels of it.
NAMES_PER_SLICE = 3
NAME_CHARS = 200


@dataclass
class Track:
    """One added track: ``slices`` (a thread track of nested X events), ``async`` (one lane
    of b/e events; several lanes where spans interleave) or ``counter``."""

    name: str
    kind: str                                  # slices | async | counter
    lanes: list[list[Span]] = field(default_factory=list)
    points: list[tuple[int, float]] = field(default_factory=list)  # counter (ns, value)
    unit: str = ""

    @property
    def events(self) -> int:
        return len(self.points) if self.kind == "counter" else sum(
            len(lane) * (2 if self.kind == "async" else 1) for lane in self.lanes)


@dataclass
class DeviceTracks:
    device: int
    gpu_pid: int | None                       # the original GPU process (the added one sorts next to it)
    tracks: list[Track]


def ns(us) -> np.ndarray:
    return np.rint(np.asarray(us, dtype=np.float64) * 1000.0).astype(np.int64)


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def build(a: TraceAnalysis, waits: dict[int, float] | None = None) -> list[DeviceTracks]:
    """The added tracks of every GPU of ``a``.  ``waits``: per kernel row, the microseconds
    its communication kernel waited for the last peer (multi-rank only)."""
    lab = labelled(a.kernels, a.segmentation)
    iters = a.segments("iteration")
    layers = a.segments("layer")
    out = []
    for (device,), d in lab.partition_by("device", as_dict=True, maintain_order=True).items():
        d = d.sort("ts", "row")
        pids = d["pid"].drop_nulls()
        tracks = [
            _iterations(d, iters.filter(pl.col("device") == device)),
            _exposed(d, waits),
            *_microbatches(d, layers.filter(pl.col("device") == device)),
            _in_flight(d),
            _exposed_share(iters.filter(pl.col("device") == device)),
            *_classes(d),
        ]
        out.append(DeviceTracks(int(device), int(pids.mode()[0]) if pids.len() else None,
                                [t for t in tracks if t.lanes or t.points]))
    return out


def _slices(name: str, spans: list[Span]) -> Track:
    lanes = pack(spans)
    return Track(name, "slices" if len(lanes) <= 1 else "async", [settle(lane) for lane in lanes])


# --- kernel classes -------------------------------------------------------------------------

def _classes(d: pl.DataFrame) -> list[Track]:
    """One track per category: its merged busy intervals (a union never overlaps itself)."""
    totals = d.group_by(pl.col("category").cast(pl.Utf8)).agg(pl.col("dur").sum()).sort(["dur", "category"],
                                                                                         descending=[True, False])
    tracks = []
    for cat in totals["category"].to_list():
        k = d.filter(pl.col("category").cast(pl.Utf8) == cat)
        s, e = iv.union(k["ts"].to_numpy(), k["end"].to_numpy())
        if s.size == 0:
            continue
        piece = np.searchsorted(s, k["ts"].to_numpy(), side="right") - 1
        k = k.with_columns(pl.Series("piece", np.maximum(piece, 0)))
        counts = k.group_by("piece").agg(pl.len().alias("n"), pl.col("dur").sum().alias("t"))
        top = (k.group_by("piece", pl.col("name").cast(pl.Utf8)).agg(pl.col("dur").sum(), pl.len().alias("c"))
               .sort(["piece", "dur"], descending=[False, True]).group_by("piece", maintain_order=True)
               .head(NAMES_PER_SLICE))
        names: dict[int, list[str]] = {}
        for p, n, c in top.select("piece", "name", "c").iter_rows():
            names.setdefault(p, []).append(f"{_short(n)} ×{c}" if c > 1 else _short(n))
        n_of = dict(zip(counts["piece"].to_list(), counts["n"].to_list()))
        s_ns, e_ns = ns(s), ns(e)
        spans = [Span(int(s_ns[i]), int(e_ns[i]), cat,
                      {"kernels": int(n_of.get(i, 0)), "busy_us": round(float(e[i] - s[i]), 3),
                       "names": names.get(i, [])})
                 for i in range(s.size)]
        tracks.append(_slices(f"class {cat}", spans))
    return tracks


# --- exposed communication ------------------------------------------------------------------

def _exposed(d: pl.DataFrame, waits: dict[int, float] | None) -> Track:
    """comm \\ compute, cut where the set of communication kernels running changes."""
    comm = d.filter(pl.col("role") == "comm")
    compute = d.filter(pl.col("role") == "compute")
    xs, xe = iv.subtract((comm["ts"].to_numpy(), comm["end"].to_numpy()),
                         (compute["ts"].to_numpy(), compute["end"].to_numpy()))
    if xs.size == 0:
        return Track("exposed comm", "slices")
    ts, end = comm["ts"].to_numpy(), comm["end"].to_numpy()
    rows = comm["row"].to_numpy()
    wait = np.array([(waits or {}).get(int(r), np.nan) for r in rows]) if waits is not None else None
    cuts = [ts, end, xs, xe] + ([ts + np.nan_to_num(wait)] if wait is not None else [])
    bounds = np.unique(np.concatenate(cuts))
    mid = (bounds[:-1] + bounds[1:]) / 2
    j = np.searchsorted(xs, mid, side="right") - 1
    inside = (j >= 0) & (mid < xe[np.maximum(j, 0)])
    order = np.argsort(ts, kind="stable")
    info = comm.select(pl.col("name").cast(pl.Utf8), pl.col("category").cast(pl.Utf8), "microbatch", "layer",
                       "iteration", "phase").rows()
    pieces: list[list] = []  # [start, end, kernel indices, waiting, transfer]
    active: list[int] = []
    nxt = 0
    for b in np.flatnonzero(inside):
        m = mid[b]
        while nxt < order.size and ts[order[nxt]] <= m:
            active.append(int(order[nxt]))
            nxt += 1
        active = [i for i in active if end[i] > m]
        covering = tuple(sorted(active))
        if not covering:
            continue
        length = bounds[b + 1] - bounds[b]
        waiting = wait is not None and all(not np.isnan(wait[i]) and m < ts[i] + wait[i] for i in covering)
        if pieces and pieces[-1][2] == covering and pieces[-1][1] == bounds[b]:
            p = pieces[-1]
            p[1] = bounds[b + 1]
        else:
            p = [bounds[b], bounds[b + 1], covering, 0.0, 0.0]
            pieces.append(p)
        p[3 if waiting else 4] += length
    spans = []
    for start, stop, covering, waiting, transfer in pieces:
        ks = [info[i] for i in covering]
        cats = sorted({k[1] for k in ks})
        args = {
            "exposed_us": round(float(stop - start), 3),
            "kernels": [_short(k[0]) for k in ks][:NAMES_PER_SLICE],
            "category": ", ".join(cats),
            "microbatch": ", ".join(sorted({k[2] for k in ks})),
            "layer": ", ".join(sorted({k[3] for k in ks})),
            "iteration": ", ".join(sorted({k[4] for k in ks})),
            "phase": ", ".join(sorted({k[5] for k in ks})),
        }
        if wait is not None:
            args["waiting_us"] = round(float(waiting), 3)
            args["transfer_us"] = round(float(transfer), 3)
        else:
            args["waiting_vs_transfer"] = "needs the peer ranks (annotate the run's directory)"
        spans.append(Span(int(ns(start)), int(ns(stop)), "exposed " + " + ".join(cats), args))
    return _slices("exposed comm", spans)


# --- iterations, micro-batches, layers ------------------------------------------------------

_SEG_ARGS = ("compute_us", "comm_us", "overlapped_comm_us", "exposed_comm_us")


def _seg_args(row: dict) -> dict:
    return {k: round(float(row[k]), 3) for k in _SEG_ARGS if row.get(k) is not None}


def _iterations(d: pl.DataFrame, table: pl.DataFrame) -> Track:
    spans = []
    for row in table.filter(pl.col("iteration") != NONE).iter_rows(named=True):
        span = row["end_us"] - row["start_us"]
        args = {"iteration": row["iteration"], "kernels": int(row["events"]), "span_us": round(span, 3),
                **_seg_args(row)}
        spans.append(Span(int(ns(row["start_us"])), int(ns(row["end_us"])), f"iteration {row['iteration']}", args))
    return _slices("iterations", spans)


def _microbatches(d: pl.DataFrame, layers: pl.DataFrame) -> list[Track]:
    """Per micro-batch: its span in each iteration, and its layers inside.  One track of X
    slices where everything nests; else one async lane per micro-batch (interleaving)."""
    mb = d.filter(pl.col("microbatch") != NONE)
    if mb.height == 0:
        return []
    spans_of: dict[str, list[Span]] = {}
    for row in (mb.group_by("iteration", "microbatch").agg(pl.col("ts").min(), pl.col("end").max(), pl.len())
                .sort("ts").iter_rows(named=True)):
        name = row["microbatch"]  # (one name per micro-batch: viewers give each async name one row)
        spans_of.setdefault(row["microbatch"], []).append(
            Span(int(ns(row["ts"])), int(ns(row["end"])), name,
                 {"microbatch": row["microbatch"], "iteration": row["iteration"], "kernels": int(row["len"])}))
    for row in layers.filter((pl.col("layer") != NONE) & (pl.col("microbatch") != NONE)).iter_rows(named=True):
        spans_of.setdefault(row["microbatch"], []).append(
            Span(int(ns(row["start_us"])), int(ns(row["end_us"])), f"layer {row['layer']}",
                 {"layer": row["layer"], "microbatch": row["microbatch"], "iteration": row["iteration"],
                  "kernels": int(row["events"]), **_seg_args(row)}))
    everything = [s for spans in spans_of.values() for s in spans]
    if len(pack(everything)) == 1:
        return [_slices("micro-batches and layers", everything)]
    tracks = []
    for name in sorted(spans_of):
        lanes = pack(spans_of[name])
        tracks.append(Track(f"{name} (async)", "async", [settle(lane) for lane in lanes]))
    return tracks


# --- counters -------------------------------------------------------------------------------

def _in_flight(d: pl.DataFrame) -> Track:
    """Communication kernels running at each instant (a step function)."""
    comm = d.filter(pl.col("role") == "comm")
    s, e, counts = iv.coverage(comm["ts"].to_numpy(), comm["end"].to_numpy(), np.zeros(comm.height), 1)
    points: list[tuple[int, float]] = []
    last = None
    for t, c in zip(ns(s), counts[:, 0] if counts.size else []):
        if c != last:
            points.append((int(t), float(c)))
            last = c
    if points:
        points.append((int(ns(e[-1])), 0.0))
    return Track("in-flight comm kernels", "counter", points=points, unit="kernels")


def _exposed_share(table: pl.DataFrame) -> Track:
    """Per iteration: exposed communication as a percentage of the iteration's GPU span."""
    rows = table.filter(pl.col("iteration") != NONE).sort("start_us").rows(named=True)
    points: list[tuple[int, float]] = []
    for i, row in enumerate(rows):
        span = row["end_us"] - row["start_us"]
        share = 100.0 * row["exposed_comm_us"] / span if span > 0 else 0.0
        points.append((int(ns(row["start_us"])), round(share, 3)))
        if i + 1 == len(rows) or rows[i + 1]["start_us"] > row["end_us"]:
            points.append((int(ns(row["end_us"])), 0.0))
    return Track("exposed comm share of iteration", "counter", points=points, unit="percent")
