"""TFLite / LiteRT target: litert-torch conversion, PT2E or ai-edge-quantizer quantization, LiteRT interpreter.

Precisions (see README.md for what each produces and the numbers measured here):
  fp32              litert_torch.convert(model, args)
  fp16              fp32 flatbuffer + ai-edge-quantizer FLOAT_CASTING weight-only recipe (float16 weights, DEQUANTIZE
                    to fp32 at load; activations stay fp32)
  int8_dynamic      fp32 flatbuffer + ai-edge-quantizer `dynamic_wi8_afp32` (per-channel int8 weights, activations
                    quantized at run time by the hybrid kernels)
  int8_weight_only  fp32 flatbuffer + ai-edge-quantizer `weight_only_wi8_afp32` (int8 weights, explicit DEQUANTIZE,
                    float compute)
  int8_static       full integer: PT2E (litert PT2EQuantizer, symmetric per-channel, static) calibrated on real
                    samples, then litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=q)); the
                    artifact's input and output tensors are int8, `run` (de)quantizes with their scale/zero point.

Option nhwc=True wraps the model with litert_torch.to_channel_last_io(model, args=[0]) and names the signature input
`input_nhwc`, so the artifact itself says its layout; `run` still takes NCHW float input and transposes.

All SDK imports (litert_torch, ai_edge_litert, ai_edge_quantizer, torchao) happen lazily inside functions.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ondevice.errors import ArtifactError, ConversionError, first_line
from ondevice.opsource import locate_op, source_line
from ondevice.io import atomic_write_bytes
from ondevice.precision import Precision
from ondevice.quiet import quiet
from ondevice.target import (IOTensor, Inspection, Signature, Target, artifact_metadata, calibration_chunks,
                             named_like_spec, read_metadata, spec_from_metadata)

log = logging.getLogger("ondevice.targets.tflite")

NHWC_INPUT_NAME = "input_nhwc"  # signature input name of NHWC artifacts (load() reads the layout from it)
SIGNATURE_KEY = "serving_default"  # litert_torch's default signature name
POST_CONVERSION = ("fp16", "int8_dynamic", "int8_weight_only")  # done by ai-edge-quantizer on the fp32 flatbuffer

# Output of the converter stack that is harmless and never shown to the user (it is kept at DEBUG level).
_NOISE = re.compile("|".join([
    r"^[IWE]\d{4} ",                              # absl/glog C++ lines (flatbuffer_export.cc op estimates, ...)
    r"absl::InitializeLog",
    r"Failed to load .*torchao",                   # torchao's missing CUDA kernels
    r"_pytree\.py.*register_constant",
    r"return cls\.__new__",                        # FutureWarning continuation lines from copyreg
    r"LeafSpec",                                   # torch pytree deprecation (FutureWarning)
    r"Created TensorFlow Lite XNNPACK delegate",
    r"^(Original|Quantized) model size:|^Quantization Ratio:|^Total time:",  # ai-edge-quantizer prints
    r"^\s*$",
]))


# --- noise control -----------------------------------------------------------------------------------------
class _Captured(logging.Handler):
    """Text the converter stack wrote while silenced. ondevice.quiet logs each line it drops at DEBUG on the logger
    it is given; this handler on a private logger collects them, and `relevant()` drops the known-harmless ones."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(str(record.args[0]) if record.args else record.getMessage())  # ("suppressed: %s", line)

    def relevant(self, last: int = 15) -> list[str]:
        return [ln for ln in self.lines if not _NOISE.search(ln)][-last:]


@contextlib.contextmanager
def _quiet() -> Iterator[_Captured]:
    """`ondevice.quiet.quiet` (Python warnings, logging below ERROR incl. absl, sys.stdout/sys.stderr, and native
    fd 2 lines matching `_NOISE`) with litert-torch's progress bars off.

    The yielded object holds the dropped lines once the block ends, so a failure can quote the relevant part; those
    are also logged at DEBUG on `ondevice.targets.tflite`. Native lines not matching `_NOISE` go to stderr as
    written (ondevice.quiet's rule). Process-wide, like ondevice.quiet.
    """
    cap = _Captured()
    sink = logging.Logger("ondevice.targets.tflite.dropped")  # outside the logging tree: its records reach only cap
    sink.addHandler(cap)
    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    if saved_env is None:
        os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with quiet(native_noise=_NOISE, log=sink):
            yield cap
    finally:
        if saved_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        for ln in cap.relevant(last=50):
            log.debug("converter output: %s", ln)


