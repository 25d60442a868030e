"""Give every GPU event its iteration, stage, micro-batch, layer and phase.

Three sources, in this order, per level (the result says which one was used):

1. ``annotations``: record_function/NVTX ranges open on the CPU thread when the event was
   *launched* (correlation id -> launch -> enclosing ranges), never whatever GPU range
   happens to overlap it in time: with two-batch overlap, one micro-batch's all-to-all
   runs under the other's compute.  CUDA-graph kernels carry their own annotations when
   PyTorch 2.12+ wrote them (``mark_kernels`` scopes merged into their args by
   ``torch.cuda._annotate_cuda_graph_trace``): read by the same patterns.
2. ``threads``: frameworks that drive each micro-batch from its own CPU thread (vLLM's
   dual-batch overlap): the launching thread is the micro-batch.
3. ``inferred``: no annotations (SGLang-style single-thread TBO, or a stripped trace).
   A two-batch-overlap scheduler switches micro-batch at its communication points, so the
   launch stream is cut into *stages* ending at each group of communication launches;
   consecutive stages alternate between micro-batches, and the number of micro-batches is
   how many consecutive stages share the same kind of work.  Layers are counted by the
   attention groups (without attention kernels: the repeating GEMM, else the dispatch or
   communication groups) of each micro-batch, each starting at its input norm; iterations by ``cudaDeviceSynchronize`` on the launching thread.  CUDA-graph
   replays get theirs from the replay streams (one branch per micro-batch) or from the
   repetition of each micro-batch's kernels (``_replay_microbatches``), one iteration per launch.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..classify.launch import enclosing_ranges
from ..load.trace import Trace
from .levels import LEVELS, LevelPatterns, level_of, level_of_arg

NONE = "(none)"


@dataclass
class Segmentation:
    """Per-event labels plus how each level was found."""

    labels: pl.DataFrame                      # row, iteration, stage, microbatch, layer, phase
    sources: dict[str, str] = field(default_factory=dict)  # level -> annotations|threads|inferred|none
    num_microbatches: int = 1
    approximate: list[str] = field(default_factory=list)  # which figures are estimates, and why

    def summary(self) -> dict:
        lab = self.labels
        return {
            "sources": dict(self.sources),
            "iterations": lab["iteration"].drop_nulls().n_unique(),
            "microbatches": sorted(m for m in lab["microbatch"].drop_nulls().unique().to_list()),
            "layers": lab["layer"].drop_nulls().n_unique(),
            # one per layer pass: S profiled steps of an L-layer model give S x L
            # (kernels outside every iteration, e.g. eager work before the first graph replay, are not a pass)
            "layer_instances": lab.filter(pl.col("layer").is_not_null() & (pl.col("iteration").is_not_null()
                                          | pl.col("iteration").is_null().all()))
            .select("iteration", "layer").unique().height,
            "phases": sorted(p for p in lab["phase"].drop_nulls().unique().to_list()),
            "approximate": list(self.approximate),
        }


def segment(trace: Trace, kernels: pl.DataFrame, patterns: LevelPatterns | None = None,
            infer: bool = True) -> Segmentation:
    """Segment the classified GPU events ``kernels`` of ``trace``."""
    pats = (patterns or LevelPatterns()).compiled()
    labels = _with_graph_annotations(_from_annotations(trace, kernels, pats), kernels, pats)
    sources = {lvl: ("annotations" if labels[lvl].drop_nulls().len() else "none") for lvl in LEVELS}
    if sources["iteration"] == "annotations":
        labels = _iterations_by_time(trace, kernels, labels, pats)
    if sources["microbatch"] == "none":
        by_thread = _microbatch_from_threads(kernels, labels.select("row", "iteration"))
        if by_thread is not None:
            labels = labels.drop("microbatch").join(by_thread, on="row", how="left")
            sources["microbatch"] = "threads"
    annotated = any(sources[lvl] == "annotations" for lvl in ("microbatch", "layer", "phase"))
    if annotated and sources["iteration"] == "none":  # annotated graph replays: one iteration per launch
        iteration = _graph_iterations(trace, kernels)
        if iteration is not None:
            labels = labels.drop("iteration").join(iteration, on="row", how="left").select("row", *LEVELS)
            sources["iteration"] = "inferred"
    approximate: list[str] = []
    if infer and not annotated and (sources["microbatch"] == "none" or sources["layer"] == "none"):
        labels, inferred, replay_share = _infer(trace, kernels, labels, sources)
        sources.update(inferred)
        if inferred.get("microbatch") == "inferred" and labels["microbatch"].drop_nulls().n_unique() > 1:
            replays = _replay_note(replay_share)
            approximate.append("micro-batches inferred from the launch order (no annotation, no micro-batch "
                               "threads): communication (or, without it, each expert block) is attributed by "
                               "its position, the other kernels by the same alternation" + replays
                               + "; per-micro-batch compute and cover figures are approximate")
    if sources["microbatch"] == "none":
        labels = labels.with_columns(pl.lit("mb0").alias("microbatch"))
        sources["microbatch"] = "single"
    n_mb = max(1, labels["microbatch"].drop_nulls().n_unique())
    return Segmentation(labels=labels, sources=sources, num_microbatches=n_mb, approximate=approximate)


def _replay_note(counts: dict | None) -> str:
    """The approximate note's words on CUDA-graph replays (see ``_replay_microbatches``)."""
    if not counts or not counts["kernels"]:
        return ""
    parts = []
    if counts["branches"]:
        parts.append(f"by the replay streams running the same kernels side by side "
                     f"({counts['branches'] / counts['kernels']:.0%} of the replayed kernels)")
    if counts["blocks"] or not parts:
        parts.append(f"by the repetition of each micro-batch's kernels "
                     f"({counts['blocks'] / counts['kernels']:.0%} of the replayed kernels in repeated blocks)")
    return "; in CUDA-graph replays " + " and ".join(parts)


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
    out = kernels.select("row").join(inner.rename({"point": "row"}).select("row", *LEVELS), on="row", how="left")
    # without iteration ranges, each stage range (SGLang's step[DECODE bs=32], vLLM's
    # execute_..., a decode_step range) is one pass of the model: an iteration, numbered in
    # the order the ranges start
    stage_enc = enc.filter(pl.col("level") == "stage")
    if stage_enc.height and out["iteration"].drop_nulls().len() == 0:
        outer = (stage_enc.join(ranges.select("range", "ts"), on="range").sort("depth")
                 .group_by("point").agg(pl.col("range").first(), pl.col("ts").first()))
        starts = outer.select("range", "ts").unique().sort("ts", "range")
        number = {r: str(i + 1) for i, r in enumerate(starts["range"].to_list())}
        it = outer.select(pl.col("point").alias("row"),
                          pl.col("range").replace_strict(number, return_dtype=pl.Utf8).alias("_stage_it"))
        out = out.join(it, on="row", how="left").with_columns(pl.col("_stage_it").alias("iteration")).drop("_stage_it")
    return out


