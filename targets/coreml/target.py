"""Core ML target: PyTorch -> torch.export -> coremltools ML Program (.mlpackage), with post-conversion weight
compression from `coremltools.optimize.coreml`.

The Core ML runtime exists only on Apple platforms. There, `load`/`run` use `MLModel.predict`. Everywhere else
they use the NumPy reference evaluator in `mil_eval.py`, which reads the saved package back into a MIL program
and evaluates it op by op, so the numbers verified are those of the saved artifact, not of the PyTorch model.
The evaluator says nothing about speed: `latency_measurable` is False there.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ondevice.errors import ArtifactError, ConfigError, ConversionError, MissingBackendError, first_line
from ondevice.opsource import locate_op
from ondevice.precision import Precision
from ondevice.target import (IOTensor, Inspection, Signature, Target, artifact_metadata, named_like_spec,
                             read_metadata, spec_from_metadata)

log = logging.getLogger("ondevice.targets.coreml")

DEPLOYMENT_TARGETS = ("iOS17", "iOS18")
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
# precision -> (minimum deployment target, why)
MIN_DEPLOYMENT_TARGET = {
    "int4_weight_only": ("iOS18", "per-block int4 weight quantization (constexpr_blockwise_shift_scale) needs iOS18"),
}
WEIGHT_THRESHOLD = 2048  # weight tensors with fewer elements stay uncompressed (coremltools' default)
INT4_BLOCK_SIZE = 32
RUNTIME_ENV = "ONDEVICE_COREML_RUNTIME"  # "reference" forces the NumPy evaluator even where Core ML exists

# harmless messages printed by coremltools / torch / torchao on import and conversion (see shared stack notes)
_NOISE = (
    "has not been tested with coremltools",
    "Failed to load _ML",
    "libcoremlpython",
    "is not supported. Minimum required version",
    "Failed to load /",
    "_C_mxfp8",
    "is an Enum subclass and is now natively supported",
    "It would be better to use kmeans1d",
)
_PROGRESS = re.compile(r"(ops/s|passes/s|it/s|s/it|s/ops|s/passes)\]")


# ---------------------------------------------------------------------------------------------------------------
# quiet imports and conversions
# ---------------------------------------------------------------------------------------------------------------
class _Capture(logging.Filter):
    """Drops known noise; keeps coremltools' error records (they name the failing torch op) for our message."""

    def __init__(self):
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(p in msg for p in _NOISE):
            return False
        if record.levelno >= logging.ERROR and record.name.startswith("coremltools"):
            self.errors.append(msg.strip())
            return False
        return True


