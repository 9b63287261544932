"""ExecuTorch target: torch.export -> (PT2E int8) -> to_edge_transform_and_lower(XNNPACK) -> .pte, run by
executorch.runtime.

Precisions (README.md has what each produces and what was measured here):
  fp32          fp32 program, every supported op delegated to XNNPACK
  int8_dynamic  PT2E with XNNPACKQuantizer + get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True):
                int8 per-channel weights where the quantizer's dynamic patterns apply (Linear and 1x1 conv layers in
                the models tested), activations quantized at run time per tensor (XNNPACK qd8 kernels); the rest
                stays fp32
  int8_static   PT2E with get_symmetric_quantization_config(is_per_channel=True): int8 per-channel weights and int8
                activations whose ranges come from the real calibration samples (HistogramObserver); adds stay fp32,
                and a linear / conv whose calibrated input has outliers (ondevice.outliers) quantizes that input at run
                time instead
  Both int8 precisions store embedding tables as uint8 rows (option embeddings, default "int8"), read by the
  quantized_decomposed::embedding_byte kernel

int8_weight_only is not offered: the XNNPACKQuantizer has no weight-only config, and torchao's Int8WeightOnlyConfig
lowers to fp32 matmuls that XNNPACK does not take (they run as portable kernels outside the delegate).

SDK imports happen inside functions. `import executorch.runtime` takes ~10 s cold (it pulls in the exporter), so the
runtime is imported once per process, on the first load.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.errors import ArtifactError, ConfigError, ConversionError, InputMismatchError, first_line
from ondevice.io import temp_dir
from ondevice.precision import Precision
from ondevice.quiet import quiet, summarize_exception
from ondevice.target import (IOTensor, Inspection, Signature, Target, calibration_chunks, named_like_spec,
                             recorded_spec)

log = logging.getLogger("ondevice.targets.executorch")

MAX_BATCH = 4096  # bound of the symbolic batch dim used while calibrating
CALIBRATION_BATCH = 32

# What native code prints while the runtime starts (cpuinfo probing ARM-only /sys files on x86): harmless.
_NATIVE_NOISE = re.compile(r"cpuinfo_utils\.cpp|^\s*$")

# --- process-wide runtime state (the ExecuTorch thread pool is process-wide) -------------------------------
_RUNTIME: Any = None
_THREADS: int | None = None
_LOADED = False


def runtime():
    """The executorch.runtime.Runtime singleton, imported on first use (~10 s cold)."""
    global _RUNTIME
    if _RUNTIME is None:
        with quiet(native_noise=_NATIVE_NOISE, log=log):
            from executorch.runtime import Runtime

            import executorch.kernels.quantized  # noqa: F401  registers the quantized_decomposed kernels
            _RUNTIME = Runtime.get()
    return _RUNTIME


_HINTS = {
    "capture": "make the model traceable by torch.export (no data-dependent Python control flow), "
               "or use the onnxruntime target",
    "quantize": "try the other int8 precision (int8_static / int8_dynamic), or fp32 on executorch",
    "lower": "rewrite that op with ops XNNPACK supports, or try fp32 / another int8 precision",
    "kernels": "rewrite that op with common ops (they fall back to portable kernels when XNNPACK does not take "
               "them), or use the onnxruntime target",
}


def _conversion_error(exc: BaseException | None, stage: str, precision: str, model_name: str, *,
                      op: str | None = None, cause: str | None = None) -> ConversionError:
    if exc is not None:
        op, cause = summarize_exception(exc)
    where = f"op(s) {op}" if op else "the model (no single op named; see the cause)"
    return ConversionError(
        f"executorch target, precision {precision}: {stage} step failed on {where} of {model_name}. "
        f"Cause: {cause}. What was done: the step was aborted and no .pte was written. Try: {_HINTS[stage]}.")


EMBEDDINGS = ("int8", "fp32")


# int8_static: a linear / conv whose calibrated activation input has outliers (ondevice.outliers: max|x| above
# OUTLIER_RATIO x its 99th percentile) keeps int8 weights with its activation quantized at run time (the int8_dynamic
# scheme), and adds are not quantized at all (the residual sums and the additive attention mask, -3.4e38 beside 0).
# Measured on the MiniLM 3-layer student (benchmarks/minilm_wordnet.py, 128 held-out glosses): every op static int8
# gave 3.8 dB SQNR, top-1 agreement 0.60; adds left fp32 17.8 dB; with the outlier linears dynamic too, 30.9 dB and
# 0.984, file 0.26x fp32.


def outlier_nodes(gm, chunks) -> set[str]:
    """Names of the linear / conv nodes of the captured graph `gm` whose activation input (measured on the
    calibration `chunks`, OUTLIER_SAMPLES of them) has outliers (ondevice.outliers.has_outliers)."""
    import torch
    import torch.fx

    from ondevice.outliers import OUTLIER_SAMPLES, has_outliers, magnitude_stats

    watched = {torch.ops.aten.linear.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default}
    stats: dict[str, list[tuple[float, float]]] = {}

    class _Probe(torch.fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_function" and n.target in watched and isinstance(n.args[0], torch.fx.Node):
                x = self.env[n.args[0]].detach().float().numpy()  # the activation input, all of the chunk
                stats.setdefault(n.name, []).append(magnitude_stats(x))
            return super().run_node(n)

    seen = 0
    with torch.no_grad():
        for args in chunks:
            _Probe(gm).run(*args)
            seen += len(args[0])
            if seen >= OUTLIER_SAMPLES:
                break
    return {name for name, rows in stats.items() if has_outliers(rows)}


def int8_quantizer(dynamic: bool, embeddings: str = "int8", keep_fp32: set[str] | None = None):
    """The XNNPACK PTQ quantizer (below), composed with torchao's EmbeddingQuantizer unless `embeddings` is 'fp32':
    an embedding table is often most of a text model's parameters (all-MiniLM-L6-v2: 11.7M of 22.7M), which the
    XNNPACKQuantizer leaves in fp32. Its rows become uint8 with a float scale and zero point per row, gathered by the
    quantized_decomposed::embedding_byte kernel (the runtime must link ExecuTorch's quantized kernels). `keep_fp32`:
    node names (static only, with the add patterns; see outlier_nodes) left unquantized."""
    if embeddings not in EMBEDDINGS:
        raise ConfigError(f"executorch option embeddings: expected one of {', '.join(EMBEDDINGS)}, got {embeddings!r}")
    from torchao.quantization.pt2e.quantizer.composable_quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.embedding_quantizer import EmbeddingQuantizer

    parts = [ptq_quantizer(dynamic, keep_fp32)]
    if keep_fp32:  # their weights int8 all the same, their activations quantized at run time
        parts.append(ptq_quantizer(True, only=keep_fp32))
    if embeddings == "int8":
        parts.insert(0, EmbeddingQuantizer())
    return parts[0] if len(parts) == 1 else ComposableQuantizer(parts)


def ptq_quantizer(dynamic: bool, keep_fp32: set[str] | None = None, only: set[str] | None = None):
    """XNNPACKQuantizer with the symmetric per-channel config, minus the QAT-only conv+BatchNorm patterns.

    prepare_pt2e folds BatchNorm into the preceding conv before it annotates, so in post-training quantization
    those patterns cannot match; the stock quantizer still builds each of them with torch.export on every call
    (12 traces, 5-15 s here). Skipping them yields byte-identical programs (checked in the tests).
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    skip_adds = keep_fp32 is not None

    class _PTQQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if (not p.is_qat or "_bn" not in p.name)
                              and not (skip_adds and p.name in ("add", "add_relu"))]

    q = _PTQQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    if keep_fp32:
        q.set_filter_function(lambda node: node.name not in keep_fp32)
    if only is not None:
        q.set_filter_function(lambda node: node.name in only)
    return q


