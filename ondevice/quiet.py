"""Keep converter/runtime chatter away from users while a backend SDK works: Python warnings, log records below
ERROR, what the SDK prints to sys.stdout/sys.stderr, and (optionally) known-harmless lines native code writes to
file descriptor 2. Errors still propagate as exceptions, whose messages carry the details; everything dropped is
logged at DEBUG on the caller's logger.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet(*, native_noise: re.Pattern | None = None, log: logging.Logger | None = None) -> Iterator[None]:
    """Within the block: warnings are ignored, logging below ERROR is disabled (`logging.disable`, so loggers the
    SDK creates inside the block are covered too), and sys.stdout/sys.stderr are captured (torch.export prints
    graph dumps on failure). With `native_noise`, fd 2 is captured as well; afterwards lines matching it are
    logged at DEBUG and every other native line is written back to stderr unchanged.

    Process-wide: other threads' logging/printing in this window is affected the same way.
    """
    log = log or logging.getLogger("ondevice")
    printed = io.StringIO()
    native: list[str] = []
    previous = logging.root.manager.disable
    try:
        with _captured_fd2(native) if native_noise is not None else contextlib.nullcontext():
            logging.disable(logging.WARNING)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(printed), \
                        contextlib.redirect_stderr(printed):
                    warnings.simplefilter("ignore")
                    yield
            finally:
                logging.disable(previous)
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                log.debug("suppressed: %s", line)
        for line in native:
            if not line.strip() or (native_noise is not None and native_noise.search(line)):
                log.debug("suppressed: %s", line)
            else:
                os.write(2, (line + "\n").encode())


@contextlib.contextmanager
def _captured_fd2(lines: list[str]) -> Iterator[None]:
    """Redirect file descriptor 2 into a temp file for the block; append what was written to `lines`."""
    try:
        saved_fd = os.dup(2)
    except OSError:  # no usable stderr (embedded interpreter): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes/contexts, outermost first (cycles cut)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """Text without ANSI colour codes."""
    return _ANSI.sub("", text)


# Op names as converters spell them in their exceptions, most specific first.
_OP_PATTERNS = (
    re.compile(r"Missing out variants: \{([^}]*)\}"),                    # ExecuTorch: kernels missing for ops
    re.compile(r"aten::[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"),
    re.compile(r"aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"),
    re.compile(r"torch\.ops\.[A-Za-z0-9_]+\.[A-Za-z0-9_.]+"),
)


def summarize_exception(exc: BaseException) -> tuple[str | None, str]:
    """(op name found anywhere in the exception chain or None, 'Type: first line' of the innermost message)."""
    chain = exception_chain(exc)
    text = "\n".join(plain(f"{type(e).__name__}: {e}") for e in chain)
    op = None
    for pattern in _OP_PATTERNS:
        m = pattern.search(text)
        if m:
            op = (m.group(1) if m.groups() else m.group(0)).replace("'", "").strip()
            break
    cause = exc
    for e in reversed(chain):  # innermost exception with a message
        if str(e).strip():
            cause = e
            break
    first = next((ln.strip() for ln in plain(str(cause)).splitlines() if ln.strip()), "")
    return op, f"{type(cause).__name__}: {first[:400]}"