# --- error translation -------------------------------------------------------------------------------------
def _locate_op(module, args: tuple, kwargs: dict, op: str) -> str | None:
    """Best effort: the module path and source line of the first node calling `op` (e.g. 'aten.i0.default')."""
    import torch

    try:
        ep = torch.export.export(module, args, kwargs)
    except Exception:
        return None
    return locate_op(ep, op)


def _conversion_error(exc: BaseException, stage: str, precision: str, cap: _Captured,
                      module=None, args: tuple = (), kwargs: dict | None = None) -> ConversionError:
    """Turn a converter/quantizer exception into a ConversionError naming the op, where it came from and a fix."""
    msg = str(exc)
    others = "int8_dynamic or int8_weight_only (quantized after conversion)" if precision == "int8_static" else \
        "another precision"
    m = re.search(r"Lowering not found: (\S+)", msg)
    if m:
        op = m.group(1)
        where = None
        if module is not None:
            with _quiet():
                where = _locate_op(module, args, kwargs or {}, op)
        where = where or source_line(msg, after="Original traceback:")
        text = (f"tflite conversion at precision {precision!r} failed: litert-torch has no TFLite lowering for "
                f"PyTorch op {op}" + (f" (from {where})" if where else "") + ". The model was exported with "
                f"torch.export and lowered op by op; this op has no TFLite equivalent. Fix: rewrite that part of "
                f"the model with supported ops (elementwise math, matmul/linear, conv, pooling, softmax, ...), "
                f"or export to target 'onnxruntime' or 'executorch', which may support it.")
    elif "data-dependent" in msg or type(exc).__name__.startswith("GuardOnDataDependent"):
        line = source_line(msg, after="The following call raised this error:")
        where = f" at {line}" if line else ""
        text = (f"tflite conversion at precision {precision!r} failed in torch.export: the model branches on tensor "
                f"values (data-dependent control flow{where}), which a static graph cannot hold. Fix: remove the "
                f"Python `if` on tensor values (use torch.where / torch.cond), then export again.")
    else:
        first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
        text = (f"tflite conversion at precision {precision!r} failed during {stage}: {type(exc).__name__}: {first}. "
                f"Try {others}, another target ('onnxruntime', 'executorch'), or simplify the model.")
        extra = cap.relevant(last=8)
        if extra:
            text += "\nconverter output:\n  " + "\n  ".join(extra)
    return ConversionError(text)


@contextlib.contextmanager
def _converting(stage: str, precision: str, module=None, args: tuple = (), kwargs: dict | None = None):
    with _quiet() as cap:
        try:
            yield cap
        except (ConversionError, ImportError):
            raise
        except Exception as e:
            err = e
        else:
            err = None
    if err is not None:
        raise _conversion_error(err, stage, precision, cap, module, args, kwargs) from err


# --- layout ------------------------------------------------------------------------------------------------
def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) -> (N, *spatial, C)."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _nhwc_to_nchw(shape: tuple) -> tuple:
    return (shape[0], shape[-1], *shape[1:-1])


def _sample(example_inputs: tuple, nhwc: bool, names: list[str]) -> tuple[tuple, dict]:
    """(args, kwargs) to trace with: keyword arguments named as the input spec names them (the names become the
    signature's input names), or one NHWC keyword `input_nhwc` (names the layout in the artifact itself)."""
    if nhwc:
        x = example_inputs[0]
        if len(example_inputs) != 1 or x.ndim < 3 or not x.is_floating_point():
            raise ValueError(f"nhwc=True needs one float input of rank >= 3 laid out (N, C, ...); got "
                             f"{[tuple(t.shape) for t in example_inputs]}")
        return (), {NHWC_INPUT_NAME: x.permute(0, *range(2, x.ndim), 1).contiguous()}
    return (), dict(zip(names, example_inputs))


