"""``traceview report``: the self-contained HTML overlap report.

Two halves: fast checks on the generated HTML (sections, numbers equal to the library's,
escaping, no network, the size bound on a trace as big as a 1 GB one), and the page as a
user sees it, in headless Chromium driven by selenium (rendered plots, no console errors,
an injected <script> that does not run).  The browser half is skipped, with the reason,
only where chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from conftest import PROJECT_FIXTURES, analysis_of, needs_shared, shared
from traceview.cli import main
from traceview.report.html import json_for_script, plotly_js, render_html

TBO0 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz"
TBO1 = PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"
SMALL = PROJECT_FIXTURES / "gpu-extra" / "tp2_dense_decode_rank0.json.gz"
INJECT = "<script>window.__pwned=1</script>"
INJECT_CLOSE = "</script><script>window.__pwned=2</script>"
INJECT_PHASE = "attn<img src=x onerror=window.__pwned=3>"
EVIL_FILE = "evil<img src=x onerror=window.__pwned=4>_rank0.json.gz"


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def figures(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="tv-figures">(.*?)</script>', html_text, re.S)
    assert m, "figure data block missing"
    return json.loads(m.group(1))


def timeline_of(figs: dict) -> dict:
    return next(f for f in figs.values() if "</b> timeline" in f["layout"]["title"]["text"])


def make_injected(tmp: Path) -> Path:
    """A copy of a small real trace whose longest kernel, another kernel and an annotation
    carry HTML/script payloads (the file name too)."""
    doc = json.loads(gzip.decompress(SMALL.read_bytes()))
    kernels = sorted((e for e in doc["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: -e.get("dur", 0))
    kernels[0]["name"] = INJECT
    kernels[1]["name"] = INJECT_CLOSE
    for e in doc["traceEvents"]:
        if e.get("cat") == "user_annotation" and e.get("name") == "attn":
            e["name"] = INJECT_PHASE
    out = tmp / EVIL_FILE
    out.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return out


# --- the HTML itself -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tbo0_report():
    return render_html([analysis_of(str(TBO0))])


def test_sections_and_verdict_on_prefill_tbo(tbo0_report):
    a = analysis_of(str(TBO0))
    html_text = tbo0_report.html
    for heading in ("Timeline", "Micro-batches and layers", "Kernel categories", "Top kernels",
                    "Unclassified kernels"):
        assert f"<h2>{heading}" in html_text
    assert "prefill_tbo_rank0.json.gz" in html_text and "NVIDIA H200" in html_text
    assert "0 of world size 2" in html_text
    assert ("iteration 126.2 ms (mean of 2): compute 122.0 ms/iter, exposed communication 0.730 ms/iter (0.6%)"
            in html_text)
    assert "if the exposed communication were hidden: 125.5 ms" in html_text
    assert "<h3>Iterations (ms)</h3>" in html_text and "128.962" in html_text and "no kernel queued" in html_text
    assert "Budget reconciliation" not in html_text  # only with --model/--gpu
    assert not tbo0_report.reduced and tbo0_report.boxes == a.kernels.height == 1822
    # timeline, per micro-batch, per layer, categories
    assert tbo0_report.figures == 4 == len(figures(html_text))


def test_card_colour_follows_what_costs_time_with_a_legend():
    """tp2 dense decode: all of its communication is exposed (a red card by exposed/comm), but
    that is 3.4% of the iteration; it is host-bound (no kernel queued 30.7%): red for that."""
    html_text = render_html([analysis_of(str(TBO0))]).html
    assert 'class="card verdict "' in html_text  # 0.6% exposed + 1.6% host gaps: green
    assert "Card colour: the share of the iteration lost to exposed communication" in html_text
    dense = render_html([analysis_of(str(PROJECT_FIXTURES / "gpu-extra" / "tp2_dense_decode_rank0.json.gz"))]).html
    assert 'class="card verdict bad"' in dense and "host-bound: no kernel queued for 2.209 ms/iter" in dense


def test_exposed_overlay_is_the_exposed_metric(tbo0_report):
    """The red lane adds up to the GPU's exposed communication; its pieces lie where comm
    kernels ran and no compute kernel did."""
    a = analysis_of(str(TBO0))
    g = a.gpus[0]
    tl = timeline_of(figures(tbo0_report.html))
    (lane,) = [t for t in tl["data"] if t["name"] == "exposed communication"]
    assert sum(lane["x"]) == pytest.approx(g.exposed_comm_us / 1000, abs=1e-4 * len(lane["x"]))
    ticks = tl["layout"]["yaxis"]["ticktext"]
    assert "stream 7 · compute" in ticks and "stream 21 · comm" in ticks and "<b>exposed comm</b>" in ticks
    assert {"mb0 · layer", "mb1 · layer", "mb0 · phase", "mb1 · phase"} <= set(ticks)
    k = a.kernels
    comp = k.filter(pl.col("role") == "compute")
    for base, width in zip(lane["base"][:10], lane["x"][:10]):
        mid = g.start_us + (base + width / 2) * 1000
        assert comp.filter((pl.col("ts") < mid) & (pl.col("end") > mid)).height == 0
        assert k.filter((pl.col("role") == "comm") & (pl.col("ts") <= mid) & (pl.col("end") >= mid)).height > 0
    # every kernel is drawn once, in its category's trace
    per_cat = {t["name"]: len(t["x"]) for t in tl["data"] if t.get("legendgroup") in ("compute", "comm", "memory")}
    assert per_cat == {c: ct.count for c, ct in g.categories.items()}


def test_microbatch_and_layer_bars_match_segments(tbo0_report):
    a = analysis_of(str(TBO0))
    figs = list(figures(tbo0_report.html).values())
    mb_fig = next(f for f in figs if "Per micro-batch" in f["layout"]["title"]["text"])
    seg = a.segments("microbatch").filter(pl.col("microbatch") != "(none)")
    names = {t["name"]: t for t in mb_fig["data"]}
    assert names["compute"]["x"] == ["mb0", "mb1"]
    assert names["compute"]["y"] == pytest.approx((seg["compute_us"] / 1000).to_list(), abs=1e-3)
    assert names["exposed communication"]["y"] == pytest.approx((seg["exposed_comm_us"] / 1000).to_list(), abs=1e-3)
    assert names["communication hidden under compute"]["y"] == pytest.approx(
        (seg["overlapped_comm_us"] / 1000).to_list(), abs=1e-3)
    layer_fig = next(f for f in figs if "per layer" in f["layout"]["title"]["text"])
    (exposed,) = [t for t in layer_fig["data"] if t["name"] == "exposed communication"]
    lay = a.segments("layer").filter(pl.col("layer") != "(none)")
    assert exposed["x"][0] == ["L0", "L0", "L1", "L1", "L2", "L2", "L3", "L3"]
    assert sum(exposed["y"]) == pytest.approx(lay["exposed_comm_us"].sum() / 1000 / 2, abs=1e-3)  # mean of 2 iterations


def test_category_shares_and_tables(tbo0_report):
    a = analysis_of(str(TBO0))
    figs = list(figures(tbo0_report.html).values())
    cat_fig = next(f for f in figs if "Where the GPU time goes" in f["layout"]["title"]["text"])
    assert sum(t["x"][0] for t in cat_fig["data"]) == pytest.approx(100.0, abs=0.05)
    shares = {t["name"]: t["x"][0] for t in cat_fig["data"]}
    assert shares["attention.mla"] == pytest.approx(100 * a.gpus[0].categories["attention.mla"].share, abs=0.01)
    html_text = tbo0_report.html
    top_name = a.top_kernels(1)["name"][0]
    # the trace holds the mangled name; tables and hover text show it demangled (classify.display_name)
    assert top_name.startswith("_ZN7cutlass13device_kernel")
    assert "cutlass::device_kernel&lt;at::cuda::detail::enable_3x_kernel_for_sm9x" in html_text
    assert "_ZN7cutlass13device_kernel" not in html_text
    assert "None: every kernel matched a classification rule." in html_text


def test_figures_are_valid_plotly(tbo0_report):
    import plotly.graph_objects as go

    for fig in figures(tbo0_report.html).values():
        go.Figure(fig)  # raises on an unknown property or a bad value


def test_self_contained_and_offline(tbo0_report):
    html_text = tbo0_report.html
    assert plotly_js()[:2000] in html_text  # plotly.js inlined
    assert not re.search(r"<(script|link|img|iframe|source|video|audio)\b[^>]*\b(src|href)\s*=", html_text, re.I)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html_text).group(1)
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp and "unsafe-inline" not in csp.split(";")[1]
    # exactly three script elements: the JSON data, plotly.js, and the boot script
    assert len(re.findall(r"<script\b", html_text)) == 3 and html_text.count("</script>") == 3


def test_json_for_script_cannot_close_the_element():
    text = json_for_script({"k": "</script><script>alert(1)</script>", "t": "a & b > c\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"k": "</script><script>alert(1)</script>", "t": "a & b > c\u2028"}


def test_trace_strings_are_escaped(tmp_path):
    import traceview

    a = traceview.analyze(make_injected(tmp_path))
    html_text = render_html([a]).html
    for payload in (INJECT, INJECT_CLOSE, INJECT_PHASE, EVIL_FILE):
        assert payload not in html_text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html_text        # top/unclassified kernels table
    assert "evil&lt;img src=x onerror=window.__pwned=4&gt;_rank0.json.gz" in html_text  # the file name
    data = re.search(r'id="tv-figures">(.*?)</script>', html_text, re.S).group(1)
    assert "<" not in data and "</script" not in data.lower()
    figs = json.loads(data)
    hovers = [h for f in figs.values() for t in f["data"] for h in (t.get("hovertext") or [])]
    texts = [x for f in figs.values() for t in f["data"] for x in (t.get("text") or []) if isinstance(x, str)]
    # inside plotly strings the payload is entity-escaped (plotly shows entities as text)
    assert any("&lt;script&gt;window.__pwned=1&lt;/script&gt;" in h for h in hovers)
    assert any("attn&lt;img src=x onerror=window.__pwned=3&gt;" in x for x in texts + hovers)
    assert not any("<script" in s or "<img" in s for s in hovers + texts)


def test_big_trace_is_reduced_and_small(tmp_path):
    """A trace holding as many kernels as a 1 GB one (prefill_tbo_rank0 repeated back to back
    until its JSON would reach 1 GiB) still gives a report well under 25 MB, and says so."""
    from traceview.analysis import TraceAnalysis
    from traceview.metrics import all_devices
    from traceview.segment import Segmentation

    src = analysis_of(str(TBO0))
    copies = -(-(1 << 30) // len(gzip.decompress(TBO0.read_bytes())))
    k, lab, n = src.kernels, src.segmentation.labels, src.kernels.height
    period = float(k["end"].max() - k["ts"].min()) + 1000.0
    reps = pl.DataFrame({"rep": list(range(copies))})
    big = (k.join(reps, how="cross").with_columns(
        pl.col("ts") + pl.col("rep") * period, pl.col("end") + pl.col("rep") * period,
        pl.col("row") + pl.col("rep") * n).drop("rep").sort("device", "ts", "row"))
    labels = lab.join(reps, how="cross").with_columns(pl.col("row") + pl.col("rep") * n).drop("rep")
    a = TraceAnalysis(trace=src.trace, kernels=big, gpus=all_devices(big), rules=src.rules)
    a.__dict__["segmentation"] = Segmentation(labels=labels, sources=dict(src.segmentation.sources),
                                              num_microbatches=2)
    assert big.height == copies * n > 300_000
    rep = render_html([a], max_events=20_000)
    assert len(rep.html.encode()) < 25e6
    assert rep.reduced and rep.boxes <= 20_000 and rep.kernels == big.height
    assert "Reduced timeline." in rep.html and "kernel by kernel" in rep.html and "merged into one box" in rep.html
    tl = timeline_of(figures(rep.html))
    drawn = sum(len(t["x"]) for t in tl["data"])
    assert drawn < 30_000  # kernels, exposed pieces and bands together
    # the exposed lane still adds up (joined pieces keep their covered time in the hover)
    assert a.gpus[0].exposed_comm_us == pytest.approx(copies * src.gpus[0].exposed_comm_us, rel=1e-6)
    # a smaller budget gives a smaller page
    assert len(render_html([a], max_events=2_000).html) < len(rep.html)


# --- the command ---------------------------------------------------------------------------

def test_cli_writes_report(tmp_path):
    out = tmp_path / "r.html"
    code, _out, err = run("report", TBO0, "-o", out)
    assert code == 0, err
    assert "wrote" in err and out.stat().st_size > 1_000_000
    assert "<h2>Timeline" in out.read_text()


def test_cli_directory_of_ranks(tmp_path):
    d = tmp_path / "ep2"
    d.mkdir()
    for f in (TBO0, TBO1):
        shutil.copy(f, d / f.name)
    out = tmp_path / "ep2.html"
    code, _o, err = run("report", d, "-o", out)
    assert code == 0, err
    text = out.read_text()
    assert "r0/gpu0" in text and "r1/gpu1" in text and "0, 1 of world size 2" in text
    # a run of two: both ranks in detail, each under its own heading, after the run page
    assert text.index("Run: all ranks together") < text.index("Per-rank detail") < text.index("Detail: rank 0")
    assert "Every file has its detail below (rank 0, rank 1)" in text and "Detail: rank 1" in text
    assert text.count("<h2>Top kernels</h2>") == 2
    assert len([f for f in figures(text).values() if "</b> timeline" in f["layout"]["title"]["text"]]) == 2


def test_cli_reconciliation(tmp_path):
    out = tmp_path / "r.html"
    code, _o, err = run("report", TBO0, "-o", out, "--model", "deepseek-v3", "--gpu", "H200")
    assert code == 0, err
    text = out.read_text()
    assert "<h2>Budget reconciliation" in text and "routed_experts" in text and "measured vs modeled" in text


def test_cli_reconciliation_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "traceview.budget.reconcile", None)  # import -> ImportError
    out = tmp_path / "r.html"
    code, _o, err = run("report", TBO0, "-o", out, "--model", "deepseek-v3", "--gpu", "H200")
    assert code == 0, err
    assert "Reconciliation unavailable" in out.read_text()


@pytest.mark.parametrize("args, message", [
    (["missing.json", "-o", "{tmp}/r.html"], "missing.json: no such file or directory"),
    (["{tmp}/bad.json.gz", "-o", "{tmp}/r.html"], "bad.json.gz"),
    ([str(TBO0), "-o", "{tmp}/no/such/dir/r.html"], "directory does not exist"),
    ([str(TBO0), "-o", "{tmp}/r.html", "--gpu", "H200"], "--gpu goes with --model"),
    ([str(TBO0), "-o", "{tmp}/r.html", "--model", "nosuchmodel", "--gpu", "H200"], "unknown model"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "bad.json.gz").write_bytes(b"\x1f\x8b not gzip at all")
    code, out, err = run("report", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traceview: error: ") and message in lines[0], err
    assert not (tmp_path / "r.html").exists()


# --- in a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} not found (apt-get install chromium chromium-driver; .ci/run does)"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1500,1100"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """name -> (html path, number of figures) for the reports the browser opens."""
    tmp = tmp_path_factory.mktemp("reports")
    ep2 = tmp / "ep2"
    ep2.mkdir()
    for f in (TBO0, TBO1):
        shutil.copy(f, ep2 / f.name)
    inputs = {"prefill_tbo_rank0": TBO0, "ep2": ep2, "injected": make_injected(tmp)}
    if shared("deepseek/train.json").exists():
        inputs["train"] = shared("deepseek/train.json")
    out = {}
    for name, src in inputs.items():
        path = tmp / f"{name}.html"
        code, _o, err = run("report", src, "-o", path)
        assert code == 0, err
        out[name] = (path, len(figures(path.read_text())))
    return out


def _open(driver, path: Path, n_figures: int) -> list[dict]:
    """Load the page from a file:// URL, wait until every plot is drawn; the console log."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        ready = driver.execute_script("return document.body && document.body.getAttribute('data-plots-ready')")
        if ready:
            break
        time.sleep(0.1)
    assert ready == str(n_figures), f"plots not drawn (data-plots-ready={ready!r})"
    return driver.get_log("browser")


