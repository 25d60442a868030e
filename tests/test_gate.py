"""``traceview gate`` as CI runs it: thresholds on the real EP2 prefill traces, per micro-batch and
per layer, baselines (across ranks, across run lengths), JUnit, GitHub annotations, TOML config,
and every bad input giving one line and exit 2."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from test_diff import one_iteration_trace
from traceview.cli import main
from traceview.errors import UsageError
from traceview.gate.checks import (FAIL, PASS, SKIP, GateResult, Thresholds, evaluate, parse_duration_us,
                                   parse_percent, run_gate)
from traceview.gate.junit import github_annotations, to_junit
from traceview.gate.summary import CategoryStat, GpuSummary, from_analysis

SERIAL0 = PROJECT_FIXTURES / "prefill_serial_rank0.json.gz"
TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
TBO1 = PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"
NO_COMM = PROJECT_FIXTURES / "gpu-extra" / "dense_decode_cudagraph.json.gz"


def run(*args, env=None):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(autouse=True)
def _no_ci_env(monkeypatch, tmp_path):
    """Tests run in an empty directory (no config to discover) and outside GitHub Actions."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def baseline_rank0(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("base") / "baseline.json"
    code, _, err = run("analyze", TBO0, "--format", "json", "-o", p)
    assert code == 0, err
    return p


# --- the measured values, and a threshold between them --------------------------------------------

def test_measured_exposed_comm_matches_the_facts():
    expected = {TBO0: (1460.6, 12936.8), TBO1: (6618.0, 27585.3), SERIAL0: (6052.3, 6052.3)}
    for path, (exposed, comm) in expected.items():
        (g,) = from_analysis(analysis_of(str(path)), views=[], kernels=False, tax=False)
        assert g.totals["exposed_comm_us"] == pytest.approx(exposed, rel=1e-4)
        assert g.totals["comm_us"] == pytest.approx(comm, rel=1e-4)


def test_threshold_between_passes_tbo_fails_serial():
    code, out, err = run("gate", TBO0, "--max-exposed-of-comm", "50%")
    assert code == 0, err
    (line, verdict) = out.strip().splitlines()
    assert line.startswith("PASS") and "11.3% of comm" in line and "0.730 of 6.468 ms/iter" in line
    assert "max 50%" in line and "rank 0 GPU 0" in line and "prefill_tbo_rank0.json.gz" in line
    assert verdict == "gate: PASS (1 check)"

    code, out, err = run("gate", SERIAL0, "--max-exposed-of-comm", "50%")
    assert code == 1 and err == ""
    (line, verdict) = out.strip().splitlines()
    assert line.startswith("FAIL") and "100.0% of comm" in line and "max 50%" in line and "rank 0 GPU 0" in line
    assert verdict == "gate: FAIL (1 of 1 check failed)"


def test_threshold_in_ms_and_several_inputs():
    code, out, _ = run("gate", TBO0, SERIAL0, "--max-exposed-comm-ms", "3")
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 3
    tbo = next(l for l in lines if "prefill_tbo_rank0" in l)
    serial = next(l for l in lines if "prefill_serial_rank0" in l)
    assert tbo.startswith("PASS") and "0.730 ms/iter" in tbo and "max 3.000 ms/iter" in tbo
    assert serial.startswith("FAIL") and "3.026 ms/iter" in serial
    # per iteration: 1.461 ms over 2 iterations passes a 1 ms gate (a 10-step profile would too)
    assert run("gate", TBO0, "--max-exposed-comm-ms", "1ms")[0] == 0
    assert run("gate", TBO0, "--max-exposed-comm-ms", "750us")[0] == 0
    assert run("gate", TBO0, "--max-exposed-comm-ms", "0.7ms")[0] == 1


def test_both_ranks_directory(tmp_path):
    d = tmp_path / "ranks"
    d.mkdir()
    for p in (TBO0, TBO1):
        (d / p.name).write_bytes(p.read_bytes())
    code, out, _ = run("gate", d, "--max-exposed-of-comm", "20%")
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("PASS") and "rank 0 GPU 0" in lines[0]
    assert lines[1].startswith("FAIL") and "rank 1 GPU 1" in lines[1] and "24.0% of comm" in lines[1]


# --- per micro-batch / layer / iteration -----------------------------------------------------------