def _wrap_nhwc(model):
    """The model behind litert_torch.to_channel_last_io, called with one NHWC tensor named `input_nhwc`."""
    import litert_torch
    import torch

    class NHWCInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = litert_torch.to_channel_last_io(inner, args=[0])

        def forward(self, input_nhwc):  # (N, H, W, C) -> model((N, C, H, W))
            return self.inner(input_nhwc)

    return NHWCInput(model).eval()


# --- quantization steps ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What `quantize` hands to `export`."""

    module: Any  # torch.nn.Module: the eval model (NHWC-wrapped if asked) or the converted PT2E GraphModule
    nhwc: bool
    pt2e_quantizer: Any = None  # set when `module` carries PT2E quantize/dequantize nodes (int8_static)


CALIBRATION_CHUNK = 64  # samples per calibration forward when the batch dimension could be made dynamic


def _export_for_calibration(module, kwargs: dict):
    """torch.export the float model for PT2E; returns (graph module, dynamic batch?).

    The batch dimension is made dynamic so calibration runs CALIBRATION_CHUNK samples per forward (the histogram
    observers are slow per call); a model that pins its batch size falls back to the example's static batch.
    The converted artifact keeps the example's static batch either way (litert_torch re-traces with it).
    """
    import torch

    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        kw2 = {k: torch.cat([v[:1], v[:1]]) for k, v in kwargs.items()}  # (2, ...): batch 1 would specialise
        ep = torch.export.export(module, (), kw2, dynamic_shapes={k: {0: batch} for k in kw2})
        return ep.module(), True
    except Exception as e:  # e.g. a reshape with a hard-coded batch of 1
        log.debug("dynamic-batch export for calibration failed (%s); calibrating at the static batch", e)
        return torch.export.export(module, (), kwargs).module(), False


def _pt2e_static(module, kwargs: dict, calibration: dict, nhwc: bool):
    """Full-integer PT2E: symmetric per-channel int8 weights, static int8 activations calibrated on real samples.
    Integer inputs (token ids, masks) feed the embedding gathers as they are: only float tensors are quantized."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    gm, dynamic = _export_for_calibration(module, kwargs)
    gm = prepare_pt2e(gm, quantizer)
    if nhwc:
        calibration = {NHWC_INPUT_NAME: _nchw_to_nhwc(next(iter(calibration.values())))}  # (N, ..., C)
    b = int(next(iter(kwargs.values())).shape[0])  # the example's batch
    names = list(kwargs)
    with torch.no_grad():
        for args in calibration_chunks(calibration, CALIBRATION_CHUNK if dynamic else b, whole=not dynamic):
            gm(**dict(zip(names, args)))
    gm = convert_pt2e(gm, fold_quantize=False)
    move_exported_model_to_eval(gm)
    for sub in gm.modules():  # the exported module refuses .eval(); litert warns about training mode otherwise
        sub.training = False
    return gm, quantizer


def _post_conversion_recipe(precision: str):
    """ai-edge-quantizer recipe applied to the fp32 flatbuffer."""
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if precision == "int8_dynamic":
        return recipe.dynamic_wi8_afp32()
    if precision == "int8_weight_only":
        return recipe.weight_only_wi8_afp32()
    if precision == "fp16":
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
        return rm.get_quantization_recipe()
    raise KeyError(precision)


def _apply_recipe(flatbuffer: bytes, precision: str) -> bytes:
    from ai_edge_quantizer import quantizer

    result = quantizer.Quantizer(flatbuffer, _post_conversion_recipe(precision)).quantize()
    return bytes(result.quantized_model)


# --- runtime ----------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A loaded artifact: the interpreter, its signature (named as the input spec names them where the file says),
    and the interpreter tensor index behind each name."""

    interpreter: Any
    signature: Signature
    path: str
    index: dict[str, int]  # signature name -> interpreter tensor index
    nhwc: set[str] = field(default_factory=set)  # inputs the artifact takes NHWC while the signature says NCHW
    resized: dict = field(default_factory=dict)  # current shapes of dynamic-shape inputs


