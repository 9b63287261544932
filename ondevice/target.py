"""The target protocol and the target registry.

Every backend lives in its own folder under `targets/` (installed as `ondevice.targets.<name>`), and every folder
has the same shape:

    targets/<name>/__init__.py   SPEC = TargetSpec(...)  -- metadata only, imports no SDK
    targets/<name>/target.py     class implementing `Target` (imports the SDK lazily, inside methods)
    targets/<name>/README.md     what the target does, its precisions, its limits

Targets are discovered by scanning `ondevice.targets` and the entry-point group `ondevice.targets`, so adding a
fifth backend touches no core file. Everything the core, the bench and the energy model need to know about a target
is in its `TargetSpec` (suffix, precisions and their costs, runtime import names, where latency is measurable) or
comes back through the protocol below in one typed form (`Signature`, `Inspection`); nothing outside `targets/`
names a target.

The protocol, per artifact:

    quantize(model, precision, example_inputs, calibration) -> prepared       torch-level step (PT2E ...)
    export(prepared, precision, example_inputs, out, calibration, spec=...)  write the artifact
    load(path, spec=None) -> runner                                           runner.signature: named I/O
    run(runner, {name: array}) -> {name: array}                               any batch size, any dtype
    inspect(path) -> Inspection                                               ops, weights, planned memory

`run` is implemented once, here: it checks the named inputs against the artifact's signature (names, dtypes,
fixed sizes; errors name the input and the fix), converts what may be converted (int64 <-> int32 ids, float
width, (de)quantization of int8 I/O), splits the batch into the artifact's static batch with ONE padding policy
(the last chunk is padded with copies of its last sample) and calls the target's `call` per chunk. `bind` returns
the bare runtime call on prepared feeds: what the bench times.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InputMismatchError, MissingBackendError, UnsupportedPrecisionError
from .precision import Cost, Precision, get_precision
from .registry import Registry


@dataclass(frozen=True)
class TargetSpec:
    """Metadata a target folder declares in its `__init__.py` (no SDK import).

    name:        registry name
    extra:       the pip extra that installs its SDK -> `pip install 'ondevice[<extra>]'`
    requires:    import names that must be importable (checked without importing them)
    precisions:  precision names it can produce (see ondevice.precision)
    suffix:      artifact file suffix (a directory suffix is allowed)
    factory:     "module:Class" of the Target implementation
    runtime_modules: the runtime's import names; a bench worker imports them before its memory baseline so the
                 load figure is the model's, not the SDK's
    runtime_platforms: `sys.platform` values where its runtime exists (None: everywhere); elsewhere `run` may use a
                 reference evaluator and latency is reported as not measurable, with `no_runtime_reason`
    precision_costs: per precision, where its runtime computes differently from the precision's default Cost
    dynamic_axes: named axes ("batch", "seq") its artifacts can keep dynamic; others are fixed from the samples
    """

    name: str
    extra: str
    requires: tuple[str, ...]
    precisions: tuple[str, ...]
    suffix: str
    factory: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)  # option name -> help, e.g. {"nhwc": "..."}
    runtime_modules: tuple[str, ...] = ()
    runtime_platforms: tuple[str, ...] | None = None
    no_runtime_reason: str = ""
    precision_costs: dict[str, Cost] = field(default_factory=dict)
    dynamic_axes: tuple[str, ...] = ("batch",)
    quiet_loggers: tuple[str, ...] = ()  # SDK loggers whose import noise the CLI silences

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

    def latency_measurable(self) -> tuple[bool, str | None]:
        """(measurable here?, why not) from `runtime_platforms`."""
        if self.runtime_platforms is None or sys.platform in self.runtime_platforms:
            return True, None
        return False, (f"not measurable on {sys.platform}: {self.no_runtime_reason or 'no runtime on this OS'}")

    def cost(self, precision: str | None) -> tuple[Cost, bool]:
        """(energy cost of `precision` on this target, assumed?): the target's override, else the precision's own;
        an unknown precision is costed as fp32 (assumed=True)."""
        if precision in self.precision_costs:
            return self.precision_costs[precision], False
        try:
            return get_precision(precision).cost, False
        except (ValueError, TypeError):
            return get_precision("fp32").cost, True


# --- what a loaded artifact takes and returns ----------------------------------------------------------------
@dataclass(frozen=True)
class IOTensor:
    """One input or output of a loaded artifact. `shape` holds ints (fixed) and None or an axis name (dynamic);
    `quantization` = (scale, zero_point) of an integer tensor that carries quantized float values."""

    name: str
    dtype: str  # NumPy name: float32, float16, int64, int32, int8, uint8, bool
    shape: tuple[int | str | None, ...]
    quantization: tuple[float, int] | None = None

    @property
    def takes_floats(self) -> bool:
        return self.dtype.startswith("float") or self.quantization is not None

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype} [{dims}])"

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.quantization is not None:
            d["quantization"] = {"scale": self.quantization[0], "zero_point": self.quantization[1]}
        return d


@dataclass(frozen=True)
class Signature:
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def static_batch(self) -> int | None:
        """The artifact's fixed batch size (dim 0 of its inputs), None when the batch is dynamic."""
        dims = {t.shape[0] for t in self.inputs if t.shape}
        fixed = [d for d in dims if isinstance(d, int) and d > 0]
        return fixed[0] if fixed and len(dims) == 1 else None

    def renamed(self, inputs: list[str] | None = None, outputs: list[str] | None = None) -> "Signature":
        """The same tensors under other names (position for position), e.g. the input spec's names for a format
        that stores none (.pte)."""
        def ren(ts, names):
            if names is None:
                return ts
            return tuple(IOTensor(n, t.dtype, t.shape, t.quantization) for t, n in zip(ts, names))

        return Signature(ren(self.inputs, inputs), ren(self.outputs, outputs))


