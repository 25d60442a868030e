"""Making trace-supplied strings safe to show: no terminal control sequences, no markup."""

from __future__ import annotations

import re

from ..classify.names import display_name

#: C0/C1 controls (ESC included), zero-width and bidi marks/overrides/isolates, word joiners and
#: other invisible format characters, the BOM, interlinear annotations, unpaired surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                      r"\ufeff\ufff9-\ufffb\ud800-\udfff]")
#: CSI (colours, cursor moves), OSC (titles, clipboard ``ESC ] 52``, hyperlinks ``ESC ] 8``) with
#: its payload, DCS/SOS/PM/APC strings with theirs, and the remaining two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?"
                   r"|\x1b[PX^_][^\x1b]*(\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]|\x9d[^\x07\x9c]*[\x07\x9c]?")
_BLANKS = re.compile(r"[\t\n]")


#: A byte of a file name that is not UTF-8, as Python decodes it (``surrogateescape``).
_FS_BYTE = re.compile(r"[\udc80-\udcff]")


def fs_text(text: object) -> str:
    """``str(text)`` with the undecodable bytes of a file name written ``\\xNN``: printable,
    encodable (no UnicodeEncodeError in CSV or JSON), and still telling which file it is."""
    return _FS_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", str(text))


def clean(text: object, limit: int | None = None) -> str:
    """Strip ANSI escapes and control/bidi characters; optionally shorten with an ellipsis.

    Tabs and newlines are kept (callers that need one line use ``one_line``).
    """
    s = str(text)
    if limit is not None and len(s) > 4 * limit + 4096:  # a 500 MB name: only its start can be shown
        s = s[: 4 * limit + 4096]
    s = _CONTROL.sub("", _ANSI.sub("", fs_text(s)))
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


def short_kernel_name(name: str, limit: int = 90) -> str:
    """A readable kernel name (``traceview.classify.display_name``: demangled, no return type
    or parameter list), made safe and shortened."""
    name = name if len(name) <= 1 << 16 else name[: 1 << 16]  # (a huge name: shown by its start)
    return clean(display_name(clean(name)), limit)


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


def device_label(device: int, given_name: str | None) -> str:
    """``GPU 3``, or the name the trace gave the GPU as a string ``pid`` ("GPU 0", SGLang's
    "[TP00-DP00-PP00-EP03] 495"), made safe: what gate, diff, JUnit and the run tables say."""
    return f"GPU {device}" if given_name is None else one_line(given_name, 80)


def gpu_cell(device: int, given_name: str | None) -> str:
    """The GPU column of a table: its number, or its given name (made safe)."""
    from ..load.trace import gpu_text

    return one_line(gpu_text(device, given_name), 80)


#: What a file name may hold that must not reach a terminal as it is: controls (newlines
#: included), bidi and invisible characters, bytes that are not UTF-8.
_PATH_UNSAFE = re.compile(_CONTROL.pattern[:-1] + r"\t\n]")


def display_path(path: object, limit: int | None = None) -> str:
    """A file name for a terminal line: controls and invisible characters shown as escapes
    (``\\n``, ``\\x1b``, ``\\u202e``), bytes that are not UTF-8 as ``\\xNN``, so the name
    cannot forge a line or hide itself, yet still says which file it is."""
    def esc(m: re.Match) -> str:
        return m.group().encode("unicode_escape", "backslashreplace").decode("ascii")

    s = _PATH_UNSAFE.sub(esc, fs_text(path))
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def json_safe(value):
    """``value`` with every string (keys too) passed through ``fs_text``: a document that
    holds a file name that is not UTF-8 can still be written as JSON."""
    if isinstance(value, str):
        return fs_text(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_dumps(doc, option: int = 0) -> str:
    """``orjson.dumps`` of ``doc`` as text; a string that is not valid Unicode (a file name's
    undecodable bytes) is written ``\\xNN`` instead of failing."""
    import orjson

    try:
        return orjson.dumps(doc, option=option).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(json_safe(doc), option=option).decode()