def test_per_microbatch_gate():
    code, out, _ = run("gate", TBO1, "--max-exposed-comm-ms", "1.5", "--per", "microbatch", "--format", "json")
    assert code == 1
    doc = json.loads(out)
    checks = doc["checks"]
    assert [c["segment"]["microbatch"] for c in checks] == ["mb0", "mb1"]
    assert [c["status"] for c in checks] == [PASS, FAIL]  # mb0 1.31 ms/iter, mb1 1.99 ms/iter
    # per micro-batch exposed comm adds up to the GPU's total (6.62 ms over 2 iterations)
    assert sum(c["value"] for c in checks) == pytest.approx(6618.0 / 2, rel=1e-4)
    assert checks[1]["where"] == "rank 1 GPU 1 mb1" and "mb1" in checks[1]["message"]
    code, out, _ = run("gate", TBO1, "--max-exposed-of-comm", "25%", "--per", "microbatch")
    lines = out.strip().splitlines()
    assert lines[0].startswith("PASS") and "mb0" in lines[0] and "18.2% of comm" in lines[0]
    assert lines[1].startswith("FAIL") and "mb1" in lines[1] and "30.4% of comm" in lines[1]


def test_per_layer_and_iteration():
    a = analysis_of(str(TBO0))
    layers = a.segments("layer").filter(a.segments("layer")["comm_us"] > 0)
    r = run_gate([str(TBO0)], Thresholds(max_exposed_comm_us=400.0, per="layer"))
    assert len(r.checks) == layers.height > 0
    assert sum(c.value for c in r.checks) == pytest.approx(a.gpus[0].exposed_comm_us, rel=1e-6)
    worst = max(r.checks, key=lambda c: c.value)
    assert worst.status == FAIL and re.search(r"iteration \d layer \d mb\d", worst.where)
    assert all(c.status == PASS for c in r.checks if c.value <= 400.0)
    it = run_gate([str(TBO0)], Thresholds(max_exposed_comm_us=800.0, per="iteration"))
    assert [(c.segment["iteration"], c.status) for c in it.checks] == [("1", FAIL), ("2", PASS)]  # 858 / 603 µs


def test_gpu_without_communication_is_skipped():
    r = run_gate([str(NO_COMM)], Thresholds(max_exposed_of_comm_pct=10.0))
    (c,) = r.checks
    assert c.status == SKIP and r.exit_code == 0 and "no communication" in c.line()
    assert "1 skipped" in r.verdict()


# --- baselines -------------------------------------------------------------------------------------

def test_baseline_from_rank0_gates_rank1(baseline_rank0):
    code, out, err = run("gate", TBO1, "--baseline", baseline_rank0, "--max-regression", "5%")
    assert code == 1, err
    lines = out.strip().splitlines()
    failed = [l for l in lines if l.startswith("FAIL")]
    # rank 1 exposes 4.5x the communication, waiting in combine and dispatch; iteration time is unchanged
    assert any("regression: exposed comm: 3.309 ms/iter vs baseline 0.730 ms/iter (+353.1%)" in l for l in failed)
    assert any("moe.combine time" in l for l in failed) and any("moe.dispatch time" in l for l in failed)
    span = next(l for l in lines if "iteration time (span)" in l)
    assert span.startswith("PASS") and "126.176 ms/iter vs baseline 126.214" in span
    assert all("rank 1 GPU 1  vs baseline rank 0 GPU 0 (by position)" in l for l in lines[:-1])
    assert {l.split()[0] for l in lines[:-1]} == {"PASS", "FAIL"}
    assert len(failed) == 3 and lines[-1] == f"gate: FAIL (3 of {len(lines) - 1} checks failed)"


