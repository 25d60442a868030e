"""Engines: where the map step of a run (``summarize_file``: one rank file -> its summaries)
runs.  ``LocalEngine`` uses processes on this machine; ``RayEngine`` uses tasks on a Ray
cluster, each rank file read on the node that holds it.  Both yield ``(path, result)`` as
files finish and run the same function, so the reduce sees the same summaries either way.

Path resolution with Ray (the driver may not see the files at all: SGLang writes each rank's
trace to the local disk of its node): every path is made absolute against the driver's
working directory, then one discovery task per alive node lists what that path is *there*
(the file, or the trace files directly inside the directory).  A file seen identically
(same size, modification time and first 64 KiB) on several nodes is on shared storage and
runs anywhere; a file seen on one node runs on that node (hard node affinity); the same name
with different contents on several nodes is one rank per node, named ``<node ip>:<path>``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from ..errors import TraceError, UsageError
from .summary import RankSummary

#: one file's map result: its summaries, its one-line error, or None (not a trace, skipped)
MapResult = "list[RankSummary] | TraceError | None"
Progress = Callable[[Path, int, int], None]

RAY_MISSING = 'the ray engine needs Ray, which is not installed: pip install "traceview[ray]"'


@dataclass(frozen=True)
class RankTask:
    """What every rank task needs besides its path (small and picklable: it travels to workers).

    ``run(path)`` is the map step (``summarize_file``); a subclass overrides ``work`` to do
    something else with one rank file on the node that has it (the report's detail pages).
    """

    rules_file: str | None = None
    max_bytes: int | None = None
    patterns: object = None
    workers: int | None = None
    #: the rules file's text, for nodes that cannot see ``rules_file``
    rules_text: str | None = None

    def run(self, path: Path):
        rules = self.rules_file
        if rules is not None and self.rules_text is not None and not os.path.exists(rules):
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
                f.write(self.rules_text)
            rules = f.name
        try:
            return self.work(path, rules)
        finally:
            if rules is not self.rules_file:
                os.unlink(rules)

    def work(self, path: Path, rules_file: str | None) -> list[RankSummary] | TraceError | None:
        from .analysis import summarize_file

        return summarize_file(path, rules_file, self.max_bytes, self.patterns, self.workers)


@dataclass
class Placement:
    """One rank file to analyse: where (a node id, or None for anywhere) and its display name."""

    path: str
    shown: str
    scanned: bool
    node: str | None = None


class Engine(Protocol):
    """Runs a task on rank files, yielding ``(shown path, result)`` in completion order.

    ``locate(paths)`` finds the rank files of what the user gave (files or directories) and
    where each can be read; ``run(placements, task)`` runs ``task.run`` on each, where its file
    is; ``map(paths, task)`` is both.  A second ``run`` on some of the same placements reads
    those files again on the same nodes (the report's detail round).  ``progress(path, 1, 1)``
    is called as each file is done; if it has an ``expect(n)`` method, that is called once the
    number of files is known.  Interrupting the iteration cancels what is left.
    """

    name: str

    def locate(self, paths: list[Path], skipped: list | None = None) -> list[Placement]: ...

    def run(self, placements: list[Placement], task: RankTask,
            progress: Progress | None = None) -> Iterator[tuple[Path, object]]: ...

    def map(self, paths: list[Path], task: RankTask,
            progress: Progress | None = None) -> Iterator[tuple[Path, object]]: ...


def _expect(progress, n: int) -> None:
    if progress is not None and hasattr(progress, "expect"):
        progress.expect(n)


class LocalEngine:
    """Processes on this machine (``jobs`` at a time; in this process when ``jobs == 1``)."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs

    def locate(self, paths, skipped=None):
        from ..analysis import ScannedPath, expand_paths

        return [Placement(str(f), str(f), isinstance(f, ScannedPath)) for f in expand_paths(paths, skipped)]

    def map(self, paths, task, progress=None):
        return self.run(self.locate(paths), task, progress)

    def run(self, placements, task, progress=None):
        from ..analysis import ScannedPath

        files = [(pl.shown, ScannedPath(pl.path) if pl.scanned else Path(pl.path)) for pl in placements]
        _expect(progress, len(files))
        if self.jobs <= 1 or len(files) <= 1:
            for shown, f in files:
                r = task.run(f)
                if progress is not None:
                    progress(Path(shown), 1, 1)
                yield Path(shown), r
            return
        jobs = min(self.jobs, len(files))
        # each file's decoder gets a share of the cores, not all of them (as analyze_many)
        task = replace(task, workers=task.workers or max(1, (os.cpu_count() or 1) // jobs))
        # spawn, not fork: forking a process that runs polars thread pools can deadlock
        left = []  # files a dead worker left unfinished: named below (processes.py)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(task.run, f): (shown, f) for shown, f in files}
            try:
                for fut in as_completed(futures):
                    try:
                        r = fut.result()
                    except BrokenProcessPool:
                        left.append(futures[fut])
                        continue
                    if progress is not None:
                        progress(Path(futures[fut][0]), 1, 1)
                    yield Path(futures[fut][0]), r
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        from ..processes import each_alone

        for i, r in each_alone(task.run, [f for _s, f in left], [Path(s) for s, _f in left], jobs):
            if progress is not None:
                progress(Path(left[i][0]), 1, 1)
            yield Path(left[i][0]), r


# ---------------------------------------------------------------------------------------- Ray

def import_ray():
    """``ray``, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class Found:
    """A rank file as one node sees it."""

    path: str  #: absolute, on that node
    scanned: bool  #: found inside a directory (a non-trace JSON there is skipped, not an error)
    size: int
    mtime_ns: int
    head: str  #: hash of the first 64 KiB (tells shared storage from same-named node-local files)


def discover(paths: list[str]) -> tuple[list[Found], dict[str, str]]:
    """What the (absolute) ``paths`` are on this node: the files, and per path why not."""
    from ..load.reader import find_trace_files

    found: list[Found] = []
    missing: dict[str, str] = {}
    for p in map(Path, paths):
        try:
            files = [(f, True) for f in find_trace_files(p)] if p.is_dir() else [(p, False)] if p.exists() else []
        except TraceError as e:
            missing[str(p)] = e.reason
            continue
        if not files:
            missing[str(p)] = "no such file or directory"
        for f, scanned in files:
            try:
                st = f.stat()
                with open(f, "rb") as fh:
                    head = hashlib.blake2b(fh.read(1 << 16), digest_size=16).hexdigest()
            except OSError as e:
                found.append(Found(str(f), scanned, -1, 0, f"unreadable: {e.strerror or e}"))
                continue
            found.append(Found(str(f), scanned, st.st_size, st.st_mtime_ns, head))
    return found, missing


def place(user_paths: list[str], seen: dict[str, tuple[str, list[Found], dict[str, str]]]) -> list[Placement]:
    """Decide, from every node's discovery, which files there are and where each runs.

    ``seen`` maps node id -> (node ip, found, missing).  Paths are shown as the user spelled
    them (``run/rank0.json`` for ``run/``), so both engines name files alike.
    """
    shown_of = {}
    for up in user_paths:
        ap = os.path.abspath(up)
        shown_of[ap] = up
    by_path: dict[str, list[tuple[str, str, Found]]] = {}
    for node, (ip, found, _missing) in seen.items():
        for f in found:
            by_path.setdefault(f.path, []).append((node, ip, f))
    out: list[Placement] = []
    for ap in shown_of:
        hits = sorted(p for p in by_path if p == ap or os.path.dirname(p) == ap)
        if not hits:
            reasons = {m[ap] for _ip, _f, m in seen.values() if ap in m}
            reason = (reasons - {"no such file or directory"} or reasons or {"no such file or directory"}).pop()
            raise TraceError(shown_of[ap], f"{reason} (on any of the {len(seen)} Ray node(s))")
        for p in hits:
            shown = shown_of[ap] if p == ap else str(Path(shown_of[ap]) / os.path.basename(p))
            copies = by_path[p]
            kinds = {(f.size, f.mtime_ns, f.head) for _n, _ip, f in copies}
            if len(copies) > 1 and len(kinds) == 1:  # one file on shared storage
                out.append(Placement(p, shown, copies[0][2].scanned, None))
            elif len(copies) == 1:
                out.append(Placement(p, shown, copies[0][2].scanned, copies[0][0]))
            else:  # the same name on several nodes, different files: one rank each, named by node
                ips = [ip for _n, ip, _f in copies]
                out.extend(Placement(p, f"{ip if ips.count(ip) == 1 else f'{ip}#{n[:8]}'}:{shown}", f.scanned, n)
                           for n, ip, f in sorted(copies, key=lambda c: (c[1], c[0])))
    return out


def _task_failure(e: BaseException) -> str:
    """One line for a rank task that did not return (its worker died, ran out of memory, ...)."""
    ray = import_ray()
    ex = ray.exceptions
    if isinstance(e, ex.OutOfMemoryError):
        return "rank task killed: out of memory on its Ray node (give the task more memory, or a smaller --max-bytes)"
    if isinstance(e, ex.NodeDiedError):
        return "rank task lost: its Ray node died"
    if isinstance(e, ex.WorkerCrashedError):
        return "rank task lost: its Ray worker process died"
    if isinstance(e, ex.TaskUnschedulableError):
        return "rank task could not be scheduled on the node holding the file (node gone?)"
    if isinstance(e, ex.TaskCancelledError):
        return "rank task cancelled"
    if isinstance(e, ex.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        first = (str(cause).strip().splitlines() or [""])[-1]
        return f"rank task failed: {type(cause).__name__}: {first}"
    return f"rank task failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


class RayEngine:
    """Tasks on a Ray cluster: ``ray.init(address=...)`` unless Ray is already initialised.

    ``address="auto"`` joins the cluster running on this machine (``ray start``); ``ray://host:10001``
    connects through Ray Client; ``"local"`` starts a private one-machine cluster.  Each rank task
    takes ``cpus_per_task`` CPUs and decodes with that many workers.
    """

    name = "ray"

    def __init__(self, address: str | None = "auto", cpus_per_task: int = 1, init_kwargs: dict | None = None,
                 discover_fn: Callable = discover) -> None:
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.init_kwargs = dict(init_kwargs or {})
        #: what one discovery task runs on its node (tests give each node of a one-machine cluster its own "disk")
        self.discover_fn = discover_fn
        #: refs of the rank tasks cancelled by the last interrupted map (for tests and logs)
        self.cancelled: list = []
        #: the last run: shown path -> the node id its task ran on; the last locate: node id ->
        #: rank files its discovery found (for tests and logs)
        self.ran_on: dict[str, str] = {}
        self.discovered: dict[str, int] = {}

    def _connect(self):
        ray = import_ray()
        if ray.is_initialized():
            return ray
        address = None if self.address in (None, "local") else self.address
        import logging

        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                  **self.init_kwargs}
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise UsageError(f"no Ray cluster at {self.address!r} ({(str(e).splitlines() or [''])[0]}); start one "
                             "with `ray start --head`, or give --address") from None
        return ray

    def locate(self, paths, skipped=None):
        """One discovery task per alive node, then ``place``: where each rank file is read."""
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        user = [str(p) for p in paths]
        absolute = sorted({os.path.abspath(p) for p in user})
        nodes = [(n["NodeID"], n.get("NodeManagerAddress", "?")) for n in ray.nodes() if n.get("Alive")]
        find = ray.remote(num_cpus=0)(self.discover_fn)
        refs = {find.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(absolute): (n, ip)
                for n, ip in nodes}
        seen = {}
        for ref, (n, ip) in refs.items():
            try:
                found, missing = ray.get(ref)
            except ray.exceptions.RayError:  # a node that died since: its files are reported missing below
                continue
            seen[n] = (ip, found, missing)
        self.discovered = {n: len(found) for n, (_ip, found, _m) in seen.items()}
        return place(user, seen)

    def map(self, paths, task, progress=None):
        return self.run(self.locate(paths), task, progress)

    def run(self, placements, task, progress=None):
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        _expect(progress, len(placements))
        remote = ray.remote(_run_rank)
        pending = {}
        for pl in placements:
            opts = {"num_cpus": self.cpus_per_task, "max_retries": 1 if pl.node is None else 0}
            if pl.node is not None:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(pl.node, soft=False)
            pending[remote.options(**opts).remote(task, pl.path, pl.scanned, self.cpus_per_task)] = pl
        self.cancelled = []
        self.ran_on = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pl = pending.pop(ref)
                    try:
                        node, payload = ray.get(ref)
                        self.ran_on[pl.shown] = node
                        result = _shown(pickle.loads(zlib.decompress(payload)), pl)
                    except ray.exceptions.RayError as e:
                        result = TraceError(pl.shown, _task_failure(e))
                    if progress is not None:
                        progress(Path(pl.shown), 1, 1)
                    yield Path(pl.shown), result
        except BaseException:  # Ctrl-C, or the caller stopped early: nothing keeps running
            for ref in pending:
                ray.cancel(ref, force=True)
            self.cancelled = list(pending)
            raise


def _run_rank(task: RankTask, path: str, scanned: bool, cpus: int) -> tuple[str, bytes]:
    """A rank task: the node it ran on, and its result pickled and compressed (a summary
    shrinks about 5x, an HTML fragment more), so the object store and the network carry less."""
    import ray

    from ..analysis import ScannedPath

    result = replace(task, workers=task.workers or cpus).run(ScannedPath(path) if scanned else Path(path))
    return (ray.get_runtime_context().get_node_id(),
            zlib.compress(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), 1))


def _shown(result, pl: Placement):
    """The result named as the user named the file (not by its absolute path on the node)."""
    if isinstance(result, TraceError):
        return type(result)(pl.shown, result.reason)
    if isinstance(result, list):
        for s in result:
            s.file = pl.shown
    return result


def make_engine(engine: "str | Engine", jobs: int = 1, address: str | None = None) -> "Engine":
    """An engine from its name (``local``, ``ray``) or as given."""
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        if address:
            raise UsageError("--address is for --engine ray")
        return LocalEngine(jobs)
    if engine == "ray":
        import_ray()
        return RayEngine(address or "auto")
    raise UsageError(f"unknown engine {engine!r} (local, ray)")


def map_run(engine: "Engine", paths: Iterable, task: RankTask, progress: Progress | None = None,
            placements: list[Placement] | None = None, skipped: list | None = None):
    """Run the map (on ``placements`` when already located), then return (summaries, errors)
    in a stable order (not completion order).  Scanned files that hold no trace go to
    ``skipped`` (when given), not to the errors."""
    from ..analysis import SkippedInput

    paths = list(paths)
    summaries: list[RankSummary] = []
    errors: list[TraceError] = []
    any_result = False
    results = engine.run(placements, task, progress) if placements is not None else engine.map(paths, task, progress)
    for _path, r in results:
        if r is None:
            continue
        if isinstance(r, SkippedInput) and skipped is not None:
            skipped.append(r)
            continue
        any_result = True
        if isinstance(r, TraceError):
            errors.append(r)
        else:
            summaries.extend(r)
    if not any_result:
        raise TraceError(next(iter(map(str, paths)), "."), "no trace files among the inputs")
    errors.sort(key=lambda e: e.path)
    return summaries, errors
