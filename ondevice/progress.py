"""Progress display: a rich progress bar on a terminal, plain lines elsewhere (logs, CI).

`Bar` draws the training bars on a terminal; `Ticker` prints the plain lines long stages (export, bench) write when
stderr is not a terminal: item i of n, the time elapsed and an estimate of the time left.
"""
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
    """`with progress_bar(total, label) as bar: bar.advance(1, loss=..)`: a rich bar on a terminal, else plain
    progress lines (a Ticker, at most one per PLAIN_EVERY_S: a 10-minute training epoch in a log says how far it is);
    prints nothing on non-rank-0 workers."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self._rich = None
        self._task = None
        self._t0 = time.perf_counter()
        self._plain = Ticker(total, label, every_s=self.PLAIN_EVERY_S)
        self._plain._last = self._t0  # the first line after PLAIN_EVERY_S, not at the first step

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
        elif self._plain.enabled:
            done = self._plain.done + n
            if done >= self.total and self._plain._last == self._t0:
                self._plain.done = done  # a short stage ends silently: its caller prints its own summary
            else:
                self._plain.update(done)

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


def _plain_enabled() -> bool:
    """Plain progress lines: stderr is not a terminal, rank 0, not ONDEVICE_PROGRESS=0 and not ONDEVICE_QUIET=1."""
    return (not sys.stderr.isatty() and os.environ.get("ONDEVICE_PROGRESS", "") != "0"
            and os.environ.get("ONDEVICE_QUIET", "") != "1" and int(os.environ.get("RANK", "0")) == 0)


def _count(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def progress_line(label: str, done: float, total: int, elapsed: float, what: str = "") -> str:
    """`[label] 3 of 20 (what): 12 s elapsed, about 68 s left (estimated from the pace so far)`; the time left is
    elapsed * (total - done) / done, and the last line says `done in ...` instead."""
    head = f"[{label}] {_count(done)} of {total}" + (f" ({what})" if what else "")
    if done >= total:
        return f"{head}: done in {elapsed:.0f} s (measured)"
    if done <= 0:
        return f"{head}: {elapsed:.0f} s elapsed"
    left = elapsed * (total - done) / done
    return f"{head}: {elapsed:.0f} s elapsed, about {left:.0f} s left (estimated from the pace so far)"


class Ticker:
    """Plain progress lines for a stage of `total` items when stderr is not a terminal (where a rich display shows
    progress instead): `t = Ticker(n, "bench: accuracy")`, then `t.tick(what)` after each item, or `t.update(done,
    what)` with a fractional count of items done. A line is printed at most every `every_s` seconds; the last item's
    line always. Nothing for a single item, on non-rank-0 workers, with ONDEVICE_PROGRESS=0 or ONDEVICE_QUIET=1."""

    def __init__(self, total: int, label: str, every_s: float = 5.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.done = 0.0
        self.enabled = total > 1 and _plain_enabled()
        self._t0 = time.perf_counter()
        self._last: float | None = None

    def tick(self, what: str = "") -> None:
        self.update(self.done + 1, what)

    def update(self, done: float, what: str = "") -> None:
        self.done = min(float(done), float(self.total))
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.done < self.total and self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        print(progress_line(self.label, self.done, self.total, now - self._t0, what), file=sys.stderr, flush=True)
