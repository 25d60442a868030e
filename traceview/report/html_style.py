"""Colors and small text helpers shared by the HTML report's figures.

Communication is drawn in warm colors, compute in cool ones, local memory in grays, and
exposed communication in one bright red that no category uses, so it is the thing the eye
finds first.  Category names can come from a user's ``--rules`` file: unknown ones get a
color from their role's family, chosen by a stable hash (the same category keeps its color
from report to report).
"""

from __future__ import annotations

import html
import zlib

EXPOSED = "#e3001b"
OVERLAPPED = "#f5a25d"
COMPUTE = "#3b6fb6"
IDLE = "#d9d9d9"

CATEGORY_COLORS: dict[str, str] = {
    # compute: blues, teals, greens, purples
    "attention.mla": "#1f4e9c",
    "attention": "#4f86d6",
    "gemm.grouped": "#11868a",
    "gemm.dense": "#2f9e5b",
    "moe.routing": "#7a5fc0",
    "norm": "#8aa6c9",
    "rope": "#6b7bd1",
    "quant": "#4b3f9a",
    "activation": "#66c2a5",
    "kv_cache": "#2b8cc4",
    "elementwise": "#9cb9d8",
    "reduce": "#a68fd8",
    "compute.other": "#7c9aab",
    "unclassified": "#c2187a",
    # communication: oranges, golds, browns (never red: red means exposed)
    "moe.dispatch": "#f28e2b",
    "moe.combine": "#e0b02a",
    "comm.all_reduce": "#d9822b",
    "comm.all_gather": "#f7b267",
    "comm.reduce_scatter": "#c8753a",
    "comm.all_to_all": "#f4a340",
    "comm.send_recv": "#e89c5c",
    "comm.broadcast": "#cfa144",
    "comm.p2p_copy": "#a0522d",
    "comm.other": "#c98b5e",
    # local memory traffic
    "memory.memcpy": "#8c8c8c",
    "memory.memset": "#bdbdbd",
}

_FAMILIES = {
    "compute": ["#3e7cb1", "#5aa0c8", "#2a9d8f", "#6c8ebf", "#8e7cc3", "#4aa3a2", "#5d6fb3", "#7fb3d5"],
    "comm": ["#f39c4a", "#e6ac3c", "#d27b3f", "#f6b26b", "#c9803b", "#e8a05a"],
    "memory": ["#9e9e9e", "#b5b5b5", "#7d7d7d"],
}

ROLE_ORDER = {"comm": 0, "compute": 1, "memory": 2}


def category_color(category: str, role: str = "compute") -> str:
    """The color of a kernel category (stable across reports)."""
    if category in CATEGORY_COLORS:
        return CATEGORY_COLORS[category]
    family = _FAMILIES.get(role, _FAMILIES["compute"])
    return family[zlib.crc32(category.encode()) % len(family)]


_BAND_PALETTE = ["#dfe7f3", "#c9d6ea", "#e6e0f0", "#d5e8e4", "#f0e6d8", "#e2e2e2", "#d8e6f0", "#ece3ec"]


def rgba(hex_color: str, alpha: float) -> str:
    """``#rrggbb`` with an alpha.  Plotly draws a bar whose color is not fully opaque at its exact
    (sub-pixel) width; an opaque one narrower than a pixel is widened to one or two pixels, which
    makes a scatter of microsecond pieces look like a wall.  So exposed pieces use alpha < 1."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{min(max(alpha, 0.0), 0.999):.3f})"


def band_color(label: str) -> str:
    """A pale fill for a segment band (phase / layer name), stable per label."""
    return _BAND_PALETTE[zlib.crc32(label.encode()) % len(_BAND_PALETTE)]


def esc(text: object) -> str:
    """HTML-escape anything shown on the page or inside a plotly string (plotly renders
    entities as text, so an escaped ``<script>`` stays text in hover labels too)."""
    from .text import clean

    return html.escape(clean(text), quote=True)


def ms(us: float | None, digits: int = 3) -> str:
    return "–" if us is None else f"{us / 1000:,.{digits}f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or x != x else f"{100 * x:.{digits}f}%"
