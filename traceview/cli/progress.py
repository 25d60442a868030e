"""A progress bar for long loads: on stderr, only when stderr is a terminal (never in pipes,
files or CI logs), and only when the inputs are big enough to take a while."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Inputs smaller than this (in all) load in about a second: no bar.
MIN_BYTES = 64 << 20


class LoadProgress:
    """``progress(path, done, total)`` callback for ``analyze_many``; a context manager."""

    def __init__(self, paths: list[Path], enabled: bool | None = None) -> None:
        self.sizes = {str(p): _size(p) for p in paths}
        total = sum(self.sizes.values())
        if enabled is None:
            enabled = sys.stderr.isatty() and total >= MIN_BYTES
        self.bar = None
        self.finished: set[str] = set()
        self.done = 0
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("loading {task.description}", markup=False), BarColumn(), DownloadColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            from ..report.text import display_path

            name = display_path(Path(paths[0]).name) if len(paths) == 1 else f"{len(paths)} files"
            self.task = self.bar.add_task(name, total=max(1, total))

    def __call__(self, path: Path, done: int, total: int) -> None:
        if self.bar is None:
            return
        size = self.sizes.get(str(path), 0)
        if done >= total and str(path) not in self.finished:
            self.finished.add(str(path))
            self.done += size
            self.bar.update(self.task, completed=self.done)
        elif str(path) not in self.finished:
            self.bar.update(self.task, completed=self.done + size * done // max(1, total))

    def __enter__(self) -> "LoadProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _size(p: Path) -> int:
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


class RankProgress:
    """A bar counting rank files done, for engines whose files the driver may not see (Ray):
    ``expect(n)`` once the files are found, then ``progress(path, 1, 1)`` per file done."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.bar = None
        if enabled if enabled is not None else sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("analysing ranks"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("ranks", total=None)
        self.done = 0

    def expect(self, n: int) -> None:
        """``n`` files in the next round (the report's detail round starts a second count)."""
        self.done = 0
        if self.bar is not None:
            self.bar.update(self.task, total=n, completed=0)

    def __call__(self, path: Path, done: int, total: int) -> None:
        if done >= total:
            self.done += 1
            if self.bar is not None:
                self.bar.update(self.task, completed=self.done)

    def __enter__(self) -> "RankProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