def _with_graph_annotations(labels: pl.DataFrame, kernels: pl.DataFrame, pats) -> pl.DataFrame:
    """CUDA-graph kernels' own annotations (PyTorch 2.12+ ``mark_kernels`` scopes, merged into their
    args by ``torch.cuda._annotate_cuda_graph_trace``; the loader keeps them as ``annotation``)
    label those kernels as record_function ranges label eager ones: the same patterns, and for
    each level the first arg that gives it (the innermost scope's keys come first).  A level the
    annotation does not give keeps the label of the ranges around the graph launch."""
    if "annotation" not in kernels.columns:
        return labels
    ann = kernels.select("row", "annotation").filter(pl.col("annotation").is_not_null())
    if ann.height == 0:
        return labels
    import orjson

    texts = ann["annotation"].unique().to_list()
    rows = []
    for text in texts:
        try:
            args = orjson.loads(text)
        except orjson.JSONDecodeError:
            args = {"annotation": text}
        got: dict[str, str] = {}
        for key, value in (args.items() if isinstance(args, dict) else [("annotation", args)]):
            for v in _scope_values(value):
                lv = level_of_arg(str(key), v, pats)
                if lv is not None:
                    got.setdefault(lv[0], lv[1])
        rows.append((text, *(got.get(lvl) for lvl in LEVELS)))
    table = pl.DataFrame(rows, schema={"annotation": pl.Utf8, **{f"_g_{lvl}": pl.Utf8 for lvl in LEVELS}}, orient="row")
    graph = ann.join(table, on="annotation", how="left").drop("annotation")
    return (labels.join(graph, on="row", how="left")
            .with_columns([pl.coalesce(f"_g_{lvl}", lvl).alias(lvl) for lvl in LEVELS])
            .select("row", *LEVELS))


