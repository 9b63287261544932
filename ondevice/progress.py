"""Progress display: a rich progress bar on a terminal, one plain line per epoch elsewhere (logs, CI)."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator


def _enabled() -> bool:
    if os.environ.get("ONDEVICE_PROGRESS", "") == "0":
        return False
    return sys.stderr.isatty() and int(os.environ.get("RANK", "0")) == 0


class Bar:
    """`with progress_bar(total, label) as bar: bar.advance(1, loss=..)`; prints nothing on non-rank-0 workers."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self._rich = None
        self._task = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> "Bar":
        if _enabled():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.label, total=self.total, info="")
        return self

    @property
    def active(self) -> bool:
        """True when a bar is shown (a terminal): callers skip work that only feeds the bar otherwise."""
        return self._rich is not None

    def advance(self, n: int = 1, **info: float) -> None:
        if self._rich is not None:
            text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
            self._rich.update(self._task, advance=n, info=text)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Bar]:
    with Bar(total, label) as b:
        yield b


def status(line: str) -> None:
    """One status line on stderr (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) == 0 and os.environ.get("ONDEVICE_QUIET", "") != "1":
        print(line, file=sys.stderr, flush=True)
