"""Exit codes of every `ondevice` command and the one wrapper that maps what happened to them.

    0    everything passed
    1    a gate, a verification or a benchmarked item failed (the model or artifact is not good enough)
    2    bad usage or input: recipe, data, paths, a refused output folder, a changed checkpoint, a missing backend
    3    internal error (a bug in ondevice or a backend): a one-line summary on stderr and the path of a log file
         with the full traceback
    130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: temporary files were removed; re-run to resume
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

EPILOG = """\
exit codes:
  0    everything passed
  1    a gate, a verification or a benchmarked item failed
  2    bad usage or input (recipe, data, paths, a refused output folder, a changed checkpoint, a missing backend)
  3    internal error: a one-line summary and the path of a log file with the full traceback
  130  interrupted (SIGINT), 143 terminated (SIGTERM); temporary files are removed, re-run to resume"""


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` (temporary folders, workers) runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def log_dir() -> Path:
    base = os.environ.get("ONDEVICE_LOG_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("ONDEVICE_DATA") or Path.home() / ".cache" / "ondevice") / "logs"


def write_crash_log(command: str, exc: BaseException) -> Path:
    """The full traceback of an internal error, in a log file whose path the one-line message names."""
    from . import __version__

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (f"ondevice {__version__} {command}: internal error\nargv: {sys.argv}\npython: {sys.version}\ncwd: "
            f"{os.getcwd()}\n\n" + "".join(traceback.format_exception(exc)))
    for folder in (log_dir(), Path("/tmp")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"ondevice-{command}-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return Path("(no writable log folder)")


def _error_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    from .errors import ConversionError, OndeviceError, TrainingDivergedError, VerificationError
    from .registry import UnknownNameError

    fail = (TrainingDivergedError, VerificationError, ConversionError)
    usage = (OndeviceError, UnknownNameError, UsageError, ImportError, FileNotFoundError, NotADirectoryError,
             PermissionError, IsADirectoryError)
    return fail, usage


def guarded(command: str, fn: Callable[..., int], *args: Any) -> int:
    """Run a command; map its outcome to the exit codes above (SIGTERM becomes an exception while it runs)."""
    fail, usage = _error_classes()
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return fn(*args)
    except fail as e:
        print(f"ondevice {command}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except usage as e:
        print(f"ondevice {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ondevice {command}: interrupted; temporary files removed, re-run to resume", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print(f"ondevice {command}: terminated (SIGTERM); temporary files removed, re-run to resume", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as e:  # noqa: BLE001 - the internal-error path: summary + log, never a bare traceback
        log = write_crash_log(command, e)
        from .errors import first_line

        first = first_line(e)
        print(f"ondevice {command}: internal error: {type(e).__name__}: {first}\n"
              f"the full traceback is in {log}; please report it with that file", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
