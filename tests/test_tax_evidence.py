"""Overlap tax only with evidence: shapes recorded, enough alone runs, partial overlap counted."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import reference as ref
from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from traceview.cli import main
from traceview.metrics.tax import kernel_keys, overlap_fraction
from traceview.timeline import intervals as iv

TBO = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"


def test_tax_matches_reference_with_both_buckets():
    a = analysis_of(str(TBO))
    k = kernel_keys(a.kernels, a.trace.events)
    comm = k.filter(pl.col("role") == "comm")
    comp = k.filter((pl.col("role") == "compute") & (pl.col("kind") == "kernel"))
    frac = overlap_fraction(comp["ts"].to_numpy(), comp["end"].to_numpy(),
                            iv.union(comm["ts"].to_numpy(), comm["end"].to_numpy()))
    want = ref.overlap_tax(list(zip(comp["category"].cast(str).to_list(), comp["key"].to_list(),
                                    comp["dur"].to_list(), frac.tolist())))
    got = {(r["category"], r["overlap"]): r["tax_us"] for r in a.overlap_tax().iter_rows(named=True)}
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-6)
    assert {b for _c, b in got} == {"≥50%", "<50%"}  # partly overlapped kernels are counted
    assert any("not compared: fewer than 3 runs" in n for n in a.overlap_tax_notes())


@needs_shared
def test_no_shapes_no_tax():
    """DeepSeek's train.json has no record_shapes: it used to report a 98.6% / 33.7 ms tax."""
    a = analysis_of(str(shared("deepseek/train.json")))
    assert a.overlap_tax().height == 0
    (note,) = a.overlap_tax_notes()
    assert "not measured" in note and "record_shapes" in note
    r = CliRunner().invoke(main, ["analyze", str(shared("deepseek/train.json")), "--tax"], env={"COLUMNS": "200"})
    assert "overlap tax not measured" in " ".join(r.output.split()) and "98.6%" not in r.output


def test_tax_says_when_nothing_ran_beside_communication():
    path = PROJECT_FIXTURES / "gpu-extra" / "tp2_dense_decode_rank0.json.gz"
    r = CliRunner().invoke(main, ["analyze", str(path), "--tax"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "overlap tax: no kernel ran beside communication" in r.output