_PIXELS_JS = """
const done = arguments[arguments.length - 1];
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const colors = new Set(); let nonWhite = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 7) {
    n++; if (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245) nonWhite++;
    colors.add((d[i] >> 3) << 10 | (d[i + 1] >> 3) << 5 | (d[i + 2] >> 3));
  }
  done([colors.size, nonWhite / n]);
};
img.onerror = () => done([0, 0]);
img.src = 'data:image/png;base64,' + arguments[0];
"""


def _screenshot_stats(driver, element=None) -> tuple[int, float]:
    """(distinct colors, share of non-white pixels) of a screenshot, decoded by the browser."""
    png = (element or driver).screenshot_as_base64 if element is not None else driver.get_screenshot_as_base64()
    return tuple(driver.execute_async_script(_PIXELS_JS, png))


def _check_rendered(driver, path: Path, n_figures: int) -> None:
    from selenium.webdriver.common.by import By

    logs = _open(driver, path, n_figures)
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert not severe, severe
    assert len(driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) == n_figures
    assert len(driver.find_elements(By.CSS_SELECTOR, ".main-svg")) >= n_figures
    # every plot drew its bars (heatmaps: their image), the timelines many of them
    bars = driver.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(p => p.querySelectorAll('g.point path').length + p.querySelectorAll('g.hm image').length)")
    assert all(b > 0 for b in bars) and max(bars) > 500, bars
    colors, ink = _screenshot_stats(driver)
    assert colors > 40 and ink > 0.05, (colors, ink)
    tl = driver.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    driver.execute_script("arguments[0].scrollIntoView()", tl)
    colors, ink = _screenshot_stats(driver, tl)
    assert colors > 15 and ink > 0.15, (colors, ink)