@contextlib.contextmanager
def _quiet() -> Iterator[_Capture]:
    cap = _Capture()
    loggers = [logging.getLogger(n) for n in ("coremltools", "torchao", "torch.utils._pytree")]
    for lg in loggers:
        lg.addFilter(cap)
    err = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
            warnings.simplefilter("default")
            yield cap
    finally:
        for lg in loggers:
            lg.removeFilter(cap)
        # hand back everything that is not a progress bar or known noise
        rest = [ln for ln in re.split(r"[\r\n]+", err.getvalue())
                if ln.strip() and not _PROGRESS.search(ln) and not any(p in ln for p in _NOISE)]
        if rest:
            sys.stderr.write("\n".join(rest) + "\n")
        for w in caught:
            if not any(p in str(w.message) for p in _NOISE) and not issubclass(
                    w.category, (DeprecationWarning, FutureWarning)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _ct():
    """Import coremltools quietly, or say how to install it."""
    try:
        with _quiet():
            import coremltools
            import coremltools.optimize.coreml  # noqa: F401
    except ImportError as e:
        raise MissingBackendError(f"target 'coreml' needs coremltools ({e}). Install it with: "
                                  f"pip install 'ondevice[coreml]'") from e
    return coremltools


def coreml_runtime_available() -> bool:
    """True where `MLModel.predict` can run: macOS with coremltools' native extension, unless overridden."""
    if os.environ.get(RUNTIME_ENV, "").lower() == "reference" or sys.platform != "darwin":
        return False
    try:
        with _quiet():
            import coremltools.libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------
def resolve_deployment_target(precision: str, requested: str | None) -> tuple[str, str]:
    """-> (deployment target, why). int4_weight_only selects iOS18 when no target was requested."""
    if requested is not None and requested not in DEPLOYMENT_TARGETS:
        raise ConfigError(f"coreml option deployment_target={requested!r} is not one of "
                          f"{', '.join(DEPLOYMENT_TARGETS)}")
    need = MIN_DEPLOYMENT_TARGET.get(precision)
    if need is not None:
        minimum, why = need
        if requested is None:
            return minimum, f"selected automatically: {why}"
        if DEPLOYMENT_TARGETS.index(requested) < DEPLOYMENT_TARGETS.index(minimum):
            raise ConfigError(f"coreml precision {precision!r} cannot target {requested}: {why}. Pass "
                              f"deployment_target={minimum!r}, or leave the option out to select it automatically")
    if requested is None:
        return DEFAULT_DEPLOYMENT_TARGET, "default"
    return requested, "requested"


def int4_block_size(dim: int) -> int:
    """Block length along a weight's input axis: 32 where it divides `dim`, else the largest divisor in
    8..31, else the whole axis (one scale per output channel). coremltools skips a tensor whose input axis is not
    a multiple of the block, which would leave e.g. a 400-input linear layer in fp32."""
    if dim % INT4_BLOCK_SIZE == 0:
        return INT4_BLOCK_SIZE
    for b in range(INT4_BLOCK_SIZE - 1, 7, -1):
        if dim % b == 0:
            return b
    return dim


def _compressible_consts(mlmodel):
    """(const op, value, (input axis, output axis)) of every float const coremltools would compress (at least
    WEIGHT_THRESHOLD elements), with the channel axes it picks for the op that reads it."""
    from coremltools.optimize._utils import select_input_output_channel_axis

    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type != "const":
            continue
        val = op.outputs[0].val
        if isinstance(val, np.ndarray) and val.dtype.kind == "f" and val.size >= WEIGHT_THRESHOLD:
            yield op, val, select_input_output_channel_axis(op)


def _int4_block_overrides(mlmodel) -> dict[str, int]:
    """{weight const name: block size} for every compressible weight whose input axis is not a multiple of 32."""
    out = {}
    for op, val, (in_axis, _) in _compressible_consts(mlmodel):
        if in_axis is None:
            continue
        block = int4_block_size(int(val.shape[in_axis]))
        if block != INT4_BLOCK_SIZE:
            out[op.name] = block
    return out


def single_channel_consts(mlmodel) -> list[str]:
    """Consts whose per-channel axis has length 1, so "per channel" would give the whole tensor one scale. The
    converter folds constant activations into such consts: on the MiniLM teacher the position and token-type
    embeddings of the 32 exported positions, (1, 32, 384); their one int8 scale was 17 dB on the token-type vector
    and took the teacher's int8_weight_only file to 32.0 dB SQNR, top-1 agreement 0.984 on 512 held-out glosses
    (0.969 on the export step's 128: failed); kept float, 37.9 dB and 1.000, for 98 KB
    (benchmarks/results/int8_transformer_variants.json)."""
    return sorted(op.name for op, val, (_, out_axis) in _compressible_consts(mlmodel)
                  if out_axis is None or out_axis >= val.ndim or val.shape[out_axis] == 1)


def _compression_config(precision: str, mlmodel):
    """The coremltools.optimize.coreml call and OptimizationConfig that produce `precision` (None for fp32/fp16),
    plus notes to record in the package metadata."""
    import coremltools.optimize.coreml as cto

    if precision in ("fp32", "fp16"):
        return None, None, {}
    if precision == "int4_weight_only":
        blocks = _int4_block_overrides(mlmodel)
        per_name = {name: cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                      block_size=b, weight_threshold=WEIGHT_THRESHOLD)
                    for name, b in blocks.items()}
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=INT4_BLOCK_SIZE, weight_threshold=WEIGHT_THRESHOLD)
        notes = {"ondevice.int4_block_size": str(INT4_BLOCK_SIZE)}
        if blocks:
            notes["ondevice.int4_block_overrides"] = ", ".join(f"{k}={v}" for k, v in sorted(blocks.items()))
        return (cto.linear_quantize_weights,
                cto.OptimizationConfig(global_config=op, op_name_configs=per_name or None), notes)
    fn, op = _global_compression(precision)
    if precision != "int8_weight_only":
        return fn, cto.OptimizationConfig(global_config=op), {}
    keep = single_channel_consts(mlmodel)
    notes = {"ondevice.float_consts": (f"{len(keep)} const(s) whose per-channel axis has length 1 kept float (one "
                                       f"int8 scale for the whole tensor otherwise): {', '.join(keep) or 'none'}")}
    return fn, cto.OptimizationConfig(global_config=op, op_name_configs={k: None for k in keep} or None), notes


