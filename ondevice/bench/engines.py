"""What a benchmark worker runs: an exported artifact through its Target, or an eager PyTorch model.

Both expose the same small interface so the harness treats every item alike:

    prepare()                  import the runtime (before the memory baseline is taken)
    set_threads(n)             before load (ExecuTorch cannot change its thread pool after loading)
    load() -> runner
    run(runner, feeds)         {input name: (N, ...)} -> {output name: (N, ...)}; any N
    bind(runner, feeds, carry) a zero-argument callable making exactly the runtime calls on one prepared batch:
                               what the timing loop times (state inputs fed from `carry` outputs between calls);
                               its `runtime_calls` says how many calls one query makes (an artifact with a static
                               batch smaller than the query's is called once per chunk of its batch)
    info() -> dict             size_bytes, size_kind, inspect, runtime_memory
    latency_measurable, latency_reason
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ondevice.errors import OndeviceError

def build_torch_model(ref: str, weights: str | None = None, kwargs: dict | None = None):
    """Rebuild an eager model: a registry name, "pkg.mod:factory" or "path/file.py:factory" (ondevice.models)."""
    from ondevice.models import build_model

    return build_model(ref, weights=weights, **dict(kwargs or {})).eval()


class TorchEngine:
    """Eager PyTorch (CPU), `torch.inference_mode()`, called the way the input spec says (`structure`)."""

    latency_measurable = True
    latency_reason = None

    def __init__(self, ref: str, weights: str | None = None, kwargs: dict | None = None, structure: Any = None):
        self.ref, self.weights, self.kwargs = ref, weights, dict(kwargs or {})
        self.structure = structure
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

    def _tree(self, feeds: dict):
        import torch

        from ondevice.tree import tree_from_leaves

        leaves = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
        if self.structure is not None:
            return tree_from_leaves(self.structure, leaves)
        return leaves[0] if len(leaves) == 1 else tuple(leaves)

    def run(self, runner, feeds: dict) -> dict:
        import torch

        from ondevice.spec import output_items
        from ondevice.tree import call_model

        with torch.inference_mode():
            y = call_model(runner, self._tree(feeds))
        return {k: v.detach().float().numpy() for k, v in output_items(y)}

    def bind(self, runner, feeds: dict, carry: dict | None = None):
        """The callable the timing loop times: one inference-mode forward pass on prepared tensors."""
        import torch

        from ondevice.tree import call_model

        tree = self._tree(feeds)

        def forward():
            with torch.inference_mode():
                return call_model(runner, tree)

        return forward

    def example(self, feeds: dict):
        """One sample as the model takes it (for MAC counting)."""
        return self._tree({k: v[:1] for k, v in feeds.items()})

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
    """An exported artifact run through `ondevice.target.get_target(target)`; `spec` is the input spec from its
    record (None for a bare file: the artifact's own names)."""

    def __init__(self, target: str, path: str, spec: dict | None = None):
        from ondevice.target import get_target

        self.path = Path(path)
        self.target_name = target
        self.target = get_target(target)
        self.spec = spec
        self.latency_measurable, self.latency_reason = self.target.latency()

    def prepare(self) -> None:
        import importlib

        for m in self.target.spec.runtime_modules:
            try:
                importlib.import_module(m)
            except ImportError:
                pass  # load() will raise the target's own helpful error

    def set_threads(self, n: int) -> None:
        self.target.set_threads(int(n))

    def load(self):
        from ondevice.spec import InputSpec

        if not self.path.exists():
            raise FileNotFoundError(f"artifact {self.path} does not exist")
        try:
            return self.target.load(self.path, InputSpec.from_dict(self.spec) if self.spec else None)
        except (ImportError, OndeviceError):
            raise
        except Exception as e:  # the runtime's own words, with the file and what to do about it
            raise self._damaged("load", e) from e

    def _named(self, runner, feeds: dict) -> dict:
        """Feeds under the artifact's names: one input is matched by position when its name differs (an image
        array called 'x' in a .npz, 'args_0' in a bare .tflite)."""
        names = self.target.signature(runner).input_names
        if len(names) == 1 and len(feeds) == 1 and names[0] not in feeds:
            return {names[0]: next(iter(feeds.values()))}
        return feeds

    def _damaged(self, what: str, e: Exception) -> OndeviceError:
        from ondevice.errors import ArtifactError, first_line

        return ArtifactError(
            f"{self.target_name} cannot {what} {self.path}: {type(e).__name__}: {first_line(e, 300)}. The file is "
            f"damaged or not an artifact this runtime reads; export it again (its <artifact>.json record, when "
            f"present, says whether the file changed since it was verified)")

    def run(self, runner, feeds: dict) -> dict:
        try:
            return self.target.run(runner, self._named(runner, feeds))
        except OndeviceError:
            raise
        except Exception as e:
            raise self._damaged("run", e) from e

    def bind(self, runner, feeds: dict, carry: dict | None = None):
        """The callable the timing loop times: the runtime calls themselves on prepared feeds (Target.bind). A query
        of more samples than the artifact's static batch makes one call per chunk of that batch (the last chunk
        padded), so a batch-8 query on a batch-1 file times 8 calls, never one call labelled batch 8."""
        named = self._named(runner, feeds)
        b = self.target.signature(runner).static_batch
        n = len(next(iter(named.values()))) if named else 0
        if carry or b is None or n <= b:
            step = self.target.bind(runner, self.target.prepare(runner, named), carry)
            return _counted(step, 1)
        steps = [self.target.bind(runner, self.target.prepare(runner, {k: v[i:i + b] for k, v in named.items()}))
                 for i in range(0, n, b)]

        def query():
            for one in steps:
                one()

        return _counted(query, len(steps))

    def info(self) -> dict:
        out: dict[str, Any] = {"size_bytes": int(self.target.size(self.path)), "size_kind": "artifact on disk"}
        for key, fn in (("inspect", self.target.inspect), ("runtime_memory", self.target.runtime_memory)):
            try:
                res = fn(self.path) or {}
                out[key] = res.to_dict() if hasattr(res, "to_dict") else res
            except Exception as e:  # inspection is informative; a failure here must not fail the benchmark
                out[key] = {"error": f"{type(e).__name__}: {e}"}
        return out


def _counted(fn, calls: int):
    fn.runtime_calls = calls
    return fn


def predict(engine, runner, xs: dict[str, np.ndarray] | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, ...) float32 primary (first) output of `engine` on named inputs {name: (N, ...)} (or one array) in
    batches; an output that is not one row per sample (a damaged artifact can run and still return the wrong shape)
    raises a clear error instead of a reshape crash."""
    from ondevice.errors import ArtifactError

    feeds = xs if isinstance(xs, dict) else {"x": xs}
    n = len(next(iter(feeds.values())))
    where = getattr(engine, "path", "the model")
    outs = []
    for i in range(0, n, batch_size):
        batch = {k: np.ascontiguousarray(v[i:i + batch_size]) for k, v in feeds.items()}
        nb = len(next(iter(batch.values())))
        got = engine.run(runner, batch)
        if not got:
            raise ArtifactError(f"{where} returned no outputs; the file is damaged or declares no outputs: export it "
                                f"again")
        y = np.asarray(next(iter(got.values())), dtype=np.float32)
        if y.ndim == 0 or y.shape[0] != nb:
            raise ArtifactError(f"{where} returned outputs of shape {list(y.shape)} for a batch of {nb} samples, "
                                f"not one row per sample; the file is damaged or its output is not per sample: "
                                f"export it again")
        outs.append(y)
    if len({o.shape[1:] for o in outs}) > 1:
        raise ArtifactError(f"{where} returned {sorted({o.shape[1:] for o in outs})} output shapes per sample in "
                            f"different batches; the file is damaged: export it again")
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)  # (N, ...)


def make_engine(spec: dict):
    if spec["kind"] == "torch":
        return TorchEngine(spec["ref"], spec.get("weights"), spec.get("kwargs"), spec.get("structure"))
    if spec["kind"] == "artifact":
        return ArtifactEngine(spec["target"], spec["path"], spec.get("input_spec"))
    raise ValueError(f"unknown engine kind {spec['kind']!r}; valid: torch, artifact")