@needs_browser
def test_browser_prefill_tbo_rank0(browser, reports):
    _check_rendered(browser, *reports["prefill_tbo_rank0"])
    text = browser.find_element("tag name", "body").text
    assert "iteration 126.2 ms (mean of 2)" in text


@needs_browser
def test_browser_directory_of_both_ep2_ranks(browser, reports):
    _check_rendered(browser, *reports["ep2"])
    text = browser.find_element("tag name", "body").text
    assert "r0/gpu0" in text and "r1/gpu1" in text
    # the run page comes first: the straggler card, all ranks on one clock, the heatmaps
    assert text.index("Run: all ranks together") < text.index("Per-rank detail")
    assert "is the straggler: last at" in text and "All ranks on one clock" in text
    # zooming the run timeline moves every rank's lane: they share one x axis
    lanes = browser.execute_script("""
        const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
                        .find(p => (p.layout.title.text || '').startsWith('All ranks on one clock'));
        return [gd.layout.yaxis.ticktext, new Set(gd.data.map(t => t.xaxis || 'x')).size,
                gd.data.find(t => t.name === 'last arrival').x.length];""")
    assert lanes[0] == ["rank 0", "rank 1"] and lanes[1] == 1 and lanes[2] > 0


@needs_browser
@needs_shared
def test_browser_deepseek_train(browser, reports):
    _check_rendered(browser, *reports["train"])
    assert "NVIDIA H800" in browser.find_element("tag name", "body").text


