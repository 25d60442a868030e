"""Give every GPU event its iteration, stage, micro-batch, layer and phase.

Three sources, in this order, per level (the result says which one was used):

1. ``annotations``: record_function/NVTX ranges open on the CPU thread when the event was
   *launched* (correlation id -> launch -> enclosing ranges), never whatever GPU range
   happens to overlap it in time: with two-batch overlap, one micro-batch's all-to-all
   runs under the other's compute.
2. ``threads``: frameworks that drive each micro-batch from its own CPU thread (vLLM's
   dual-batch overlap): the launching thread is the micro-batch.
3. ``inferred``: no annotations (SGLang-style single-thread TBO, or a stripped trace).
   A two-batch-overlap scheduler switches micro-batch at its communication points, so the
   launch stream is cut into *stages* ending at each group of communication launches;
   consecutive stages alternate between micro-batches, and the number of micro-batches is
   how many consecutive stages share the same kind of work.  Layers are counted by the
   attention kernels (or, without attention kernels, by the communication groups) of each
   micro-batch; iterations by ``cudaDeviceSynchronize`` on the launching thread.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..classify.launch import enclosing_ranges
from ..load.trace import Trace
from .levels import LEVELS, LevelPatterns, level_of

NONE = "(none)"


@dataclass
class Segmentation:
    """Per-event labels plus how each level was found."""

    labels: pl.DataFrame                      # row, iteration, stage, microbatch, layer, phase
    sources: dict[str, str] = field(default_factory=dict)  # level -> annotations|threads|inferred|none
    num_microbatches: int = 1

    def summary(self) -> dict:
        lab = self.labels
        return {
            "sources": dict(self.sources),
            "iterations": lab["iteration"].drop_nulls().n_unique(),
            "microbatches": sorted(m for m in lab["microbatch"].drop_nulls().unique().to_list()),
            "layers": lab["layer"].drop_nulls().n_unique(),
            "phases": sorted(p for p in lab["phase"].drop_nulls().unique().to_list()),
        }


def segment(trace: Trace, kernels: pl.DataFrame, patterns: LevelPatterns | None = None,
            infer: bool = True) -> Segmentation:
    """Segment the classified GPU events ``kernels`` of ``trace``."""
    pats = (patterns or LevelPatterns()).compiled()
    labels = _from_annotations(trace, kernels, pats)
    sources = {lvl: ("annotations" if labels[lvl].drop_nulls().len() else "none") for lvl in LEVELS}
    if sources["microbatch"] == "none":
        by_thread = _microbatch_from_threads(kernels)
        if by_thread is not None:
            labels = labels.drop("microbatch").join(by_thread, on="row", how="left")
            sources["microbatch"] = "threads"
    annotated = any(sources[lvl] == "annotations" for lvl in ("microbatch", "layer", "phase"))
    if sources["iteration"] == "annotations":
        labels = _iterations_by_time(trace, kernels, labels, pats)
    if infer and not annotated and (sources["microbatch"] == "none" or sources["layer"] == "none"):
        labels, inferred = _infer(trace, kernels, labels, sources)
        sources.update(inferred)
    if sources["microbatch"] == "none":
        labels = labels.with_columns(pl.lit("mb0").alias("microbatch"))
        sources["microbatch"] = "single"
    n_mb = max(1, labels["microbatch"].drop_nulls().n_unique())
    return Segmentation(labels=labels, sources=sources, num_microbatches=n_mb)


# --- 1. annotations ---------------------------------------------------------------------

def _from_annotations(trace: Trace, kernels: pl.DataFrame, pats) -> pl.DataFrame:
    empty = kernels.select("row").with_columns([pl.lit(None, dtype=pl.Utf8).alias(lvl) for lvl in LEVELS])
    ev = trace.events.with_row_index("range").with_columns(pl.col("range").cast(pl.Int64))
    ranges = ev.filter(pl.col("kind") == "user_annotation").select(
        "range", "pid", "tid", "ts", "end", pl.col("name").cast(pl.Utf8))
    points = kernels.filter(pl.col("launch_ts").is_not_null()).select(
        pl.col("row").alias("point"), pl.col("launch_pid").alias("pid"), pl.col("launch_tid").alias("tid"),
        pl.col("launch_ts").alias("ts"))
    if ranges.height == 0 or points.height == 0:
        return empty
    names = ranges["name"].unique().to_list()
    lv = [(n, *(level_of(n, pats) or (None, None))) for n in names]
    name_map = pl.DataFrame(lv, schema={"name": pl.Utf8, "level": pl.Utf8, "label": pl.Utf8}, orient="row")
    enc = (enclosing_ranges(points, ranges.select("range", "pid", "tid", "ts", "end"))
           .join(ranges.select("range", "name"), on="range")
           .join(name_map, on="name")
           .filter(pl.col("level").is_not_null()))
    if enc.height == 0:
        return empty
    # innermost range of each level
    inner = (enc.sort("depth", descending=True).group_by("point", "level").agg(pl.col("label").first())
             .pivot(on="level", index="point", values="label"))
    for lvl in LEVELS:
        if lvl not in inner.columns:
            inner = inner.with_columns(pl.lit(None, dtype=pl.Utf8).alias(lvl))
    return kernels.select("row").join(inner.rename({"point": "row"}).select("row", *LEVELS), on="row", how="left")


def _iterations_by_time(trace: Trace, kernels: pl.DataFrame, labels: pl.DataFrame, pats) -> pl.DataFrame:
    """Kernels launched by a thread that has no iteration range of its own (worker threads)
    take the iteration range that was open, on any thread of the process, at launch time."""
    missing = labels.filter(pl.col("iteration").is_null())["row"]
    if missing.len() == 0:
        return labels
    ua = trace.events.filter(pl.col("kind") == "user_annotation").select("pid", "ts", "end", pl.col("name").cast(pl.Utf8))
    names = [n for n in ua["name"].unique().to_list() if (level_of(n, pats) or ("",))[0] == "iteration"]
    its = ua.filter(pl.col("name").is_in(names)).sort("ts")
    if its.height == 0:
        return labels
    its = its.with_columns(pl.col("name").map_elements(lambda n: level_of(n, pats)[1], return_dtype=pl.Utf8))
    k = kernels.filter(pl.col("row").is_in(missing.implode()) & pl.col("launch_ts").is_not_null()).select("row", "launch_ts")
    starts, ends, lab = its["ts"].to_numpy(), its["end"].to_numpy(), its["name"].to_list()
    idx = np.searchsorted(starts, k["launch_ts"].to_numpy(), side="right") - 1
    ok = (idx >= 0) & (k["launch_ts"].to_numpy() <= ends[np.maximum(idx, 0)])
    fill = pl.DataFrame({"row": k["row"].to_numpy()[ok], "_it": [lab[i] for i in idx[ok]]},
                        schema={"row": pl.Int64, "_it": pl.Utf8})
    return labels.join(fill, on="row", how="left").with_columns(
        pl.coalesce("iteration", "_it").alias("iteration")).drop("_it")


# --- 2. launching threads ---------------------------------------------------------------

def _microbatch_from_threads(kernels: pl.DataFrame) -> pl.DataFrame | None:
    """Micro-batch = launching CPU thread, when two or more threads each launch a real share."""
    counts = kernels.filter(pl.col("launch_tid").is_not_null()).group_by("launch_tid").agg(
        pl.len(), (pl.col("role") == "comm").sum().alias("comm"))
    total = counts["len"].sum()
    major = counts.filter(pl.col("len") >= 0.1 * total).sort("launch_tid")
    if major.height < 2:
        return None
    # each micro-batch issues its own communication; a thread that launches none (e.g. the
    # autograd engine's backward thread) is not a micro-batch
    if counts["comm"].sum() > 0 and (major["comm"] == 0).any():
        return None
    mb = {tid: f"mb{i}" for i, tid in enumerate(major["launch_tid"].to_list())}
    return kernels.select("row", pl.col("launch_tid").replace_strict(mb, default=None, return_dtype=pl.Utf8)
                          .alias("microbatch"))


# --- 3. inference -----------------------------------------------------------------------

def _infer(trace: Trace, kernels: pl.DataFrame, labels: pl.DataFrame, sources: dict[str, str]):
    """Micro-batches from stage alternation, layers from attention kernels, iterations from syncs."""
    k = (kernels.filter(pl.col("launch_ts").is_not_null())
         .select("row", "launch_ts", "launch_tid", "launch_pid", pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8))
         .sort("launch_ts", "row"))
    if k.height == 0:
        return labels, {}
    out: dict[str, str] = {}
    cats = k["category"].to_numpy()
    is_comm = k["role"].to_numpy() == "comm"
    rows = k["row"].to_numpy()

    # iterations: device synchronizations on the launching thread (when no ProfilerStep)
    iteration = labels.select("row", "iteration")
    if sources["iteration"] == "none":
        syncs = trace.events.filter(
            pl.col("kind").is_in(["cuda_runtime", "cuda_driver"])
            & pl.col("name").cast(pl.Utf8).str.contains("DeviceSynchronize|cuCtxSynchronize"))["ts"].to_numpy()
        it = np.searchsorted(np.sort(syncs), k["launch_ts"].to_numpy())
        # renumber so that the first iteration holding kernels is 1
        _, it = np.unique(it, return_inverse=True)
        iteration = pl.DataFrame({"row": rows, "iteration": (it + 1).astype(str)})
        if len(np.unique(it)) > 1:
            out["iteration"] = "inferred"
    it_of_row = dict(zip(iteration["row"].to_list(), iteration["iteration"].to_list()))
    iters = np.array([it_of_row.get(r) or "" for r in rows])

    mb = labels["microbatch"] if sources["microbatch"] != "none" else None
    if mb is None:
        mb_arr, n_mb = _infer_microbatches(cats, is_comm, iters)
        out["microbatch"] = "inferred"
    else:
        mb_of_row = dict(zip(labels["row"].to_list(), labels["microbatch"].to_list()))
        mb_arr = np.array([mb_of_row.get(r) or "mb0" for r in rows])
    layer = None
    if sources["layer"] == "none":
        layer = _infer_layers(cats, is_comm, iters, mb_arr)
        if layer is not None:
            out["layer"] = "inferred"
    inferred = pl.DataFrame({"row": rows, "microbatch_i": mb_arr,
                             "layer_i": layer if layer is not None else np.full(len(rows), None)},
                            schema={"row": pl.Int64, "microbatch_i": pl.Utf8, "layer_i": pl.Utf8})
    labels = labels.join(inferred, on="row", how="left")
    if "microbatch" in out:
        labels = labels.with_columns(pl.col("microbatch_i").alias("microbatch"))
    if "layer" in out:
        labels = labels.with_columns(pl.col("layer_i").alias("layer"))
    if "iteration" in out:
        labels = labels.drop("iteration").join(iteration, on="row", how="left")
    return labels.drop("microbatch_i", "layer_i").select("row", *LEVELS), out


def _is_major(cats: np.ndarray) -> np.ndarray:
    return np.array([c.startswith(("gemm", "attention")) for c in cats], dtype=bool)


def _stages(is_comm: np.ndarray, major: np.ndarray) -> np.ndarray:
    """Stage index per kernel: a new stage starts at the first major compute launch (GEMM,
    attention) after a communication launch; small kernels in between stay in the stage
    of the communication they follow."""
    significant = np.flatnonzero(is_comm | major)
    boundary = np.zeros(len(is_comm), dtype=bool)
    if significant.size > 1:
        prev, cur = significant[:-1], significant[1:]
        starts = cur[major[cur] & ~is_comm[cur] & is_comm[prev]]
        boundary[starts] = True
    return np.cumsum(boundary)


def _stage_kind(cat_set: set[str]) -> str:
    if any(c.startswith("attention") for c in cat_set):
        return "attention"
    if "gemm.grouped" in cat_set:
        return "experts"
    return "other"


def _infer_microbatches(cats: np.ndarray, is_comm: np.ndarray, iters: np.ndarray):
    stage = _stages(is_comm, _is_major(cats))
    n_stages = int(stage.max()) + 1 if len(stage) else 0
    kinds = [_stage_kind(set(cats[stage == s])) for s in range(n_stages)]
    # number of micro-batches = the usual run length of equal consecutive stage kinds
    runs: list[int] = []
    i = 0
    while i < n_stages:
        j = i
        while j + 1 < n_stages and kinds[j + 1] == kinds[i]:
            j += 1
        if kinds[i] != "other":
            runs.append(j - i + 1)
        i = j + 1
    n_mb = Counter(runs).most_common(1)[0][0] if runs else 1
    n_mb = max(1, min(n_mb, 8))
    # alternate within each iteration, restarting at mb0
    mb_of_stage = np.zeros(n_stages, dtype=np.int64)
    first_stage_of_iter: dict[str, int] = {}
    for s in range(n_stages):
        it = iters[np.argmax(stage == s)]
        base = first_stage_of_iter.setdefault(it, s)
        mb_of_stage[s] = (s - base) % n_mb
    return np.array([f"mb{m}" for m in mb_of_stage[stage]]), n_mb


def _infer_layers(cats: np.ndarray, is_comm: np.ndarray, iters: np.ndarray, mb: np.ndarray) -> np.ndarray | None:
    """Layer index = running count of attention kernels per (iteration, micro-batch).

    Without attention kernels, count communication groups instead (a comm group = one run
    of consecutive communication launches)."""
    anchor = np.array([c.startswith("attention") for c in cats])
    if not anchor.any():
        starts = is_comm & ~np.concatenate([[False], is_comm[:-1]])
        if not starts.any():
            return None
        anchor = starts
    layer = np.empty(len(cats), dtype=object)
    counters: dict[tuple, int] = {}
    for i in range(len(cats)):
        key = (iters[i], mb[i])
        if anchor[i]:
            counters[key] = counters.get(key, -1) + 1
        layer[i] = str(max(0, counters.get(key, 0)))
    return layer
