"""The README's library snippet runs as written (in a subprocess, from the repository root), and
the extra it names brings what the snippet needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("As a library", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", after, re.S)[:1]
    return code


def test_readme_python_snippet_runs():
    code = _snippet()
    assert "to_pandas()" in code and "traceview.analyze(" in code
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.splitlines()[1]) == __import__("pytest").approx(126_214, abs=1)  # mean iteration, µs


def test_pandas_extra_declares_what_to_pandas_needs():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0] for d in extras["pandas"]}
    assert {"pandas", "pyarrow"} <= names
    assert '".[pandas]"' in (ROOT / "README.md").read_text()