@dataclass
class Inspection:
    """What an artifact holds, filled the same way by every target.

    ops:               op type -> count (every op the runtime executes; delegated ones under their delegate's names)
    delegated_ops:     the part of `ops` a delegate/accelerator backend runs; None when the format has no delegates
    non_delegated_ops: the part run by the runtime's own kernels; None when the format has no delegates
    weight_bytes:      NumPy dtype (storage) -> bytes of stored weights (constants)
    weight_tensors:    NumPy dtype -> number of stored weight tensors
    planned_memory_bytes: the runtime's planned activation memory where the format records it, else None
    inputs / outputs:  IOTensor dicts (name, dtype, shape with None/axis names for dynamic dims)
    compute_precision: the float type the artifact computes in where it records one (Core ML: "fp16"/"fp32")
    metadata:          the artifact's own metadata (input spec, preprocessing) where the format has a place for it
    details:           target-specific extras (opset, delegates, compression ops, deployment target, ...)
    """

    format: str
    ops: dict[str, int]
    weight_bytes: dict[str, int]
    weight_tensors: dict[str, int]
    inputs: list[dict]
    outputs: list[dict]
    delegated_ops: dict[str, int] | None = None
    non_delegated_ops: dict[str, int] | None = None
    planned_memory_bytes: int | None = None
    compute_precision: str | None = None  # the artifact's own float compute type where it records one ("fp16")
    metadata: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def to_dict(self) -> dict:
        """The record form: the schema fields, their totals, and `details` flattened in (`weight_dtypes` = the
        tensor counts per dtype, the name older records used)."""
        d = asdict(self)
        details = d.pop("details")
        d["num_ops"] = int(sum(self.ops.values()))
        d["weight_dtypes"] = dict(self.weight_tensors)
        if self.delegated_ops is not None:
            d["num_delegated_ops"] = int(sum(self.delegated_ops.values()))
            d["num_non_delegated_ops"] = int(sum((self.non_delegated_ops or {}).values()))
        return {**details, **d}


# --- the input spec inside the artifact ----------------------------------------------------------------------
META_SPEC = "ondevice.input_spec"
META_PREPROCESSING = "ondevice.preprocessing"


def artifact_metadata(spec) -> dict[str, str]:
    """String key/values a target writes into its artifact's own metadata: the input spec (names, dtypes, shapes
    with dynamic axes, how the model is called) and, on their own, the preprocessing a deployer must apply."""
    import json

    if spec is None:
        return {}
    d = spec.to_dict()
    return {META_SPEC: json.dumps(d, sort_keys=True), META_PREPROCESSING: json.dumps(d.get("preprocessing") or {},
                                                                                   sort_keys=True)}