def _io_tensor(name: str, d: dict) -> IOTensor:
    scale, zero = d.get("quantization") or (0.0, 0)
    dtype = np.dtype(d["dtype"]).name
    shape = tuple(int(v) if v >= 0 else None for v in d["shape_signature"])
    quant = (float(scale), int(zero)) if scale and dtype in ("int8", "uint8", "int16") else None
    return IOTensor(name, dtype, shape, quant)


def _signature_of(it) -> tuple[dict[str, int], dict[str, int]]:
    """({input name: tensor index}, {output name: tensor index}) of the serving signature, in tensor order."""
    sigs = it._get_full_signature_list()  # {key: {"inputs": {name: index}, "outputs": {name: index}}}
    sig = sigs.get(SIGNATURE_KEY) or next(iter(sigs.values()), None)
    if sig is None:  # a flatbuffer without signatures (not produced by this target)
        return ({d["name"]: d["index"] for d in it.get_input_details()},
                {d["name"]: d["index"] for d in it.get_output_details()})
    ins = dict(sorted(sig["inputs"].items(), key=lambda kv: kv[1]))
    outs = dict(sorted(sig["outputs"].items(), key=lambda kv: _natural(*kv)))
    return ins, outs


def _natural(name: str, index: int) -> tuple:
    """output_2 before output_10; other names by tensor index."""
    m = re.fullmatch(r"output_(\d+)", name)
    return (0, int(m.group(1))) if m else (1, index)


def _names(spec, example_inputs: tuple) -> list[str]:
    """Keyword names to trace with: the spec's input names (they become the signature's), else args_<i>."""
    return list(spec.names) if spec is not None else [f"args_{i}" for i in range(len(example_inputs))]


def _dtype_name(t) -> str:
    return np.dtype(t).name


def _quant_params(detail: dict) -> dict | None:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []))
    if scales.size == 0:
        return None
    zps = np.asarray(qp.get("zero_points", []))
    return {"scale": scales.tolist() if scales.size > 1 else float(scales[0]),
            "zero_point": zps.tolist() if zps.size > 1 else int(zps[0])}


def _flatbuffer_summary(data: bytes) -> dict:
    """Op counts and constant-tensor (weight) dtypes read straight from the .tflite flatbuffer schema."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM" and oc.CustomCode():
            name = f"CUSTOM:{oc.CustomCode().decode()}"
        codes.append(name)
    ops: dict[str, int] = {}
    weight_dtypes: dict[str, int] = {}
    weight_bytes: dict[str, int] = {}
    weight_params = 0
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            name = codes[sg.Operators(i).OpcodeIndex()]
            ops[name] = ops.get(name, 0) + 1
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = t.Buffer()
            if b <= 0 or b >= model.BuffersLength():
                continue
            buf = model.Buffers(b)
            nbytes = buf.DataLength() or (buf.Size() if buf.Offset() > 1 else 0)
            if nbytes == 0:
                continue  # not a constant
            dt = type_names.get(t.Type(), str(t.Type()))
            weight_dtypes[dt] = weight_dtypes.get(dt, 0) + 1
            weight_bytes[dt] = weight_bytes.get(dt, 0) + int(nbytes)
            weight_params += int(np.prod(t.ShapeAsNumpy())) if t.ShapeLength() else 1
    return {"ops": dict(sorted(ops.items())), "num_ops": sum(ops.values()), "weight_dtypes": weight_dtypes,
            "weight_bytes": weight_bytes, "weight_params": weight_params, "subgraphs": model.SubgraphsLength()}


def _metadata(data: bytes) -> dict[str, str]:
    """The flatbuffer's own metadata entries (name -> text), e.g. the input spec ondevice writes."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    out = {}
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        buf = model.Buffers(md.Buffer())
        if buf.DataLength():
            out[md.Name().decode()] = bytes(buf.DataAsNumpy()).rstrip(b"\0").decode("utf-8", "replace")
    return out


