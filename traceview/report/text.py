"""Making trace-supplied strings safe to show: no terminal control sequences, no markup."""

from __future__ import annotations

import re

#: C0/C1 controls (ESC included), zero-width and bidi marks/overrides/isolates, word joiners and
#: other invisible format characters, the BOM, interlinear annotations, unpaired surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                      r"\ufeff\ufff9-\ufffb\ud800-\udfff]")
#: CSI (colours, cursor moves), OSC (titles, clipboard ``ESC ] 52``, hyperlinks ``ESC ] 8``) with
#: its payload, DCS/SOS/PM/APC strings with theirs, and the remaining two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?"
                   r"|\x1b[PX^_][^\x1b]*(\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]|\x9d[^\x07\x9c]*[\x07\x9c]?")
_BLANKS = re.compile(r"[\t\n]")


def clean(text: object, limit: int | None = None) -> str:
    """Strip ANSI escapes and control/bidi characters; optionally shorten with an ellipsis.

    Tabs and newlines are kept (callers that need one line use ``one_line``).
    """
    s = _CONTROL.sub("", _ANSI.sub("", str(text)))
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


#: One vocabulary: the words the terminal and the HTML show for the JSON's column names and budget
#: classes (docs/metrics.md "Vocabulary" lists them with their definitions).
WORDS = {
    "measured_ms": "measured", "model_ms": "model", "peak_ms": "roofline bound", "efficiency": "efficiency",
    "vs_model": "model ÷ measured", "kernels": "kernels", "exposed_comm_us": "exposed comm",
    "overlapped_comm_us": "overlapped", "cover_other_mb_us": "cover by other mb",
    "idle_no_queue_us": "no kernel queued", "if_hidden_us": "if hidden", "duration_us": "duration",
    "unmodeled": "unmodeled compute", "unmodeled_other": "unmodeled memory/comm",
    "modeled_segments": "modeled segments",
}


def word(key: str) -> str:
    """The display word of a column or budget class (its JSON name with spaces otherwise)."""
    return WORDS.get(key, key.replace("_", " "))


def display_name(name: str) -> str:
    """The name a kernel is shown by in tables and HTML.  Identity for now: the labels work
    (classify/, issue 13) plugs kernel-name demangling / display names in here, once."""
    return name


def short_kernel_name(name: str, limit: int = 90) -> str:
    """A readable kernel name: drop 'void ' and the trailing parameter list."""
    s = clean(display_name(name))
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


def clean_frame(df: "pl.DataFrame") -> "pl.DataFrame":
    """``clean()`` every text column: CSV is data, but it is often printed straight to a terminal.

    Real kernel names never hold control characters, so nothing a profiler wrote is lost;
    a hostile name cannot move the cursor, set the window title or fill the clipboard.
    """
    import polars as pl

    text = [c for c, t in df.schema.items() if t in (pl.Utf8, pl.Categorical)]
    return df.with_columns(pl.col(c).cast(pl.Utf8).map_elements(one_line, return_dtype=pl.Utf8) for c in text) if text else df


def one_line(text: object, limit: int | None = None) -> str:
    """``clean()``, with tabs and newlines made spaces: a trace string cannot forge an output line."""
    return clean(_BLANKS.sub(" ", str(text)), limit)
