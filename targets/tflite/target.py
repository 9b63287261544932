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

from ondevice.errors import ConversionError
from ondevice.io import atomic_write_bytes
from ondevice.precision import Precision
from ondevice.quiet import quiet
from ondevice.target import Target

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
_SOURCE_LINE = r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)'  # a traceback frame and its code line


def _source_line(text: str, after: str = "") -> str | None:
    """'file.py:12 in forward: <code>' for the last traceback frame in `text` (the first one following `after`)."""
    frames = re.findall(re.escape(after) + r"\s*" + _SOURCE_LINE if after else _SOURCE_LINE, text)
    if not frames:
        return None
    f, line, fn, code = frames[0] if after else frames[-1]
    return f"{Path(f).name}:{line} in {fn}: {code.strip()}"


def _locate_op(module, args: tuple, kwargs: dict, op: str) -> str | None:
    """Best effort: the module path and source line of the first node calling `op` (e.g. 'aten.i0.default')."""
    import torch

    try:
        ep = torch.export.export(module, args, kwargs)
        graphs = [ep.graph]
        with contextlib.suppress(Exception):
            graphs.append(ep.run_decompositions().graph)
    except Exception:
        return None
    for graph in graphs:
        for node in graph.nodes:
            if node.op != "call_function" or str(node.target) != op:
                continue
            where = []
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, typ = list(stack.values())[-1]
                typ = getattr(typ, "__name__", str(typ).rsplit(".", 1)[-1])
                where.append(f"module {path!r} ({typ})" if path else f"the forward of {typ} itself")
            line = _source_line(node.meta.get("stack_trace") or "")
            if line:
                where.append(line)
            return ", ".join(where) or None
    return None


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
        where = where or _source_line(msg, after="Original traceback:")
        text = (f"tflite conversion at precision {precision!r} failed: litert-torch has no TFLite lowering for "
                f"PyTorch op {op}" + (f" (from {where})" if where else "") + ". The model was exported with "
                f"torch.export and lowered op by op; this op has no TFLite equivalent. Fix: rewrite that part of "
                f"the model with supported ops (elementwise math, matmul/linear, conv, pooling, softmax, ...), "
                f"or export to target 'onnxruntime' or 'executorch', which may support it.")
    elif "data-dependent" in msg or type(exc).__name__.startswith("GuardOnDataDependent"):
        line = _source_line(msg, after="The following call raised this error:")
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


def _sample(example_inputs: tuple, nhwc: bool) -> tuple[tuple, dict]:
    """(args, kwargs) to trace with: NCHW positional (`args_0`), or NHWC keyword `input_nhwc` (names the signature
    input, so the artifact records its layout)."""
    x = example_inputs[0]
    if nhwc:
        if x.ndim < 3:
            raise ValueError(f"nhwc=True needs an input of rank >= 3 laid out (N, C, ...); got shape {tuple(x.shape)}")
        return (), {NHWC_INPUT_NAME: x.permute(0, *range(2, x.ndim), 1).contiguous()}
    return tuple(example_inputs), {}


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


def _export_for_calibration(module, args: tuple, kwargs: dict, nhwc: bool):
    """torch.export the float model for PT2E; returns (graph module, dynamic batch?).

    The batch dimension is made dynamic so calibration runs CALIBRATION_CHUNK samples per forward (the histogram
    observers are slow per call); a model that pins its batch size falls back to the example's static batch.
    The converted artifact keeps the example's static batch either way (litert_torch re-traces with it).
    """
    import torch

    x = kwargs[NHWC_INPUT_NAME] if nhwc else args[0]  # (b, ...)
    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        x2 = torch.cat([x[:1], x[:1]])  # (2, ...): a batch-1 example would specialise the batch dimension
        if nhwc:
            ep = torch.export.export(module, (), {NHWC_INPUT_NAME: x2}, dynamic_shapes={NHWC_INPUT_NAME: {0: batch}})
        else:
            ep = torch.export.export(module, (x2, *args[1:]), dynamic_shapes=({0: batch},) + (None,) * (len(args) - 1))
        return ep.module(), True
    except Exception as e:  # e.g. a reshape with a hard-coded batch of 1
        log.debug("dynamic-batch export for calibration failed (%s); calibrating at the static batch", e)
        return torch.export.export(module, args, kwargs).module(), False


