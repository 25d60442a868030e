"""TOML reading in one place: ``tomllib`` on 3.11+, the ``tomli`` backport on 3.10."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from traceview.errors import TraceError

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str, source: object = "<string>") -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a one-line ``TraceError`` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TraceError(source, f"invalid TOML: {exc}") from None


def load_path(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML file; unreadable or malformed files raise ``TraceError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None
    return loads(text, p)
