"""The fuzz corpus (``tests/corpus/``, made by ``scripts/make_corpus.py``): every broken or odd input
has an asserted outcome, either a correct analysis with the expected warnings or exit 2 with a
one-line reason, and never a traceback, a hang or unbounded memory.

Most cases run in-process (``traceview.analyze`` for the numbers, click's CliRunner for the exit
code and the error line); the few that could hang or eat memory run in a subprocess with a
timeout and a measured peak RSS.  Large inputs are generated here, at test time.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import re
import resource
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import traceview
from conftest import PROJECT_FIXTURES, ROOT
from traceview.cli import main
from traceview.cli.common import parse_size
from traceview.errors import TraceError
from traceview.load.reader import TRACE_SUFFIXES

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())["cases"]
BY_FILE = {c["file"]: c for c in CASES}
CASE_SECONDS = 20  # a watchdog, not a timing assertion: a case that runs this long is hung


def run_cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@contextlib.contextmanager
def watchdog(seconds: int = CASE_SECONDS):
    """Fail (instead of blocking the suite) if the body runs longer than ``seconds``."""
    def _hung(_sig, _frame):
        raise AssertionError(f"hung: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@functools.lru_cache(maxsize=None)
def _analysis(file: str, max_bytes: int | None):
    path = CORPUS / file
    with watchdog():
        try:
            return traceview.analyze(path) if max_bytes is None else traceview.analyze(path, max_bytes=max_bytes)
        except TraceError as e:
            return e


def _max_bytes(exp: dict) -> int | None:
    return parse_size(exp["max_bytes"]) if "max_bytes" in exp else None


def _events_key(events: pl.DataFrame) -> list[tuple]:
    return events.select(pl.col("kind").cast(pl.Utf8), pl.col("name").cast(pl.Utf8), "ts", "dur").rows()


def _check_warnings(warnings: list[str], expected: list[dict]) -> None:
    assert len(warnings) == len(expected), f"warnings {warnings} != expected {expected}"
    left = list(warnings)
    for w in expected:
        hit = next((x for x in left if all(word in x for word in w["words"])), None)
        assert hit is not None, f"no warning with {w['words']} among {warnings}"
        left.remove(hit)


def _check_ok(case: dict, a, exp: dict) -> None:
    assert not isinstance(a, TraceError), f"{case['what']}: expected an analysis, got error {a.reason!r}"
    if "events" in exp:
        assert a.trace.events.height == exp["events"]
    if "gpu_events" in exp:
        assert a.kernels.height == exp["gpu_events"]
    if "max_gpu_events" in exp:
        assert a.kernels.height <= exp["max_gpu_events"]
    if "busy_us" in exp:
        busy = sum(g.busy_us for g in a.gpus)
        assert busy == pytest.approx(exp["busy_us"], rel=1e-9, abs=exp.get("tolerance_us", 1e-6))
    if "warnings" in exp:
        _check_warnings(a.trace.warnings, exp["warnings"])
    for word in exp.get("warnings_any", []):
        assert any(word in w for w in a.trace.warnings), f"no warning mentions {word!r}: {a.trace.warnings}"
    if "prefix_of" in exp:
        full = _analysis(exp["prefix_of"], None)
        got, whole = _events_key(a.trace.events), _events_key(full.trace.events)
        assert got == whole[: len(got)], "the events kept are not the first ones of the uncut trace"
    if "name" in exp:
        assert exp["name"] in set(a.kernels["name"].cast(pl.Utf8)), "the kernel name did not survive intact"
    if "rank" in exp:  # header keys read wherever they are in the object
        assert a.trace.rank == exp["rank"]
    if "world_size" in exp:
        assert a.trace.world_size == exp["world_size"]
    if "device_names" in exp:  # pids given as strings: shown by their names, one device per name
        assert sorted(a.trace.device_text(g.device) for g in a.gpus) == exp["device_names"]
        assert sorted(g.name for g in a.gpus) == exp["device_names"]
    if "name_len" in exp:
        names = [n for n in a.kernels["name"].cast(pl.Utf8).unique() if n.startswith(exp["name_start"])]
        assert [len(n) for n in names] == [exp["name_len"]]


def _check_error_line(path: Path, err: str, out: str, words: list[str], any_word: bool = False) -> None:
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    line = lines[0]
    assert line.startswith(f"traceview: error: {path}: "), line
    if any_word:
        assert any(w in line for w in words), f"{line!r} has none of {words}"
    else:
        for w in words:
            assert w in line, f"{w!r} not in {line!r}"


def _cli_args(case: dict) -> list[str]:
    exp = case["expect"]
    args = ["analyze", str(CORPUS / case["file"])]
    if "max_bytes" in exp:
        args += ["--max-bytes", exp["max_bytes"]]
    return args


def test_corpus_is_big_small_and_current():
    """At least 200 cases, all on disk, the folder small, each case naming what it breaks."""
    assert len(CASES) >= 200
    files = {p.name for p in CORPUS.iterdir()} - {"cases.json"}
    assert files == set(BY_FILE), "tests/corpus/ and cases.json disagree: run scripts/make_corpus.py"
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 3_000_000
    assert all(c["what"] and c["expect"]["exit"] in (0, 2, "either") for c in CASES)
    ok = sum(c["expect"]["exit"] == 0 for c in CASES)
    assert ok >= 80 and len(CASES) - ok >= 60  # both outcomes well represented


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_case(case):
    exp = case["expect"]
    a = _analysis(case["file"], _max_bytes(exp))
    if exp["exit"] == 0:
        _check_ok(case, a, exp)
    elif exp["exit"] == 2:
        assert isinstance(a, TraceError), f"{case['what']}: expected exit 2, got an analysis ({a.trace.warnings})"
        for w in exp["words"]:
            assert w in a.reason, f"{w!r} not in {a.reason!r}"
    else:  # two outcomes allowed by design (damage whose effect depends on the bytes): each is checked
        if isinstance(a, TraceError):
            assert any(w in a.reason for w in exp["words_any"]), f"{a.reason!r} has none of {exp['words_any']}"
        else:
            _check_ok(case, a, exp["ok"])


ERROR_CASES = [c for c in CASES if c["expect"]["exit"] == 2]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["file"] for c in ERROR_CASES])
def test_cli_error_is_one_line_exit_2(case):
    """What a user sees: ``traceview: error: <file>: <reason>``, exit 2, nothing else."""
    with watchdog():
        code, out, err = run_cli(*_cli_args(case))
    assert code == 2
    _check_error_line(CORPUS / case["file"], err, out, case["expect"]["words"])


def test_cli_on_every_analyzable_case_exits_0_or_2_without_traceback():
    """The table view of every case that analyzes (hostile names included) renders; --strict fails
    exactly the cases with warnings or trace health problems."""
    checked = 0
    for case in CASES:
        a = _analysis(case["file"], _max_bytes(case["expect"]))
        if isinstance(a, TraceError):
            continue
        with watchdog():
            code, out, err = run_cli(*_cli_args(case), "--strict", "--format", "csv")
        assert "Traceback" not in out + err
        # trace health problems fail --strict too (a loader drop is said once, as its warning)
        health = [h for h in a.health if h.key != "dropped_records"]
        if a.trace.warnings or health:
            assert code == 2, case["file"]
            assert err.count("--strict") == len(a.trace.warnings) + len(health), err
            for line in err.strip().splitlines():
                assert line.startswith(f"traceview: error: {CORPUS / case['file']}: --strict: "), line
        else:
            assert code == 0 and err == "", (case["file"], err)
        checked += 1
    assert checked >= 80


# --- terminal safety: trace strings are shown, never interpreted ---------------------------------------

ESCAPE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b-\u200f]")


@pytest.mark.parametrize("fmt", ["table", "csv"])
@pytest.mark.parametrize("file", [c["file"] for c in CASES if c["file"].split("-", 1)[1].startswith("name-")
                                  and c["expect"]["exit"] == 0])
def test_hostile_names_print_without_control_sequences(file, fmt):
    """ANSI colours, OSC 52 (clipboard), OSC 8 (links), titles, bidi overrides, zero-width and control
    characters never reach the terminal, in the table or in CSV (see docs/limits.md); rich markup
    in a name is printed literally."""
    extra = ["--format", "csv", "--table", "kernels"] if fmt == "csv" else []
    code, out, err = run_cli("analyze", str(CORPUS / file), *extra)
    assert code == 0, err
    assert not ESCAPE.search(out.replace("\n", "")), repr(ESCAPE.search(out.replace("\n", "")))
    assert "\x1b" not in out + err and "52;c;" not in out and "pwned" not in out
    if "rich-markup" in file:
        assert "[bold red]boom[/]" in out and ":skull:" in out
    if "osc52" in file:
        assert "gemmtail" in out.replace("\n", "")
    if "newlines" in file and fmt == "csv":
        assert "\nwarning: forged line" not in out


def test_hostile_names_stay_exact_in_json():
    """JSON is escaped by construction: the exact name (escapes included) round-trips."""
    case = next(c for c in CASES if c["file"].endswith("name-osc8-link.json.gz"))
    code, out, err = run_cli("analyze", str(CORPUS / case["file"]), "--format", "json")
    assert code == 0, err
    assert "\x1b" not in out  # escaped as \u001b
    names = {u["name"] for u in json.loads(out)["traces"][0]["unclassified"]}
    assert case["expect"]["name"] in names


# --- strict mode, end to end -----------------------------------------------------------------------------

def test_strict_turns_each_warning_into_a_failure_but_keeps_the_report(tmp_path):
    case = next(c for c in CASES if c["file"].endswith("-no-dur.json.gz"))
    code, out, err = run_cli("analyze", str(CORPUS / case["file"]))
    assert code == 0 and "12 events without a valid duration skipped" in out
    code, out, err = run_cli("analyze", str(CORPUS / case["file"]), "--strict")
    assert code == 2
    assert err.strip() == (f"traceview: error: {CORPUS / case['file']}: --strict: "
                           "12 events without a valid duration skipped")
    assert "GPU time" in out  # the analysis is still printed: CI logs show what was measured
    code, _out, err = run_cli("analyze", str(PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"), "--strict")
    assert code == 0 and err == ""


def test_strict_fails_a_directory_when_one_rank_has_warnings(tmp_path):
    good = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
    (tmp_path / "rank0.json.gz").write_bytes(good.read_bytes())
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "rank1.json").write_bytes(raw[: len(raw) * 2 // 3])  # killed mid-write
    code, out, err = run_cli("analyze", str(tmp_path), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [len(t["warnings"]) for t in doc["traces"]] == [0, 1]
    code, _out, err = run_cli("analyze", str(tmp_path), "--strict", "--format", "json")
    assert code == 2 and "rank1.json: --strict: file is truncated" in err


# --- the loader's limits, generated at test time ---------------------------------------------------------

def _tiny_trace(n: int) -> bytes:
    """n kernels of 1 us every 2 us on one stream, plus every 100th on a second stream overlapping."""
    body = b",".join(b'{"ph":"X","cat":"kernel","name":"k","pid":0,"tid":7,"ts":%d.5,"dur":1}' % (2 * i)
                     for i in range(n))
    return b'{"traceEvents":[' + body + b"]}"


def test_a_million_tiny_events(tmp_path):
    """1,000,000 events load through the chunked decoder; every one is counted, busy time exact."""
    p = tmp_path / "million.json"
    p.write_bytes(_tiny_trace(1_000_000))
    with watchdog(120):
        a = traceview.analyze(p)
    assert a.kernels.height == 1_000_000 and a.trace.warnings == []
    assert a.gpus[0].busy_us == pytest.approx(1_000_000.0)
    assert a.gpus[0].span_us == pytest.approx(2 * 999_999 + 1)


def test_chunk_cuts_inside_strings_are_retried(tmp_path, monkeypatch):
    """Names holding ``}, {`` put the decoder's chunk boundaries inside strings: the chunk is
    retried with the next one, nothing is rejected or lost."""
    from traceview.load import decode

    events = [{"ph": "X", "cat": "kernel", "name": "k}, {" * (i % 5 + 1), "pid": 0, "tid": 7,
               "ts": 10.0 * i, "dur": 4.0} for i in range(3000)]
    p = tmp_path / "braces.json"
    p.write_text(json.dumps({"traceEvents": events}))
    with watchdog():
        a = traceview.analyze(traceview.load(p, chunk_bytes=1000, workers=1))
    assert a.kernels.height == 3000 and a.trace.warnings == []
    assert a.gpus[0].busy_us == pytest.approx(12000.0)


def _run_limited(args: list[str], timeout: int = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI in a child; return it and the child's peak RSS in MiB."""
    # RUSAGE_CHILDREN of this process is the peak over every child it ever waited for (earlier
    # tests' too): a fresh wrapper process measures this child alone and writes its peak to a pipe
    wrapper = ("import resource, subprocess, sys, os\n"
               "fd = int(sys.argv[1])\n"
               "r = subprocess.run([sys.executable, '-m', 'traceview', *sys.argv[2:]], pass_fds=())\n"
               "os.write(fd, str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss).encode())\n"
               "sys.exit(r.returncode)\n")
    rfd, wfd = os.pipe()
    try:
        r = subprocess.run([sys.executable, "-c", wrapper, str(wfd), *args], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, pass_fds=(wfd,))
        os.close(wfd)
        wfd = -1
        peak_kib = int(os.read(rfd, 64) or b"0")
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    return r, peak_kib / 1024


def test_gzip_bomb_stops_at_the_cap_with_bounded_memory(tmp_path):
    """A 1 MB file that inflates to 1 GiB: refused at --max-bytes, in a few seconds, without
    ever holding more than the cap.  (1024 concatenated gzip members of 1 MiB of spaces each:
    valid gzip, and quick to make.)"""
    p = tmp_path / "bomb.json.gz"
    spaces = gzip.compress(b" " * (1 << 20), 9, mtime=0)
    p.write_bytes(gzip.compress(b'{"traceEvents": [', mtime=0) + spaces * 1024)
    assert p.stat().st_size < 2_000_000
    r, peak_mib = _run_limited(["analyze", str(p), "--max-bytes", "64M"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "decompresses to more than 67108864 bytes" in r.stderr and "--max-bytes" in r.stderr
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB for a 64 MiB cap"


def test_max_bytes_from_the_environment(tmp_path):
    """TRACEVIEW_MAX_BYTES sets the default cap (read at import: a fresh process)."""
    case = next(c for c in CASES if c["file"].endswith("gz-bomb-10M.json.gz"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACEVIEW_MAX_BYTES": str(1 << 20)}
    r = subprocess.run([sys.executable, "-m", "traceview", "analyze", str(CORPUS / case["file"])],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 2 and "decompresses to more than 1048576 bytes" in r.stderr
    code, _out, err = run_cli("analyze", str(CORPUS / case["file"]))  # default cap: analyzed
    assert code == 0, err


def test_deep_nesting_in_a_child_process():
    """100,000 levels of nesting: one line and exit 2 from the real entry point (no RecursionError,
    no stack overflow in C)."""
    case = next(c for c in CASES if c["file"].endswith("nested-args-100000.json.gz"))
    r, _peak = _run_limited(["analyze", str(CORPUS / case["file"])])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nested too deeply" in r.stderr


def test_truncation_at_every_offset_of_a_small_trace(tmp_path):
    """Cut at every byte of one small real event run: each cut gives the events wholly before it
    (and a warning), or a one-line error when no GPU event is whole yet."""
    whole = BY_FILE[next(f for f in BY_FILE if f.endswith("small-whole.json"))]
    data = (CORPUS / whole["file"]).read_bytes()
    full = _events_key(_analysis(whole["file"], None).trace.events)
    start = data.index(b'"traceEvents"')
    first_end = data.index(b"\n  }", data.index(b'"cat": "kernel"', start))  # the first kernel's end
    lo = first_end - 100
    p = tmp_path / "cut.json"
    seen_ok = 0
    with watchdog(120):
        for cut in range(lo, lo + 1500):
            p.write_bytes(data[:cut])
            try:
                t = traceview.load(p)
            except TraceError as e:
                assert ("truncated" in e.reason or "no GPU events" in e.reason), e.reason
                continue
            got = _events_key(t.events)
            assert got == full[: len(got)]
            assert any("truncated" in w for w in t.warnings)
            seen_ok += 1
    assert seen_ok > 1000


# --- hand-made inputs that a corpus file cannot hold ------------------------------------------------------

def test_a_pipe_is_read_whole_up_to_the_cap(tmp_path):
    """``traceview analyze <(zcat t.json.gz)``: a pipe cannot be mapped or rewound; it is read,
    plain or gzip, and the cap still holds."""
    import threading

    whole = CORPUS / next(f for f in BY_FILE if f.endswith("gz-whole.json.gz"))
    plain = gzip.decompress(whole.read_bytes())
    for data, max_bytes, ok in ((plain, None, True), (whole.read_bytes(), None, True), (plain, 1000, False)):
        r, w = os.pipe()

        def feed(w=w, data=data):
            with contextlib.suppress(BrokenPipeError), os.fdopen(w, "wb") as f:
                f.write(data)

        t = threading.Thread(target=feed)
        t.start()
        try:
            with watchdog():
                kw = {} if max_bytes is None else {"max_bytes": max_bytes}
                if ok:
                    tr = traceview.load(f"/dev/fd/{r}", **kw)
                    assert tr.events.height == BY_FILE[whole.name]["expect"]["events"] and tr.warnings == []
                else:
                    with pytest.raises(TraceError, match="more than 1000 bytes"):
                        traceview.load(f"/dev/fd/{r}", **kw)
        finally:
            os.close(r)
            t.join()


def test_error_line_is_one_line_whatever_the_file_name(tmp_path):
    p = tmp_path / "rank0\nforged: line\x1b[2J.json"
    p.write_bytes(b'{"traceEvents": [')
    for cmd in (["analyze"], ["gate", "--no-config", "--max-exposed-comm", "50%"],
                ["report", "-o", str(tmp_path / "r.html")]):
        code, out, err = run_cli(*cmd, str(p))
        assert code == 2 and "Traceback" not in out + err
        assert err.count("\n") == 1 and "\x1b" not in err, err
        assert err.startswith("traceview: error: ") and "forged: line" in err


def test_zero_byte_gzip_and_directories_that_are_not_traces(tmp_path):
    (tmp_path / "zero.json.gz").write_bytes(b"")
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")  # a symlink loop
    code, _out, err = run_cli("analyze", str(tmp_path / "zero.json.gz"))
    assert code == 2 and err.strip() == f"traceview: error: {tmp_path / 'zero.json.gz'}: file is empty"
    code, _out, err = run_cli("analyze", str(tmp_path / "dir.json"))
    assert code == 2 and "no trace files" in err and err.count("\n") == 1
    code, _out, err = run_cli("analyze", str(tmp_path / "loop.json"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("value", ["-5", "0", "abc", "1e999G", "nan", ""])
def test_bad_max_bytes_is_a_usage_error(value):
    code, out, err = run_cli("analyze", str(CORPUS / CASES[0]["file"]), "--max-bytes", value)
    assert code == 2 and "is not a size" in err and "Traceback" not in out + err


def test_bad_max_bytes_in_the_environment_is_reported_not_a_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACEVIEW_MAX_BYTES": "16 gigs"}
    r = subprocess.run([sys.executable, "-m", "traceview", "analyze", str(CORPUS / CASES[0]["file"])],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "TRACEVIEW_MAX_BYTES='16 gigs' is not a size" in r.stderr
    env["TRACEVIEW_MAX_BYTES"] = "1.5K"  # suffixes work there too
    r = subprocess.run([sys.executable, "-m", "traceview", "analyze", str(CORPUS / CASES[0]["file"])],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 2 and "over the 1536-byte limit" in r.stderr


def test_an_error_after_gzip_damage_names_the_damage(tmp_path):
    """When a damaged gzip leaves nothing usable, the reason says so (not only "not a trace"), and
    such a rank inside a directory is reported, not skipped as a non-trace file beside the ranks."""
    case = next(c for c in CASES if c["file"].endswith("gz-cut-02.json.gz"))
    a = _analysis(case["file"], None)
    assert isinstance(a, TraceError) and "not a trace" in a.reason and "gzip stream is cut short" in a.reason
    good = CORPUS / next(f for f in BY_FILE if f.endswith("gz-whole.json.gz"))
    (tmp_path / "rank0.json.gz").write_bytes(good.read_bytes())
    (tmp_path / "rank1.json.gz").write_bytes((CORPUS / case["file"]).read_bytes())
    code, out, err = run_cli("analyze", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "rank1.json.gz: not a trace" in err and "gzip" in err
    assert "GPU time" in out  # the good rank is still analyzed


def test_hostile_names_in_the_html_report():
    """The corpus' hostile names in the HTML report: escaped, and no control or bidi character left."""
    from traceview.report.html import plotly_js, render_html

    for label in ("name-html", "name-ansi", "name-osc52", "name-rtl-override", "name-newlines"):
        case = next(c for c in CASES if c["file"].split("-", 1)[1].startswith(label + "."))
        with watchdog(60):
            html_text = render_html([_analysis(case["file"], None)]).html.replace(plotly_js(), "")  # (library code)
        assert not ESCAPE.search(html_text.replace("\n", "").replace("\t", "").replace("\r", "")), label
        assert "<script>alert(1)" not in html_text and "52;c;" not in html_text
        if label == "name-html":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text


# --- round two: file systems and hostile file names (generated at test time: a corpus folder in
# git cannot hold symlink loops or file names with newlines portably) ---------------------------------

def _good_bytes() -> bytes:
    return (CORPUS / next(f for f in BY_FILE if f.endswith("gz-whole.json.gz"))).read_bytes()


def _truncated_bytes() -> bytes:
    """A trace that analyzes with one loader warning, so its file name reaches warning lines too."""
    return (CORPUS / next(f for f in BY_FILE if f.endswith("cut-ev7-after-comma.json"))).read_bytes()


def test_a_directory_names_every_file_it_cannot_read(tmp_path):
    """A symlink loop and a dangling symlink beside a good rank: each gets its error line, by name and
    cause, the exit code is 2, and the good rank is still analyzed."""
    (tmp_path / "rank0.json.gz").write_bytes(_good_bytes())
    (tmp_path / "rank1.json").symlink_to("rank1.json")
    (tmp_path / "rank2.json.gz").symlink_to(tmp_path / "gone" / "rank2.json.gz")
    code, out, err = run_cli("analyze", str(tmp_path))
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines == [f"traceview: error: {tmp_path / 'rank1.json'}: symlink loop (following the links never reaches a file)",
                     f"traceview: error: {tmp_path / 'rank2.json.gz'}: dangling symlink (its target "
                     f"'{tmp_path / 'gone' / 'rank2.json.gz'}' does not exist)"]
    assert "GPU time" in out
    code, _out, err = run_cli("analyze", str(tmp_path / "rank1.json"))  # named directly: a loop, not "no such file"
    assert code == 2 and err.strip().endswith(": symlink loop (following the links never reaches a file)")


def test_a_directory_without_traces_lists_what_it_looked_at(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "MANIFEST.json").write_text('{"ranks": 2}')
    (tmp_path / "ranks.json").write_text('[{"rank": 0, "file": "rank0.json.gz"}]')
    code, out, err = run_cli("analyze", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"traceview: error: {tmp_path}: no trace files in this directory (3 files looked at: ")
    for name in ("MANIFEST.json: JSON without 'traceEvents'", "README.md: not a trace file name",
                 "ranks.json: a JSON list of records"):
        assert name in err


def test_a_sidecar_list_beside_the_ranks_is_skipped_with_its_reason(tmp_path):
    from traceview.load import find_trace_files

    (tmp_path / "rank0.json.gz").write_bytes(_good_bytes())
    (tmp_path / "ranks.json").write_text('[{"rank": 0, "file": "rank0.json.gz"}]')
    (tmp_path / "sub.json").mkdir()
    found = find_trace_files(tmp_path)
    assert list(found) == [tmp_path / "rank0.json.gz"]
    assert found.skipped == [(tmp_path / "ranks.json", "a JSON list of records without 'ph'/'ts' (a sidecar, not a trace)")]
    code, out, err = run_cli("analyze", str(tmp_path))
    assert code == 0 and "GPU time" in out
    # (one note line says so: the verdicts branch's sidecar notes)
    assert err == (f"traceview: note: {tmp_path / 'ranks.json'}: skipped, not a trace: a JSON list of records "
                   "without 'ph'/'ts' (a sidecar) (found in a directory; name it to get an error instead)\n")


HOSTILE_FILE_NAMES = {"newline": b"r0\nwarning: FORGED line.json", "markup": b"[red]r0[red] [link=x]y.json",
                      "not-utf8": b"r\xff\xfe0.json", "escape": b"r0\x1b[2J\x1b]0;pwned\x07.json"}


@pytest.mark.parametrize("kind", sorted(HOSTILE_FILE_NAMES))
def test_hostile_file_names_are_escaped_everywhere(tmp_path, kind):
    """A file name is as hostile as a kernel name: in the table, CSV, JSON, gate lines, JUnit, GitHub
    annotations and diff JSON it cannot forge a line, set colours or fail to encode."""
    import xml.etree.ElementTree as ET

    name = os.fsdecode(HOSTILE_FILE_NAMES[kind])
    p = tmp_path / name
    p.write_bytes(_truncated_bytes())
    base = tmp_path / "base.json.gz"
    base.write_bytes(_good_bytes())
    junit = tmp_path / "j.xml"
    runs = {
        "table": run_cli("analyze", str(p)),
        "csv": run_cli("analyze", str(p), "--format", "csv"),
        "csv-kernels": run_cli("analyze", str(p), "--format", "csv", "--table", "kernels"),
        "json": run_cli("analyze", str(p), "--format", "json"),
        "gate": run_cli("gate", "--no-config", "--max-exposed-comm", "50%", "--github", "--junit", str(junit), str(p)),
        "diff-json": run_cli("diff", str(base), str(p), "--format", "json"),
        "diff": run_cli("diff", str(base), str(p)),
        "report": run_cli("report", "-o", str(tmp_path / "r.html"), str(p)),
    }
    for what, (code, out, err) in runs.items():
        assert code in (0, 1), (what, err)
        assert "internal error" not in err and "Traceback" not in out + err, (what, err)
        for line in (out + err).splitlines():
            assert not line.lstrip("│┃ ").startswith("warning: FORGED"), (what, line)
        assert "\x1b" not in out + err and "pwned\x07" not in out + err, what
    if kind == "markup":
        assert "[red]r0[red]" in runs["table"][1]  # printed literally, not a colour
    doc = json.loads(runs["json"][1])
    assert doc["traces"][0]["file"].endswith(name if kind != "not-utf8" else "r\\xff\\xfe0.json")
    json.loads(runs["diff-json"][1])
    ET.parse(junit)  # well-formed XML
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "\x1b" not in page and "<red>" not in page
    annotations = [ln for ln in runs["gate"][1].splitlines() if ln.startswith("::")]
    assert annotations and all("\n" not in a for a in annotations)


# --- round two: scale and memory (scaled-down versions of scripts/make_scale_cases.py) ----------------

@functools.lru_cache(maxsize=None)
def _scale_cases():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_scale_cases", ROOT / "scripts" / "make_scale_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reference_device(a, device) -> dict:
    from reference import gpu_metrics

    k = a.kernels.filter(pl.col("device") == device)
    return gpu_metrics(list(zip(k["ts"].to_list(), k["end"].to_list(), k["role"].cast(pl.Utf8).to_list())))


def test_many_streams_on_one_gpu_analyze_and_report(tmp_path):
    """20,000 streams on one GPU (the full case is 200,000): per-stream busy time for each, the
    report's timeline keeps 48 lanes and says so, all within the watchdog."""
    from traceview.report.html import render_html

    mod = _scale_cases()
    p = mod.many_streams(tmp_path / "streams.json", 20_000)
    with watchdog(60):
        a = traceview.analyze(p)
        html_text = render_html([a]).html
    (g,) = a.gpus
    assert len(g.streams) == 20_000
    k = a.kernels
    assert g.streams[1000] == pytest.approx(float(k.filter(pl.col("stream") == 1000)["dur"].sum()))
    ref = _reference_device(a, 0)
    assert g.busy_us == pytest.approx(ref["busy_us"]) and g.compute_us == pytest.approx(ref["compute_us"])
    assert "20,000 streams on this GPU: the 47 busiest have a lane each" in html_text


def test_many_devices_each_measured(tmp_path):
    """2,000 devices (the full case is 10,000): one GpuMetrics each, equal to the reference."""
    mod = _scale_cases()
    p = mod.many_devices(tmp_path / "devices.json", 2_000, per_device=3)
    with watchdog(60):
        a = traceview.analyze(p)
    assert [g.device for g in a.gpus] == list(range(2_000))
    for g in (a.gpus[0], a.gpus[1234], a.gpus[-1]):
        ref = _reference_device(a, g.device)
        for key in ("span_us", "busy_us", "compute_us", "idle_us"):
            assert getattr(g, key) == pytest.approx(ref[key]), key
        assert g.events == 3
    with watchdog(60):
        code, out, _err = run_cli("analyze", str(p))
    assert code == 0 and out.count("… and 1,936 more GPUs (--format csv lists every one)") == 2  # table + verdicts


def test_a_huge_kernel_name_is_kept_and_every_command_finishes(tmp_path):
    """An 8 MB kernel name (the full case is 500 MB): kept whole, classified, shown shortened."""
    mod = _scale_cases()
    p = mod.huge_name(tmp_path / "name.json", 8 << 20)
    with watchdog(60):
        a = traceview.analyze(traceview.load(p, workers=2, chunk_bytes=1 << 20))
        code, out, err = run_cli("analyze", str(p))
    assert max(len(n) for n in a.kernels["name"].cast(pl.Utf8).to_list()) == 8 << 20
    assert code == 0 and err == "" and max(len(line) for line in out.splitlines()) < 300


def test_nul_bytes_after_a_valid_head_under_a_memory_limit(tmp_path):
    """256 MiB of NUL bytes after one kernel (a file zero-filled after a crash), under a 4 GiB
    address-space limit: analyzed, with the NULs named in a warning."""
    mod = _scale_cases()
    p = mod.nuls_after_head(tmp_path / "nuls.json", 256 << 20)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from traceview.cli import main; sys.argv = ['traceview', 'analyze', sys.argv[1]]; main()")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert f"warning: nuls.json: the file ends in {256 << 20} NUL bytes" in r.stdout
    assert "Traceback" not in r.stderr


def _holders(path: Path) -> list[int]:
    """The processes (other than this one) that have ``path`` open, from /proc/*/fd."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        pid = int(fd_dir.parent.name)
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(pid)
    return pids


@pytest.mark.parametrize("command", ["analyze", "report"])  # (analyze_many; report: the run engine's pool)
def test_a_worker_killed_mid_file_is_one_line_naming_it_and_the_others_are_analyzed(tmp_path, command):
    """``--jobs 2`` over a real rank and a FIFO: each worker that opens the FIFO is killed with
    SIGKILL (what the OOM killer sends) while it reads.  The FIFO's line names it and the signal,
    exit 2, no traceback, no internal error; the real rank is still analyzed."""
    import threading

    good = tmp_path / "rank0.json.gz"
    good.write_bytes(_good_bytes())
    fifo = tmp_path / "rank1.json"
    os.mkfifo(fifo)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            fd = os.open(fifo, os.O_WRONLY)  # blocks until a worker opens the FIFO to read it
            try:
                if stop.is_set():
                    return
                for _ in range(200):  # the worker now blocks reading it: find it, kill it
                    pids = [p for p in _holders(fifo) if p not in killed]  # (a dying one still holds it)
                    if pids:
                        for pid in pids:
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                        break
                    threading.Event().wait(0.01)
            finally:
                os.close(fd)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        with watchdog(120):
            extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
            code, out, err = run_cli(command, "--jobs", "2", *extra, str(good), str(fifo))
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # unblock the killer's open
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(10)
    assert len(killed) == 2  # the pool's worker, then the file's own process
    assert code == 2 and "Traceback" not in out + err and "internal error" not in err
    line = (f"traceview: error: {fifo}: the worker process analyzing it was killed (signal 9, SIGKILL: out "
            "of memory? the kernel's OOM killer sends SIGKILL; try fewer --jobs or more memory)")
    if command == "analyze":
        assert err == line + "\n"
        assert "rank0" in out and "GPU time" in out  # the other file, analyzed
    else:
        assert err.splitlines()[0] == line and err.splitlines()[1].startswith(f"wrote {tmp_path / 'r.html'}")
        assert "rank0" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_died_reason_names_the_signal_or_the_status():
    from traceview.processes import died_reason

    assert died_reason(-15) == "the worker process analyzing it was killed (signal 15, SIGTERM)"
    assert died_reason(3, "decoding it") == "the worker process decoding it exited with status 3 before it finished"


def test_the_whole_corpus_through_gate_diff_and_report():
    """Every corpus case, old and new, through gate, diff and report (analyze: each case above,
    one by one): one run of each over every file (diff: one base against the whole corpus
    directory, then the archives its scan does not take), exit 0/1/2, each error one line naming
    its file, no traceback, no internal error, no hang."""
    files = [str(CORPUS / c["file"]) for c in CASES]
    unscanned = [f for f in files if not f.endswith(TRACE_SUFFIXES)]  # .zip, .tar.gz
    assert unscanned and len(unscanned) < 10
    with watchdog(600):
        runs = {"gate": run_cli("gate", "--no-config", "--max-exposed-comm", "50%", *files),
                "report": run_cli("report", "-o", os.devnull, *files),
                "diff": run_cli("diff", files[0], str(CORPUS), "--format", "json")}
        for f in unscanned:
            runs[f"diff {Path(f).name}"] = run_cli("diff", files[0], f)
    named = set(files) | {str(CORPUS / "cases.json")}
    for what, (code, out, err) in runs.items():
        assert code in (0, 1, 2) and "Traceback" not in out + err and "internal error" not in err, (what, err)
        for line in err.splitlines():
            if line.startswith(("traceview: error: ", "traceview: note: ", "traceview: warning: ")):
                assert any(line.split(": ", 2)[2].startswith(f"{f}: ") for f in named), (what, line)
    # the report and the diff analyzed every case that analyzes, and named every one that does not
    errors = {c["file"] for c in CASES if c["expect"]["exit"] == 2 and "max_bytes" not in c["expect"]}
    for what in ("report", "diff"):  # (a scan skips a non-trace with a note; named, it is an error)
        err = runs[what][2]
        said = ("traceview: error: ",) if what == "report" else ("traceview: error: ", "traceview: note: ")
        missing = [f for f in errors if (what == "report" or f.endswith(TRACE_SUFFIXES))
                   and not any(f"{s}{CORPUS / f}: " in err for s in said)]
        assert not missing, (what, missing[:5])
    doc = json.loads(runs["diff"][1])
    assert len(doc["pairs"]) >= len(CASES) - len(errors) - len(unscanned) - 20


# --- round two: string pids named in every output ----------------------------------------------

INTERNAL_ID = re.compile(r"-\d{15,}")  # a named device's internal id (load/decode.py: named_id)


def _pid_case(family: str) -> Path:
    return CORPUS / next(c["file"] for c in CASES if c["file"].split("-", 1)[1] == f"exp-pid-{family}.json.gz")


def test_string_pids_are_shown_by_name_in_gate_diff_junit_and_run(tmp_path):
    """pids given as strings ("GPU 0", SGLang's "[TP00-DP00-PP00-EP03] 495"): gate lines, JUnit,
    GitHub annotations, the diff tables and JSON, a gate baseline from a saved document, the
    per-GPU segment and tax tables and the run summaries all say the given name, never the
    internal id; the two GPUs stay distinct and pair with themselves across files."""
    import xml.etree.ElementTree as ET

    sglang, two, names = _pid_case("sglang"), _pid_case("two-gpus"), _pid_case("names")
    junit, doc = tmp_path / "j.xml", tmp_path / "two.json"
    assert run_cli("analyze", str(two), "--format", "json", "-o", str(doc))[0] == 0
    runs = {
        "gate": run_cli("gate", "--no-config", "--max-exposed-comm", "1%", "--github", "--junit", str(junit),
                        str(sglang), str(two), str(names)),
        "gate-baseline": run_cli("gate", "--no-config", "--baseline", str(doc), "--max-regression", "5%", str(two)),
        "diff": run_cli("diff", str(two), str(two)),
        "diff-doc": run_cli("diff", str(doc), str(sglang)),
        "diff-json": run_cli("diff", str(two), str(two), "--format", "json"),
        "by-microbatch": run_cli("analyze", str(two), "--by", "microbatch", "--tax"),
    }
    for what, (code, out, err) in runs.items():
        assert code in (0, 1) and "Traceback" not in out + err, (what, err)
        if what != "diff-json":  # (JSON keeps the stable id as "device", beside "device_name")
            assert INTERNAL_ID.search(out + err) is None, (what, INTERNAL_ID.search(out + err).group())
    gate = runs["gate"][1]
    assert "rank 0 [TP00-DP00-PP00-EP03] 495  [" in gate and "rank 0 GPU 1  [" in gate
    annotations = [ln for ln in gate.splitlines() if ln.startswith("::error")]
    assert len(annotations) == 4 and any("(rank 0 [TP00-DP00-PP00-EP03] 495)" in a for a in annotations)
    cases = [c.get("name") for c in ET.parse(junit).iter("testcase")]
    assert "exposed_comm_pct [rank 0 GPU 0]" in cases and "exposed_comm_pct [rank 0 GPU 1]" in cases
    assert INTERNAL_ID.search(junit.read_text()) is None
    # a baseline document carries the names: each GPU pairs with itself, by name
    assert runs["gate-baseline"][1].count("vs baseline rank 0 GPU 0") >= 1
    assert "(by position)" not in runs["gate-baseline"][1]
    pairs = json.loads(runs["diff-json"][1])["pairs"]
    assert [(p["base"]["device_name"], p["new"]["device_name"], p["matched_by"]) for p in pairs] == \
        [("GPU 0", "GPU 0", "same rank and GPU"), ("GPU 1", "GPU 1", "same rank and GPU")]
    assert pairs[0]["base"]["device"] != pairs[1]["base"]["device"]  # distinct devices
    assert "rank 0 [TP00-DP00-PP00-EP03] 495" in runs["diff-doc"][1]
    # the run's per-rank summaries (RankSummary) carry the name too
    run = traceview.analyze_run([sglang, two])
    assert sorted(r.device_name for r in run.ranks) == ["GPU 0", "GPU 1", "[TP00-DP00-PP00-EP03] 495"]
    assert all(r.to_dict()["device_name"] == r.device_name for r in run.ranks)


def test_memory_that_runs_out_while_loading_is_one_line_naming_the_file(tmp_path):
    """A real address-space limit (set in the child just above what it already maps, so it holds
    on any machine) that a 96 MB kernel name (``scripts/make_scale_cases.py``, from a real kernel)
    cannot fit in: one line naming the file and that memory ran out, exit 2, no traceback, not
    a crash in the compiled decoder or polars."""
    mod = _scale_cases()
    p = mod.huge_name(tmp_path / "rank0.json", 96 << 20)
    code = ("import re, resource, sys\n"
            "from traceview.cli import main\n"
            "import polars as pl; pl.DataFrame({'a': [1]}).group_by('a').len()  # (its thread pools)\n"
            "vm = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) << 10\n"
            "limit = vm + (144 << 20)\n"
            "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
            "sys.argv = ['traceview', 'analyze', sys.argv[1]]; main()\n")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith(f"traceview: error: {p}: out of memory while loading it ({p.stat().st_size:,} bytes") and \
        r.stderr.count("\n") == 1, r.stderr[-2000:]
