"""What a benchmark worker runs: an exported artifact through its Target, or an eager PyTorch model.

Both expose the same small interface so the harness treats every item alike:

    prepare()             import the runtime (before the memory baseline is taken)
    set_threads(n)        before load (ExecuTorch cannot change its thread pool after loading)
    load() -> runner
    run(runner, x)        float32 (N, ...) -> float32 (N, C); any N
    bind(runner)          the callable the timing loop times (run without output conversion)
    info() -> dict        size_bytes, size_kind, inspect, runtime_memory
    latency_measurable, latency_reason
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.errors import OndeviceError

# Modules that make up each runtime, imported before the memory baseline so that the load figure is the
# model's, not the SDK's. A target may declare its own with a `runtime_modules` attribute.
_RUNTIME_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "executorch": ("executorch.runtime",),
    "tflite": ("ai_edge_litert.interpreter",),
    "coreml": ("coremltools",),
}


def build_torch_model(ref: str, weights: str | None = None, kwargs: dict | None = None):
    """Rebuild an eager model: a registry name, "pkg.mod:factory" or "path/file.py:factory" (ondevice.models)."""
    from ondevice.models import build_model

    return build_model(ref, weights=weights, **dict(kwargs or {})).eval()


class TorchEngine:
    """Eager PyTorch (CPU), `torch.inference_mode()`."""

    latency_measurable = True
    latency_reason = None

    def __init__(self, ref: str, weights: str | None = None, kwargs: dict | None = None):
        self.ref, self.weights, self.kwargs = ref, weights, dict(kwargs or {})
        self.target_name = "pytorch"
        self.model = None

    def prepare(self) -> None:
        import torch  # noqa: F401  (imported before the memory baseline)

    def set_threads(self, n: int) -> None:
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set / parallel work started
            pass

    def load(self):
        self.model = build_torch_model(self.ref, self.weights, self.kwargs)
        return self.model

    def run(self, runner, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = runner(torch.from_numpy(x))
        if isinstance(y, (tuple, list)):
            y = y[0]
        elif isinstance(y, dict):
            y = next(iter(y.values()))
        return y.detach().float().numpy()

    def bind(self, runner):
        """The callable the timing loop times: one inference-mode forward pass."""
        import torch

        def forward(x: np.ndarray):
            with torch.inference_mode():
                return runner(torch.from_numpy(x))

        return forward

    def info(self) -> dict:
        model = self.model
        params = sum(p.numel() for p in model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        modules: dict[str, int] = {}
        for m in model.modules():
            if not list(m.children()):
                modules[type(m).__name__] = modules.get(type(m).__name__, 0) + 1
        dtypes: dict[str, int] = {}
        for p in model.parameters():
            k = str(p.dtype).replace("torch.", "")
            dtypes[k] = dtypes.get(k, 0) + p.numel() * p.element_size()
        if self.weights and Path(self.weights).is_file():
            size, kind = Path(self.weights).stat().st_size, "weights file"
        else:
            size, kind = param_bytes + buffers, "parameters and buffers in memory"
        return {
            "size_bytes": int(size),
            "size_kind": kind,
            "inspect": {"parameters": int(params), "modules": modules, "weight_dtypes": dtypes,
                        "weight_bytes": int(param_bytes)},
            "runtime_memory": {},
        }


class ArtifactEngine:
    """An exported artifact run through `ondevice.target.get_target(target)`."""

    def __init__(self, target: str, path: str):
        from ondevice.target import get_target

        self.path = Path(path)
        self.target_name = target
        self.target = get_target(target)
        self.latency_measurable = bool(getattr(self.target, "latency_measurable", True))
        self.latency_reason = None
        if not self.latency_measurable:
            self.latency_reason = (getattr(self.target, "latency_note", None)
                                   or getattr(self.target, "latency_reason", None)
                                   or getattr(self.target, "latency_not_measurable_reason", None)
                                   or getattr(self.target, "reason", None)
                                   or f"target {target!r} has no runtime on this platform")

    def prepare(self) -> None:
        mods = getattr(self.target, "runtime_modules", None) or _RUNTIME_MODULES.get(self.target_name, ())
        for m in mods:
            try:
                importlib.import_module(m)
            except ImportError:
                pass  # load() will raise the target's own helpful error

    def set_threads(self, n: int) -> None:
        self.target.set_threads(int(n))

    def load(self):
        if not self.path.exists():
            raise FileNotFoundError(f"artifact {self.path} does not exist")
        try:
            return self.target.load(self.path)
        except (ImportError, OndeviceError):
            raise
        except Exception as e:  # the runtime's own words, with the file and what to do about it
            raise self._damaged("load", e) from e

    def run(self, runner, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.target.run(runner, x), dtype=np.float32)
        except OndeviceError:
            raise
        except Exception as e:
            raise self._damaged("run", e) from e

    def _damaged(self, what: str, e: Exception) -> OndeviceError:
        from ondevice.errors import ArtifactLoadError, first_line

        return ArtifactLoadError(
            f"{self.target_name} cannot {what} {self.path}: {type(e).__name__}: {first_line(e, 300)}. The file is "
            f"damaged or not an artifact this runtime reads; export it again (its <artifact>.json record, when "
            f"present, says whether the file changed since it was verified)")

    def bind(self, runner):
        """The callable the timing loop times: the target's own run on this runner, nothing around it."""
        return functools.partial(self.target.run, runner)

    def info(self) -> dict:
        out: dict[str, Any] = {"size_bytes": int(self.target.size(self.path)), "size_kind": "artifact on disk"}
        for key, fn in (("inspect", self.target.inspect), ("runtime_memory", self.target.runtime_memory)):
            try:
                out[key] = fn(self.path) or {}
            except Exception as e:  # inspection is informative; a failure here must not fail the benchmark
                out[key] = {"error": f"{type(e).__name__}: {e}"}
        return out


def predict(engine, runner, xs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, C) float32 outputs of `engine` on xs (N, ...) in batches; an output that is not one row per sample (a
    damaged artifact can run and still return the wrong shape) raises a clear error instead of a reshape crash."""
    from ondevice.errors import ArtifactLoadError

    outs = []
    for i in range(0, len(xs), batch_size):
        xb = np.ascontiguousarray(xs[i:i + batch_size], np.float32)
        y = np.asarray(engine.run(runner, xb), dtype=np.float32)
        if y.ndim == 0 or y.shape[0] != len(xb):
            raise ArtifactLoadError(f"{getattr(engine, 'path', 'the model')} returned outputs of shape "
                                    f"{list(y.shape)} for a batch of {len(xb)} samples, not one row per sample; the "
                                    f"file is damaged or its output is not per sample: export it again")
        outs.append(y.reshape(len(xb), -1))
    widths = {o.shape[1] for o in outs}
    if len(widths) > 1:
        raise ArtifactLoadError(f"{getattr(engine, 'path', 'the model')} returned {sorted(widths)} outputs per "
                                f"sample in different batches; the file is damaged: export it again")
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)  # (N, C)


def make_engine(spec: dict):
    if spec["kind"] == "torch":
        return TorchEngine(spec["ref"], spec.get("weights"), spec.get("kwargs"))
    if spec["kind"] == "artifact":
        return ArtifactEngine(spec["target"], spec["path"])
    raise ValueError(f"unknown engine kind {spec['kind']!r}; valid: torch, artifact")
