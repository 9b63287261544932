"""The target protocol and the target registry.

Every backend lives in its own folder under `targets/` (installed as `ondevice.targets.<name>`), and every folder
has the same shape:

    targets/<name>/__init__.py   SPEC = TargetSpec(...)  -- metadata only, imports no SDK
    targets/<name>/target.py     class implementing `Target` (imports the SDK lazily, inside methods)
    targets/<name>/README.md     what the target does, its precisions, its limits

Targets are discovered by scanning `ondevice.targets` and the entry-point group `ondevice.targets`, so adding a
fifth backend touches no core file.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingBackendError, UnsupportedPrecisionError
from .precision import Precision, get_precision
from .registry import Registry


@dataclass(frozen=True)
class TargetSpec:
    """Metadata a target folder declares in its `__init__.py` (no SDK import).

    name:        registry name, e.g. "onnxruntime"
    extra:       the pip extra that installs its SDK, e.g. "onnx" -> `pip install 'ondevice[onnx]'`
    requires:    import names that must be importable (checked without importing them)
    precisions:  precision names it can produce (see ondevice.precision)
    suffix:      artifact file suffix, e.g. ".onnx" (a directory suffix like ".mlpackage" is allowed)
    factory:     "module:Class" of the Target implementation
    can_run_here: False when no runtime exists on this OS (Core ML on Linux); run() then uses a reference
                  evaluator and latency is reported as not measurable
    """

    name: str
    extra: str
    requires: tuple[str, ...]
    precisions: tuple[str, ...]
    suffix: str
    factory: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)  # option name -> help, e.g. {"nhwc": "..."}

    def pip_line(self) -> str:
        return f"pip install 'ondevice[{self.extra}]'"

    def missing_packages(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def check_installed(self) -> None:
        missing = self.missing_packages()
        if missing:
            raise MissingBackendError(
                f"target {self.name!r} needs {', '.join(missing)}, which is not installed. "
                f"Install it with: {self.pip_line()}"
            )


class Target(ABC):
    """One backend. The core calls, in order: quantize -> export -> load -> run; plus size and inspect.

    - `quantize` is the torch-level step (PT2E calibration etc.). Targets that quantize after conversion
      (ONNX Runtime, Core ML) return the model unchanged and do that work in `export`.
    - `export` writes the artifact to `out` (a path ending in `spec.suffix`) and returns it.
    - `load` returns an opaque runner object; `run(runner, x)` maps a float32 NumPy batch to float32 outputs
      (targets with integer I/O quantize/dequantize inside run).
    """

    spec: TargetSpec

    def __init__(self, spec: TargetSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    # -- capabilities -------------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Precision]:
        return {p: get_precision(p) for p in self.spec.precisions}

    def precision(self, name: str) -> Precision:
        if name not in self.spec.precisions:
            get_precision(name)  # unknown everywhere -> lists every precision name
            raise UnsupportedPrecisionError(
                f"target {self.name!r} cannot produce precision {name!r}; it can do: {', '.join(self.spec.precisions)}"
            )
        return get_precision(name)

    # -- the protocol ---------------------------------------------------------------------------------------
    @abstractmethod
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: np.ndarray | None, **options):
        """Torch-level quantization; returns what `export` takes (possibly `model` unchanged)."""

    @abstractmethod
    def export(self, prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: np.ndarray | None = None, **options) -> Path:
        """Convert to the target format (plus any post-conversion quantization) and write it to `out`."""

    @abstractmethod
    def load(self, path: Path) -> Any:
        """Load an artifact into its runtime; returns a runner handle."""

    @abstractmethod
    def run(self, runner: Any, x: np.ndarray) -> np.ndarray:
        """Run a float32 batch through the artifact; returns float32 outputs."""

    def size(self, path: Path) -> int:
        """Artifact size in bytes (a directory artifact counts every file in it)."""
        p = Path(path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size

    @abstractmethod
    def inspect(self, path: Path) -> dict:
        """Op counts, weight and I/O dtypes, delegated vs non-delegated ops where applicable."""

    def runtime_memory(self, path: Path) -> dict:
        """The runtime's own planned/arena memory figures where it exposes them (bytes); {} otherwise."""
        return {}

    def set_threads(self, n: int) -> None:
        """Set the runtime's thread count before the first `load` in this process."""


# --- discovery ---------------------------------------------------------------------------------------------
SPECS: Registry[TargetSpec] = Registry("target")
_INSTANCES: dict[str, Target] = {}
_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import ondevice.targets as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.ispkg:
            continue
        m = importlib.import_module(f"ondevice.targets.{mod.name}")
        spec = getattr(m, "SPEC", None)
        if isinstance(spec, TargetSpec) and spec.name not in SPECS:
            SPECS.register(spec.name, spec)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="ondevice.targets"):
            spec = ep.load()
            if isinstance(spec, TargetSpec) and spec.name not in SPECS:
                SPECS.register(spec.name, spec)
    except Exception:  # pragma: no cover - broken third-party entry points must not break discovery
        pass


def target_names() -> list[str]:
    _discover()
    return SPECS.names()


def get_spec(name: str) -> TargetSpec:
    _discover()
    return SPECS.get(name)


def get_target(name: str) -> Target:
    """Look a target up by name, importing its SDK lazily. Unknown names list the valid ones; a missing SDK
    raises MissingBackendError (an ImportError) with the pip line."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    spec = get_spec(name)
    spec.check_installed()
    mod_name, cls_name = spec.factory.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    inst = cls(spec)
    _INSTANCES[name] = inst
    return inst


def register_target(spec: TargetSpec) -> None:
    """Register a target defined outside `targets/` (e.g. in a user's package)."""
    _discover()
    SPECS.register(spec.name, spec, overwrite=True)
    _INSTANCES.pop(spec.name, None)


def artifact_target(path: str | os.PathLike) -> str:
    """Which target produced a bare artifact file, by its suffix (.onnx, .pte, .tflite, .mlpackage)."""
    _discover()
    p = str(path).rstrip("/")
    for name in SPECS.names():
        if p.endswith(SPECS.get(name).suffix):
            return name
    raise ValueError(
        f"cannot tell the target of {path!r} from its suffix; known suffixes: "
        + ", ".join(f"{SPECS.get(n).suffix} ({n})" for n in SPECS.names())
    )