def _batch_of(example_inputs: tuple, batch: int) -> tuple:
    """Repeat the (1, ...) example along dim 0 to `batch` samples."""
    import torch

    return tuple(t if t.shape[0] == batch else torch.cat([t[:1]] * batch, 0) for t in example_inputs)


def capture(model, example_inputs: tuple):
    """torch.export the model with a symbolic batch dim (so calibration can run in batches); if that fails, with
    the static example. Returns (GraphModule, calibration batch size)."""
    import torch
    from torch.export import Dim

    with quiet():
        try:
            ex2 = _batch_of(example_inputs, 2)
            batch = Dim("batch", min=1, max=MAX_BATCH)
            dyn = tuple({0: batch} for _ in ex2)
            return torch.export.export(model, ex2, dynamic_shapes=dyn).module(), CALIBRATION_BATCH
        except Exception as e:  # noqa: BLE001 - falls back to the static capture, whose failure is reported
            log.info("executorch: symbolic-batch capture failed (%s); calibrating one sample at a time",
                     str(e).splitlines()[0] if str(e) else type(e).__name__)
            return torch.export.export(model, example_inputs).module(), int(example_inputs[0].shape[0])


def integral_constants(gm):
    """PT2E's prepare step turns a Python number added to a tensor (Hugging Face's mask code: `kv_arange +=
    kv_offset`) into a 0-dim float32 constant; against an int64 arange that promotes the index to float and
    aten.index refuses it ("tensors used as indices must be long ...": every int8 ExecuTorch export of
    all-MiniLM-L6-v2 failed). A 0-dim float constant with an integral value that meets an integer tensor in
    add/sub/mul (on either side) becomes a constant of that tensor's dtype, as the Python number was. Returns `gm`,
    recompiled."""
    import torch

    inplace = {torch.ops.aten.add_.Tensor, torch.ops.aten.sub_.Tensor}
    ops = {torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.mul.Tensor, *inplace}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in ops or len(n.args) < 2:
            continue
        # (tensor, constant) in either order; an in-place op's first operand is what it writes, never a constant
        pairs = [(n.args[0], n.args[1])] + ([] if n.target in inplace else [(n.args[1], n.args[0])])
        for a, b in pairs:
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and b.op == "get_attr"):
                continue
            t, va = getattr(gm, b.target, None), a.meta.get("val")
            if (isinstance(t, torch.Tensor) and t.ndim == 0 and t.is_floating_point() and isinstance(va, torch.Tensor)
                    and not va.is_floating_point() and va.dtype != torch.bool and float(t) == int(t)):
                setattr(gm, b.target, t.to(va.dtype))
    gm.recompile()
    return gm