def read_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The artifact metadata as written by `artifact_metadata`, parsed ({} where absent); other keys kept as text."""
    import json

    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k in (META_SPEC, META_PREPROCESSING):
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        else:
            out[k] = v
    return out


def spec_from_metadata(meta: dict[str, Any]):
    """The InputSpec an artifact carries in its own metadata (`artifact_metadata`), None when it carries none."""
    import json

    raw = meta.get(META_SPEC)
    if raw is None:
        return None
    try:
        from .spec import InputSpec

        return InputSpec.from_dict(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, KeyError, TypeError):
        return None


# --- feeding named inputs ------------------------------------------------------------------------------------
def _np():
    import numpy as np

    return np


def _kind(dtype) -> str:
    np = _np()
    dt = np.dtype(dtype)
    return "float" if dt.kind == "f" else "bool" if dt.kind == "b" else "int" if dt.kind in "iu" else dt.kind


def _wrong_dtype(t: IOTensor, got, where: str) -> InputMismatchError:
    got = _np().dtype(got).name
    if not t.takes_floats:
        fix = (f"pass integer values (token ids / mask as int64 or int32); ids are never cast to float"
               if _kind(got) == "float" else f"convert it with .astype('{t.dtype}')")
    else:
        fix = ("apply the model's preprocessing (scale, mean/std: `ondevice inspect` prints it) and pass float32"
               if _kind(got) in ("int", "bool") else f"convert it with .astype('{t.dtype}')")
    return InputMismatchError(f"{where}: input {t.name!r} takes {t.dtype}, got {got}; {fix}")


def _check_shape(t: IOTensor, shape: tuple, where: str, batch_axis: bool = True) -> None:
    if len(shape) != len(t.shape):
        raise InputMismatchError(f"{where}: input {t.describe()} has {len(t.shape)} dimensions, got an array of "
                                 f"shape {tuple(shape)}; reshape it to the artifact's layout")
    for i, (want, got) in enumerate(zip(t.shape, shape)):
        if (i == 0 and batch_axis) or not isinstance(want, int) or want < 0 or want == got:
            continue
        seq_like = not t.takes_floats or len(t.shape) in (2, 3)  # token ids, masks, (B, T, D) features; not images
        if i == 1 and seq_like and got > want:
            raise InputMismatchError(
                f"{where}: input {t.name!r} has {got} positions on axis 1, longer than the exported fixed length "
                f"{want}; truncate it to {want} (tokenizer max_length={want}) or export again with a longer max "
                f"length" + _dynamic_seq_hint())
        if i == 1 and seq_like:
            raise InputMismatchError(
                f"{where}: input {t.name!r} has {got} positions on axis 1; the artifact was exported with the fixed "
                f"length {want}: pad it to {want} (tokenizer padding='max_length', mask 0 on the padding)")
        raise InputMismatchError(f"{where}: input {t.describe()} needs size {want} on axis {i}, got shape "
                                 f"{tuple(shape)} (the artifact's own layout: `ondevice inspect` prints it)")


def _dynamic_seq_hint() -> str:
    names = [n for n in target_names() if "seq" in get_spec(n).dynamic_axes]
    return f" (targets with a dynamic sequence axis take any length: {', '.join(names)})" if names else ""


def _convert(t: IOTensor, x, where: str):
    """x as the artifact's dtype: float width, int64 <-> int32 ids (range-checked), bool <-> int masks, float ->
    quantized int8 where the tensor carries a scale. Float <-> integer otherwise is refused."""
    np = _np()
    x = np.asarray(x)
    want, got = _kind(t.dtype), _kind(x.dtype)
    if t.quantization is not None and got == "float":
        scale, zero = t.quantization
        info = np.iinfo(np.dtype(t.dtype))
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(t.dtype)
    if want == "float":
        if got != "float":
            raise _wrong_dtype(t, x.dtype, where)
        return np.ascontiguousarray(x, dtype=t.dtype)
    if got == "float":
        raise _wrong_dtype(t, x.dtype, where)
    if x.dtype != np.dtype(t.dtype) and want == "int" and x.size:
        info = np.iinfo(np.dtype(t.dtype))
        lo, hi = int(x.min()), int(x.max())
        if lo < info.min or hi > info.max:
            raise InputMismatchError(f"{where}: input {t.name!r} takes {t.dtype}; values {lo}..{hi} do not fit")
    return np.ascontiguousarray(x, dtype=t.dtype)


def check_feeds(sig: Signature, inputs: dict, where: str = "inputs") -> dict:
    """Named inputs checked against the artifact's signature and converted to its dtypes; errors name the input."""
    if not isinstance(inputs, dict):
        raise InputMismatchError(f"{where}: pass the inputs by name, as {{{', '.join(repr(n) for n in sig.input_names)}"
                                 f": array}}; got {type(inputs).__name__}")
    missing = [t for t in sig.inputs if t.name not in inputs]
    extra = [n for n in inputs if n not in sig.input_names]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing input(s) " + ", ".join(t.describe() for t in missing))
        if extra:
            parts.append("unexpected input(s) " + ", ".join(map(repr, extra)))
        raise InputMismatchError(
            f"{where}: " + "; ".join(parts) + ". The artifact takes exactly: " +
            ", ".join(t.describe() for t in sig.inputs) + ". Pass every one by name (a .npz for `ondevice bench "
            "--inputs` holds one array per input name)")
    feeds = {}
    n = None
    for t in sig.inputs:
        x = _convert(t, inputs[t.name], where)
        _check_shape(t, x.shape, where)
        if n is not None and x.ndim and x.shape[0] != n:
            raise InputMismatchError(f"{where}: input {t.name!r} has {x.shape[0]} samples, the others {n}; every "
                                     f"input needs the same batch (axis 0)")
        n = x.shape[0] if x.ndim else n
        feeds[t.name] = x
    return feeds


