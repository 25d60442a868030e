"""Shared test setup: where the fixtures are, and analyses cached once per session."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FIXTURES = ROOT / "fixtures"
SHARED = ROOT.parent / "shared" / "fixtures"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"real traces of ../shared/fixtures are not here ({SHARED}); a fresh clone has only fixtures/",
)


def shared(rel: str) -> Path:
    return SHARED / rel


def all_shared_traces() -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.rglob("*") if p.name.endswith((".json", ".json.gz")) and p.name != "MANIFEST.json")


@functools.lru_cache(maxsize=None)
def analysis_of(path: str):
    import traceview

    return traceview.analyze(path)


def trace_id(p: Path) -> str:
    return p.name.split(".")[0]