def _scope_values(value: object) -> list:
    """The scopes an annotation arg holds: one, or each of a list (torch's CUPTI-monitor writer puts a
    list of scopes into ``annotation`` as JSON text)."""
    if isinstance(value, str) and value.startswith("["):
        import orjson

        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, (str, int, float))]
    return [value]


def _graph_iterations(trace: Trace, kernels: pl.DataFrame) -> pl.DataFrame | None:
    """One iteration per CUDA-graph launch, when most kernels are graph replays (else None)."""
    k = kernels.filter(pl.col("launch_ts").is_not_null()).select("row", "correlation", "launch_ts")
    if k.height == 0 or _graph_launches(trace, k) is None:
        return None
    return _launch_iterations(trace, k)[0]


def _launch_iterations(trace: Trace, k: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Iterations of the kernels ``k`` (row, correlation, launch_ts) from the launching side, and
    how many: one per CUDA-graph launch when most kernels are graph replays (the launch and the
    eager work after it until the next; eager work before the first replay - warm-up, input
    copies - belongs to none), else separated by device synchronizations."""
    bounds = _graph_launches(trace, k)
    launch_ts = k["launch_ts"].to_numpy()
    if bounds is None:
        bounds = np.sort(trace.events.filter(
            pl.col("kind").is_in(["cuda_runtime", "cuda_driver"])
            & pl.col("name").cast(pl.Utf8).str.contains("DeviceSynchronize|cuCtxSynchronize"))["ts"].to_numpy())
        it = np.searchsorted(bounds, launch_ts)
        outside = np.zeros(len(it), dtype=bool)
    else:
        it = np.searchsorted(bounds, launch_ts, side="right")
        outside = it == 0
    # renumber so that the first iteration holding kernels is 1
    _, it = np.unique(np.where(outside, -1, it), return_inverse=True)
    it = it - (1 if outside.any() else 0)
    frame = pl.DataFrame({"row": k["row"].to_numpy(), "iteration": [None if o else str(i + 1) for o, i in zip(outside, it)]},
                         schema={"row": pl.Int64, "iteration": pl.Utf8})
    return frame, len(np.unique(it[~outside]))


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

def _microbatch_from_threads(kernels: pl.DataFrame, iteration: pl.DataFrame) -> pl.DataFrame | None:
    """Micro-batch = launching CPU thread, for the serving pattern only (vLLM's dual-batch
    overlap): two or more threads that each launch a real share of the kernels, both compute
    and communication, interleaved within an iteration.  Never training's forward/backward
    threads (the autograd thread launches no communication of its own, or the two do not
    interleave) and never a trace without communication.  Numbered by each thread's first
    launch, so mb0 is the same micro-batch on every rank whatever the thread ids are."""
    k = kernels.filter(pl.col("launch_tid").is_not_null()).join(iteration, on="row", how="left")
    counts = k.group_by("launch_pid", "launch_tid").agg(
        pl.len(), (pl.col("role") == "comm").sum().alias("comm"), (pl.col("role") == "compute").sum().alias("compute"),
        pl.col("launch_ts").min().alias("first"))
    total = counts["len"].sum()
    major = counts.filter(pl.col("len") >= 0.1 * total)
    if major.height < 2 or (major["comm"] == 0).any() or (major["compute"] == 0).any():
        return None
    if not _interleaved(k.join(major.select("launch_pid", "launch_tid"), on=["launch_pid", "launch_tid"])):
        return None
    order = major.sort("first", "launch_tid")
    mb = {(pid, tid): f"mb{i}" for i, (pid, tid) in enumerate(zip(order["launch_pid"].to_list(), order["launch_tid"].to_list()))}
    keys = pl.DataFrame({"launch_pid": [p for p, _ in mb], "launch_tid": [t for _, t in mb], "microbatch": list(mb.values())},
                        schema={"launch_pid": kernels.schema["launch_pid"], "launch_tid": kernels.schema["launch_tid"],
                                "microbatch": pl.Utf8})
    return kernels.select("row", "launch_pid", "launch_tid").join(keys, on=["launch_pid", "launch_tid"], how="left").select(
        "row", "microbatch")


def _interleaved(k: pl.DataFrame) -> bool:
    """Do the threads' communication launches alternate within iterations?  Micro-batch
    threads ping-pong (A's dispatch, B's dispatch, A's combine, ...); threads that run one
    after the other (forward, then backward) switch once per iteration."""
    comm = k.filter(pl.col("role") == "comm").sort("launch_ts")
    if comm.height < 4:
        return False
    it = comm["iteration"].fill_null("").to_list() if "iteration" in comm.columns else [""] * comm.height
    who = list(zip(comm["launch_pid"].to_list(), comm["launch_tid"].to_list()))
    switches = sum(1 for i in range(1, len(who)) if who[i] != who[i - 1] and it[i] == it[i - 1])
    n_iters = max(1, len(set(it)))
    return switches >= 2 * n_iters


# --- 3. inference -----------------------------------------------------------------------

def _infer(trace: Trace, kernels: pl.DataFrame, labels: pl.DataFrame, sources: dict[str, str]):
    """Micro-batches from stage alternation, layers from attention kernels, iterations from syncs."""
    # launch order; the kernels of one graph replay share their launch, so GPU order within it
    k = (kernels.filter(pl.col("launch_ts").is_not_null())
         .select("row", "launch_ts", "ts", "end", "stream", "correlation", "launch_tid", "launch_pid",
                 pl.col("category").cast(pl.Utf8), pl.col("role").cast(pl.Utf8), pl.col("name").cast(pl.Utf8),
                 pl.col("kind").cast(pl.Utf8))
         .sort("launch_ts", "ts", "row"))
    if k.height == 0:
        return labels, {}, None
    out: dict[str, str] = {}
    cats = k["category"].to_numpy()
    is_comm = k["role"].to_numpy() == "comm"
    rows = k["row"].to_numpy()

    # iterations (when no ProfilerStep / stage ranges): one per CUDA-graph launch when the
    # kernels are graph replays, else device synchronizations on the launching thread
    iteration = labels.select("row", "iteration")
    if sources["iteration"] == "none":
        iteration, n_iters = _launch_iterations(trace, k)
        if n_iters > 1:
            out["iteration"] = "inferred"
    it_of_row = dict(zip(iteration["row"].to_list(), iteration["iteration"].to_list()))
    iters = np.array([it_of_row.get(r) or "" for r in rows])

    mb = labels["microbatch"] if sources["microbatch"] != "none" else None
    if mb is None and is_comm.any():  # micro-batches overlap communication: none without it
        mb_arr, n_mb = _infer_microbatches(cats, is_comm, iters)
        out["microbatch"] = "inferred"
    elif mb is None:
        mb_arr = np.full(len(rows), "mb0", dtype=object)
        # no communication kernels (a one-rank EP run, a graph whose transfers are copies):
        # micro-batches still show as rounds of layer starts before each expert block
        anchor = _layer_anchors(cats, k["name"].to_numpy(), is_comm, iters, mb_arr)
        by_rounds = _microbatches_from_rounds(anchor, cats == "gemm.grouped", iters) if anchor is not None else None
        if by_rounds is not None:
            mb_arr = by_rounds
            out["microbatch"] = "inferred"
    else:
        mb_of_row = dict(zip(labels["row"].to_list(), labels["microbatch"].to_list()))
        mb_arr = np.array([mb_of_row.get(r) or "mb0" for r in rows])
    replay_share = None
    if mb is None:
        mb_arr, replay_share = _replay_microbatches(trace, k, mb_arr)
        if len(set(mb_arr.tolist())) > 1:
            out["microbatch"] = "inferred"
    layer = None
    if sources["layer"] == "none":
        layer = _infer_layers(cats, k["name"].to_numpy(), is_comm, iters, mb_arr)
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
    return labels.drop("microbatch_i", "layer_i").select("row", *LEVELS), out, replay_share


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


#: attention kernels that prepare a call rather than compute it (FA3's scheduler, FlashMLA's
#: tile metadata, FlashInfer plans): they may run once per step, so they never start a layer
ATTENTION_AUX = re.compile(r"(?i)metadata|prepare_varlen_num_blocks|plan_kernel|scheduler")


def _infer_layers(cats: np.ndarray, names: np.ndarray, is_comm: np.ndarray, iters: np.ndarray,
                  mb: np.ndarray) -> np.ndarray | None:
    """Layer index per kernel: a running count of layer starts (``_layer_anchors``) per
    (iteration, micro-batch); kernels before the first start are in layer 0."""
    anchor = _layer_anchors(cats, names, is_comm, iters, mb)
    if anchor is None:
        return None
    n = len(cats)
    layer = np.empty(n, dtype=object)
    counters: dict[tuple, int] = {}
    for i in range(n):
        key = (iters[i], mb[i])
        if anchor[i]:
            counters[key] = counters.get(key, -1) + 1
        layer[i] = str(max(0, counters.get(key, 0)))
    return layer


def _layer_anchors(cats: np.ndarray, names: np.ndarray, is_comm: np.ndarray, iters: np.ndarray,
                   mb: np.ndarray) -> np.ndarray | None:
    """Layer index per kernel: a running count of layer starts per (iteration, micro-batch).

    A layer starts at each attention *group*: the kernels one attention call launches (main
    kernel, split-KV combine/reduce, ROCm's ll4mi QKV + reduce) follow each other with no
    GEMM or communication between, so only the first of a run counts; preparation kernels
    (``ATTENTION_AUX``) never count.  Without attention kernels (attention as bmm + softmax,
    a stripped trace): one layer per repeating GEMM (the GEMM name launched the modal number of
    times per iteration: L per pass of an L-layer model, dense and MoE layers alike), else per
    MoE dispatch group, else per communication group.  Each start then moves back to the
    layer's input norm (``_back_to_the_norm``)."""
    n = len(cats)
    attn = np.array([c.startswith("attention") for c in cats])
    aux = np.array([bool(ATTENTION_AUX.search(x)) for x in names]) if attn.any() else np.zeros(n, dtype=bool)
    gemm = np.array([c.startswith("gemm") for c in cats])
    anchor = np.zeros(n, dtype=bool)
    main = attn & ~aux
    if main.any():
        # first attention kernel of each run, per (iteration, micro-batch) stream of launches
        last: dict[tuple, str] = {}
        for i in range(n):
            key = (iters[i], mb[i])
            if main[i]:
                anchor[i] = last.get(key) != "attn"
                last[key] = "attn"
            elif gemm[i] or is_comm[i]:
                last[key] = "other"
    else:
        if gemm.any():
            anchor = _repeating(names, gemm, iters)
        if not anchor.any() and (cats == "moe.dispatch").any():
            anchor = _run_starts(cats == "moe.dispatch", is_comm | gemm, iters, mb)
        if not anchor.any() and is_comm.any():
            anchor = is_comm & ~np.concatenate([[False], is_comm[:-1]])
    if not anchor.any():
        return None
    return _back_to_the_norm(anchor, cats, iters, mb)


#: kernels that may run between a layer's input norm and its attention (or first GEMM): the
#: projections, their split-K reductions, rope, casts and quantization, KV-cache writes, copies
BEFORE_ATTENTION = ("norm", "gemm.dense", "reduce", "rope", "elementwise", "kv_cache", "quant", "memory")


def _back_to_the_norm(anchor: np.ndarray, cats: np.ndarray, iters: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """A layer starts at its input norm, not at its attention (or first repeated GEMM): each start
    moves back, over the kernels of its own (iteration, micro-batch) that may precede attention
    (``BEFORE_ATTENTION``), to the earliest norm among them; it stays where it is when no norm
    is there, and never passes another start, a grouped GEMM, communication or attention."""
    out = anchor.copy()
    allowed = np.array([c == "norm" or c.startswith(BEFORE_ATTENTION) for c in cats], dtype=bool)
    norm = np.array([c == "norm" for c in cats], dtype=bool)
    by_key: dict[tuple, list[int]] = {}
    for i in range(len(cats)):
        by_key.setdefault((iters[i], mb[i]), []).append(i)
    for seq in by_key.values():
        for pos, i in enumerate(seq):
            if not anchor[i]:
                continue
            earliest = None
            for j in reversed(seq[:pos]):
                if anchor[j] or out[j] or not allowed[j]:
                    break
                if norm[j]:
                    earliest = j
            if earliest is not None:
                out[i], out[earliest] = False, True
    return out


def _microbatches_from_rounds(anchor: np.ndarray, grouped: np.ndarray, iters: np.ndarray) -> np.ndarray | None:
    """Micro-batches of a two-batch-overlap MoE step without communication kernels.

    Serially, every layer start is followed by its experts' grouped GEMMs; under TBO the
    micro-batches take turns, so layer starts come in *rounds* (one per micro-batch, no expert
    GEMM between) followed by as many expert blocks.  The number of micro-batches is the usual
    size of a round that precedes expert GEMMs; within a round of size r the j-th start goes
    to micro-batch floor(j n / r) (a first round holding the dense layers of every micro-batch
    splits in order), within the expert block after it the i-th of c grouped GEMMs to floor(i n
    / c); every other kernel follows the last start or expert GEMM before it.  None when the
    rounds say one micro-batch."""
    n = len(anchor)
    events = [(i, "A" if anchor[i] else "E") for i in range(n) if anchor[i] or grouped[i]]
    rounds: list[tuple[list[int], list[int]]] = []  # (layer starts, expert GEMMs after them)
    for i, kind in events:
        new_iter = rounds and iters[i] != iters[(rounds[-1][1] or rounds[-1][0])[-1]]
        if kind == "A":
            if not rounds or rounds[-1][1] or new_iter:
                rounds.append(([i], []))
            else:
                rounds[-1][0].append(i)
        elif rounds and not new_iter:
            rounds[-1][1].append(i)
    sizes = [len(a) for a, e in rounds if e]
    if not sizes:
        return None
    n_mb = min(Counter(sizes).most_common(1)[0][0], 8)
    if n_mb < 2 or Counter(sizes).most_common(1)[0][1] < 2:
        return None
    owner = np.full(n, -1, dtype=np.int64)
    for starts, experts in rounds:
        for j, i in enumerate(starts):
            owner[i] = j * n_mb // len(starts)
        for j, i in enumerate(experts):
            owner[i] = j * n_mb // len(experts)
    out = np.empty(n, dtype=object)
    cur, last_it = 0, None
    for i in range(n):
        if iters[i] != last_it:
            cur, last_it = 0, iters[i]
        if owner[i] >= 0:
            cur = int(owner[i])
        out[i] = f"mb{cur}"
    return out


def _run_starts(mark: np.ndarray, breaks: np.ndarray, iters: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """First ``mark`` kernel of each run of marks (a run ends at a ``breaks`` kernel that is not a mark)."""
    out = np.zeros(len(mark), dtype=bool)
    last: dict[tuple, bool] = {}
    for i in range(len(mark)):
        key = (iters[i], mb[i])
        if mark[i]:
            out[i] = not last.get(key, False)
            last[key] = True
        elif breaks[i]:
            last[key] = False
    return out


def _repeating(names: np.ndarray, gemm: np.ndarray, iters: np.ndarray) -> np.ndarray:
    """The launches of the GEMM that starts each repetition of the layer body: of the GEMM
    names launched the modal number of times per iteration (> 1), the one launched first."""
    per_iter = Counter((iters[i], names[i]) for i in np.flatnonzero(gemm))
    n_iters = max(1, len(set(iters[gemm])))
    per_name: dict[str, list[int]] = {}
    for (it, name), c in per_iter.items():
        per_name.setdefault(name, []).append(c)
    steady = {nm: cs[0] for nm, cs in per_name.items() if len(cs) == n_iters and len(set(cs)) == 1 and cs[0] > 1}
    if not steady:
        return np.zeros(len(names), dtype=bool)
    mode = Counter(steady.values()).most_common(1)[0][0]
    first_seen = {}
    for i in np.flatnonzero(gemm):
        first_seen.setdefault(names[i], i)
    anchor_name = min((nm for nm, c in steady.items() if c == mode), key=lambda nm: first_seen[nm])
    return names == anchor_name


def _replay_microbatches(trace: Trace, k: pl.DataFrame, mb: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """Micro-batches of CUDA-graph replays (kernels sharing a ``cudaGraphLaunch`` correlation).

    Two patterns, per replay (a replay is its kernels in GPU order):

    - *branches*: when each micro-batch was captured on its own stream, the graph holds one
      branch per micro-batch and CUPTI replays each on a stream of its own, side by side
      (field notes 3.5): n >= 2 replay streams that run the same kernel sequence, overlapping in
      time and holding at least half of the replay, are n micro-batches, numbered by their first
      kernel's start; copies and memsets on those streams follow them.
    - *blocks*: when the micro-batches take turns on shared streams (SGLang-style two-batch
      overlap: the streams are the graph's fork/join branches, each running both micro-batches'
      kernels), the replay is blocks repeated once per micro-batch (mb0's attention..dispatch,
      mb1's; mb0's experts, mb1's; ...), found by ``_tandem_blocks`` for the number of
      micro-batches the launch-order inference found; the j-th copy of a block is mb j.

    Kernels in neither keep ``mb``; other copies and memsets take the micro-batch of the kernel
    before them in GPU order.  Also returns how many replayed kernels each pattern labelled
    (None: no graph replays)."""
    launches = trace.graph_launches()["correlation"]
    replayed = k["correlation"].is_in(launches.drop_nulls().implode()).to_numpy()
    if not replayed.any():
        return mb, None
    n_mb = len({m for m in mb.tolist() if m})
    out = mb.copy()
    counts = {"branches": 0, "blocks": 0, "kernels": 0}
    corr, kinds, names = k["correlation"].to_numpy(), k["kind"].to_numpy(), k["name"].to_numpy()
    streams, starts, ends = k["stream"].to_numpy(), k["ts"].to_numpy(), k["end"].to_numpy()
    major = _is_major(k["category"].to_numpy())
    code_of: dict[str, int] = {}
    cache: dict[bytes, tuple[np.ndarray, dict[int, int], str]] = {}
    order = np.flatnonzero(replayed)
    for c in np.unique(corr[order]):
        idx = order[corr[order] == c]          # one replay, GPU order (k is sorted by launch, then start)
        is_kernel = kinds[idx] == "kernel"
        kern = idx[is_kernel]
        codes = np.array([code_of.setdefault(x, len(code_of)) for x in names[kern]], dtype=np.int64)
        key = codes.tobytes() + streams[kern].astype(np.int64).tobytes()
        if key not in cache:
            by_stream = _side_by_side(codes, streams[kern], starts[kern], ends[kern])
            if by_stream is not None:
                copy_of = np.array([by_stream.get(int(st), -1) for st in streams[kern]], dtype=np.int64)
                cache[key] = (copy_of, by_stream, "branches")
            elif n_mb >= 2:
                cache[key] = (_tandem_blocks(codes, n_mb, major[kern]), {}, "blocks")
            else:
                cache[key] = (np.full(len(kern), -1, dtype=np.int64), {}, "blocks")
        copy_of, by_stream, how = cache[key]
        counts[how] += int((copy_of >= 0).sum())
        counts["kernels"] += len(copy_of)
        last = None
        j = 0
        for pos, i in enumerate(idx):
            if is_kernel[pos]:
                if copy_of[j] >= 0:
                    out[i] = f"mb{copy_of[j]}"
                last = out[i]
                j += 1
            elif int(streams[i]) in by_stream:
                out[i] = f"mb{by_stream[int(streams[i])]}"
            elif last is not None:
                out[i] = last
    return out, counts


def _side_by_side(codes: np.ndarray, streams: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> dict[int, int] | None:
    """{replay stream: micro-batch} when n >= 2 streams run the same kernel sequence side by side
    (their spans overlap by at least half of the shorter) and hold at least half of the replay's
    kernels; None otherwise."""
    by_stream: dict[int, np.ndarray] = {}
    for st in np.unique(streams):
        by_stream[int(st)] = np.flatnonzero(streams == st)
    same: dict[bytes, list[int]] = {}
    for st, idx in by_stream.items():
        if len(idx) >= 2:
            same.setdefault(codes[idx].tobytes(), []).append(st)
    if not same:
        return None
    group = max(same.values(), key=lambda g: len(g) * len(by_stream[g[0]]))
    if len(group) < 2 or len(group) * len(by_stream[group[0]]) < 0.5 * len(codes):
        return None
    spans = [(starts[by_stream[st]].min(), ends[by_stream[st]].max()) for st in group]
    for a in range(len(spans)):
        for b in range(a + 1, len(spans)):
            (a0, a1), (b0, b1) = spans[a], spans[b]
            if min(a1, b1) - max(a0, b0) < 0.5 * min(a1 - a0, b1 - b0):
                return None  # one after the other: not side by side
    first = sorted(group, key=lambda st: starts[by_stream[st][0]])
    return {st: m for m, st in enumerate(first)}


#: a block shorter than this must hold a GEMM or attention kernel (two equal elementwise kernels
#: in a row are no micro-batches)
MIN_PLAIN_BLOCK = 3


def _tandem_blocks(codes: np.ndarray, n: int, major: np.ndarray | None = None) -> np.ndarray:
    """Cover a kernel sequence with *blocks*: n equal consecutive copies of a run of kernels.

    Dynamic programming over positions: the most kernels covered, then the most blocks (so four
    identical layers give four blocks of one layer, not two of two).  Equal runs are found with a
    polynomial prefix hash (uint64, vectorized per start); the blocks chosen are confirmed element
    by element.
    Returns the copy index (0..n-1) of each kernel, -1 outside every block."""
    L = len(codes)
    out = np.full(L, -1, dtype=np.int64)
    if L < 2 * n:
        return out
    base = np.uint64(1_000_003)
    h = np.zeros(L + 1, dtype=np.uint64)
    pw = np.ones(L + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(L):
            h[t + 1] = h[t] * base + np.uint64(codes[t] + 1)
            pw[t + 1] = pw[t] * base

    def sub(a: np.ndarray, p: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return h[a + p] - h[a] * pw[p]

    n_major = np.concatenate([[0], np.cumsum(major if major is not None else np.zeros(L, dtype=bool))])
    positions: dict[int, np.ndarray] = {}
    for c in np.unique(codes):
        positions[int(c)] = np.flatnonzero(codes == c)
    cov = np.zeros(L + 1, dtype=np.int64)
    blocks = np.zeros(L + 1, dtype=np.int64)
    choice = np.zeros(L + 1, dtype=np.int64)  # block length chosen at i (0: kernel i stays outside)
    for i in range(L - 1, -1, -1):
        cov[i], blocks[i], choice[i] = cov[i + 1], blocks[i + 1], 0
        same = positions[int(codes[i])]
        p = same[same > i] - i
        p = p[i + n * p <= L]
        p = p[(p >= MIN_PLAIN_BLOCK) | (n_major[i + p] > n_major[i])]
        if p.size == 0:
            continue
        first = sub(np.full(p.size, i), p)
        ok = np.ones(p.size, dtype=bool)
        for m in range(1, n):
            ok &= sub(i + m * p, p) == first
        q = p[ok]
        if q.size == 0:
            continue
        c, b = cov[i + n * q] + n * q, blocks[i + n * q] + 1
        best = np.lexsort((b, c))[-1]  # the most covered, then the most blocks
        if (c[best], b[best]) > (cov[i], blocks[i]):
            cov[i], blocks[i], choice[i] = c[best], b[best], q[best]
    i = 0
    while i < L:
        q = int(choice[i])
        if q == 0 or not all(np.array_equal(codes[i:i + q], codes[i + m * q:i + (m + 1) * q]) for m in range(1, n)):
            i += 1  # outside every block (or a hash collision: confirmed here, element by element)
            continue
        for m in range(n):
            out[i + m * q:i + (m + 1) * q] = m
        i += n * q
    return out


def _graph_launches(trace: Trace, k: pl.DataFrame) -> np.ndarray | None:
    """Start times of the CUDA/HIP graph launches, when most kernels are graph replays."""
    launches = trace.graph_launches()
    if launches.height < 2:
        return None
    replayed = k["correlation"].is_in(launches["correlation"].drop_nulls().implode()).mean()
    if not replayed or replayed < 0.5:
        return None
    return np.sort(launches["ts"].to_numpy())
