"""ONNX Runtime target: torch.onnx (dynamo) export, onnxruntime.quantization, ONNX Runtime CPU execution provider.

Precisions (README.md has what each produces and what was measured here):
  fp32          torch.onnx.export(model, args, dynamo=True, external_data=False): one self-contained .onnx file
  fp16          fp32 graph through onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True):
                float16 initializers and compute, float32 inputs/outputs (Cast nodes at the edges)
  int8_dynamic  quant_pre_process, then quantize_dynamic(per_channel=True, weight_type=QInt8): int8 weights,
                activations quantized at run time per tensor (DynamicQuantizeLinear -> MatMulInteger/ConvInteger)
  int8_static   quant_pre_process, then quantize_static(QDQ, per_channel=True) with a CalibrationDataReader over
                the real calibration samples: int8 weights and activations as QuantizeLinear/DequantizeLinear pairs;
                LayerNormalization stays float
  both int8     a weight MatMul whose calibrated input has outliers (ondevice.outliers) becomes MatMulNBits (int8
                weights in blocks of 32, its input quantized per block of 32 at run time): a per-tensor activation
                scale, static or dynamic, cannot hold such an input (outlier_matmuls has the measurements)

All SDK imports (onnx, onnxruntime, onnxscript via torch.onnx) happen inside functions.
"""
from __future__ import annotations

import functools
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.errors import ArtifactError, ConfigError, ConversionError, first_line
from ondevice.io import temp_dir
from ondevice.precision import Precision
from ondevice.quiet import quiet, summarize_exception
from ondevice.target import (IOTensor, Inspection, Signature, Target, artifact_metadata, pad_batch,
                             read_metadata)

log = logging.getLogger("ondevice.targets.onnxruntime")

DEFAULT_OPSET = 20
def in_scratch(folder: Path):
    """Run ONNX Runtime's quantization tools inside `folder`: for models with external data they write temporary
    files (sym_shape_infer_temp.onnx, <uuid>.data) into the current directory, which is the user's."""
    import contextlib

    return contextlib.chdir(Path(folder).resolve())


MAX_BATCH = 4096  # upper bound given to the exporter for the symbolic batch dimension
MAX_SEQ = 8192  # upper bound of a symbolic sequence dimension
CALIBRATION_BATCH = 32  # samples per calibration call when the graph has a symbolic batch dimension


def _conversion_error(exc: BaseException, stage: str, precision: str, model_name: str) -> ConversionError:
    """Turn an exporter/quantizer exception into a ConversionError that names the op, what was done and what to try."""
    op, cause = summarize_exception(exc)
    where = f"op {op!r}" if op else "the model (no single op named; see the cause)"
    hint = {
        "export": "rewrite that op with supported primitives (or remove data-dependent Python control flow), "
                  "try another opset (option opset=18..21), or use another target (executorch, tflite)",
        "fp16": "keep fp32 for this model on onnxruntime, or use fp16 on coreml/tflite",
        "int8_dynamic": "try int8_static (QDQ) or fp32/fp16 on onnxruntime",
        "int8_static": "try int8_dynamic, option calibrate_method='minmax', or another target's int8_static",
    }.get(stage, "try another precision or target")
    return ConversionError(
        f"onnxruntime target, precision {precision}: {stage} step failed on {where} of {model_name}. "
        f"Cause: {cause}. What was done: the step was aborted and no artifact was written. Try: {hint}.")


# --- torch -> ONNX -----------------------------------------------------------------------------------------
def _dynamic_shapes(example_inputs: tuple, spec, axes: tuple[str, ...]):
    """torch.export dynamic_shapes for the spec's named axes this export keeps dynamic: one Dim per axis name,
    shared by every input that has it (so batch and seq stay tied across input_ids and attention_mask)."""
    from torch.export import Dim

    dims = {"batch": Dim("batch", min=1, max=MAX_BATCH), "seq": Dim("seq", min=1, max=MAX_SEQ)}
    out = []
    for t, ts in zip(example_inputs, spec.inputs if spec is not None else [None] * len(example_inputs)):
        named = ts.dynamic_axes() if ts is not None else {0: "batch"}
        out.append({i: dims[a] for i, a in named.items() if a in axes and a in dims and i < t.ndim})
    return tuple(out)


