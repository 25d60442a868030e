"""Annotated traces opened in a real trace viewer, in headless Chromium.

chrome://tracing does not load in Debian's Chromium (built without Catapult), and the
Perfetto UI is on no package registry; the Catapult trace viewer that chrome://tracing
runs is fetched by ``scripts/get_trace_viewer.py`` (PyPI torch-tb-profiler + npm polyfill)
and opened from a local server.  The test reads back what the viewer built from the file:
traceview's process sorted right after its GPU, every added slice on its track, the async
micro-batch rows, the counters, the cross-rank arrows, and no import warning about
traceview's events.  Skipped, with the reason, where the browser or the viewer is missing.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import PROJECT_FIXTURES, SHARED, shared
from test_report_html import CHROMEDRIVER, CHROMIUM, _browser_missing
from traceview.annotate import CATEGORY, annotate

VIEWER = Path(os.environ.get("TRACEVIEW_TRACE_VIEWER", Path.home() / ".cache" / "traceview" / "trace-viewer"))
PAGE = Path(__file__).parent / "viewer" / "view.html"
TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"


def _missing() -> str | None:
    why = _browser_missing()
    if why:
        return why
    for f in ("trace_viewer_full.html", "webcomponents.min.js"):
        if not (VIEWER / f).exists():
            return f"{VIEWER / f} not found (python scripts/get_trace_viewer.py fetches the trace viewer)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A local web server over the viewer page, the viewer and the annotated traces."""
    root = tmp_path_factory.mktemp("viewer")
    for f in ("trace_viewer_full.html", "webcomponents.min.js"):
        shutil.copy(VIEWER / f, root / f)
    shutil.copy(PAGE, root / "view.html")
    annotate([TBO0], root / "tbo0.tv.json.gz")
    if SHARED.is_dir():
        ep2 = root / "ep2"
        ep2.mkdir()
        for r in (0, 1):
            shutil.copy(shared(f"gpu/prefill_tbo_rank{r}.json.gz"), ep2)
        annotate([ep2], root / "ep2.tv.json.gz")
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", "--window-size=1600,1200"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


_MODEL = """
const m = window.__tvModel;
const procs = Object.values(m.processes).map(p => ({
  pid: p.pid, name: p.name || null, sort: p.sortIndex,
  counters: Object.values(p.counters).map(c => c.name),
  threads: Object.values(p.threads).map(t => ({
    tid: t.tid, name: t.name || null, slices: t.sliceGroup.length,
    async: t.asyncSliceGroup.slices.map(s => s.title)}))}));
return {procs, flows: m.flowEvents.map(f => f.title),
        warnings: m.importWarnings.map(w => w.type + ": " + w.message)};
"""


def _open(browser, base: str, trace: str, png: Path) -> dict:
    browser.get(f"{base}/view.html?trace={trace}")
    for _ in range(120):
        done, error = browser.execute_script("return [window.__tvDone || false, window.__tvError || null]")
        if done or error:
            break
        time.sleep(0.5)
    assert done and not error, error
    time.sleep(1)  # let the track view draw
    browser.save_screenshot(str(png))
    if os.environ.get("TRACEVIEW_SCREENSHOTS"):
        shutil.copy(png, Path(os.environ["TRACEVIEW_SCREENSHOTS"]) / png.name)
    return browser.execute_script(_MODEL)


def _file(root: Path, name: str) -> dict:
    return json.loads(gzip.decompress((root / name).read_bytes()))


def _check_added(doc: dict, model: dict) -> None:
    added = [e for e in doc["traceEvents"] if e.get("cat") == CATEGORY]
    ours = [p for p in model["procs"] if (p["name"] or "").startswith("traceview: ")]
    assert ours and len(ours) == len({e["pid"] for e in added if e["ph"] == "X"})
    by_pid = {p["pid"]: p for p in model["procs"]}
    sort_of = {e["pid"]: e["args"]["sort_index"] for e in added if e["name"] == "process_sort_index"}
    for p in ours:
        # sorted right after the GPU it describes: the next process in the viewer's order is ours
        gpu = [q for q in model["procs"] if q["sort"] == p["sort"] - 1]
        assert len(gpu) == 1 and p["sort"] == sort_of[p["pid"]], p["name"]
        for t in p["threads"]:
            xs = [e for e in added if e["ph"] == "X" and e["pid"] == p["pid"] and e["tid"] == t["tid"]]
            assert t["slices"] == len(xs), (p["name"], t["name"])  # every slice on its track, none dropped
            tops = [e["name"] for e in added if e["ph"] == "b" and e["pid"] == p["pid"] and e["tid"] == t["tid"]
                    and not e["name"].startswith("layer ")]
            assert sorted(t["async"]) == sorted(tops), t["name"]
        assert {"in-flight comm kernels", "exposed comm share of iteration"} <= set(p["counters"])
        assert by_pid[p["pid"]]["threads"]
    # the only import warnings are the profiler's own half-open flow arrows, never ours
    ids = {e.get("id") for e in added}
    assert all(w.startswith("flow_") for w in model["warnings"]), model["warnings"][:5]
    assert not [w for w in model["warnings"] if any(f"id: {i} " in w + " " for i in ids if i is not None)]


def test_single_rank_in_the_trace_viewer(browser, site, tmp_path):
    root, base = site
    model = _open(browser, base, "tbo0.tv.json.gz", tmp_path / "annotated_prefill_tbo_rank0.png")
    _check_added(_file(root, "tbo0.tv.json.gz"), model)
    threads = {t["name"] for p in model["procs"] for t in p["threads"]}
    assert {"exposed comm", "iterations", "mb0 (async)", "mb1 (async)", "class moe.dispatch"} <= threads


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures is not here")
def test_merged_ranks_in_the_trace_viewer(browser, site, tmp_path):
    root, base = site
    model = _open(browser, base, "ep2.tv.json.gz", tmp_path / "annotated_ep2.png")
    doc = _file(root, "ep2.tv.json.gz")
    _check_added(doc, model)
    arrows = [e for e in doc["traceEvents"] if e.get("cat") == CATEGORY and e["ph"] == "s"]
    assert model["flows"].count("collective") == len(arrows) > 0
    names = [p["name"] for p in model["procs"] if p["name"]]
    assert any(n.startswith("rank 0: ") for n in names) and any(n.startswith("rank 1: ") for n in names)