# ExecuTorch runtime error codes (runtime/core/error.h) -> what they mean for the caller
_ET_ERRORS = {"0x12": "InvalidArgument: an input does not match the program's input (dtype, shape or count)",
              "0x13": "InvalidType: an input has the wrong type", "0x14": "OperatorMissing: no kernel for an op",
              "0x21": "MemoryAllocationFailed", "0x23": "InvalidProgram: the .pte is damaged"}


def _runtime_error(e: Exception, sig: Signature, path: str) -> Exception:
    """ExecuTorch's bare `... failed with error 0x12` as a message naming what the program takes."""
    m = re.search(r"error (0x[0-9a-fA-F]+)", str(e))
    code = m.group(1).lower() if m else None
    if code in ("0x12", "0x13"):
        return InputMismatchError(f"{path}: ExecuTorch refused the inputs ({_ET_ERRORS[code]}). The program takes "
                                  f"exactly: {', '.join(t.describe() for t in sig.inputs)} (static shapes: pad or "
                                  f"split the batch, pad sequences to the exported length)")
    if code is None:
        return e
    what = _ET_ERRORS.get(code, "see executorch runtime/core/error.h")
    return RuntimeError(f"{path}: ExecuTorch error {code} ({what}): {e}")


def _meta_io(meta, name: str) -> IOTensor:
    return IOTensor(name, _scalar_type(meta.dtype())[0], tuple(int(s) for s in meta.sizes()))


# --- the target -----------------------------------------------------------------------------------------------
@dataclass
class EtRunner:
    method: Any
    signature: Signature
    path: str

    @property
    def batch(self) -> int | None:
        return self.signature.static_batch


