"""Fetch the Catapult trace viewer (the viewer behind chrome://tracing) for the browser test
of annotated traces (tests/test_annotate_viewer.py), with the registries' ordinary clients.

Debian's Chromium is built without Catapult (its ``disable/catapult.patch``), so
chrome://tracing does not load there, and the Perfetto UI is on no package registry.  The
same viewer ships, vulcanized into one page, in PyPI's ``torch-tb-profiler`` (PyTorch's
TensorBoard plugin showed Kineto traces with it); it needs the Web Components v0 polyfill,
npm's ``webcomponents.js`` 0.7.24.

    python scripts/get_trace_viewer.py [DIR]     # default: ~/.cache/traceview/trace-viewer
    TRACEVIEW_TRACE_VIEWER=DIR pytest tests/test_annotate_viewer.py
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "traceview" / "trace-viewer"
WHEEL = "torch-tb-profiler==0.4.3"
POLYFILL = "webcomponents.js@0.7.24"


def fetch(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("torch_tb_profiler-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            (dest / "trace_viewer_full.html").write_bytes(z.read("torch_tb_profiler/static/trace_viewer_full.html"))
        subprocess.run(["npm", "pack", "--silent", POLYFILL], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(next(Path(tmp).glob("webcomponents.js-*.tgz"))) as t:
            (dest / "webcomponents.min.js").write_bytes(t.extractfile("package/webcomponents.min.js").read())
    return dest


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
