"""The docs that are generated from the code must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gen():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == _gen().cli_reference(), \
        "docs/cli.md is stale: run `python scripts/gen_docs.py`"


def test_taxonomy_table_is_current():
    text = (ROOT / "docs" / "taxonomy.md").read_text()
    assert text == _gen().with_taxonomy(text), "docs/taxonomy.md is stale: run `python scripts/gen_docs.py`"


def test_every_category_a_rule_can_produce_is_documented():
    from traceview.classify import default_rules

    rules = default_rules()
    produced = {r.category for r in rules.rules} | {c.category for c in rules.context} | {"unclassified"}
    assert produced <= set(rules.roles), produced - set(rules.roles)
    text = (ROOT / "docs" / "taxonomy.md").read_text()
    for cat in produced:
        assert f"`{cat}`" in text