def decode_outputs(sig: Signature, outs: dict) -> dict:
    """Runtime outputs -> arrays: dequantized where an integer output carries a scale, copied (runtimes reuse
    their buffers)."""
    np = _np()
    res = {}
    for t in sig.outputs:
        y = np.asarray(outs[t.name])
        if t.quantization is not None:
            scale, zero = t.quantization
            y = ((y.astype(np.float32) - zero) * scale).astype(np.float32)
        else:
            y = np.array(y, copy=True)
        res[t.name] = y
    return res


def pad_batch(feeds: dict, batch: int) -> dict:
    """The padding policy (one, for every target): a chunk shorter than the static batch is filled up with copies
    of its last sample. Copies keep every input valid (token ids in range, masks with real tokens)."""
    np = _np()
    out = {}
    for k, x in feeds.items():
        n = len(x)
        out[k] = x if n == batch else np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)])  # (batch, ...)
    return out


def run_batched(call: Callable[[dict], dict], feeds: dict, batch: int | None) -> dict:
    """`call` on every chunk of `batch` samples (the artifact's static batch; None: one call with everything),
    the last chunk padded by `pad_batch`; outputs concatenated and cut back to the real samples."""
    np = _np()
    n = len(next(iter(feeds.values()))) if feeds else 0
    if batch is None:
        return call(feeds)
    parts: list[dict] = []
    for i in range(0, n, batch):
        chunk = {k: v[i:i + batch] for k, v in feeds.items()}  # (<= batch, ...) each
        m = len(next(iter(chunk.values())))
        out = call(pad_batch(chunk, batch))
        parts.append({k: v[:m] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def recorded_spec(path) -> Any:
    """The input spec in the <artifact>.json record beside `path` (an InputSpec), or None when there is no record, it
    holds no spec or cannot be read (the names then fall back to the format's own)."""
    from . import sidecar
    from .errors import OndeviceError
    from .spec import InputSpec

    try:
        rec = sidecar.read(path)
    except (OndeviceError, OSError, ValueError):
        return None
    return InputSpec.from_dict(rec["input_spec"]) if rec and rec.get("input_spec") else None


def named_like_spec(sig: Signature, spec, path: str = "artifact") -> Signature:
    """`sig` under the input spec's names (position for position), for formats that store no names (.pte) or
    store others. A spec whose inputs or outputs do not match the file's in number or kind belongs to another
    artifact: that raises ArtifactError naming the tensor."""
    from .errors import ArtifactError

    ins, outs = spec.inputs, spec.outputs
    problem = None
    if len(ins) != len(sig.inputs):
        problem = (f"its record's input spec has {len(ins)} inputs ({', '.join(spec.names)}), the file "
                   f"{len(sig.inputs)} ({', '.join(t.describe() for t in sig.inputs)})")
    elif outs and len(outs) != len(sig.outputs):
        problem = f"its record's input spec has {len(outs)} outputs, the file {len(sig.outputs)}"
    else:
        for want, got in zip(ins, sig.inputs):
            if (want.dtype.startswith("float") or want.dtype == "bfloat16") != got.takes_floats:
                problem = f"input {want.name!r} is {want.dtype} in the record, {got.dtype} in the file"
                break
    if problem:
        raise ArtifactError(f"{path}: the record beside it disagrees with the file: {problem}. The record belongs to "
                            f"another export: export the artifact again (or remove the stale record)")
    return sig.renamed(spec.names, spec.output_names or None)


def calibration_chunks(calibration: dict, batch: int, *, whole: bool = False):
    """{name: (N, ...) array} in spec order -> tuples of torch tensors of `batch` samples (the last one shorter;
    whole=True: full chunks only, for a graph captured with a static batch). Integer inputs keep their dtype."""
    import torch

    arrays = list(calibration.values())
    n = len(arrays[0]) if arrays else 0
    if whole and n < batch:
        raise ValueError(f"calibration needs at least {batch} samples (the example batch); got {n}")
    stop = n - n % batch if whole else n
    for i in range(0, stop, batch):
        yield tuple(torch.from_numpy(_np().ascontiguousarray(a[i:i + batch])) for a in arrays)


class Target(ABC):
    """One backend. The core calls, in order: quantize -> export -> load -> run; plus size and inspect.

    - `quantize` is the torch-level step (PT2E calibration etc.). Targets that quantize after conversion
      (post-training tools on the converted file) return the model unchanged and do that work in `export`.
    - `export` writes the artifact to `out` (a path ending in `spec.suffix`) and returns it. The model it gets takes
      the input spec's tensors positionally, in spec order, and returns a tuple in the order of the spec's outputs;
      `spec` (keyword) names them and carries the preprocessing to write into the artifact's metadata.
    - `load(path, spec)` returns a runner whose `signature` names the artifact's inputs and outputs (the spec's
      names where the format stores none).
    - `call(runner, feeds)` runs the runtime once on feeds of exactly the artifact's batch size; `run` (here) does
      the checking, conversion and batching around it.
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

    def latency(self) -> tuple[bool, str | None]:
        """(latency measurable here?, why not). The spec's answer unless the target knows more."""
        return self.spec.latency_measurable()

    # -- the protocol ---------------------------------------------------------------------------------------
    @abstractmethod
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: dict | None, **options):
        """Torch-level quantization; returns what `export` takes (possibly `model` unchanged). `calibration` is
        {input name: (N, ...) real samples} in spec order."""

    @abstractmethod
    def export(self, prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: dict | None = None, **options) -> Path:
        """Convert to the target format (plus any post-conversion quantization) and write it to `out`."""

    @abstractmethod
    def load(self, path: Path, spec=None) -> Any:
        """Load an artifact into its runtime; returns a runner with a `signature` (Signature)."""

    @abstractmethod
    def call(self, runner: Any, feeds: dict) -> dict:
        """One runtime call on checked feeds of the artifact's batch size -> {output name: array}."""

    @abstractmethod
    def inspect(self, path: Path) -> Inspection:
        """Ops, delegated / non-delegated ops, weight bytes per dtype, I/O, metadata (see Inspection)."""

    def signature(self, runner: Any) -> Signature:
        return runner.signature

    def run(self, runner: Any, inputs: dict) -> dict:
        """{input name: (N, ...) array} -> {output name: (N, ...) array}, any N (see the module docstring)."""
        sig = self.signature(runner)
        feeds = check_feeds(sig, inputs, where=f"{self.name} artifact")
        if feeds and len(next(iter(feeds.values()))) == 0:
            return self._empty_outputs(sig)
        out = run_batched(lambda f: decode_outputs(sig, self.call(runner, f)), feeds, self.chunk(runner, sig))
        return out

    def chunk(self, runner: Any, sig: Signature) -> int | None:
        """How many samples one `call` of `run` takes: the artifact's static batch (None: any number). A runner that
        takes more samples than the file declares (Core ML's reference evaluator) says so in its target."""
        return sig.static_batch

    def prepare(self, runner: Any, inputs: dict) -> dict:
        """Checked, converted feeds of one batch of the artifact's batch size (padded as `run` pads), for `bind`."""
        sig = self.signature(runner)
        feeds = check_feeds(sig, inputs, where=f"{self.name} artifact")
        b = sig.static_batch
        if b is not None:
            feeds = pad_batch({k: v[:b] for k, v in feeds.items()}, b)
        return feeds

    def bind(self, runner: Any, feeds: dict, carry: dict[str, str] | None = None) -> Callable[[], Any]:
        """A zero-argument callable that makes exactly the runtime call on `feeds` (from `prepare`): what the bench
        times. `carry` maps a state input to the output fed back into it on the next call."""
        carry = dict(carry or {})

        def step():
            out = self.call(runner, feeds)
            for i, o in carry.items():
                feeds[i] = out[o]
            return out

        return step

    @staticmethod
    def _empty_outputs(sig: Signature) -> dict:
        np = _np()
        out = {}
        for t in sig.outputs:
            rest = t.shape[1:]
            if not all(isinstance(d, int) and d >= 0 for d in rest):
                raise InputMismatchError(f"no samples given and output {t.name!r} has dynamic dimensions; pass at "
                                         f"least one sample")
            out[t.name] = np.zeros((0, *rest), np.float32 if t.quantization or t.dtype.startswith("float")
                                   else t.dtype)
        return out

    def size(self, path: Path) -> int:
        """Artifact size in bytes (a directory artifact counts every file in it)."""
        p = Path(path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size

    def runtime_memory(self, path: Path) -> dict:
        """The runtime's own planned/arena memory figures where it exposes them (bytes); {} otherwise."""
        return {}

    def set_threads(self, n: int) -> None:
        """Set the runtime's thread count before the first `load` in this process."""


# --- discovery ---------------------------------------------------------------------------------------------
SPECS: Registry[TargetSpec] = Registry("target")
_INSTANCES: dict[str, Target] = {}
_DISCOVERED = False
REGISTERED_ENV = "ONDEVICE_REGISTERED_TARGETS"  # "module:SPEC,..." re-registered in bench worker processes


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
    for ref in filter(None, os.environ.get(REGISTERED_ENV, "").split(",")):
        spec = _registered(ref)
        if isinstance(spec, TargetSpec):
            SPECS.register(spec.name, spec, overwrite=True)


def _registered(ref: str) -> Any:
    """The object named by a REGISTERED_ENV entry "module:ATTR[@folder]" (the folder is put on sys.path when the
    module is not importable otherwise: a worker process does not share its parent's sys.path edits)."""
    ref, _, folder = ref.partition("@")
    mod_name, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except ImportError:
        if not folder or folder in sys.path:
            return None
        sys.path.append(folder)
        try:
            return getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError):
            return None
    except AttributeError:
        return None


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


def register_target(spec: TargetSpec, *, module: str | None = None) -> None:
    """Register a target defined outside `targets/` (e.g. in a user's package).

    Bench workers are separate processes: they find the target again through `ONDEVICE_REGISTERED_TARGETS`
    ("module:ATTR@folder"), set here from `module` ("module:ATTR") or from the module of `spec.factory` (which must
    then define `SPEC`), with the folder the module was imported from."""
    _discover()
    SPECS.register(spec.name, spec, overwrite=True)
    _INSTANCES.pop(spec.name, None)
    ref = module or f"{spec.factory.split(':')[0]}:SPEC"
    mod = sys.modules.get(ref.partition(":")[0])
    origin = getattr(mod, "__file__", None)
    if origin and "." not in ref.partition(":")[0]:
        ref += "@" + str(Path(origin).resolve().parent)
    refs = [r for r in os.environ.get(REGISTERED_ENV, "").split(",") if r and r.partition("@")[0] != ref.partition(
        "@")[0]]
    os.environ[REGISTERED_ENV] = ",".join(refs + [ref])


def artifact_target(path: str | os.PathLike, record: dict | None = None) -> str:
    """Which target reads an artifact: the one its record (`<artifact>.json`) names, else the one whose suffix the
    file has. A record naming a target whose suffix the file does not have belongs to another file."""
    from .errors import ArtifactError

    _discover()
    p = str(path).rstrip("/")
    if record and record.get("target"):
        name = record["target"]
        if name not in SPECS:
            raise ArtifactError(f"{p}: its record names target {name!r}, which is not installed here; "
                                f"{SPECS.unknown_message(name)}")
        if not p.endswith(SPECS.get(name).suffix):
            raise ArtifactError(f"{p}: its record {Path(p).name}.json says target {name!r} (files ending in "
                                f"{SPECS.get(name).suffix}); the record belongs to another file: export the artifact "
                                f"again or remove the stale record")
        return name
    matches = [n for n in SPECS.names() if p.endswith(SPECS.get(n).suffix)]
    if matches:
        return matches[0]
    raise ValueError(
        f"cannot tell the target of {path!r} from its suffix; known suffixes: "
        + ", ".join(f"{SPECS.get(n).suffix} ({n})" for n in SPECS.names())
    )