def _pt2e_static(module, args: tuple, kwargs: dict, calibration: np.ndarray, nhwc: bool):
    """Full-integer PT2E: symmetric per-channel int8 weights, static int8 activations calibrated on real samples."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    gm, dynamic = _export_for_calibration(module, args, kwargs, nhwc)
    gm = prepare_pt2e(gm, quantizer)
    cal = np.asarray(calibration, dtype=np.float32)  # (N, C, ...) NCHW real samples
    if nhwc:
        cal = _nchw_to_nhwc(cal)  # (N, ..., C)
    b = int((kwargs[NHWC_INPUT_NAME] if nhwc else args[0]).shape[0])  # the example's batch
    if dynamic:
        starts, chunk = range(0, len(cal), CALIBRATION_CHUNK), CALIBRATION_CHUNK
    elif len(cal) >= b:
        starts, chunk = range(0, len(cal) - b + 1, b), b  # a static graph only takes whole batches of b
    else:
        raise ValueError(f"int8_static needs at least {b} calibration samples (the example batch); got {len(cal)}")
    with torch.no_grad():
        for i in starts:
            part = torch.from_numpy(np.ascontiguousarray(cal[i:i + chunk]))
            gm(**{NHWC_INPUT_NAME: part}) if nhwc else gm(part, *args[1:])
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
    """A loaded artifact: the interpreter plus the signature's single input and first output."""

    interpreter: Any
    input: dict  # interpreter tensor details: index, shape, shape_signature, dtype, quantization
    output: dict
    nhwc: bool
    path: str
    outputs: list[str] = field(default_factory=list)  # signature output names; run() returns the first
    resized: tuple = ()  # current input shape of a dynamic-batch artifact

    @property
    def batch(self) -> int:
        """The artifact's batch dimension, -1 when it is dynamic."""
        return int(self.input["shape_signature"][0])


def _quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    if scale == 0:
        raise ValueError(f"integer input tensor {detail['name']!r} has no quantization scale; cannot feed float data")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


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