class ExecuTorchTarget(Target):
    def quantize(self, model, precision: Precision, example_inputs: tuple, calibration: dict | None,
                 *, quantizer=None, embeddings: str = "int8", **options):
        """PT2E quantization. `quantizer` (when calling the target directly; not a verb option) replaces the default
        `int8_quantizer`, e.g. with a custom torchao PT2E quantizer."""
        if precision.name == "fp32":
            return model
        import torch

        name = type(model).__name__
        dynamic = precision.name == "int8_dynamic"
        if not dynamic and not calibration:
            raise ConfigError("executorch int8_static needs calibration= real samples")
        try:
            captured, cal_batch = capture(model, example_inputs)
        except Exception as e:
            raise _conversion_error(e, "capture", precision.name, name) from e
        try:
            with quiet():
                from executorch.backends.transforms.duplicate_dynamic_quant_chain import (
                    DuplicateDynamicQuantChainPass)
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                if dynamic:  # activation ranges are chosen at run time; one pass fills the per-channel observers
                    chunks, keep = [tuple(example_inputs)], None
                else:
                    def chunks_of():
                        return calibration_chunks(calibration, cal_batch, whole=cal_batch != CALIBRATION_BATCH)
                    chunks, keep = chunks_of(), outlier_nodes(captured, chunks_of())
                if quantizer is None:
                    quantizer = int8_quantizer(dynamic, embeddings, keep)
                prepared = integral_constants(prepare_pt2e(captured, quantizer))
                with torch.no_grad():
                    for args in chunks:
                        prepared(*args)  # (B, ...) real samples, every input at its own dtype
                converted = convert_pt2e(prepared)
                if dynamic:
                    DuplicateDynamicQuantChainPass()(converted)
        except ConfigError:
            raise
        except Exception as e:
            raise _conversion_error(e, "quantize", precision.name, name) from e
        return converted

    def export(self, prepared, precision: Precision, example_inputs: tuple, out: Path,
               calibration: dict | None = None, *, batch: int = 1, spec=None, **_: Any) -> Path:
        import torch

        batch = int(batch)
        if batch < 1:
            raise ConfigError(f"option batch={batch}: must be >= 1")
        name = type(prepared).__name__
        try:
            with quiet():
                ep = torch.export.export(prepared, _batch_of(example_inputs, batch))
        except Exception as e:
            raise _conversion_error(e, "capture", precision.name, name) from e
        try:
            with quiet():
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.backends.xnnpack.utils.configs import (
                    get_xnnpack_edge_compile_config, get_xnnpack_executorch_backend_config)
                from executorch.exir import to_edge_transform_and_lower
                from executorch.exir.passes import QuantFusionPass

                import executorch.kernels.quantized  # noqa: F401  the out variants of the quantized_decomposed ops

                edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                                   compile_config=get_xnnpack_edge_compile_config())
                # ops XNNPACK did not take whose dequantize -> op pattern has a quantized kernel (a uint8 embedding
                # table -> embedding_byte, which gathers and dequantizes only the rows it reads)
                program = edge.to_executorch(get_xnnpack_executorch_backend_config([QuantFusionPass()]))
        except Exception as e:
            raise _conversion_error(e, "lower", precision.name, name) from e
        # Ops left outside the delegate run on the runtime's registered kernels; one without a kernel would only
        # fail at load time ("Failed to load method forward, error 0x14"), so name it now.
        plan = program.executorch_program.execution_plan[0]
        used = {op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators}
        missing = sorted(used - set(runtime().operator_registry.operator_names))
        if missing:
            raise _conversion_error(None, "kernels", precision.name, name, op=", ".join(missing),
                                    cause="the ExecuTorch runtime in this environment has no kernel for them "
                                          "and XNNPACK did not take them")
        Path(out).write_bytes(program.buffer)  # `out` is a temp path; the core renames it into place atomically
        return Path(out)

    # -- runtime ---------------------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        """ExecuTorch's thread pool is process-wide and resizing it after a program was loaded crashed the
        process here, so the count is applied once, before the first load."""
        global _THREADS
        n = int(n)
        if _LOADED and n != _THREADS:
            raise RuntimeError(
                f"executorch: cannot change the thread count to {n} after a program was loaded in this process "
                f"(resizing ExecuTorch's thread pool after a load crashed the process). Measure each thread count "
                f"in its own process.")
        _THREADS = n

    def load(self, path: Path, spec=None) -> EtRunner:
        """A .pte stores no input or output names: they come from the input spec (its record), else input_<i> /
        output_<i>."""
        global _LOADED
        rt = runtime()
        try:
            with quiet(native_noise=_NATIVE_NOISE, log=log):
                if _THREADS is not None and not _LOADED:
                    from executorch.extension.pybindings import portable_lib

                    portable_lib._unsafe_reset_threadpool(_THREADS)
                method = rt.load_program(Path(path)).load_method("forward")
        except Exception as e:  # a truncated or corrupted file
            raise ArtifactError(f"{path}: ExecuTorch cannot load it ({first_line(e, 200)}); the file is damaged or "
                                f"not a .pte program: export it again") from e
        _LOADED = True
        md = method.metadata
        sig = Signature(tuple(_meta_io(md.input_tensor_meta(i), f"input_{i}") for i in range(md.num_inputs())),
                        tuple(_meta_io(md.output_tensor_meta(i), f"output_{i}") for i in range(md.num_outputs())))
        spec = spec if spec is not None else recorded_spec(path)
        if spec is not None:
            sig = named_like_spec(sig, spec, str(path))
        return EtRunner(method, sig, str(path))

    def call(self, runner: EtRunner, feeds: dict) -> dict:
        import torch

        args = tuple(torch.from_numpy(feeds[t.name]) for t in runner.signature.inputs)
        try:
            ys = runner.method.execute(args)
        except RuntimeError as e:
            raise _runtime_error(e, runner.signature, runner.path) from e
        return {t.name: y.detach().numpy() for t, y in zip(runner.signature.outputs, ys)}

    def bind(self, runner: EtRunner, feeds: dict, carry: dict[str, str] | None = None):
        import torch

        names = [t.name for t in runner.signature.inputs]
        args = [torch.from_numpy(feeds[n]) for n in names]
        execute = runner.method.execute
        if not carry:
            return functools.partial(execute, tuple(args))  # exactly the runtime call
        outs = [t.name for t in runner.signature.outputs]
        pos = [(names.index(i), outs.index(o)) for i, o in carry.items()]

        def step():
            ys = execute(tuple(args))
            for i, k in pos:
                args[i] = ys[k].clone()  # the runtime reuses its output buffers

        return step

    # -- inspection ------------------------------------------------------------------------------------------
    def inspect(self, path: Path) -> Inspection:
        try:
            return inspect_pte(Path(path).read_bytes())
        except Exception as e:
            raise ArtifactError(f"{path}: not a readable .pte program ({first_line(e, 200)}); export it again") from e

    def runtime_memory(self, path: Path) -> dict:
        plan = _program(Path(path).read_bytes()).execution_plan[0]
        sizes = [int(s) for s in plan.non_const_buffer_sizes]
        return {
            "planned_bytes": int(sum(sizes[1:])),  # buffer 0 is reserved by the memory planner
            "non_const_buffer_sizes": sizes,
            "excludes": "XNNPACK's own workspace and packed weights (allocated by the delegate at load)",
        }


# --- .pte reading -------------------------------------------------------------------------------------------
def _program(data: bytes):
    from executorch.exir._serialize._program import deserialize_pte_binary

    with quiet():
        return deserialize_pte_binary(data).program


# ExecuTorch ScalarType names -> NumPy names (what the other targets report), with element sizes in bytes
_SCALAR_TYPES = {"FLOAT": ("float32", 4), "DOUBLE": ("float64", 8), "HALF": ("float16", 2),
                 "BFLOAT16": ("bfloat16", 2), "CHAR": ("int8", 1), "BYTE": ("uint8", 1), "SHORT": ("int16", 2),
                 "INT": ("int32", 4), "LONG": ("int64", 8), "BOOL": ("bool", 1)}
# XNNPACK value datatypes -> NumPy storage names (the raw XNNPACK names are kept in `xnnpack_weight_dtypes`)
_XNN_STORAGE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "qint8": "int8", "qcint8": "int8",
                "qdint8": "int8", "qpint8": "int8", "quint8": "uint8", "qint32": "int32", "qcint32": "int32",
                "int32": "int32", "qcint4": "int4", "qbint4": "int4"}


def _scalar_type(v) -> tuple[str, int]:
    from executorch.exir.scalar_type import ScalarType

    try:
        name = ScalarType(int(v)).name
    except (ValueError, TypeError):
        name = str(v)
    return _SCALAR_TYPES.get(name, (name.lower(), 0))


def xnnpack_graph(payload: bytes) -> dict:
    """Decode one XNNPACK delegate payload (XNNHeader + flatbuffer) into the XNNGraph as a dict, via the flatc
    that ships with ExecuTorch and the delegate's own schema."""
    from executorch.backends.xnnpack import serialization
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
    flat = payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
    with temp_dir("xnn") as td:
        schema = Path(td) / "schema.fbs"
        schema.write_bytes(importlib.resources.files(serialization).joinpath("schema.fbs").read_bytes())
        (Path(td) / "graph.bin").write_bytes(flat)
        _flatc_decompile(str(td), str(schema), str(Path(td) / "graph.bin"))
        text = (Path(td) / "graph.json").read_text()
    # flatc writes non-finite floats (clamp bounds) as bare inf / nan, which JSON does not have
    text = re.sub(r"(?<=[:\s\[,])(-?)inf\b", r"\1Infinity", text)
    text = re.sub(r"(?<=[:\s\[,])-?nan\b", "NaN", text)
    return json.loads(text)