def with_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    """`data` with metadata entries added (TFLite `Model.metadata`: a name and a buffer each). A flatbuffer whose
    weights live outside the table (buffer offsets, models > 2 GB) is returned unchanged: re-packing would drop them."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    if not entries or any(model.Buffers(i).Offset() > 1 for i in range(model.BuffersLength())):
        return data
    mt = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    mt.metadata = [m for m in (mt.metadata or []) if m.name.decode() not in entries] if mt.metadata else []
    for name, text in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(text.encode("utf-8"), np.uint8)
        mt.buffers.append(buf)
        md = schema.MetadataT()
        md.name, md.buffer = name, len(mt.buffers) - 1
        mt.metadata.append(md)
    b = flatbuffers.Builder(len(data) + 4096)
    b.Finish(mt.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


class TFLiteTarget(Target):
    _threads: int | None = None

    # -- protocol -------------------------------------------------------------------------------------------
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: dict | None,
                 nhwc: bool = False, spec=None, **options) -> Prepared:
        module = _wrap_nhwc(model.eval()) if nhwc else model.eval()
        if precision.name != "int8_static":
            return Prepared(module, bool(nhwc))
        if not calibration or len(next(iter(calibration.values()))) == 0:
            raise ValueError("int8_static needs calibration= real samples from your dataset (e.g. 256 training "
                             "samples), not random tensors")
        args, kwargs = _sample(example_inputs, nhwc, _names(spec, example_inputs))
        with _converting("PT2E quantization (torch.export, prepare_pt2e, calibration, convert_pt2e)", precision.name,
                         module, args, kwargs):
            gm, q = _pt2e_static(module, kwargs, calibration, bool(nhwc))
        return Prepared(gm, bool(nhwc), q)

    def export(self, prepared: Prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: dict | None = None, spec=None, **options) -> Path:
        if not isinstance(prepared, Prepared):  # a bare module handed straight to export
            prepared = self.quantize(prepared, precision, example_inputs, calibration, spec=spec, **options)
        args, kwargs = _sample(example_inputs, prepared.nhwc, _names(spec, example_inputs))
        with _converting("litert_torch.convert", precision.name, prepared.module, args, kwargs):
            import litert_torch

            quant_config = None
            if prepared.pt2e_quantizer is not None:
                from litert_torch.quantize.quant_config import QuantConfig

                quant_config = QuantConfig(pt2e_quantizer=prepared.pt2e_quantizer)
            data = litert_torch.convert(prepared.module, args, kwargs or None,
                                        quant_config=quant_config).model_content()
        if precision.name in POST_CONVERSION:
            with _converting(f"ai-edge-quantizer {precision.name} recipe", precision.name):
                data = _apply_recipe(bytes(data), precision.name)
        atomic_write_bytes(out, with_metadata(bytes(data), artifact_metadata(spec)))
        return Path(out)

    def load(self, path: Path, spec=None) -> Runner:
        """Inputs are named by the signature (the spec's names, or `input_nhwc`); with an input spec (given, or in
        the file's own metadata) the outputs get the spec's names, and an NHWC input is offered as the spec's NCHW
        tensor (run() transposes)."""
        try:
            with _quiet():
                from ai_edge_litert.interpreter import Interpreter

                it = Interpreter(model_path=str(path), num_threads=self._threads)
                ins, outs = _signature_of(it)
                it.allocate_tensors()
        except Exception as e:
            raise ArtifactError(f"{path}: LiteRT cannot load it ({first_line(e, 200)}); the file is damaged or not "
                                f"a .tflite model: export it again") from e
        details = {d["index"]: d for d in it.get_input_details() + it.get_output_details()}
        sig = Signature(tuple(_io_tensor(n, details[i]) for n, i in ins.items()),
                        tuple(_io_tensor(n, details[i]) for n, i in outs.items()))
        index = {**ins, **outs}
        spec = spec if spec is not None else spec_from_metadata(_metadata(Path(path).read_bytes()))
        nhwc: set[str] = set()
        if spec is not None:
            if list(ins) == [NHWC_INPUT_NAME] and len(spec.inputs) == 1:
                t = sig.inputs[0]
                sig = Signature((IOTensor(t.name, t.dtype, _nhwc_to_nchw(t.shape), t.quantization),), sig.outputs)
                nhwc = {spec.names[0]}
            renamed = named_like_spec(sig, spec, str(path))
            index = {new.name: index[old.name] for new, old in zip(renamed.inputs + renamed.outputs,
                                                                   sig.inputs + sig.outputs)}
            sig = renamed
        return Runner(it, sig, str(path), index, nhwc)

    def call(self, runner: Runner, feeds: dict) -> dict:
        it = runner.interpreter
        resize = False
        for t in runner.signature.inputs:
            x = feeds[t.name]
            if t.name in runner.nhwc:
                x = _nchw_to_nhwc(x)  # (N, C, H, W) -> (N, H, W, C), as the artifact takes it
            if any(d is None for d in t.shape) and runner.resized.get(t.name) != x.shape:
                it.resize_tensor_input(runner.index[t.name], list(x.shape))
                runner.resized[t.name] = x.shape
                resize = True
            feeds = {**feeds, t.name: x}
        if resize:
            it.allocate_tensors()
        for t in runner.signature.inputs:
            it.set_tensor(runner.index[t.name], feeds[t.name])
        it.invoke()
        return {t.name: it.get_tensor(runner.index[t.name]) for t in runner.signature.outputs}

    def bind(self, runner: Runner, feeds: dict, carry: dict[str, str] | None = None):
        """set_tensor for each input, invoke, get_tensor for each output: the LiteRT call a phone app makes."""
        it = runner.interpreter
        back = [(runner.index[i], runner.index[o]) for i, o in (carry or {}).items()]
        carried = {i for i, _ in back}
        sets = [(runner.index[t.name], _nchw_to_nhwc(feeds[t.name]) if t.name in runner.nhwc else feeds[t.name])
                for t in runner.signature.inputs]
        gets = [runner.index[t.name] for t in runner.signature.outputs]
        set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
        for i, x in sets:  # the initial state too
            set_tensor(i, x)
        sets = [(i, x) for i, x in sets if i not in carried]  # a carried state is not reset on every call

        def step():
            for i, x in sets:
                set_tensor(i, x)
            invoke()
            for i, o in back:  # the state output becomes the next call's state input
                set_tensor(i, get_tensor(o))
            return [get_tensor(o) for o in gets]

        return step

    def inspect(self, path: Path) -> Inspection:
        data = Path(path).read_bytes()
        try:
            info = _flatbuffer_summary(data)
        except Exception as e:
            raise ArtifactError(f"{path}: not a readable .tflite flatbuffer ({first_line(e, 200)}); export it "
                                f"again") from e
        runner = self.load(path)
        it = runner.interpreter

        def describe(details: list[dict]) -> list[dict]:
            return [{"name": d["name"], "shape": [int(s) for s in d["shape_signature"]],
                     "dtype": _dtype_name(d["dtype"]), "quantization": _quant_params(d)} for d in details]

        ins = describe([d for d in it.get_input_details()])
        outs = describe(it.get_output_details())
        nhwc = list(_signature_of(it)[0]) == [NHWC_INPUT_NAME]
        details = {"weight_params": info["weight_params"], "subgraphs": info["subgraphs"],
                   "input_layout": "NHWC" if nhwc else "as traced (NCHW for images)",
                   "integer_io": any(np.dtype(d["dtype"]).kind in "iu" for d in ins + outs),
                   "signatures": list(it.get_signature_list()),
                   "signature_inputs": [t.to_dict() for t in runner.signature.inputs]}
        return Inspection(format="tflite", ops=info["ops"], weight_bytes=info["weight_bytes"],
                          weight_tensors=info["weight_dtypes"], inputs=ins, outputs=outs,
                          metadata=read_metadata(_metadata(data)), details=details)

    def runtime_memory(self, path: Path) -> dict:
        return {}  # the LiteRT Python interpreter does not expose its arena size

    def set_threads(self, n: int) -> None:
        """Interpreter(num_threads=n) for later loads; n <= 0 restores the runtime's default."""
        self._threads = int(n) if n and int(n) > 0 else None
