"""The docs that are generated from the code must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    """A generator script of scripts/ as a module (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gen():
    return _script("gen_docs")


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


def _gen_limits():
    return _script("gen_limits")


def test_limits_damage_table_is_current():
    """docs/limits.md lists what every corpus case produces, as traceview produces it now."""
    text = (ROOT / "docs" / "limits.md").read_text()
    assert text == _gen_limits().with_table(text), "docs/limits.md is stale: run `python scripts/gen_limits.py`"


def test_limits_doc_states_the_loader_constants():
    """The limits quoted in docs/limits.md are the ones the loader enforces."""
    from traceview.load import decode, reader

    text = (ROOT / "docs" / "limits.md").read_text()
    import os

    assert reader.DEFAULT_MAX_BYTES == 16 << 30 or "TRACEVIEW_MAX_BYTES" in os.environ
    assert f"16 GiB** ({16 << 30} bytes)" in text
    assert "TRACEVIEW_MAX_BYTES" in text and "--max-bytes" in text
    assert decode.MAX_ABS_TIME_US == 1e17 and "1e17 µs" in text
    assert reader.SPILL_BYTES == 256 << 20 and "256 MiB" in text
    assert decode.CHUNK_BYTES == 32 << 20 and "32 MiB" in text
    assert reader.PARALLEL_MIN_BYTES == 96 << 20 and "96 MiB" in text
    assert "nested too deeply" in text and "--strict" in text
    for cat in decode.CATEGORY_ALIASES:
        assert f"`{cat}`" in text, cat


def test_limits_doc_is_linked():
    assert "docs/limits.md" in (ROOT / "README.md").read_text()
    assert "limits.md" in (ROOT / "docs" / "architecture.md").read_text()


def test_cli_reference_names_each_command_once():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert "traceview traceview" not in text
    for name in ("analyze", "report", "gate", "diff", "budget"):
        assert f"Usage: traceview {name} [OPTIONS]" in text
