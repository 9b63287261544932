"""`ondevice.export(model, target=..., precision=...)`: one verb for every backend and precision.

quantize (torch-level) -> export (convert, post-conversion quantization) -> load in the real runtime -> run
held-out real samples -> compare with the PyTorch model -> inspect. The artifact and an `<artifact>.json`
record (status, statistics, size, ops) are written atomically; a failed verification is never silently kept.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import sidecar
from .errors import (ConfigError, ConversionError, InputMismatchError, OndeviceError, OutputDirError, SidecarError,
                     VerificationError)
from .io import atomic_path, machine_record, read_json
from .target import get_target
from .verify import check_recorded_accuracy, compare, precision_check, thresholds_for

log = logging.getLogger("ondevice.export")


@dataclass
class Artifact:
    """What `export` made and how it was judged; `to_dict()` is the body of its `<artifact>.json` record
    (ondevice.sidecar adds the schema header and versions)."""

    target: str
    precision: str
    path: str
    status: str  # "verified" | "failed" (verification) | "error" (conversion or runtime) | "unverified" (no data)
    # | "degenerate reference" (the PyTorch model's outputs do not depend on its input)
    size_bytes: int | None = None
    verification: dict | None = None
    inspect: dict | None = None
    runtime_memory: dict | None = None
    error: str | None = None
    options: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    machine: dict | None = None
    sha256: str | None = None
    hash_method: str | None = None
    student_sha256: str | None = None
    verify_data_sha256: str | None = None
    precision_check: dict | None = None
    input_spec: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, path: str | Path) -> "Artifact":
        """From an `<artifact>.json` record (any schema version this ondevice reads)."""
        rec = sidecar.validate(read_json(path), str(path))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})

    def record_path(self) -> Path:
        return sidecar.record_path(self.path)

    def write_record(self) -> Path:
        return sidecar.write(self.to_dict())


def cpu_copy(model):
    """The model itself when it already lives on the CPU, else a CPU copy (a GPU-trained student stays where it is)."""
    import copy

    import torch

    if all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers())):
        return model
    return copy.deepcopy(model).to(torch.device("cpu"))


# --- samples: trees of arrays or tensors -> named arrays in spec order ------------------------------------------
def as_tree(obj):
    """Arrays, tensors, or tuples/lists/dicts of them -> the same tree of torch tensors (shared memory)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: as_tree(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return tuple(as_tree(v) for v in obj)
    raise TypeError(f"samples must be arrays, tensors, or tuples/dicts of them; got {type(obj).__name__}")


def named_arrays(spec, tree) -> dict[str, np.ndarray]:
    """A batch tree -> {input name: (N, ...) array} in spec order (a missing or extra input names the fix)."""
    if isinstance(tree, dict) and set(tree) == set(spec.names) and all(isinstance(v, np.ndarray) for v in tree.values()):
        return {n: tree[n] for n in spec.names}
    t = as_tree(tree)
    try:
        flat = spec.flatten(t)
    except ConfigError as e:
        raise InputMismatchError(f"{e}; pass the samples in the form the model takes ({spec.describe()})") from None
    return {k: v.numpy() for k, v in flat.items()}


def _example(named: dict[str, np.ndarray]) -> tuple:
    """The first sample of every input, (1, ...) torch tensors in spec order: what the exporters trace with."""
    import torch

    return tuple(torch.from_numpy(np.array(v[:1])) for v in named.values())  # a fresh copy: no 0-strides


def torch_outputs(model, x, batch_size: int = 256, spec=None):
    """The eager model's outputs in chunks: one array in -> its (first) output array; {name: array} in (with the
    `spec`, or a flat model) -> {output name: array}."""
    import torch

    from .spec import output_items
    from .tree import call_model, tree_from_leaves

    model = model.eval()
    single = not isinstance(x, dict)
    feeds = {"x": x} if single else x
    n = len(next(iter(feeds.values())))
    parts: list[dict] = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            leaves = [torch.from_numpy(np.ascontiguousarray(v[i:i + batch_size])) for v in feeds.values()]
            tree = leaves[0] if single else (tree_from_leaves(spec.structure, leaves) if spec else tuple(leaves))
            out = call_model(model, tree)
            parts.append({k: v.detach().float().numpy() for k, v in output_items(out)})
    if not parts:
        return np.zeros((0,), np.float32) if single else {}
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if spec is not None and spec.output_names:
        res = {k: res[k] for k in spec.output_names}
    return next(iter(res.values())) if single else res


def run_target(target, runner, x, batch_size: int = 64):
    """`target.run` in chunks of `batch_size`. {name: array} in -> {name: array}; one array in (an artifact with
    one input) -> its first output."""
    single = not isinstance(x, dict)
    feeds = {target.signature(runner).input_names[0]: x} if single else x
    n = len(next(iter(feeds.values())))
    parts = [target.run(runner, {k: v[i:i + batch_size] for k, v in feeds.items()}) for i in range(0, n, batch_size)]
    if not parts:
        parts = [target.run(runner, {k: v[:0] for k, v in feeds.items()})]
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.asarray(next(iter(res.values())), np.float32) if single else res


# --- the spec the artifact is exported with ----------------------------------------------------------------------
def resolve_spec(model, input_spec, named_like: Any, preprocessing: dict | None = None):
    """The given InputSpec (or one inferred from the samples and the model's outputs on them), with the deployer's
    preprocessing."""
    import torch

    from .spec import InputSpec, infer_spec
    from .tree import call_model

    example = as_tree(named_like)
    if isinstance(input_spec, dict):
        input_spec = InputSpec.from_dict(input_spec)
    two = _head(example, 2)
    if input_spec is None or not input_spec.outputs:
        with torch.no_grad():
            out = call_model(model.eval(), two if input_spec is None else
                             input_spec.unflatten(input_spec.flatten(two)))
        inferred = infer_spec(two, out)
        spec = inferred if input_spec is None else InputSpec(input_spec.inputs, inferred.outputs,
                                                             input_spec.structure, input_spec.preprocessing)
    else:
        spec = input_spec
    return spec.with_preprocessing(**preprocessing) if preprocessing else spec


def _head(tree, n: int):
    from .tree import tree_index

    return tree_index(tree, slice(0, n))


def fix_axes(spec, samples: list[dict], tgt) -> tuple[Any, list[str]]:
    """Fix each named axis (other than batch) the target keeps static, to its largest size in the samples."""
    from .spec import sizes_of

    sizes: dict[str, int] = {}
    for named in samples:
        for a, n in sizes_of(spec, named).items():
            sizes[a] = max(n, sizes.get(a, 0))
    fixed = {a: n for a, n in sizes.items() if a != "batch" and a not in tgt.spec.dynamic_axes}
    if not fixed:
        return spec, []
    notes = [f"{tgt.name} artifacts keep no dynamic {a!r} axis here: exported with the fixed size {a}={n} (from the "
             f"samples); inputs must be padded or truncated to {n}" for a, n in fixed.items()]
    for note in notes:
        log.info(note)
    return spec.fixed(**fixed), notes


def fit_to_spec(spec, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pad each input's fixed sequence axis (axis 1 of an integer input or of a fixed-length input) to the spec's
    length with zeros (padding id 0, mask 0); a longer one is refused with the fix."""
    out = {}
    for t in spec.inputs:
        x = named[t.name]
        want = t.shape[1] if len(t.shape) > 1 else None
        if isinstance(want, int) and x.ndim > 1 and x.shape[1] < want and t.is_integer:
            pad = [(0, 0)] * x.ndim
            pad[1] = (0, want - x.shape[1])
            x = np.pad(x, pad)  # (N, want, ...): the mask marks the padding as not real
        out[t.name] = x
    return out


def export(model, target: str, precision: str = "fp32", *, out: str | Path | None = None,
           calibration: Any = None, verify_data: tuple[Any, np.ndarray | None] | None = None,
           example_inputs: tuple | None = None, input_spec: Any = None, task: Any = None,
           preprocessing: dict | None = None, thresholds: dict | None = None, raise_on_failure: bool = True,
           student_sha256: str | None = None, recorded_accuracy: float | None = None, overwrite: bool = False,
           **options: Any) -> Artifact:
    """Quantize, convert, verify and inspect `model` for `target` at `precision`.

    model:         a torch.nn.Module; called the way the samples say (`model(x)`, `model(*t)`, `model(**d)`).
    calibration:   real samples, (N, ...) for a one-input model, or a tuple / dict of (N, ...) arrays or tensors
                   (needed by precisions with `needs_calibration`); integer inputs keep their dtype.
    verify_data:   (samples, labels) held-out real samples in the same form; labels (N,) or None.
    example_inputs: tuple of tensors for tracing; default: the first calibration or verification sample.
    input_spec:    the model's InputSpec (or its dict); default: inferred from the samples and the model's outputs.
    task:          what the outputs mean, for verification (a Task, its name, or {"name": ..., ...}); default:
                   classification for one (N, C) output, SQNR/allclose only otherwise. See ondevice.verify.
    preprocessing: what a deployer must do to raw data (mean/std, tokenizer, max length): written into the
                   artifact's own metadata and its record.
    thresholds:    overrides of the precision's default pass criteria (rtol, atol, min_sqnr_db, min_top1_agreement,
                   min_cosine, min_nn_agreement, max_kl).
    raise_on_failure: False returns the Artifact with status "failed" / "error" (and the error in its record)
                   when conversion or verification fails, instead of raising. Arguments that cannot work (samples
                   that do not match the model's inputs, unknown options, a missing SDK, a refused output path)
                   raise either way: they are the caller's to fix before anything is converted.
    student_sha256: sha256 of the weights file `model` was loaded from (recorded in the artifact's record).
    recorded_accuracy: the model's recorded test accuracy (results.json); the artifact's accuracy on the labelled
                   verification samples must then reach it within the precision's budget.
    overwrite:     replace an existing file at `out` that ondevice did not write (no record beside it).
    options:       target options, e.g. nhwc=True for tflite, deployment_target="iOS18" for coreml.
    """
    tgt = get_target(target)
    prec = tgt.precision(precision)
    _check_options(tgt, prec, options, calibration)
    job = _prepare_job(model, tgt, calibration, verify_data, example_inputs, input_spec, preprocessing)
    out = Path(out) if out is not None else Path(f"{type(model).__name__}_{target}_{precision}{tgt.spec.suffix}")
    if not str(out).endswith(tgt.spec.suffix):
        out = out.with_name(out.name + tgt.spec.suffix)
    _check_overwrite(out, overwrite)
    art = Artifact(target=target, precision=precision, path=str(out), status="error", options=dict(options),
                   machine=machine_record(), student_sha256=student_sha256, input_spec=job.spec.to_dict())
    if job.notes:
        art.options["notes"] = job.notes
    try:
        _convert(tgt, prec, job, out, art, options)
        _judge(tgt, prec, job, out, art, task, thresholds, recorded_accuracy)
    except (InputMismatchError, ImportError, OutputDirError):
        raise
    except OndeviceError as e:
        art.error = str(e)
        art.write_record()
        if raise_on_failure:
            raise
        return art
    except Exception as e:  # conversion/runtime failure: name the target and precision, keep the traceback
        art.error = (f"{type(e).__name__} while exporting to {target} at {precision}: {e}\n"
                     f"This is a fault of the {target} converter or runtime on this model, not of your inputs: try "
                     f"another precision ({', '.join(tgt.spec.precisions)}) or another target.")
        art.options["traceback"] = traceback.format_exc(limit=8)
        art.write_record()
        if raise_on_failure:
            raise ConversionError(art.error) from e
        return art
    art.write_record()
    if art.status in ("failed", "degenerate reference"):
        log.error(art.error)
        if raise_on_failure:
            raise VerificationError(art.error)
    return art


@dataclass
class _Job:
    """Everything an export needs besides the target: the flat model, its spec and the named samples."""

    model: Any  # the user's model behind a flat forward (ondevice.flatmodel)
    spec: Any  # InputSpec
    example: tuple
    calibration: dict | None
    verify: dict | None
    labels: np.ndarray | None
    notes: list[str]


def _prepare_job(model, tgt, calibration, verify_data, example_inputs, input_spec, preprocessing) -> _Job:
    from .flatmodel import flat_model

    model = cpu_copy(model).eval()
    samples = calibration if calibration is not None and _n(calibration) else (
        verify_data[0] if verify_data else None)
    if samples is None and example_inputs is None:
        raise ValueError("pass example_inputs=(tensor,), calibration= or verify_data= so the model can be traced")
    like = samples if samples is not None else (example_inputs[0] if len(example_inputs) == 1 else
                                                tuple(example_inputs))
    spec = resolve_spec(model, input_spec, like, preprocessing)

    def named(tree):
        return None if tree is None or not _n(tree) else named_arrays(spec, tree)

    cal, ver = named(calibration), named(verify_data[0] if verify_data else None)
    spec, notes = fix_axes(spec, [a for a in (cal, ver) if a is not None], tgt)
    from .target import IOTensor, Signature, check_feeds

    sig = Signature(tuple(IOTensor(t.name, t.dtype, t.shape) for t in spec.inputs), ())
    cal, ver = [None if a is None else check_feeds(sig, fit_to_spec(spec, a), where=f"{which} samples")
                for which, a in (("calibration", cal), ("verification", ver))]
    if example_inputs is None:
        example_inputs = _example(cal if cal is not None else ver)
    labels = None if not verify_data or verify_data[1] is None else np.asarray(verify_data[1])
    return _Job(flat_model(model, spec), spec, tuple(example_inputs), cal, ver, labels, notes)


def _n(tree) -> int:
    from .tree import tree_len

    if isinstance(tree, np.ndarray):
        return len(tree)
    return tree_len(as_tree(tree))


def _check_options(tgt, prec, options: dict, calibration) -> None:
    unknown = set(options) - set(tgt.spec.options)
    if unknown:
        raise ValueError(f"target {tgt.name!r} has no option(s) {sorted(unknown)}; its options: "
                         f"{', '.join(f'{k} ({v})' for k, v in tgt.spec.options.items()) or '(none)'}")
    if prec.needs_calibration and (calibration is None or _n(calibration) == 0):
        raise ValueError(f"precision {prec.name!r} needs calibration samples: pass calibration= real samples from "
                         f"your dataset (e.g. 256 training samples), not random tensors")


def _check_overwrite(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file at `out` that ondevice did not write (no readable artifact record beside it)."""
    if overwrite or not out.exists():
        return
    try:
        rec = sidecar.read(out)
    except SidecarError:
        rec = None
    from .outdir import owner_of

    owner = owner_of(out)
    owned = owner is not None and out.relative_to(owner.path).as_posix() in owner.files()
    if rec is None and not owned:
        raise OutputDirError(f"{out} already exists and ondevice did not write it (no valid {out.name}.json record "
                             f"beside it); choose another output path, or pass overwrite=True (--force) to replace it")


def _convert(tgt, prec, job: _Job, out: Path, art: Artifact, options: dict) -> None:
    """quantize -> export (atomically) -> hash, size, inspect; fills `art`."""
    t0 = time.perf_counter()
    prepared = tgt.quantize(job.model, prec, job.example, job.calibration, spec=job.spec, **options)
    t1 = time.perf_counter()
    with atomic_path(out) as tmp:
        tgt.export(prepared, prec, job.example, tmp, calibration=job.calibration, spec=job.spec, **options)
    art.seconds = {"quantize": t1 - t0, "export": time.perf_counter() - t1}
    art.sha256, _, art.hash_method = sidecar.digest(out)
    art.size_bytes = tgt.size(out)
    info = tgt.inspect(out)
    art.inspect = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    art.runtime_memory = tgt.runtime_memory(out)
    art.precision_check = precision_check(prec, art.inspect)


def _judge(tgt, prec, job: _Job, out: Path, art: Artifact, task, thresholds: dict | None,
           recorded_accuracy: float | None) -> None:
    """Run the artifact in its runtime on the held-out samples and set its status (and error) in `art`."""
    pc_failure = (art.precision_check or {}).get("failure")
    if job.verify is None:
        art.status = "failed" if pc_failure else "unverified"
        art.error = pc_failure
        return
    t0 = time.perf_counter()
    art.verify_data_sha256 = sidecar.array_digest(*job.verify.values(), job.labels)
    actual = run_target(tgt, tgt.load(out, job.spec), job.verify)
    reference = torch_outputs(job.model, job.verify, spec=None)
    reference = dict(zip(job.spec.output_names, reference.values())) if job.spec.output_names else reference
    th = thresholds_for(prec, thresholds)
    cmp = compare(reference, actual, job.labels, th, task=task, inputs=job.verify)
    check_recorded_accuracy(cmp, recorded_accuracy, th)
    if pc_failure:
        cmp.failures.append(pc_failure)
    art.verification = cmp.to_dict()
    art.seconds["verify"] = time.perf_counter() - t0
    art.status = "degenerate reference" if cmp.degenerate else ("verified" if cmp.passed else "failed")
    if not cmp.passed:
        art.error = (f"{art.status if cmp.degenerate else 'verification failed'} for {art.target}/{art.precision}: "
                     f"{'; '.join(cmp.failures)} [{cmp.summary()}]")


def export_many(model, jobs: list[tuple[str, list[str], dict]], *, out_dir: str | Path, calibration: Any,
                verify_data: tuple[Any, np.ndarray | None], stem: str = "model",
                thresholds: dict[str, dict] | None = None, on_result=None, **provenance: Any) -> list[Artifact]:
    """Export `model` for every (target, precisions, options) job into out_dir/<target>/<stem>_<precision><suffix>.

    One target or precision failing (missing SDK, conversion error, failed verification) is recorded in its
    Artifact (status "error"/"failed" with the message) and the others continue. `provenance`: student_sha256,
    recorded_accuracy, overwrite, input_spec, task and preprocessing, passed on to `export`.
    """
    from .progress import Ticker
    from .target import get_spec

    out_dir = Path(out_dir)
    results: list[Artifact] = []
    ticker = Ticker(sum(len(p) for _, p, _ in jobs), "export")
    for target, precisions, options in jobs:
        for precision in precisions:
            try:
                suffix = get_spec(target).suffix
                path = out_dir / target / f"{stem}_{precision}{suffix}"
            except KeyError as e:  # unknown target: the message lists the valid ones
                results.append(Artifact(target, precision, "", "error", error=str(e)))
                ticker.tick(f"{target}/{precision} error")
                if on_result:
                    on_result(results[-1])
                continue
            try:
                art = export(model, target, precision, out=path, calibration=calibration, verify_data=verify_data,
                             thresholds=(thresholds or {}).get(precision), raise_on_failure=False, **provenance,
                             **options)
            except OutputDirError:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, the other targets go on
                art = Artifact(target, precision, str(path), "error", error=f"{type(e).__name__}: {e}",
                               options=dict(options), student_sha256=provenance.get("student_sha256"))
                art.write_record()
            results.append(art)
            ticker.tick(f"{target}/{precision} {art.status}")
            if on_result:
                on_result(art)
    return results
