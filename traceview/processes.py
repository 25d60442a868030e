"""Per-file work in worker processes, where a worker that dies is named by the file it held.

``ProcessPoolExecutor`` fails every unfinished task with ``BrokenProcessPool`` when one of its
workers dies (a signal, the kernel's OOM killer), without saying which task it was running.
Here the files left unfinished are run again, each in a process of its own (still ``jobs`` at a
time): a file whose own process dies gets a ``TraceError`` saying how it died, and the others
are done as usual (a file that died only because others shared its memory then succeeds).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import TraceError
from .load.reader import _bare_main  # (a spawned worker does not re-run the main script)

#: spawn, not fork: forking a process that runs polars thread pools can deadlock
_SPAWN = multiprocessing.get_context("spawn")


def map_files(fn: Callable[[Any], Any], args: Sequence[Any], paths: Sequence[Path], jobs: int,
              done: Callable[[int], None] | None = None, doing: str = "analyzing it") -> list[Any]:
    """``[fn(a) for a in args]`` in up to ``jobs`` spawned processes, in order; ``paths[i]`` is
    the file ``args[i]`` works on.  A file whose worker process dies gets a ``TraceError``
    ("the worker process analyzing it was killed (signal 9, SIGKILL: out of memory? ...)")
    in its place; an exception ``fn`` raises is raised here, as from ``Future.result()``.
    ``done(i)`` is called as each file finishes."""
    results: dict[int, Any] = {}
    left: list[int] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_SPAWN) as pool:
        with _bare_main():  # (workers start on submit)
            futures = {pool.submit(_pickled, fn, a): i for i, a in enumerate(args)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = _unpickled(fut.result(), paths[i], doing)
            except BrokenProcessPool:  # some worker died: which file it held is found below
                left.append(i)
                continue
            if done is not None:
                done(i)
    for i, r in each_alone(fn, args, paths, jobs, doing, sorted(left)):
        results[i] = r
        if done is not None:
            done(i)
    return [results[i] for i in range(len(args))]


def each_alone(fn: Callable[[Any], Any], args: Sequence[Any], paths: Sequence[Path], jobs: int,
               doing: str = "analyzing it", todo: list[int] | None = None):
    """``(i, fn(args[i]))`` for each ``i`` in ``todo`` (default: all), each in a process of its
    own, ``jobs`` at a time, as they finish: a process that dies gives ``(i, TraceError)``
    naming ``paths[i]`` and how it died (what a broken pool's caller runs again)."""
    todo = list(range(len(args))) if todo is None else list(todo)
    running: dict[int, tuple[Any, Any]] = {}
    try:
        while todo or running:
            while todo and len(running) < jobs:
                i = todo.pop(0)
                recv, send = _SPAWN.Pipe(duplex=False)
                proc = _SPAWN.Process(target=_child, args=(send, fn, args[i]), daemon=True)
                with _bare_main():
                    proc.start()
                send.close()  # (the child holds the only writer: its death is EOF here)
                running[i] = (proc, recv)
            ready = set(wait([c for _p, c in running.values()] + [p.sentinel for p, _c in running.values()]))
            for i, (proc, conn) in list(running.items()):
                if conn not in ready and proc.sentinel not in ready:
                    continue
                try:
                    status, value = conn.recv()
                except (EOFError, OSError):  # it died before sending its result
                    proc.join()
                    status, value = "died", TraceError(paths[i], died_reason(proc.exitcode, doing))
                proc.join()
                conn.close()
                del running[i]
                if status == "raised":
                    raise value
                yield i, value if status == "died" else _unpickled(value, paths[i], doing)
    finally:
        for proc, conn in running.values():
            proc.kill()
            proc.join()
            conn.close()


def _child(conn, fn, arg) -> None:
    try:
        out = ("ok", _pickled(fn, arg))
    except BaseException as e:  # noqa: BLE001  (handed to the parent, which raises it)
        out = ("raised", e)
    conn.send(out)
    conn.close()


def _pickled(fn, arg) -> bytes | tuple[str, str]:
    """``fn(arg)`` pickled here, in the worker, where a failure can still be caught: a result too
    large for the memory left (MemoryError; polars: OSError or a Rust panic) becomes a note."""
    out = fn(arg)
    try:
        with _stderr_muted():  # (a panic in polars prints its own traceback: the note says it all)
            return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as e:  # noqa: BLE001
        return ("unsent", type(e).__name__ + (f": {e}" if str(e) else ""))


@contextlib.contextmanager
def _stderr_muted():
    """File descriptor 2 to /dev/null for the block (what native code writes there too)."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _unpickled(data: bytes | tuple[str, str], path: Path, doing: str) -> Any:
    if isinstance(data, tuple):
        return TraceError(path, unsent_reason(data[1], doing))
    try:
        return pickle.loads(data)
    except BaseException as e:  # noqa: BLE001  (no memory left here to rebuild it)
        if isinstance(e, KeyboardInterrupt):
            raise
        return TraceError(path, unsent_reason(type(e).__name__, doing))


def unsent_reason(what: str, doing: str = "analyzing it") -> str:
    """Why a worker's result did not come back: it did not fit in the memory left to pickle it."""
    return (f"out of memory sending the result back from the worker process {doing} ({what}); it needs more memory "
            "than the limit leaves (fewer --jobs leave more)")


def died_reason(exitcode: int | None, doing: str = "analyzing it") -> str:
    """How a worker process ended without a result, in words."""
    if exitcode is not None and exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown signal"
        hint = (": out of memory? the kernel's OOM killer sends SIGKILL; try fewer --jobs or more memory"
                if sig == signal.SIGKILL else "")
        return f"the worker process {doing} was killed (signal {sig}, {name}{hint})"
    return f"the worker process {doing} exited with status {exitcode} before it finished"