def _global_compression(precision: str):
    import coremltools.optimize.coreml as cto

    if precision == "int8_weight_only":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        return cto.linear_quantize_weights, op
    if precision == "palettize4":
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            raise MissingBackendError("coreml palettize4 clusters weights with scikit-learn's k-means, which is "
                                      "not installed. Install it with: pip install 'ondevice[coreml]'")
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights, op
    if precision == "prune50":
        op = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=WEIGHT_THRESHOLD)
        return cto.prune_weights, op
    raise ConfigError(f"coreml has no recipe for precision {precision!r}")


def _conversion_message(e: Exception, logged: list[str], precision: str, located: str | None = None) -> str:
    """Name the torch op (and module) coremltools failed on, from its error log record or exception text."""
    text = " ".join(logged) + " " + str(e)
    op = where = None
    m = re.search(r"converting '([^']+)' op \(located at: '([^']*)'\)", text)
    if m:
        op, where = m.group(1), m.group(2) or None
    op = op or _unsupported_op(text)
    m2 = re.search(r"node (\S+) \(\S+\) got", text) if op is None else None
    if m2:
        op = m2.group(1)
    what = (f"torch op {op!r}" + (f" (in module {where!r})" if where else f" (from {located})" if located else "")
            ) if op else "the model"
    return (f"coremltools could not convert {what} to a Core ML ML Program at precision {precision!r}: "
            f"{type(e).__name__}: {str(e).strip()[:600]}. Fix: rewrite that op with ops Core ML supports, or "
            f"register a composite with coremltools' @register_torch_op; or export to another target "
            f"(onnxruntime, executorch, tflite).")


# ---------------------------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------------------------
# Before conversion every ATen op of the exported program is looked up the way coremltools looks it up
# (`sanitize_op_kind`, then its registry). An op it has no conversion for is
#   - lowered with torch's own decomposition when torch has one (transformers' masking code calls new_ones;
#     nn.LSTMCell / nn.GRUCell export as lstm_cell / gru_cell, whose decompositions use unsafe_split; ...),
#   - else registered under the name torch.export records when coremltools converts the same op under another name:
#     REGISTERED_OPS, or the op's base name (`where.scalarother` -> `where`; `__and__` -> `and`, because coremltools'
#     own lookup keeps the underscores of `aten.__and__.Tensor` and never finds its registered "and").
# An op still unsupported then fails conversion with its name and the module it came from.
REGISTERED_OPS = {"alias": "noop"}  # a full slice of a buffer: re-labels its input, as alias_copy and clone do
MAX_LOWERING_ROUNDS = 4


def _kind(node) -> str:
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind

    try:
        kind = node.target.name()
    except Exception:  # noqa: BLE001 - the same fallbacks coremltools uses
        kind = getattr(node.target, "__name__", str(node.target))
    return sanitize_op_kind(kind)