class TFLiteTarget(Target):
    _threads: int | None = None

    # -- protocol -------------------------------------------------------------------------------------------
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: np.ndarray | None,
                 nhwc: bool = False, **options) -> Prepared:
        module = _wrap_nhwc(model.eval()) if nhwc else model.eval()
        if precision.name != "int8_static":
            return Prepared(module, bool(nhwc))
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8_static needs calibration= real samples from your dataset (e.g. 256 training "
                             "images), not random tensors")
        args, kwargs = _sample(example_inputs, nhwc)
        with _converting("PT2E quantization (torch.export, prepare_pt2e, calibration, convert_pt2e)", precision.name,
                         module, args, kwargs):
            gm, q = _pt2e_static(module, args, kwargs, calibration, bool(nhwc))
        return Prepared(gm, bool(nhwc), q)

    def export(self, prepared: Prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: np.ndarray | None = None, **options) -> Path:
        if not isinstance(prepared, Prepared):  # a bare module handed straight to export
            prepared = self.quantize(prepared, precision, example_inputs, calibration, **options)
        args, kwargs = _sample(example_inputs, prepared.nhwc)
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
        atomic_write_bytes(out, bytes(data))
        return Path(out)

    def load(self, path: Path) -> Runner:
        with _quiet():
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=str(path), num_threads=self._threads)
            details = {d["index"]: d for d in it.get_input_details() + it.get_output_details()}
            sigs = it._get_full_signature_list()  # {key: {"inputs": {name: index}, "outputs": {name: index}}}
            sig = sigs.get(SIGNATURE_KEY) or next(iter(sigs.values()), None)
            if sig is not None:
                ins, outs = sig["inputs"], sig["outputs"]
            else:  # a flatbuffer without signatures (not produced by this target)
                ins = {d["name"]: d["index"] for d in it.get_input_details()}
                outs = {d["name"]: d["index"] for d in it.get_output_details()}
            if len(ins) != 1:
                raise ValueError(f"{path}: run() feeds one input tensor; this artifact has {len(ins)}: {list(ins)}")
            (in_name, in_index), = ins.items()
            it.allocate_tensors()
        return Runner(it, details[in_index], details[next(iter(outs.values()))], nhwc=in_name == NHWC_INPUT_NAME,
                      path=str(path), outputs=list(outs))

    def run(self, runner: Runner, x: np.ndarray) -> np.ndarray:
        """x: (N, C, ...) float32 NCHW for any N -> (N, ...) float32 outputs of the signature's first output."""
        x = np.asarray(x, dtype=np.float32)
        want = tuple(int(d) for d in runner.input["shape"][1:])  # one sample as the artifact takes it
        if runner.nhwc:
            want = (want[-1], *want[:-1])  # ... and as run() takes it: NCHW
        if tuple(x.shape[1:]) != want:
            note = f" (the artifact itself takes NHWC {tuple(int(d) for d in runner.input['shape'][1:])}; run() " \
                   f"transposes for you)" if runner.nhwc else ""
            raise ValueError(f"{runner.path}: run() takes NCHW samples of shape {want}{note}; got {tuple(x.shape[1:])}")
        if len(x) == 0:
            return np.zeros((0, *(int(d) for d in runner.output["shape"][1:])), np.float32)
        if runner.nhwc:
            x = _nchw_to_nhwc(x)  # (N, C, H, W) -> (N, H, W, C)
        xq = _quantize_input(x, runner.input)
        it, i_in, i_out = runner.interpreter, runner.input["index"], runner.output["index"]
        if runner.batch == -1:  # dynamic batch: one invoke
            if runner.resized != xq.shape:
                it.resize_tensor_input(i_in, list(xq.shape))
                it.allocate_tensors()
                runner.resized = xq.shape
            it.set_tensor(i_in, xq)
            it.invoke()
            return _dequantize_output(it.get_tensor(i_out), runner.output)
        b = int(runner.input["shape"][0])  # static batch: invoke per chunk of b samples, zero-padding the last
        outs = []
        for i in range(0, len(xq), b):
            chunk = xq[i:i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            it.set_tensor(i_in, np.ascontiguousarray(chunk))
            it.invoke()
            outs.append(_dequantize_output(it.get_tensor(i_out), runner.output)[:n])
        return np.concatenate(outs)

    def inspect(self, path: Path) -> dict:
        info = _flatbuffer_summary(Path(path).read_bytes())
        runner = self.load(path)
        it = runner.interpreter

        def describe(details: list[dict]) -> list[dict]:
            return [{"name": d["name"], "shape": [int(s) for s in d["shape_signature"]],
                     "dtype": _dtype_name(d["dtype"]), "quantization": _quant_params(d)} for d in details]

        info["inputs"] = describe([runner.input])
        info["outputs"] = describe(it.get_output_details())
        info["input_layout"] = "NHWC" if runner.nhwc else "as traced (NCHW for images)"
        info["integer_io"] = any(np.dtype(d["dtype"]).kind in "iu" for d in info["inputs"] + info["outputs"])
        info["signatures"] = list(it.get_signature_list())
        return info

    def runtime_memory(self, path: Path) -> dict:
        return {}  # the LiteRT Python interpreter does not expose its arena size

    def set_threads(self, n: int) -> None:
        """Interpreter(num_threads=n) for later loads; n <= 0 restores the runtime's default."""
        self._threads = int(n) if n and int(n) > 0 else None