def test_baseline_same_rank_passes_and_per_microbatch(baseline_rank0):
    code, out, _ = run("gate", TBO0, "--baseline", baseline_rank0, "--per", "microbatch", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["passed"] and doc["thresholds"]["max_regression_pct"] == 5.0  # the default with --baseline
    seg = [c for c in doc["checks"] if c["segment"]]
    assert [c["segment"]["microbatch"] for c in seg] == ["mb0", "mb1"]
    assert all(c["baseline_where"] == "baseline rank 0 GPU 0" and c["value"] == pytest.approx(c["baseline"])
               for c in doc["checks"])


def test_baseline_of_different_length_is_per_iteration(baseline_rank0, tmp_path):
    short = one_iteration_trace(TBO0, tmp_path / "one_step.json.gz")
    r = run_gate([str(short)], Thresholds(baseline=str(baseline_rank0), max_regression_pct=10.0))
    span = next(c for c in r.checks if c.check == "regression.span")
    assert span.baseline == pytest.approx(252427.3 / 2, rel=1e-4) and span.value == pytest.approx(span.baseline, rel=0.05)
    assert "per iteration: 1 vs 2" in span.line()
    cats = {c.category: c for c in r.checks if c.check == "regression.category"}
    assert cats["gemm.grouped"].status == PASS and cats["attention.mla"].status == PASS
    exposed = next(c for c in r.checks if c.check == "regression.exposed_comm")
    assert exposed.value == pytest.approx(857.75, rel=1e-3) and exposed.status == FAIL  # step 1 exposed more


def test_regression_noise_floor_and_new_category():
    def gpu(cats: dict[str, float], exposed: float = 100.0) -> GpuSummary:
        totals = dict.fromkeys(("span_us", "busy_us", "compute_us", "comm_us", "memory_us", "overlap_us",
                                "exposed_comm_us", "exposed_memory_us", "idle_us"), 1000.0)
        totals["exposed_comm_us"] = exposed
        return GpuSummary("x.json", 0, 0, 1, totals, {c: CategoryStat(t, 1) for c, t in cats.items()}, {})

    base = [gpu({"norm": 20.0, "gemm.dense": 1000.0})]
    new = [gpu({"norm": 30.0, "gemm.dense": 1000.0, "quant": 400.0}, exposed=100.0)]
    t = Thresholds(baseline="b.json", max_regression_pct=5.0, min_regression_us=50.0)
    by_cat = {c.category: c for c in evaluate(new, t, base) if c.check == "regression.category"}
    assert by_cat["norm"].status == PASS and "noise floor" in by_cat["norm"].line()  # +50% but only 10 µs
    assert by_cat["quant"].status == FAIL and "(new)" in by_cat["quant"].line()
    t.min_regression_us = 0.0
    assert {c.category: c.status for c in evaluate(new, t, base) if c.category}["norm"] == FAIL


# --- machine output -----------------------------------------------------------------------------

SUREFIRE_TIME = re.compile(r"^(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]{0,3})?$")
INT = re.compile(r"^[0-9]+$")
# the Jenkins/Surefire JUnit schema (junit-10.xsd), restated: element -> (attributes: required?, type),
# children in order as (name, min, max)
JENKINS = {
    "testsuites": ({"name": (False, str), "time": (False, "time"), "tests": (False, int), "failures": (False, int),
                    "disabled": (False, int), "errors": (False, int)},
                   [("testsuite", 0, None)]),
    "testsuite": ({"name": (True, str), "tests": (True, int), "failures": (False, int), "errors": (False, int),
                   "group": (False, str), "time": (False, "time"), "disabled": (False, int), "skipped": (False, int),
                   "timestamp": (False, str), "hostname": (False, str), "id": (False, str), "package": (False, str),
                   "file": (False, str), "log": (False, str), "url": (False, str), "version": (False, str)},
                  [("properties", 0, 1), ("testcase", 0, None), ("system-out", 0, 1), ("system-err", 0, 1)]),
    "properties": ({}, [("property", 1, None)]),
    "property": ({"name": (True, str), "value": (True, str)}, []),
    "testcase": ({"name": (True, str), "assertions": (False, str), "time": (False, "time"),
                  "classname": (False, str), "status": (False, str), "class": (False, str), "file": (False, str),
                  "line": (False, str)},
                 [("skipped", 0, 1), ("error", 0, None), ("failure", 0, None), ("system-out", 0, None),
                  ("system-err", 0, None)]),
    "skipped": ({"message": (False, str)}, "text"),
    "error": ({"message": (False, str), "type": (False, str)}, "text"),
    "failure": ({"message": (False, str), "type": (False, str)}, "text"),
    "system-out": ({}, "text"),
    "system-err": ({}, "text"),
}


def validate_jenkins_junit(xml: str) -> None:
    """Raise AssertionError unless ``xml`` is valid against the Jenkins JUnit schema restated above."""
    root = ET.fromstring(xml)
    assert root.tag == "testsuites", f"root is <{root.tag}>"

    def check(el: ET.Element, path: str) -> None:
        assert el.tag in JENKINS, f"{path}: <{el.tag}> is not declared"
        attrs, content = JENKINS[el.tag]
        for a, v in el.attrib.items():
            assert a in attrs, f"{path}: attribute {a!r} is undeclared on <{el.tag}>"
            kind = attrs[a][1]
            if kind is int:
                assert INT.match(v), f"{path}/@{a}={v!r} is not an integer"
            elif kind == "time":
                assert SUREFIRE_TIME.match(v), f"{path}/@{a}={v!r} does not match SUREFIRE_TIME"
        for a, (required, _) in attrs.items():
            assert not required or a in el.attrib, f"{path}: <{el.tag}> lacks required attribute {a!r}"
        if content == "text":
            assert len(el) == 0, f"{path}: <{el.tag}> holds elements"
            return
        assert not (el.text or "").strip() and all(not (c.tail or "").strip() for c in el), f"{path}: text"
        i = 0
        kids = list(el)
        for name, lo, hi in content:  # a sequence: each particle in order, within its bounds
            n = 0
            while i < len(kids) and kids[i].tag == name:
                i, n = i + 1, n + 1
            assert n >= lo and (hi is None or n <= hi), f"{path}: {n} <{name}> in <{el.tag}>"
        assert i == len(kids), f"{path}: <{kids[i].tag if i < len(kids) else ''}> not allowed there"
        for k, c in enumerate(kids):
            check(c, f"{path}/{c.tag}[{k}]")

    check(root, "/testsuites")


def test_schema_check_rejects_what_the_schema_rejects():
    ok = '<testsuites><testsuite name="a" tests="1"><testcase name="t" time="0.010"/></testsuite></testsuites>'
    validate_jenkins_junit(ok)
    for bad in ('<testsuites><testsuite tests="1"/></testsuites>',
                '<testsuites><testsuite name="a" tests="1" colour="red"/></testsuites>',
                '<testsuites><testcase name="t"/></testsuites>',
                '<testsuites time="1.2.3"/>',
                '<testsuites><testsuite name="a" tests="x"/></testsuites>',
                '<testsuites><testsuite name="a" tests="1"><testcase name="t"><failure/><skipped/></testcase>'
                '</testsuite></testsuites>',
                '<testsuites><testsuite name="a" tests="1"><testcase name="t"/><properties><property name="n" '
                'value="v"/></properties></testsuite></testsuites>'):
        with pytest.raises(AssertionError):
            validate_jenkins_junit(bad)


def test_junit_validates_and_counts(tmp_path):
    xml_path = tmp_path / "report.xml"
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    code, out, err = run("gate", TBO0, SERIAL0, NO_COMM, bad, "--max-exposed-of-comm", "50%", "--junit", xml_path)
    assert code == 2 and "broken.json" in err  # an input error outranks the failed check
    xml = xml_path.read_text()
    validate_jenkins_junit(xml)
    root = ET.fromstring(xml)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert len(suites) == 4
    for s in suites.values():
        cases = s.findall("testcase")
        assert int(s.get("tests")) == len(cases)
        assert int(s.get("failures")) == sum(len(c.findall("failure")) for c in cases)
        assert int(s.get("errors")) == sum(len(c.findall("error")) for c in cases)
        assert int(s.get("skipped")) == sum(len(c.findall("skipped")) for c in cases)
    serial = suites["traceview gate: prefill_serial_rank0.json.gz"]
    (case,) = serial.findall("testcase")
    (failure,) = case.findall("failure")
    assert failure.get("type") == "exposed_of_comm_pct" and "100.0% of comm" in failure.get("message")
    assert case.get("name") == "exposed_of_comm_pct [rank 0 GPU 0]" and case.get("classname") == "traceview.gate.prefill_serial_rank0"
    assert suites["traceview gate: dense_decode_cudagraph.json.gz"].get("skipped") == "1"
    assert suites["traceview gate: broken.json"].find("testcase/error") is not None


def test_junit_of_a_passing_baseline_run(baseline_rank0, tmp_path):
    xml_path = tmp_path / "r.xml"
    code, _, _ = run("gate", TBO0, "--baseline", baseline_rank0, "--junit", xml_path, "--max-exposed-of-comm", "20%",
                     "--max-exposed-comm-ms", "2", "--per", "microbatch")
    assert code == 0
    xml = xml_path.read_text()
    validate_jenkins_junit(xml)
    root = ET.fromstring(xml)
    assert root.get("failures") == "0"
    names = [c.get("name") for c in root.iter("testcase")]
    assert len(names) == len(set(names)) > 10  # CI reporters merge test cases that share a name
    assert "regression.category gemm.grouped [rank 0 GPU 0]" in names and "exposed_comm_ms [rank 0 GPU 0 mb1]" in names


def test_junit_escapes_untrusted_strings():
    r = run_gate([str(SERIAL0)], Thresholds(max_exposed_of_comm_pct=10.0))
    r.checks[0].segment = {"microbatch": 'mb<0>&"\x1b[31m\x07'}
    r.checks[0].file = "a\x00b<c>.json"
    xml = to_junit(r)
    validate_jenkins_junit(xml)
    case = ET.fromstring(xml).find("testsuite/testcase")
    assert "mb<0>&\"" in case.get("name") and "\x1b" not in xml and "\x07" not in xml


def test_github_annotations(tmp_path):
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, out, _ = run("gate", TBO0, SERIAL0, "--max-exposed-of-comm", "50%", env=env)
    assert code == 1
    ann = [l for l in out.splitlines() if l.startswith("::")]
    assert len(ann) == 1  # the failed check only
    m = re.match(r"^::error title=([^:]*)::(.*)$", ann[0])
    assert m, ann[0]
    title, message = m.groups()
    assert "%3A" in title and "rank 0 GPU 0" in title  # ':' escaped inside a property
    assert message.startswith("FAIL") and "100.0%25 of comm" in message and "max 50%25" in message
    assert "❌" in summary.read_text() and "✅" in summary.read_text()
    # JSON on stdout stays parseable: annotations go to stderr
    code, out, err = run("gate", SERIAL0, "--max-exposed-of-comm", "50%", "--format", "json", env=env)
    assert code == 1 and json.loads(out)["checks"][0]["status"] == FAIL
    assert err.startswith("::error title=")
    # outside GitHub Actions: no annotations unless asked
    code, out, _ = run("gate", SERIAL0, "--max-exposed-of-comm", "50%")
    assert "::error" not in out
    code, out, _ = run("gate", SERIAL0, "--max-exposed-of-comm", "50%", "--github")
    assert "::error title=" in out


def test_annotations_for_bad_inputs():
    r = GateResult(Thresholds(max_exposed_of_comm_pct=1.0))
    from traceview.errors import TraceError

    r.errors.append(TraceError("x,y:z.json", "not a trace\nsecond line"))
    (line,) = github_annotations(r)
    # one workflow command per line: a newline in the reason never starts a second command
    assert line.startswith("::error title=traceview gate%3A input::") and "\n" not in line
    assert "x,y:z.json: not a trace" in line and "second line" in line


def test_json_report(tmp_path):
    out_file = tmp_path / "gate.json"
    code, out, _ = run("gate", TBO1, "--max-exposed-of-comm", "20%", "--format", "json", "-o", out_file)
    assert code == 1 and out == ""
    doc = json.loads(out_file.read_text())
    assert doc["schema"] == "traceview.gate/1" and doc["exit_code"] == 1 and not doc["passed"]
    (c,) = doc["checks"]
    assert c["check"] == "exposed_of_comm_pct" and c["value"] == pytest.approx(23.99, abs=0.01)
    assert c["threshold"] == 20.0 and c["rank"] == 1 and c["device"] == 1 and c["status"] == FAIL


# --- configuration ---------------------------------------------------------------------------------

def test_pyproject_discovery_and_flag_override(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.traceview.gate]\nmax_exposed_of_comm = "50%"\n')
    assert run("gate", SERIAL0)[0] == 1
    assert run("gate", TBO0)[0] == 0
    code, out, _ = run("gate", SERIAL0, "--max-exposed-of-comm", "100%")  # the flag wins
    assert code == 0 and "max 100%" in out
    code, _, err = run("gate", SERIAL0, "--no-config")
    assert code == 2 and "no thresholds" in err


def test_traceview_toml_wins_and_baseline_is_relative(tmp_path, baseline_rank0):
    (tmp_path / "pyproject.toml").write_text('[tool.traceview.gate]\nmax_exposed_of_comm = "100%"\n')
    perf = tmp_path / "perf"
    perf.mkdir()
    (perf / "baseline.json").write_bytes(baseline_rank0.read_bytes())
    (tmp_path / "traceview.toml").write_text(
        '[gate]\nmax_exposed_of_comm = 20\nper = "microbatch"\nbaseline = "perf/baseline.json"\nmax_regression = "5%"\n'
        'min_regression_ms = 0.1\n')
    code, out, _ = run("gate", TBO1, "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["thresholds"]["max_exposed_of_comm_pct"] == 20.0 and doc["thresholds"]["per"] == "microbatch"
    assert doc["thresholds"]["min_regression_us"] == 100.0
    assert Path(doc["thresholds"]["baseline"]) == perf / "baseline.json"
    assert {c["check"] for c in doc["checks"]} >= {"exposed_of_comm_pct", "regression.exposed_comm", "regression.span"}
    # an explicit --config elsewhere
    os_dir = tmp_path / "elsewhere"
    os_dir.mkdir()
    cfg = os_dir / "gate.toml"
    cfg.write_text('[tool.traceview.gate]\nmax_exposed_comm_ms = "7ms"\n')
    code, out, _ = run("gate", SERIAL0, "--config", cfg)
    assert code == 0 and "max 7.000 ms" in out and "%" not in out.splitlines()[0].split("max")[1]


def test_threshold_parsing():
    assert parse_percent("10%", "x") == 10.0 == parse_percent("10", "x") == parse_percent(10, "x")
    assert parse_percent(" 2.5 % ", "x") == 2.5
    assert parse_duration_us("2.5", "x") == 2500.0 == parse_duration_us("2.5ms", "x") == parse_duration_us(2.5, "x")
    assert parse_duration_us("800us", "x") == 800.0 and parse_duration_us("0.001s", "x") == 1000.0
    for bad in ("ten", "-5%", "5%%", "", "nan", True, "1e999"):
        with pytest.raises(UsageError):
            parse_percent(bad, "--max-exposed-of-comm")
    for bad in ("2.5 hours", "-1", "ms", False):
        with pytest.raises(UsageError):
            parse_duration_us(bad, "--max-exposed-comm-ms")


# --- bad input: one line, exit 2 -----------------------------------------------------------------

def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traceview: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_bad_inputs_exit_2_one_line(tmp_path):
    bad_json = tmp_path / "baseline.json"
    bad_json.write_text('{"schema": "traceview.analyze/1", "traces": [{"gpus": ')
    other_schema = tmp_path / "other.json"
    other_schema.write_text('{"schema": "something/2", "traces": []}')
    not_doc = tmp_path / "plain.json"
    not_doc.write_text('{"a": 1}')
    wrong_shape = tmp_path / "shape.json"
    wrong_shape.write_text('{"schema": "traceview.analyze/1", "traces": [{"gpus": [{"device": 0}]}]}')
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[tool.traceview.gate\nmax = 1")
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text('[tool.traceview.gate]\nmax_exposed = "10%"\n')
    bad_per = tmp_path / "per.toml"
    bad_per.write_text('[tool.traceview.gate]\nmax_exposed_of_comm = "10%"\nper = "rank"\n')
    cases = [
        (("gate", tmp_path / "missing.json.gz", "--max-exposed-of-comm", "10%"), "no such file"),
        (("gate", TBO0, "--baseline", bad_json), "not valid JSON"),
        (("gate", TBO0, "--baseline", other_schema), "unsupported schema"),
        (("gate", TBO0, "--baseline", not_doc), "not a traceview analyze document"),
        (("gate", TBO0, "--baseline", wrong_shape), "has no 'categories'"),
        (("gate", TBO0, "--baseline", tmp_path / "nope.json"), "no such file"),
        (("gate", TBO0, "--max-exposed-of-comm", "ten"), "'ten' is not a percentage"),
        (("gate", TBO0, "--max-exposed-of-comm", "-5%"), "must be a percentage >= 0"),
        (("gate", TBO0, "--max-exposed-comm-ms", "fast"), "is not a time"),
        (("gate", TBO0, "--max-regression", "5%"), "needs a baseline"),
        (("gate", TBO0), "no thresholds"),
        (("gate", TBO0, "--config", bad_toml), "invalid TOML"),
        (("gate", TBO0, "--config", unknown_key), "unknown key 'max_exposed'"),
        (("gate", TBO0, "--config", bad_per), "'rank' is not one of"),
        (("gate", TBO0, "--config", tmp_path / "none.toml"), "no such file"),
        (("gate", bad_json, "--max-exposed-of-comm", "10%"), "not valid JSON"),
    ]
    for args, words in cases:
        line = _one_line_error(*run(*args))
        assert words in line, (args, line)


def test_bad_input_beside_good_ones_still_reports_checks(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    code, out, err = run("gate", TBO0, empty, "--max-exposed-of-comm", "50%")
    line = _one_line_error(code, out, err)
    assert "empty.json" in line
    assert out.splitlines()[0].startswith("PASS") and out.strip().splitlines()[-1].startswith("gate: ERROR")


def test_unwritable_report_is_one_line(tmp_path):
    code, out, err = run("gate", TBO0, "--max-exposed-of-comm", "50%", "--junit", tmp_path / "no" / "dir" / "r.xml")
    assert "cannot write" in _one_line_error(code, out, err)


def test_two_gpus_in_one_trace():
    """The copy-engine capture drives both GPUs from one process: one check per GPU, no rank."""
    code, out, _ = run("gate", PROJECT_FIXTURES / "gpu-extra" / "prefill_tbo_copyengine.json.gz",
                       "--max-exposed-of-comm", "12%")
    assert code == 1
    gpu0, gpu1, _ = out.strip().splitlines()
    assert gpu0.startswith("PASS") and "  GPU 0  [" in gpu0 and "9.5% of comm" in gpu0
    assert gpu1.startswith("FAIL") and "  GPU 1  [" in gpu1 and "14.6% of comm" in gpu1


def test_docs_examples_match_the_output():
    """docs/ci.md shows real output: fail when it drifts from what the commands print."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
    _, out, _ = run("gate", TBO0, SERIAL0, "--max-exposed-comm", "2%")
    for line in out.strip().splitlines():
        assert line in doc, line
    _, out, _ = run("diff", SERIAL0, TBO0, "--format", "json")
    findings = [f["text"] for f in json.loads(out)["pairs"][0]["findings"]]
    shown = [l[4:] for l in doc.splitlines() if l.startswith("  * ")]
    assert len(shown) >= 6
    for line in shown:
        assert line in findings, line


def test_per_microbatch_on_a_gpu_without_communication():
    r = run_gate([str(NO_COMM)], Thresholds(max_exposed_comm_us=1000.0, per="microbatch"))
    (c,) = r.checks
    assert c.status == SKIP and r.exit_code == 0 and r.verdict() == "gate: PASS (1 check, 1 skipped)"


# --- loader warnings: a truncated rank must not pass unnoticed ----------------------------------------

def _ranks_with_one_truncated(tmp_path: Path) -> Path:
    import gzip

    d = tmp_path / "ranks"
    d.mkdir()
    (d / "rank0.json.gz").write_bytes(TBO0.read_bytes())
    raw = gzip.decompress(TBO1.read_bytes())
    (d / "rank1.json").write_bytes(raw[: len(raw) * 2 // 3])  # killed mid-write
    return d


def test_loader_warnings_are_warn_lines_and_strict_fails_them(tmp_path):
    d = _ranks_with_one_truncated(tmp_path)
    code, out, err = run("gate", d, "--max-exposed-of-comm", "50%")
    assert code == 0, err
    lines = out.strip().splitlines()
    warn = [x for x in lines if x.startswith("WARN")]
    assert len(warn) == 1 and "loader warnings: 1 warning" in warn[0] and "file is truncated" in warn[0]
    assert "[rank1.json]" in warn[0] and "allowed (--strict fails them)" in warn[0]
    assert lines[-1] == "gate: PASS (3 checks, 1 with loader warnings)"

    code, out, err = run("gate", d, "--max-exposed-of-comm", "50%", "--strict", "--junit", tmp_path / "j.xml")
    assert code == 1, err
    lines = out.strip().splitlines()
    assert [x.split()[0] for x in lines[:-1]] == ["FAIL", "PASS", "PASS"]
    assert "--strict: none allowed" in lines[0] and lines[-1] == "gate: FAIL (1 of 3 checks failed)"
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "j.xml").getroot()}
    truncated = suites["traceview gate: rank1.json"]
    assert truncated.get("failures") == "1" and truncated.find("testcase/failure").get("type") == "loader_warnings"

    # a clean input has nothing to warn about: --strict changes nothing
    code, out, _ = run("gate", TBO0, "--max-exposed-of-comm", "50%", "--strict")
    assert code == 0 and out.strip().splitlines()[-1] == "gate: PASS (1 check)"


def test_loader_warnings_in_json_github_and_config(tmp_path, monkeypatch):
    d = _ranks_with_one_truncated(tmp_path)
    code, out, _ = run("gate", d, "--max-exposed-of-comm", "50%", "--format", "json")
    doc = json.loads(out)
    (w,) = [c for c in doc["checks"] if c["check"] == "loader_warnings"]
    assert code == 0 and doc["passed"] and w["status"] == "warn" and w["value"] == 1
    assert "file is truncated" in w["detail"] and doc["thresholds"]["strict"] is False

    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run("gate", d, "--max-exposed-of-comm", "50%")
    (ann,) = [x for x in out.splitlines() if x.startswith("::")]
    assert ann.startswith("::warning title=traceview gate%3A loader warnings (rank1.json)::WARN")
    monkeypatch.delenv("GITHUB_ACTIONS")

    (tmp_path / "traceview.toml").write_text('[gate]\nmax_exposed_of_comm = "50%"\nstrict = true\n')
    code, out, _ = run("gate", d)
    assert code == 1 and out.startswith("FAIL  loader warnings")
    (tmp_path / "traceview.toml").write_text('[gate]\nmax_exposed_of_comm = "50%"\nstrict = "yes"\n')
    code, _, err = run("gate", d)
    assert code == 2 and "strict" in err and "is not true or false" in err and len(err.strip().splitlines()) == 1


def test_segments_file_is_honoured_by_gate_like_analyze(tmp_path):
    seg = tmp_path / "seg.toml"
    seg.write_text('[segments]\nmicrobatch = ["^zz(\\\\d+)$"]\n')  # our mb0/mb1 annotations no longer name micro-batches
    code, out, _ = run("gate", TBO0, "--per", "microbatch", "--max-exposed-of-comm", "50%")
    assert code == 0 and out.count("PASS  exposed") == 2
    code, out, err = run("gate", TBO0, "--per", "microbatch", "--max-exposed-of-comm", "50%", "--segments", seg)
    assert code == 0, err
    code2, csv, _ = run("analyze", TBO0, "--by", "microbatch", "--segments", seg, "--format", "csv")
    rows = [r for r in csv.splitlines()[1:] if r]
    assert out.count("PASS  exposed") == len(rows) == 1 and "0.730 of 6.468 ms/iter" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[segments]\nlayer = ["layer(\\\\d+"]\n')
    for cmd in (["gate", TBO0, "--max-exposed-of-comm", "50%"], ["report", TBO0, "-o", tmp_path / "r.html"],
                ["diff", TBO0, TBO0], ["analyze", TBO0]):
        code, out, err = run(*cmd, "--segments", bad)
        assert code == 2 and "bad regular expression" in err and len(err.strip().splitlines()) == 1, cmd


@needs_shared
def test_per_layer_on_a_trace_without_layers_is_a_skip_not_a_pass():
    code, out, _ = run("gate", shared("deepseek/train.json"), "--per", "layer", "--max-exposed-of-comm", "50%")
    assert code == 0
    health, line, verdict = out.strip().splitlines()
    assert health.startswith("WARN  trace health: no record shapes")  # train.json has no shapes: said, not failed
    assert line.startswith("SKIP") and "no layer segments in this trace" in line and "use --by gpu" in line
    assert verdict == "gate: PASS (2 checks, 1 skipped, 1 trace health problem)"


def test_share_is_of_the_iteration_not_of_comm():
    """Serial prefill: all of its 3.0 ms/iter communication is exposed (100% of comm), but that is
    2.5% of a 120.5 ms iteration: a 5% gate passes, where a share-of-comm gate said 100%."""
    code, out, _ = run("gate", SERIAL0, "--max-exposed-comm", "5%")
    assert code == 0, out
    assert "PASS  exposed comm: 2.5% of the iteration (3.026 ms/iter of a 120.461 ms iteration; 100.0% of comm)" in out
    assert run("gate", SERIAL0, "--max-exposed-comm", "2%")[0] == 1
    assert run("gate", SERIAL0, "--max-exposed-of-comm", "50%")[0] == 1  # the old ratio, still available


def test_by_phase_gates_the_combine_and_by_is_per():
    code, out, _ = run("gate", TBO0, "--by", "phase", "--max-exposed-comm-ms", "0.4")
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("FAIL  exposed comm: 0.425 ms/iter") and "GPU 0 combine" in lines[0]
    assert lines[1].startswith("PASS  exposed comm: 0.305 ms/iter") and "GPU 0 dispatch" in lines[1]
    assert run("gate", TBO0, "--per", "phase", "--max-exposed-comm-ms", "0.4")[1] == out
    code, out, _ = run("gate", SERIAL0, "--by", "stage", "--max-exposed-comm-ms", "1")
    assert code == 0 and "SKIP" in out and "no stage segments" in out


@needs_shared
def test_baseline_directory_of_traces(tmp_path):
    base = tmp_path / "serial"
    base.mkdir()
    for r in (0, 1):
        (base / f"prefill_serial_rank{r}.json.gz").write_bytes(shared(f"gpu/prefill_serial_rank{r}.json.gz").read_bytes())
    code, out, err = run("gate", TBO0, TBO1, "--baseline", base)
    assert code == 1, err
    lines = out.strip().splitlines()
    span = [l for l in lines if "iteration time" in l]
    assert len(span) == 2 and all("vs baseline rank" in l and "(" not in l.split("vs baseline rank")[1] for l in span)
    assert "126.214 ms/iter vs baseline 120.461 ms/iter (+4.8%)" in span[0]
    assert any(l.startswith("FAIL  regression: gemm.grouped time") for l in lines)


def test_a_skipped_sidecar_is_a_note_in_junit_github_and_the_summary(tmp_path):
    """A manifest scanned beside the ranks does not fail the gate; every CI output names it as skipped."""
    import shutil

    from traceview.gate.junit import step_summary

    shutil.copy(TBO0, tmp_path / "rank0.json.gz")
    (tmp_path / "MANIFEST.json").write_text('{"files": {}}')
    xml_path = tmp_path / "j.xml"
    code, out, _ = run("gate", tmp_path, "--max-exposed-of-comm", "50%", "--junit", xml_path, "--github")
    assert code == 0
    xml = xml_path.read_text()
    validate_jenkins_junit(xml)
    root = ET.fromstring(xml)
    (suite,) = [s for s in root if s.get("name") == "traceview gate: skipped inputs"]
    (case,) = list(suite.iter("testcase"))
    assert "MANIFEST.json" in case.find("skipped").get("message") and suite.get("skipped") == "1"
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in root)
    notices = [ln for ln in out.splitlines() if ln.startswith("::notice")]
    assert len(notices) == 1 and "MANIFEST.json" in notices[0]
    t = Thresholds(max_exposed_of_comm_pct=50.0)
    r = GateResult(t, evaluate(from_analysis(analysis_of(str(TBO0))), t),
                   notes=["skipped x/MANIFEST.json: not a trace (found in a directory)"])
    assert "| ℹ️ | skipped input | skipped x/MANIFEST.json" in step_summary(r)
