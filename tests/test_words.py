"""Help that teaches, one vocabulary, one option group for the budget."""

from __future__ import annotations

import re

from click.testing import CliRunner

from conftest import PROJECT_FIXTURES
from traceview.cli import main

TBO = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"


def _help(*cmd):
    r = CliRunner().invoke(main, [*cmd, "--help"], terminal_width=120)
    assert r.exit_code == 0
    return r.output


def test_no_seed_in_any_help():
    for cmd in ("analyze", "report", "gate", "diff", "budget"):
        assert not re.search(r"\bseeds?\b", _help(cmd), re.I), cmd
    assert "zartbot" in _help("budget")


def test_analyze_help_has_examples_and_definitions():
    h = _help("analyze")
    assert "Examples:" in h and "traceview analyze t.json.gz --by iteration" in h
    for term in ("exposed comm", "overlap tax", "cover by other mb", "no kernel queued"):
        assert re.search(rf"^\s+{term}\s+\S", h, re.M), term


def test_report_has_the_same_budget_options_as_analyze():
    def opts(h):
        block = h.split("Options:", 1)[1].split("--model", 1)[1].split("--rules", 1)[0]
        return re.findall(r"^\s+(--[a-z-]+)", "  --model" + block, re.M)[:9]

    a, r = opts(_help("analyze")), opts(_help("report"))
    assert a == r == ["--model", "--gpu", "--convention", "--gpu-file", "--phase", "--precision", "--tokens", "--kv-len", "--batch"]


def test_report_takes_budget_overrides(tmp_path):
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", str(TBO), "-o", str(out), "--model", "deepseek-v3", "--gpu", "H200",
                                  "--phase", "prefill", "--tokens", "4096"])
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert "roofline bound" in html and "model ÷ measured" in html and "unmodeled memory/comm" in html
    assert "peak ms" not in html and "unmodeled_other" not in html.split("tv-figures")[0]
    r = CliRunner().invoke(main, ["report", str(TBO), "-o", str(out), "--gpu", "H200"])
    assert r.exit_code == 2 and "--gpu goes with --model" in r.stderr


def test_gate_by_is_the_option_and_per_its_alias():
    h = _help("gate")
    assert "--by, --per [gpu|microbatch|layer|iteration|phase|stage]" in h
    assert "per iteration" in h and "share of the iteration" in h