def export_onnx(model, example_inputs: tuple, path: Path, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, spec=None, dynamic_axes: tuple[str, ...] = ("batch", "seq")) -> bool:
    """Export `model` to one self-contained ONNX file at `path`, inputs and outputs named as the spec names them.
    Returns True when the batch dim is symbolic.

    With dynamic_batch the example is repeated to batch 2 (a size-1 example would be specialised) and the spec's
    dynamic axes (batch, seq) stay symbolic; if the exporter cannot keep them symbolic the export is redone with
    the static example.
    """
    import torch

    model = model.eval()
    names = dict(input_names=spec.names, output_names=spec.output_names) if spec is not None else {}
    if dynamic_batch:
        ex2 = tuple(torch.cat([t, t], 0) if t.shape[0] == 1 else t for t in example_inputs)  # (2, ...) each
        try:
            with quiet():
                prog = torch.onnx.export(model, ex2, dynamo=True, external_data=False, opset_version=opset,
                                         dynamic_shapes=_dynamic_shapes(ex2, spec, dynamic_axes), verbose=False,
                                         report=False, **names)
            prog.save(str(path))
            return True
        except Exception as e:  # noqa: BLE001 - retried statically below; a second failure is reported
            log.info("onnxruntime: symbolic batch export failed (%s: %s); exporting with a static batch",
                     type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    with quiet():
        prog = torch.onnx.export(model, example_inputs, dynamo=True, external_data=False, opset_version=opset,
                                 verbose=False, report=False, **names)
    prog.save(str(path))
    return False


# int8_static leaves these ops float. ONNX Runtime has no int8 LayerNormalization kernel, so QuantizeLinear /
# DequantizeLinear around one only add rounding, and on transformers that rounding is what breaks the artifact:
# measured on the conformance token_encoder, every QDQ op 4.0 dB SQNR and top-1 agreement 0.45, LayerNormalization
# left float 36.6 dB and 0.99 (per-tensor weights did not help: 3.9 dB).
STATIC_SKIP = frozenset({"LayerNormalization"})


def outlier_matmuls(pre: Path, work: Path, calibration: dict[str, np.ndarray], batch: int) -> list[str]:
    """Names of the MatMul / Gemm nodes with a weight initializer whose activation input, run on up to OUTLIER_SAMPLES
    calibration samples, has outliers (ondevice.outliers.has_outliers). Measured on the MiniLM teacher, 512 held-out
    glosses (benchmarks/results/int8_transformer_variants.json): every QDQ op static 11.8 dB and top-1 agreement
    0.875; LayerNormalization float 15.8 dB and 0.916; those MatMuls (FFN up- and down-projections) with
    their input quantized per tensor at run time, 23.3 dB and 0.973 (all of int8_dynamic so: 24.1 dB, 0.969); left
    float, 31.8 dB and 0.988 but a file 0.41x fp32; as block-wise MatMulNBits (fine_grained_matmuls), 31.8 dB and
    0.992 at 0.26x (int8_static so: 28.4 dB, 0.982)."""
    import onnx
    import onnxruntime as ort

    from ondevice.outliers import OUTLIER_SAMPLES, has_outliers, magnitude_stats

    model = onnx.load(str(pre))
    weights = {i.name for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    watched: dict[str, list[str]] = {}  # activation tensor -> the MatMuls that read it
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights and n.input[0] not in weights:
            watched.setdefault(n.input[0], []).append(n.name)
    if not watched:
        return []
    outputs = {o.name for o in model.graph.output}
    for t in watched:
        if t not in outputs and t not in inputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    probe = work / "probe.onnx"
    onnx.save(model, str(probe), save_as_external_data=True, location="probe.onnx.data")
    with quiet():
        sess = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    fetch = [t for t in watched if t not in inputs]
    stats: dict[str, list[tuple[float, float]]] = {t: [] for t in watched}
    reader, seen = _Reader(calibration, batch), 0
    while seen < OUTLIER_SAMPLES and (feed := reader.get_next()) is not None:
        values = dict(zip(fetch, sess.run(fetch, feed))) if fetch else {}
        for t in watched:
            stats[t].append(magnitude_stats(feed[t] if t in inputs else values[t]))
        seen += len(next(iter(feed.values())))
    return sorted(n for t, nodes in watched.items() if has_outliers(stats[t]) for n in nodes)


OUTLIER_BLOCK = 32  # MatMulNBits block length along the reduction axis, for weights and run-time activations


def fine_grained_matmuls(src: Path, out: Path, nodes: list[str]) -> None:
    """`nodes` (weight MatMuls of `src`) as com.microsoft MatMulNBits: int8 symmetric weights with one scale per block
    of OUTLIER_BLOCK along K, and accuracy_level 4, which quantizes the input to int8 per block of each row at run
    time, so one outlier channel costs the precision of its own block only (ONNX Runtime's DynamicQuantizeLinear takes
    one scale for the whole tensor). A Gemm among `nodes` stays float (MatMulNBits replaces MatMul only). MiniLM
    teacher, batch 1, 1 thread, AVX-512 VNNI (benchmarks/results/int8_transformer_variants.json): int8_dynamic 4.3 ms
    against 2.5 ms with those MatMuls per tensor and 7.0 ms in fp32; with a float-compute accuracy_level, 9.7 ms."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=OUTLIER_BLOCK, is_symmetric=True,
                                     accuracy_level=4, nodes_to_include=list(nodes))
    with quiet():
        quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


OUTLIER_SCHEMES = {
    "blockwise": f"int8 weights and input per block of {OUTLIER_BLOCK} (MatMulNBits, accuracy_level 4)",
    "per_tensor": "int8 weights, input quantized per tensor at run time (DynamicQuantizeLinear -> MatMulInteger)",
}


def outlier_note(nodes: list[str] | None, scheme: str) -> str:
    """metadata_props ondevice.outlier_nodes: the weight MatMuls whose calibrated input has outliers and what they
    became, or (nodes None) why none were looked for."""
    if nodes is None:
        why = "option outliers='per_tensor'" if scheme == "per_tensor" else "no calibration samples were given"
        return f"not checked: {why} (every weight MatMul has a per-tensor activation scale)"
    return (f"{len(nodes)} weight MatMul/Gemm node(s) whose calibrated input has outliers: {OUTLIER_SCHEMES[scheme]}"
            f" (option outliers={scheme!r}; a Gemm stays float): {', '.join(nodes) or 'none'}")


class _Reader:
    """onnxruntime CalibrationDataReader over real samples by input name: batches of CALIBRATION_BATCH (or the
    graph's static batch), each input at its own dtype (token ids stay integers)."""

    def __init__(self, calibration: dict[str, np.ndarray], batch: int):
        n = len(next(iter(calibration.values())))
        self._feeds = [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in calibration.items()}  # (<=batch, ...)
                       for i in range(0, n, batch)]
        if batch > 1 and self._feeds and len(next(iter(self._feeds[-1].values()))) < batch:
            self._feeds[-1] = pad_batch(self._feeds[-1], batch)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _n_samples(calibration: dict | None) -> int:
    return len(next(iter(calibration.values()))) if calibration else 0


def _input_batch(model_path: Path) -> int | None:
    """The first input's static batch size, or None when it is symbolic."""
    import onnx

    dim0 = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim0.dim_value if dim0.HasField("dim_value") else None


def resolve_reduce_range(option: Any, activations: str) -> tuple[bool, str]:
    """(7-bit weights?, why). "auto": on for uint8 activations and on x86 CPUs without VNNI, whose int8 kernels
    (u8 x s8 pairs summed into int16, vpmaddubsw) saturate with full 8-bit weights: ORT's own advice for them. ARM
    and VNNI CPUs keep full 8-bit weights. The artifact records the choice (metadata ondevice.reduce_range)."""
    import platform

    from ondevice.io import cpu_flags

    if isinstance(option, bool):
        return option, "requested"
    if option != "auto":
        raise ConfigError(f"option reduce_range={option!r}: valid values are 'auto', true and false")
    if activations == "uint8":
        return True, "uint8 activations (ORT pairs them with 7-bit weights)"
    flags = set(cpu_flags())
    if platform.machine().lower() in ("x86_64", "amd64") and not flags & {"avx512_vnni", "avx_vnni"}:
        return True, ("auto: this x86 CPU has no VNNI; its int8 kernels saturate with full 8-bit weights, so the "
                      "weights use 7 bits (quantize again on a VNNI or ARM machine for 8)")
    return False, "auto: full 8-bit weights (VNNI or ARM int8 kernels)"


def write_metadata(path: Path, spec, extra: dict[str, str] | None = None) -> None:
    """The input spec and the deployer's preprocessing (and `extra` notes) into the model's own metadata_props."""
    import onnx

    if spec is None and not extra:
        return
    m = onnx.load(str(path))
    keep = [p for p in m.metadata_props if not p.key.startswith("ondevice.")]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in {**artifact_metadata(spec), **(extra or {})}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


# --- runtime -----------------------------------------------------------------------------------------------
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def _io(values) -> tuple[IOTensor, ...]:
    return tuple(IOTensor(v.name, _ORT_TYPES.get(v.type, v.type), tuple(d if isinstance(d, int) else (d or None)
                                                                         for d in v.shape)) for v in values)


@dataclass
class OrtRunner:
    session: Any
    signature: Signature
    output_names: list[str]


class OnnxRuntimeTarget(Target):
    def __init__(self, spec):
        super().__init__(spec)
        self._threads: int | None = None

    # -- torch-level step: none (ONNX Runtime quantizes after conversion) ---------------------------------
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: dict | None, **options):
        return model

    def export(self, prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: dict | None = None, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               activations: str = "int8", calibrate_method: str = "minmax", reduce_range: Any = "auto",
               outliers: str = "blockwise", spec=None,
               **_: Any) -> Path:
        given = Path(out)
        out = given.resolve()  # the quantization tools run in a scratch directory (in_scratch)
        name = type(prepared).__name__
        if activations not in ("int8", "uint8"):
            raise ConfigError(f"option activations={activations!r}: valid values are 'int8' and 'uint8'")
        methods = ("minmax", "entropy", "percentile")
        if calibrate_method not in methods:
            raise ConfigError(f"option calibrate_method={calibrate_method!r}: valid values are {', '.join(methods)}")
        if outliers not in OUTLIER_SCHEMES:
            raise ConfigError(f"option outliers={outliers!r}: valid values are {', '.join(map(repr, OUTLIER_SCHEMES))}")
        rr, rr_why = resolve_reduce_range(reduce_range, activations)
        dyn: list[str] | None = None  # weight MatMuls with outlier inputs (None: not looked for)
        with temp_dir("ort") as td:
            fp32 = Path(td) / "fp32.onnx"
            try:
                export_onnx(prepared, example_inputs, fp32, opset=int(opset), dynamic_batch=bool(dynamic_batch),
                            spec=spec, dynamic_axes=self.spec.dynamic_axes)
            except Exception as e:
                raise _conversion_error(e, "export", precision.name, name) from e
            try:
                if precision.name == "fp32":
                    shutil.copyfile(fp32, out)
                elif precision.name == "fp16":
                    self._fp16(fp32, out)
                elif precision.name == "int8_dynamic":
                    dyn = self._int8_dynamic(fp32, Path(td), out, calibration, rr, outliers)
                elif precision.name == "int8_static":
                    dyn = self._int8_static(fp32, Path(td), out, calibration, activations, calibrate_method, rr,
                                             outliers)
                else:  # the core checks precisions against the spec first
                    raise ConfigError(f"onnxruntime cannot produce {precision.name}")
            except (ConversionError, ConfigError):
                raise
            except Exception as e:
                raise _conversion_error(e, precision.name, precision.name, name) from e
        notes = {"ondevice.reduce_range": f"{str(rr).lower()}: {rr_why}",
                 "ondevice.outlier_nodes": outlier_note(dyn, outliers)} if precision.name.startswith("int8") else {}
        write_metadata(out, spec, notes)
        return given  # the path as the caller named it

    @staticmethod
    def _fp16(src: Path, out: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with quiet():
            m16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(m16, str(out))

    @staticmethod
    def _pre_process(src: Path, dst: Path) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src, dst = Path(src).resolve(), Path(dst).resolve()
        try:
            with quiet(), in_scratch(dst.parent):
                quant_pre_process(str(src), str(dst))
        except Exception as e:  # noqa: BLE001 - ORT raises a bare Exception for this
            if "symbolic shape inference" not in str(e):
                raise
            # ONNX Runtime's symbolic shape inference cannot follow every graph with a symbolic sequence axis (a
            # causal LM's mask built from the sequence length); ONNX's own shape inference is enough to quantize.
            log.info("onnxruntime: %s; pre-processing with ONNX shape inference only", first_line(e, 200))
            with quiet(), in_scratch(dst.parent):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)

    def _int8_dynamic(self, src: Path, work: Path, out: Path, calibration: dict | None, reduce_range: bool,
                      outliers: str) -> list[str] | None:
        """quantize_dynamic of every weight op; with calibration samples and outliers='blockwise', the weight MatMuls
        whose input has outliers go to fine_grained_matmuls instead. Returns those nodes' names (None: not looked
        for)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        pre = work / "pre.onnx"  # work (a temp dir) and out (resolved by export) are absolute: in_scratch is safe
        self._pre_process(src, pre)
        look = _n_samples(calibration) > 0 and outliers == "blockwise"
        fine = self._outliers(pre, work, calibration, "int8_dynamic") if look else []
        dynamic = work / "dynamic.onnx" if fine else out
        with quiet(), in_scratch(work):
            quantize_dynamic(str(pre), str(dynamic), per_channel=True, weight_type=QuantType.QInt8,
                             reduce_range=reduce_range, nodes_to_exclude=fine)
        if fine:
            fine_grained_matmuls(dynamic, out, fine)
        return fine if look else None

    def _outliers(self, pre: Path, work: Path, calibration: dict, precision: str) -> list[str]:
        """outlier_matmuls of the pre-processed graph, once the calibration samples name its inputs."""
        import onnx

        names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
        if set(names) != set(calibration):
            raise ConfigError(f"onnxruntime {precision}: the calibration samples hold {sorted(calibration)}, the "
                              f"graph takes {names}; pass one array per input name")
        return outlier_matmuls(pre, work, calibration, _input_batch(pre) or CALIBRATION_BATCH)

    def _int8_static(self, src: Path, work: Path, out: Path, calibration: dict | None, activations: str,
                     calibrate_method: str, reduce_range: bool, outliers: str) -> list[str]:
        """QDQ static int8 of every op ONNX Runtime's QDQ quantizer handles except STATIC_SKIP; weight MatMuls whose
        calibrated input has outliers are left out and go to fine_grained_matmuls (outliers='blockwise') or to
        quantize_dynamic (outliers='per_tensor'). Returns those nodes' names."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.registry import QDQRegistry

        if _n_samples(calibration) == 0:
            raise ConfigError("onnxruntime int8_static needs calibration= real samples (e.g. 256 training samples)")
        pre = work / "pre.onnx"  # absolute, as `out` is (export resolves it before in_scratch changes directory)
        self._pre_process(src, pre)
        dyn = self._outliers(pre, work, calibration, "int8_static")
        batch = _input_batch(pre) or CALIBRATION_BATCH
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[calibrate_method]
        uint8 = activations == "uint8"
        static = work / "static.onnx" if dyn else out
        with quiet(), in_scratch(work):
            quantize_static(
                str(pre), str(static), _Reader(calibration, batch), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted(set(QDQRegistry) - STATIC_SKIP), nodes_to_exclude=dyn,
                per_channel=True, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if uint8 else QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=method, calibration_providers=["CPUExecutionProvider"])
        if dyn and outliers == "blockwise":
            fine_grained_matmuls(static, out, dyn)
        elif dyn:
            from onnxruntime.quantization import quantize_dynamic

            with quiet(), in_scratch(work):
                quantize_dynamic(str(static), str(out), nodes_to_quantize=dyn, op_types_to_quantize=["MatMul"],
                                 per_channel=True, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        return dyn

    # -- runtime ---------------------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        self._threads = int(n)

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self._threads is not None:
            so.intra_op_num_threads = self._threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only; ORT warns about e.g. unused initializers on stderr otherwise
        return so

    def load(self, path: Path, spec=None) -> OrtRunner:
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), self.session_options(), providers=["CPUExecutionProvider"])
        except Exception as e:  # a truncated or corrupted file
            raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({first_line(e, 200)}); the file is damaged or "
                                f"not an ONNX model: export it again") from e
        sig = Signature(_io(sess.get_inputs()), _io(sess.get_outputs()))
        return OrtRunner(sess, sig, sig.output_names)

    def call(self, runner: OrtRunner, feeds: dict) -> dict:
        return dict(zip(runner.output_names, runner.session.run(runner.output_names, feeds)))

    def bind(self, runner: OrtRunner, feeds: dict, carry: dict[str, str] | None = None):
        run, names = runner.session.run, runner.output_names
        if not carry:
            return functools.partial(run, names, feeds)  # exactly the runtime call
        pos = [(i, names.index(o)) for i, o in carry.items()]

        def step():
            out = run(names, feeds)
            for i, k in pos:
                feeds[i] = out[k]
            return out

        return step

    # -- inspection ------------------------------------------------------------------------------------------
    def inspect(self, path: Path) -> Inspection:
        import onnx
        from onnx import numpy_helper

        try:
            m = onnx.load(str(path))
        except Exception as e:
            raise ArtifactError(f"{path}: not a readable ONNX model ({first_line(e, 200)}); export it again") from e
        ops: Counter[str] = Counter()

        def walk(graph) -> None:
            for node in graph.node:
                ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        walk(attr.g)
                    elif attr.type == onnx.AttributeProto.GRAPHS:
                        for g in attr.graphs:
                            walk(g)

        walk(m.graph)
        for fn in m.functions:  # local functions the exporter did not inline
            for node in fn.node:
                ops[node.op_type] += 1
        counts: Counter[str] = Counter()
        nbytes: Counter[str] = Counter()
        for init in m.graph.initializer:
            dt = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
            counts[dt] += 1
            nbytes[dt] += int(numpy_helper.to_array(init).nbytes)

        def io(values) -> list[dict]:
            out = []
            for v in values:
                tt = v.type.tensor_type
                shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                out.append({"name": v.name, "shape": shape,
                            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name})
            return out

        inputs = io(m.graph.input)
        return Inspection(
            format="onnx", ops=dict(sorted(ops.items())), weight_bytes=dict(nbytes), weight_tensors=dict(counts),
            inputs=inputs, outputs=io(m.graph.output), metadata=read_metadata({p.key: p.value for p in m.metadata_props}),
            details={"opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
                     "producer": f"{m.producer_name} {m.producer_version}".strip(),
                     "dynamic_batch": not isinstance(inputs[0]["shape"][0], int) if inputs else False})