@needs_browser
def test_browser_injected_script_does_not_run(browser, reports):
    path, n = reports["injected"]
    _check_rendered(browser, path, n)
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    body = browser.find_element("tag name", "body").text
    assert INJECT in body and EVIL_FILE in body  # shown as text
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    # the hover label of the injected kernel shows the payload as text too
    label = browser.execute_script("""
        const gd = document.querySelector('.js-plotly-plot');
        const i = gd.data.findIndex(t => (t.hovertext || []).some(h => h.includes('__pwned=1')));
        const j = gd.data[i].hovertext.findIndex(h => h.includes('__pwned=1'));
        Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: j}]);
        const h = document.querySelector('.hoverlayer');
        return h ? h.textContent : null;""")
    assert label and INJECT in label, label
    assert browser.execute_script("return typeof window.__pwned") == "undefined"


def test_run_lane_pieces_cover_the_real_intervals_within_the_limit():
    """The run page joins a rank's compute intervals into at most the lane's limit of boxes; every real
    interval lies inside one box, boxes stay sorted and disjoint, and nothing is joined below the limit."""
    import numpy as np

    from traceview.run.summary import summarize
    from traceview.timeline.intervals import coarsen as _pieces

    (r,) = summarize(analysis_of(str(PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz")))
    s, e = np.asarray(r.compute_start, float), np.asarray(r.compute_end, float)
    assert len(s) > 200
    same_s, same_e = _pieces(s, e, len(s))
    assert np.array_equal(same_s, s) and np.array_equal(same_e, e)
    for limit in (200, 37):
        ps, pe = _pieces(s, e, limit)
        assert 0 < len(ps) <= limit and np.all(ps[1:] >= pe[:-1]) and np.all(pe >= ps)
        box = np.searchsorted(ps, s, side="right") - 1
        assert np.all(box >= 0) and np.all(e <= pe[box]) and np.all(s >= ps[box])
        assert (pe - ps).sum() >= (e - s).sum() - 1e-6
