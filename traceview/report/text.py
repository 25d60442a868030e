"""Making trace-supplied strings safe to show: no terminal control sequences, no markup."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-_]")


def clean(text: object, limit: int | None = None) -> str:
    """Strip ANSI escapes and control/bidi characters; optionally shorten with an ellipsis."""
    s = _CONTROL.sub("", _ANSI.sub("", str(text)))
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def short_kernel_name(name: str, limit: int = 90) -> str:
    """A readable kernel name: drop 'void ' and the trailing parameter list."""
    s = clean(name)
    if s.startswith("void "):
        s = s[5:]
    if s.endswith(")"):
        depth = 0
        for i in range(len(s) - 1, 0, -1):  # find the '(' matching the final ')'
            if s[i] == ")":
                depth += 1
            elif s[i] == "(":
                depth -= 1
                if depth == 0:
                    s = s[:i]
                    break
    return clean(s, limit)


def fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
