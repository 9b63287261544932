"""Atomic writes, JSON that survives inf/NaN, checksums and environment records."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Temporary names carry this tag and the writer's pid, so the leftovers of a killed run are recognisable (and never
# confused with a user's file) and a later run can remove them once that process is gone: see sweep_leftovers().
TMP_TAG = ".ondevice-tmp-"
_WRITE_HOOKS: list[Callable[[Path], None]] = []


def on_write(hook: Callable[[Path], None]) -> None:
    """Call `hook(path)` after every completed atomic write (ondevice.outdir records what ondevice wrote)."""
    if hook not in _WRITE_HOOKS:
        _WRITE_HOOKS.append(hook)


def _written(path: Path) -> None:
    for hook in _WRITE_HOOKS:
        hook(path)


def tmp_prefix(name: str) -> str:
    """Prefix of a temporary sibling of `name` (".name.ondevice-tmp-<pid>.")."""
    return f".{name}{TMP_TAG}{os.getpid()}."


def _jsonable(o: Any) -> Any:
    if isinstance(o, float):
        if math.isnan(o):
            return "nan"
        if math.isinf(o):
            return "inf" if o > 0 else "-inf"
        return o
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 1) == 0:  # numpy / torch scalar
        return _jsonable(o.item())
    if hasattr(o, "tolist"):
        return _jsonable(o.tolist())
    return o


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text; inf/NaN become the strings "inf"/"nan" so the output is valid JSON."""
    return json.dumps(_jsonable(obj), indent=indent, sort_keys=False, default=str)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temp file in the same folder + fsync + rename: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _written(path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path (file or directory) to write into; it is renamed onto `path` on success.

    Works for directory artifacts (.mlpackage) as well as files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=tmp_prefix(path.name), dir=path.parent))
    tmp = tmpdir / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _written(path)


@contextmanager
def temp_dir(kind: str) -> Iterator[Path]:
    """A scratch folder in the system temp dir ("ondevice-<kind>-<pid>-*"), removed on success, on an exception and
    on SIGINT/SIGTERM (the CLI turns SIGTERM into an exception); after a SIGKILL the next run removes it."""
    sweep_leftovers(Path(tempfile.gettempdir()), top_only=True)
    d = Path(tempfile.mkdtemp(prefix=f"ondevice-{kind}-{os.getpid()}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_LEFTOVER = re.compile(r"^(\..+\.ondevice-tmp-(?P<pid>\d+)\..+|ondevice-[a-z]+-(?P<pid2>\d+)-.+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_leftover(name: str) -> bool:
    """True for a temporary name of an ondevice process that no longer runs."""
    m = _LEFTOVER.match(name)
    if not m:
        return False
    return not _pid_alive(int(m.group("pid") or m.group("pid2")))


def sweep_leftovers(root: Path, *, top_only: bool = False) -> list[Path]:
    """Remove the temporary files and folders that killed ondevice runs left under `root` (see TMP_TAG)."""
    removed: list[Path] = []
    if not Path(root).is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if is_leftover(name):
                p = Path(folder) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        dirs[:] = [] if top_only else [d for d in dirs if (Path(folder) / d).exists()]
    return removed


def read_json(path: str | os.PathLike) -> Any:
    def _hook(d):
        return {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in d.items()}

    return json.loads(Path(path).read_text(), object_hook=_hook)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CORE_LIBRARIES = ("torch", "numpy")


def library_versions(names: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """Installed versions of torch, numpy, every registered target's SDK (the distributions providing the import
    names its TargetSpec requires) and ondevice; None where not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for n in names if names is not None else (*CORE_LIBRARIES, *target_distributions(), "ondevice"):
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def target_distributions() -> tuple[str, ...]:
    """Distribution names behind every registered target's `requires` import names, in target order."""
    from .target import get_spec, target_names

    dists = _import_to_distributions()
    out: list[str] = []
    for t in target_names():
        for mod in get_spec(t).requires:
            for d in dists.get(mod.split(".")[0], [mod]):
                if d not in out and d not in CORE_LIBRARIES:
                    out.append(d)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _import_to_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return {k: sorted(set(v)) for k, v in packages_distributions().items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(interesting: tuple[str, ...] = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c",
                                             "sse4_2", "asimd", "asimddp", "neon")) -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in interesting if f in have]
    except OSError:
        pass
    return []


def machine_record() -> dict:
    """What a measurement was made on: CPU model and flags, cores, OS, Python, library versions."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": list(load) if load else None,
        "libraries": library_versions(),
    }