def _unsupported(ep) -> dict:
    """{coremltools kind: the first node's ATen op} of every call coremltools has no conversion registered for."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    out = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and hasattr(node.target, "name"):
            kind = _kind(node)
            if kind not in _TORCH_OPS_REGISTRY.name_to_func_mapping:
                out.setdefault(kind, node.target)
    return out


def _lower(ep):
    """The program with every unsupported op torch can decompose decomposed (a few rounds: decompositions may emit
    ops that need one too); returns (program, names of the lowered ops)."""
    import torch

    table = torch.export.default_decompositions()
    lowered: list[str] = []
    ep = ep.run_decompositions({})
    for _ in range(MAX_LOWERING_ROUNDS):
        todo = {op: table[op] for op in _unsupported(ep).values() if op in table}
        if not todo:
            break
        lowered += [str(op) for op in todo]
        ep = ep.run_decompositions(todo)
    return ep, lowered


def _register(ep) -> list[str]:
    """Register the remaining unsupported kinds under coremltools' conversion of the same op; returns their names."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    reg = _TORCH_OPS_REGISTRY.name_to_func_mapping
    done = []
    for kind in _unsupported(ep):
        base = kind.split(".")[0].strip("_")
        func = getattr(ops, REGISTERED_OPS[kind]) if kind in REGISTERED_OPS else reg.get(base)
        if func is not None:
            _TORCH_OPS_REGISTRY.set_func_by_name(func, kind)
            done.append(f"{kind} as {func.__name__}")
    return done


def _unsupported_op(text: str) -> str | None:
    """The ATen op type coremltools names as unsupported ("Unsupported fx node and_1, kind __and__" -> "__and__")."""
    m = (re.search(r"Unsupported fx node \S+?, kind (\S+)", text) or re.search(r"Unsupported fx node (\S+?),", text)
         or re.search(r"op '([^']+)' not implemented", text))
    return m.group(1) if m else None


def _convert(ct, model, example_inputs: tuple, precision: str, compute, dt_name: str, cap):
    """torch.export -> lower / register what coremltools lacks (see above) -> coremltools.convert. A failure names
    the op and the module it came from."""
    import torch

    try:
        ep = torch.export.export(model.eval(), tuple(example_inputs))
    except Exception as e:
        raise ConversionError(
            f"torch.export could not capture the model for coreml/{precision}: {type(e).__name__}: "
            f"{str(e).strip()[:800]}. Fix: make forward() exportable (no data-dependent Python control "
            f"flow, tensor-only inputs), or try another target.") from e
    ep, lowered = _lower(ep)
    registered = _register(ep)
    for what, names in (("lowered with torch's decomposition", lowered), ("registered", registered)):
        if names:
            log.info("coreml: %s (coremltools has no conversion under that name): %s", what, ", ".join(names))
    try:
        return ct.convert(ep, convert_to="mlprogram", compute_precision=compute,
                          minimum_deployment_target=getattr(ct.target, dt_name))
    except Exception as e:
        op = _unsupported_op(" ".join(cap.errors) + " " + str(e))
        raise ConversionError(_conversion_message(e, cap.errors, precision, locate_op(ep, op))) from e


def _name_features(ct, mlmodel, spec) -> None:
    """The package's inputs and outputs under the spec's names, the deployer's preprocessing as their descriptions."""
    if spec is None:
        return
    mlspec = mlmodel._spec
    pairs = list(zip([f.name for f in mlspec.description.input], spec.names)) + list(
        zip([f.name for f in mlspec.description.output], spec.output_names))
    for old, new in pairs:
        if old != new:
            ct.utils.rename_feature(mlspec, old, new)
    pre = spec.preprocessing or {}
    for f in mlspec.description.input:
        t = spec.input(f.name)
        f.shortDescription = (f"{t.dtype} {list(t.shape)}" + (f"; preprocessing: {_describe(pre)}" if pre else ""))[:2000]
    if pre:
        mlspec.description.metadata.shortDescription = f"inputs need: {_describe(pre)}"[:2000]


