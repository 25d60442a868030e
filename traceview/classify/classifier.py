"""GPU events -> category and role, by name rules and then by launch context."""

from __future__ import annotations

import polars as pl

from ..load.trace import Trace
from .launch import attach_launches, enclosing_ranges
from .rules import ROLES, RuleSet, load_rules, searchable

ROLE_DTYPE = pl.Enum(list(ROLES))


def classify(trace: Trace, rules: RuleSet | None = None) -> pl.DataFrame:
    """The trace's GPU events with ``category``, ``role`` and launch columns.

    Names are classified once per distinct (name, kind), so cost does not grow with the
    number of events; communication kernels are then relabelled by their launch context.
    """
    rules = rules or load_rules()
    gpu = attach_launches(trace.events).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    # joined on the categorical codes: names become Python strings once per distinct name,
    # never once per event (a 1 GB trace's names as strings are hundreds of MB)
    distinct = gpu.select("name", "kind").unique(maintain_order=True)
    mapping = distinct.with_columns(pl.Series("category", [
        rules.classify_name(n, k) for n, k in zip(distinct["name"].cast(pl.Utf8), distinct["kind"].cast(pl.Utf8))
    ], dtype=pl.Utf8))
    gpu = gpu.join(mapping, on=["name", "kind"], how="left", nulls_equal=True, maintain_order="left")
    gpu = _apply_context(trace, gpu, rules)
    gpu = _apply_position(gpu, rules)
    roles = {c: rules.role(c) for c in gpu["category"].unique().to_list()}
    return gpu.with_columns(
        pl.col("category").cast(pl.Categorical),
        pl.col("category").replace_strict(roles, return_dtype=pl.Utf8).cast(ROLE_DTYPE).alias("role"),
    ).sort(["device", "ts", "row"])


def _apply_context(trace: Trace, gpu: pl.DataFrame, rules: RuleSet) -> pl.DataFrame:
    if not rules.context:
        return gpu
    from_cats = set().union(*(c.from_categories for c in rules.context))
    points = gpu.filter(pl.col("category").is_in(list(from_cats)) & pl.col("launch_ts").is_not_null())
    if points.height == 0:
        return gpu
    # lazy, so that only the columns used are filtered (not every column of millions of CPU ops)
    ev = trace.events.lazy().with_row_index("range").with_columns(pl.col("range").cast(pl.Int64))
    op_names = (ev.filter(pl.col("kind") == "cpu_op").select(pl.col("name").unique().drop_nulls())
                .collect()["name"].cast(pl.Utf8).to_list())
    useful_ops = [n for n in op_names if rules.matches_context(n)]
    ranges = ev.filter(
        (pl.col("kind") == "user_annotation")
        | ((pl.col("kind") == "cpu_op") & pl.col("name").is_in(useful_ops))
    ).select("range", "pid", "tid", "ts", "end", pl.col("name").cast(pl.Utf8)).collect()
    if ranges.height == 0:
        return gpu
    enc = enclosing_ranges(
        points.select(pl.col("row").alias("point"), pl.col("launch_pid").alias("pid"),
                      pl.col("launch_tid").alias("tid"), pl.col("launch_ts").alias("ts")),
        ranges.select("range", "pid", "tid", "ts", "end"),
    ).join(ranges.select("range", "name"), on="range")
    if enc.height == 0:
        return gpu
    names = enc["name"].unique()
    hit_cols = []
    for i, rule in enumerate(rules.context):
        matched = [n for n in names.to_list() if rule.pattern.search(searchable(n))]
        hit_cols.append(pl.col("name").is_in(matched).any().alias(f"ctx{i}"))
    hits = enc.group_by("point").agg(hit_cols)
    cat_of_point = points.select(pl.col("row").alias("point"), "category").join(hits, on="point")
    new_cat = pl.lit(None, dtype=pl.Utf8)
    for i, rule in reversed(list(enumerate(rules.context))):
        cond = pl.col(f"ctx{i}") & pl.col("category").is_in(list(rule.from_categories))
        new_cat = pl.when(cond).then(pl.lit(rule.category)).otherwise(new_cat)
    relabel = cat_of_point.select(pl.col("point").alias("row"), new_cat.alias("_ctx")).filter(pl.col("_ctx").is_not_null())
    return gpu.join(relabel, on="row", how="left").with_columns(
        pl.coalesce("_ctx", "category").alias("category")).drop("_ctx")


def _apply_position(gpu: pl.DataFrame, rules: RuleSet) -> pl.DataFrame:
    """All-to-all still unnamed after the context rules: dispatch when the last anchor launched
    before it on its CPU thread is not an expert GEMM, combine when it is."""
    pos = rules.position
    if pos is None or not gpu["category"].is_in(list(pos.experts)).any():
        return gpu
    if not gpu["category"].is_in(list(pos.from_categories)).any():
        return gpu
    anchors = list(pos.experts | pos.anchors)
    order = (gpu.filter(pl.col("launch_ts").is_not_null())
             .select("row", "launch_pid", "launch_tid", "launch_ts", "ts", "category")
             .sort("launch_ts", "ts", "row")
             .with_columns(pl.when(pl.col("category").is_in(anchors)).then(pl.col("category"))
                           .otherwise(None).alias("_anchor"))
             .with_columns(pl.col("_anchor").forward_fill().over(["launch_pid", "launch_tid"]).alias("_prev")))
    relabel = order.filter(pl.col("category").is_in(list(pos.from_categories)) & pl.col("_prev").is_not_null()).select(
        "row", pl.when(pl.col("_prev").is_in(list(pos.experts))).then(pl.lit(pos.after_experts))
        .otherwise(pl.lit(pos.before_experts)).alias("_pos"))
    if relabel.height == 0:
        return gpu
    return gpu.join(relabel, on="row", how="left").with_columns(
        pl.coalesce("_pos", "category").alias("category")).drop("_pos")
