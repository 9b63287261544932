"""Peak resident memory of a benchmark worker, measured from inside it.

Method (Linux): the worker reads `VmRSS` (current) and `VmHWM` (peak, "high water mark") from
/proc/self/status and resets the peak by writing "5" to /proc/self/clear_refs (Linux >= 4.0 resets VmHWM to
the current RSS). The sequence in one process is:

    baseline          VmRSS after importing the runtime's SDK and loading the input samples, before the model
    reset peak
    load              VmHWM after loading the model     -> load_peak_rss_above_baseline = VmHWM - baseline
    reset peak
    warm-up + timed queries
    run               VmHWM after the timed queries     -> run_peak_rss_above_baseline  = VmHWM - baseline

Where the peak cannot be reset (no clear_refs, or not Linux) the peaks come from getrusage(ru_maxrss), which
counts from process start; the report says so in `method` and the figures are then upper bounds.
RSS counts every page the process touches (runtime arenas, the model's weights, thread stacks, allocator
caches), so it complements, and is usually larger than, the runtime's own planned-memory figures.
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # bytes on macOS, KiB on Linux


def peak_rss_bytes() -> int:
    kb = _status_kb("VmHWM")
    return kb * 1024 if kb is not None else _maxrss_bytes()


def reset_peak() -> bool:
    """Reset the peak-RSS counter to the current RSS; False when this OS cannot."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Tracks baseline / load peak / run peak of the current process (see the module docstring)."""

    def __init__(self) -> None:
        self.resettable = reset_peak()
        self.baseline = rss_bytes()
        self.reset_ok = self.resettable

    @property
    def method(self) -> str:
        if self.reset_ok:
            return ("VmHWM from /proc/self/status, reset via /proc/self/clear_refs before each phase; baseline is "
                    "VmRSS after SDK imports and input loading, before the model is loaded")
        return ("peak from getrusage(ru_maxrss) (not resettable on this OS): peaks count from process start and are "
                "upper bounds; baseline is RSS after SDK imports and input loading")

    def start_phase(self) -> None:
        if self.resettable:
            self.reset_ok = reset_peak() and self.reset_ok

    def phase_peak_above_baseline(self) -> int:
        return max(0, peak_rss_bytes() - self.baseline)

    def now_above_baseline(self) -> int:
        return max(0, rss_bytes() - self.baseline)

    @staticmethod
    def pid() -> int:
        return os.getpid()
