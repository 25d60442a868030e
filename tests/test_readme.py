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


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    lines = []
    for ln in block.splitlines():
        ln = ln.split(" #", 1)[0].strip()
        if ln.startswith("traceview "):
            lines.append(ln)
    return lines


def _placeholders(tmp) -> None:
    """The README's file names, made from the shipped fixtures: one EP2 prefill pair as the run."""
    import gzip
    import shutil

    from conftest import PROJECT_FIXTURES

    r0, r1 = PROJECT_FIXTURES / "prefill_tbo_rank0.json.gz", PROJECT_FIXTURES / "prefill_tbo_rank1.json.gz"
    shutil.copy(r0, tmp / "prefill_tbo_rank0.json.gz")
    shutil.copy(r0, tmp / "prefill.json.gz")
    (tmp / "t.json").write_bytes(gzip.decompress(r0.read_bytes()))
    for d in ("traces", "run", "old", "new"):
        (tmp / d).mkdir()
        shutil.copy(r0, tmp / d / "rank0.json.gz")
        shutil.copy(r1, tmp / d / "rank1.json.gz")
    (tmp / "my_rules.toml").write_text('[[rule]]\npattern = "flash_fwd"\ncategory = "attention.mla"\n')


def test_readme_commands_run(tmp_path, monkeypatch):
    """Every command of the README's Commands block runs as written on files made from the shipped
    fixtures: exit 0 (a gate may say FAIL with 1: that is its job), no traceback, the files it names
    written. ``--engine ray`` is run where the ray extra is installed."""
    cmds = _commands()
    assert len(cmds) >= 20 and any("--engine ray" in c for c in cmds)
    _placeholders(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    (tmp_path / "old.json").write_text("")
    ran, started_ray = 0, []
    try:
        ran = _run_all(cmds, tmp_path, started_ray)
    finally:
        for ray in started_ray:
            ray.shutdown()
    assert ran >= len(cmds) - 1


def _run_all(cmds, tmp_path, started_ray) -> int:
    import importlib.util
    import shlex

    from click.testing import CliRunner

    from traceview.cli import main

    ran = 0
    for cmd in cmds:
        if "--engine ray" in cmd:
            if importlib.util.find_spec("ray") is None:
                continue
            import logging

            import ray

            if not ray.is_initialized():  # the README's 'running cluster': a local one, in this process
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
                started_ray.append(ray)
        if "--baseline old.json" in cmd:  # the baseline is an earlier run's saved document
            r = CliRunner().invoke(main, ["analyze", "old", "--format", "json", "-o", "old.json"])
            assert r.exit_code == 0, r.output
        argv = shlex.split(cmd.replace(" > out.json", " -o out.json"))[1:]
        r = CliRunner().invoke(main, argv, catch_exceptions=False)
        ok = (0, 1) if argv[0] == "gate" else (0,)
        assert r.exit_code in ok, f"{cmd}: exit {r.exit_code}\n{r.output[-2000:]}"
        assert "Traceback" not in r.output, cmd
        for i, a in enumerate(argv):
            if a in ("-o", "--output"):
                assert (tmp_path / argv[i + 1]).stat().st_size > 0, cmd
        ran += 1
    return ran