def _describe(pre: dict) -> str:
    return "; ".join(f"{k}={v}" for k, v in pre.items())


# ---------------------------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------------------------
_ARRAY_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64, "INT32": np.int32,
                 "INT8": np.int8, "UINT8": np.uint8}


def _io_from_spec(spec) -> tuple[list[dict], list[dict]]:
    from coremltools.proto import FeatureTypes_pb2

    def one(f) -> dict:
        kind = f.type.WhichOneof("Type")
        if kind != "multiArrayType":
            return {"name": f.name, "shape": None, "dtype": kind}
        a = f.type.multiArrayType
        return {"name": f.name, "shape": [int(s) for s in a.shape],
                "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(a.dataType).lower()}

    return [one(f) for f in spec.description.input], [one(f) for f in spec.description.output]


def _signature(spec) -> Signature:
    def one(d: dict) -> IOTensor:
        dtype = d["dtype"] if d["shape"] is None else np.dtype(_ARRAY_DTYPES.get(d["dtype"].upper(), np.float32)).name
        return IOTensor(d["name"], dtype, tuple(d["shape"] or ()))

    ins, outs = _io_from_spec(spec)
    return Signature(tuple(one(d) for d in ins), tuple(one(d) for d in outs))


class _Runner:
    """A loaded package: its signature (static shapes, the spec's names) and the Core ML names behind them."""

    kind = "?"

    def __init__(self, path: Path, mlspec, spec=None):
        sig = _signature(mlspec)
        bad = [t.name for t in sig.inputs if not t.shape]
        if bad:
            raise ConfigError(f"{path}: inputs {bad} are not multi-arrays (images, sequences); ondevice feeds "
                              f"multi-array inputs only")
        self.path = path
        self.native = {t.name: t.name for t in sig.inputs + sig.outputs}
        if spec is not None:
            named = named_like_spec(sig, spec, str(path))
            self.native = {n.name: o.name for n, o in zip(named.inputs + named.outputs, sig.inputs + sig.outputs)}
            sig = named
        self.signature = sig

    def predict(self, feeds: dict) -> dict:
        raise NotImplementedError

    def __call__(self, feeds: dict) -> dict:
        native = self.predict({self.native[k]: v for k, v in feeds.items()})
        return {t.name: native[self.native[t.name]] for t in self.signature.outputs}


REFERENCE_CHUNK = 64  # samples per call of the reference evaluator on a batch-1 program


class ReferenceRunner(_Runner):
    """NumPy reference evaluator (no Core ML runtime on this OS)."""

    kind = "reference-evaluator"

    def __init__(self, path: Path, mlspec, evaluator, spec=None):
        super().__init__(path, mlspec, spec)
        self.evaluator = evaluator

    def predict(self, feeds: dict) -> dict:
        return self.evaluator.run(feeds)


class CoreMLRunner(_Runner):
    """The real Core ML runtime (`MLModel.predict`, macOS only)."""

    kind = "coreml"

    def __init__(self, path: Path, model, spec=None):
        super().__init__(path, model.get_spec(), spec)
        self.model = model

    def predict(self, feeds: dict) -> dict:
        return self.model.predict(feeds)


# ---------------------------------------------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------------------------------------------
class CoreMLTarget(Target):
    """Core ML ML Program export; fp32/fp16 compute, int8/int4 linear, 4-bit palettized or 50%-pruned weights."""

    def __init__(self, spec):
        super().__init__(spec)
        self._threads = 1

    # -- what runs here ------------------------------------------------------------------------------------------
    def runtime_kind(self) -> str:
        """"coreml" where MLModel.predict works (macOS), else "reference-evaluator" (NumPy, mil_eval.py)."""
        return "coreml" if coreml_runtime_available() else "reference-evaluator"

    def latency(self) -> tuple[bool, str | None]:
        if self.runtime_kind() == "coreml":
            return True, None
        why = ("the NumPy reference evaluator was forced (ONDEVICE_COREML_RUNTIME=reference)"
               if sys.platform == "darwin" else self.spec.no_runtime_reason)
        return False, f"not measurable on {sys.platform}: {why}"

    @property
    def latency_measurable(self) -> bool:
        return self.latency()[0]

    @property
    def latency_note(self) -> str:
        return self.latency()[1] or "measured with the Core ML runtime (MLModel.predict)"

    def set_threads(self, n: int) -> None:
        """Threads for the reference evaluator's NumPy/BLAS work (Core ML itself does not expose a count)."""
        self._threads = max(1, int(n))

    @contextlib.contextmanager
    def _limit_threads(self) -> Iterator[None]:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
            yield
            return
        with threadpool_limits(limits=self._threads):
            yield

    # -- protocol ------------------------------------------------------------------------------------------------
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration, **options):
        """Core ML compresses after conversion (in `export`); the model passes through unchanged."""
        resolve_deployment_target(precision.name, options.get("deployment_target"))  # fail early on bad options
        return model

    def export(self, prepared, precision: Precision, example_inputs: tuple, out: Path, calibration=None,
               spec=None, **options) -> Path:
        ct = _ct()
        dt_name, dt_why = resolve_deployment_target(precision.name, options.get("deployment_target"))
        if dt_why.startswith("selected"):
            log.info("coreml %s: deployment target %s (%s)", precision.name, dt_name, dt_why)
        compute = ct.precision.FLOAT16 if precision.name == "fp16" else ct.precision.FLOAT32
        with _quiet() as cap, self._limit_threads():
            mlmodel = _convert(ct, prepared, example_inputs, precision.name, compute, dt_name, cap)
            fn, config, notes = _compression_config(precision.name, mlmodel)
            if fn is not None:
                try:
                    mlmodel = fn(mlmodel, config)
                except Exception as e:
                    raise ConversionError(
                        f"coremltools.optimize.coreml.{fn.__name__} failed for coreml/{precision.name} "
                        f"({dt_name}): {type(e).__name__}: {e}. Try another compression precision "
                        f"({', '.join(p for p in self.spec.precisions if p != precision.name)}).") from e
        _name_features(ct, mlmodel, spec)
        md = mlmodel.user_defined_metadata
        md.update({"ondevice.precision": precision.name, "ondevice.deployment_target": dt_name,
                   "ondevice.compute_precision": "fp16" if precision.name == "fp16" else "fp32",
                   "ondevice.deployment_target_reason": dt_why, **notes, **artifact_metadata(spec)})
        if fn is not None:
            n = sum(1 for op in mlmodel._mil_program.functions["main"].operations
                    if op.op_type.startswith("constexpr_"))
            md["ondevice.compressed_tensors"] = str(n)
            if n == 0:
                log.warning("coreml %s: no weight tensor has >= %d elements, so nothing was compressed; the "
                            "package keeps fp32 weights", precision.name, WEIGHT_THRESHOLD)
        with _quiet():
            mlmodel.save(str(out))
        return Path(out)

    def load(self, path: Path, spec=None) -> Any:
        """Inputs and outputs under the input spec's names (given, else the one in the package's metadata)."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path} is not a .mlpackage directory; export it again")
        from .mil_eval import MILEvaluator, load_program, load_spec

        ct = _ct()
        try:
            with _quiet():
                mlspec = load_spec(path)
                prog = None if self.runtime_kind() == "coreml" else load_program(path)
        except Exception as e:  # a truncated or corrupted package
            raise ArtifactError(f"{path}: coremltools cannot read it ({first_line(e, 200)}); the package is damaged: "
                                f"export it again") from e
        if spec is None:
            spec = spec_from_metadata(dict(mlspec.description.metadata.userDefined))
        if prog is None:
            with _quiet():
                return CoreMLRunner(path, ct.models.MLModel(str(path)), spec)
        with self._limit_threads():
            return ReferenceRunner(path, mlspec, MILEvaluator(prog, source=str(path)), spec)

    def chunk(self, runner: Any, sig) -> int | None:
        """The reference evaluator takes REFERENCE_CHUNK samples per call of a batch-1 program (it checks once that
        this matches one-at-a-time evaluation: mil_eval's module docstring); the Core ML runtime gets the file's."""
        if isinstance(runner, ReferenceRunner) and sig.static_batch == 1:
            return REFERENCE_CHUNK
        return sig.static_batch

    def call(self, runner: Any, feeds: dict) -> dict:
        with self._limit_threads():
            return runner(feeds)

    def inspect(self, path: Path) -> Inspection:
        ct = _ct()
        from coremltools.converters.mil.mil import types

        from .mil_eval import KERNELS, _NO_FALLBACK, _has_value_inference, load_program, load_spec

        with _quiet():
            spec = load_spec(path)
            prog = load_program(path)
        fn = prog.functions["main"]
        ops: dict[str, int] = {}
        weight_bytes: dict[str, int] = {}
        weight_tensors: dict[str, int] = {}
        compression: dict[str, int] = {}
        compressed: list[dict] = []
        how: dict[str, str] = {}
        for op in fn.operations:
            t = op.op_type
            if t == "const":
                var = op.outputs[0]
                if not types.is_tensor(var.sym_type):
                    continue
                feeds_constexpr = any(c.op_type.startswith("constexpr_") for c in var.child_ops)
                if feeds_constexpr or types.is_float(var.dtype):  # stored weights; int consts are op params
                    name = types.builtin_to_string(var.dtype)
                    name = {"fp32": "float32", "fp16": "float16", "fp64": "float64"}.get(name, name)
                    bits = var.dtype.get_bitwidth() if hasattr(var.dtype, "get_bitwidth") else 8 * np.dtype(
                        types.nptype_from_builtin(var.dtype)).itemsize
                    weight_bytes[name] = weight_bytes.get(name, 0) + int(np.prod(var.shape)) * bits // 8
                    weight_tensors[name] = weight_tensors.get(name, 0) + 1
                continue
            ops[t] = ops.get(t, 0) + 1
            if t.startswith("constexpr_"):
                compression[t] = compression.get(t, 0) + 1
                compressed.append({"name": op.outputs[0].name, "op": t, "shape": list(op.outputs[0].shape),
                                   "stored": {k: types.builtin_to_string(v.dtype) for k, v in op.inputs.items()
                                              if types.is_tensor(v.sym_type)}})
            elif t in KERNELS:
                how[t] = "numpy"
            elif t not in _NO_FALLBACK and _has_value_inference(op):
                how[t] = "value_inference"
            else:
                how[t] = "unsupported"
        inputs, outputs = _io_from_spec(spec)
        versions = {int(t.value): t.name for t in ct.target}
        md = dict(spec.description.metadata.userDefined)
        details = {
            "num_consts": sum(1 for op in fn.operations if op.op_type == "const"),
            "compression": compression,
            "compressed_weights": compressed,
            "spec_version": int(spec.specificationVersion),
            "deployment_target": versions.get(int(spec.specificationVersion), f"spec{spec.specificationVersion}"),
            "deployment_target_reason": md.get("ondevice.deployment_target_reason"),
            "opset": str(getattr(fn, "opset_version", "")),
            "runtime": self.runtime_kind(),
            "evaluator_ops": how,
            "input_descriptions": {f.name: f.shortDescription for f in spec.description.input if f.shortDescription},
        }
        return Inspection(format="mlpackage", ops=ops, weight_bytes=weight_bytes, weight_tensors=weight_tensors,
                          inputs=inputs, outputs=outputs, metadata=read_metadata(md),
                          compute_precision=md.get("ondevice.compute_precision"), details=details)