def inspect_pte(data: bytes) -> dict:
    """Op counts (delegated XNNPACK nodes and non-delegated kernels), weight dtypes and I/O of a .pte."""
    from executorch.exir.schema import DelegateCall, KernelCall, Tensor

    prog = _program(data)
    plan = prog.execution_plan[0]
    non_delegated: Counter[str] = Counter()
    delegate_calls: Counter[int] = Counter()
    for chain in plan.chains:
        for ins in chain.instructions:
            a = ins.instr_args
            if isinstance(a, KernelCall):
                op = plan.operators[a.op_index]
                non_delegated[op.name + (f".{op.overload}" if op.overload and op.overload != "default" else "")] += 1
            elif isinstance(a, DelegateCall):
                delegate_calls[a.delegate_index] += 1

    delegated: Counter[str] = Counter()
    w_count: Counter[str] = Counter()  # NumPy storage dtype -> number of constant tensors
    w_bytes: Counter[str] = Counter()  # NumPy storage dtype -> bytes
    xnn_count: Counter[str] = Counter()  # raw XNNPACK datatype (qcint8 = per-channel int8, ...) -> count
    delegates = []
    graph_error = None
    for i, d in enumerate(plan.delegates):
        entry = {"backend": d.id, "calls": int(delegate_calls[i])}
        if "xnnpack" in d.id.lower() and d.processed.location.name == "INLINE":
            try:
                g = xnnpack_graph(prog.backend_delegate_data[d.processed.index].data)
                nodes = Counter(n["xnode_union_type"] for n in g.get("xnodes", []))
                entry["ops"] = dict(sorted(nodes.items()))
                delegated.update(nodes)
                consts = g.get("constant_data") or []
                for v in g.get("xvalues", []):
                    u = v["xvalue_union"]
                    t = u.get("tensor_value", u)
                    idx = int(t.get("constant_buffer_idx") or 0)
                    if idx:
                        raw = str(t.get("datatype", "?")).replace("xnn_datatype_", "")
                        xnn_count[raw] += 1
                        w_count[_XNN_STORAGE.get(raw, raw)] += 1
                        w_bytes[_XNN_STORAGE.get(raw, raw)] += int(consts[idx]["size"]) if idx < len(consts) else 0
            except Exception as e:  # noqa: BLE001 - the op table degrades to delegate calls, and says why
                graph_error = f"{type(e).__name__}: {e}"
                delegated[f"{d.id}(undecoded)"] += int(delegate_calls[i])
        else:
            delegated[f"{d.id}"] += int(delegate_calls[i])
        delegates.append(entry)

    def io(indices) -> list[dict]:
        out = []
        for k, idx in enumerate(indices):
            v = plan.values[idx].val
            if isinstance(v, Tensor):
                out.append({"name": f"{'input' if indices is plan.inputs else 'output'}_{k}",
                            "shape": [int(s) for s in v.sizes], "dtype": _scalar_type(v.scalar_type)[0]})
        return out

    for v in plan.values:  # constants kept outside the delegate (used by non-delegated kernels)
        t = v.val
        if isinstance(t, Tensor) and t.data_buffer_idx and t.data_buffer_idx > 0:
            dt, size = _scalar_type(t.scalar_type)
            w_count[dt] += 1
            w_bytes[dt] += math.prod(t.sizes) * size

    sizes = [int(v) for v in plan.non_const_buffer_sizes]
    details = {"delegates": delegates, "xnnpack_weight_dtypes": dict(xnn_count)}
    if graph_error:
        details["delegate_graph_error"] = graph_error
    return Inspection(
        format="pte", ops=dict(sorted((delegated + non_delegated).items())), weight_bytes=dict(w_bytes),
        weight_tensors=dict(w_count), inputs=io(plan.inputs), outputs=io(plan.outputs),
        delegated_ops=dict(sorted(delegated.items())), non_delegated_ops=dict(sorted(non_delegated.items())),
        planned_memory_bytes=int(sum(sizes[1:])), details=details)
