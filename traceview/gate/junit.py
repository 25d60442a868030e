"""Gate results in the forms CI systems read: JUnit XML, GitHub Actions annotations, a job summary.

JUnit follows the Jenkins/Surefire dialect (the one GitHub test reporters, GitLab and Jenkins
accept): ``testsuites`` > one ``testsuite`` per input file > one ``testcase`` per check, with
``failure`` for a failed check, ``skipped`` for a check that had nothing to measure and
``error`` for an input that could not be analyzed.  Files skipped while scanning a directory
(a manifest beside the ranks) are ``skipped`` test cases of their own suite, so a CI page shows them.
"""

from __future__ import annotations

import datetime as _dt
import socket
import xml.etree.ElementTree as ET

from ..report.text import clean
from .checks import FAIL, SKIP, CheckResult, GateResult, _basename

SUITE = "traceview gate"


def _case_name(c: CheckResult) -> str:
    """Unique within a suite (reporters merge test cases of the same name)."""
    return f"{c.check}{' ' + c.category if c.category else ''} [{c.where}]"


def _classname(file: str) -> str:
    stem = _basename(file)
    for ext in (".json.gz", ".json"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return "traceview.gate." + stem.replace(" ", "_")


def to_junit(result: GateResult, elapsed_s: float = 0.0) -> str:
    """The JUnit XML document (a string, XML declaration included)."""
    stamp = _dt.datetime.now().replace(microsecond=0).isoformat()
    host = clean(socket.gethostname()) or "localhost"
    root = ET.Element("testsuites", name=SUITE)
    suites: dict[str, list] = {}
    for c in result.checks:
        suites.setdefault(c.file, []).append(c)
    for e in result.errors:
        suites.setdefault(e.path, []).append(e)
    t_total = f"{max(elapsed_s, 0.0):.3f}"
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    for i, (file, items) in enumerate(suites.items()):
        checks = [x for x in items if isinstance(x, CheckResult)]
        errors = [x for x in items if not isinstance(x, CheckResult)]
        counts = dict(tests=len(items), failures=sum(c.status == FAIL for c in checks), errors=len(errors),
                      skipped=sum(c.status == SKIP for c in checks))
        for k, v in counts.items():
            totals[k] += v
        suite = ET.SubElement(root, "testsuite", name=clean(f"{SUITE}: {_basename(file)}"),
                              **{k: str(v) for k, v in counts.items()}, time="0.000", timestamp=stamp,
                              hostname=host, id=str(i), package="traceview.gate")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="file", value=clean(file))
        for k, v in result.thresholds.to_dict().items():
            if v is not None:
                ET.SubElement(props, "property", name=k, value=clean(v))
        for c in checks:
            case = ET.SubElement(suite, "testcase", name=clean(_case_name(c)), classname=clean(_classname(c.file)),
                                 time="0.000")
            if c.status == SKIP:
                ET.SubElement(case, "skipped", message=clean(c.detail or "nothing to measure"))
            elif c.status == FAIL:
                f = ET.SubElement(case, "failure", message=clean(c.line()), type=c.check)
                f.text = clean(c.line())
            out = ET.SubElement(case, "system-out")
            out.text = clean(c.line())
        for e in errors:
            case = ET.SubElement(suite, "testcase", name="analyze input", classname=clean(_classname(e.path)),
                                 time="0.000")
            err = ET.SubElement(case, "error", message=clean(e.reason), type="TraceError")
            err.text = clean(str(e))
    if result.notes:
        suite = ET.SubElement(root, "testsuite", name=f"{SUITE}: skipped inputs", tests=str(len(result.notes)),
                              failures="0", errors="0", skipped=str(len(result.notes)), time="0.000",
                              timestamp=stamp, hostname=host, id=str(len(suites)), package="traceview.gate")
        for i, note in enumerate(result.notes):
            case = ET.SubElement(suite, "testcase", name=clean(f"skipped input {i + 1}"),
                                 classname="traceview.gate.inputs", time="0.000")
            ET.SubElement(case, "skipped", message=clean(note))
        totals["tests"] += len(result.notes)
    for k, v in totals.items():
        if k != "skipped":  # the Jenkins schema has no 'skipped' on <testsuites>; 'disabled' is not ours
            root.set(k, str(v))
    root.set("time", t_total)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- GitHub Actions ------------------------------------------------------------------------------

def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult) -> list[str]:
    """``::error title=...::message`` workflow commands: one per failed check and per bad input
    (``::warning`` for loader warnings that do not fail the gate, ``::notice`` for skipped files)."""
    lines = [f"::notice title={_escape_property('traceview gate: skipped input')}::{_escape_data(clean(n))}"
             for n in result.notes]
    for c in result.failed:
        title = _escape_property(f"traceview gate: {c.title} ({c.where})")
        lines.append(f"::error title={title}::{_escape_data(clean(c.line()))}")
    for c in result.warned:
        title = _escape_property(f"traceview gate: {c.title} ({_basename(c.file)})")
        lines.append(f"::warning title={title}::{_escape_data(clean(c.line()))}")
    for e in result.errors:
        lines.append(f"::error title={_escape_property('traceview gate: input')}::{_escape_data(clean(str(e)))}")
    return lines


def step_summary(result: GateResult) -> str:
    """A Markdown table for ``$GITHUB_STEP_SUMMARY`` (the job's summary page)."""
    def cell(s: str) -> str:
        return clean(s).replace("|", "\\|")

    icon = {"pass": "✅", "fail": "❌", "skip": "⏭️", "warn": "⚠️"}
    rows = ["### " + cell(result.verdict()), "", "| | check | measured | threshold | where | file |",
            "|---|---|---|---|---|---|"]
    for c in result.checks:
        measured = c.value_text() + (f" ({c.detail})" if c.detail else "")
        where = c.where + (f" vs {c.baseline_where}" if c.baseline_where else "")
        rows.append(f"| {icon[c.status]} | {cell(c.title)} | {cell(measured)} | {cell(c.threshold_text())} | "
                    f"{cell(where)} | {cell(_basename(c.file))} |")
    for e in result.errors:
        rows.append(f"| ⚠️ | input | {cell(e.reason)} | | | {cell(_basename(e.path))} |")
    for n in result.notes:
        rows.append(f"| ℹ️ | skipped input | {cell(n)} | | | |")
    return "\n".join(rows) + "\n"
