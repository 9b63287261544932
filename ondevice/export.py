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
from .errors import ConversionError, OndeviceError, OutputDirError, SidecarError, VerificationError
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


def torch_outputs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run the eager PyTorch model on a float32 batch (in chunks) and return float32 NumPy outputs."""
    import torch

    model = model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            y = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)))
            outs.append(y.detach().float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def run_target(target, runner, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    outs = [np.asarray(target.run(runner, x[i:i + batch_size]), dtype=np.float32) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def export(model, target: str, precision: str = "fp32", *, out: str | Path | None = None,
           calibration: np.ndarray | None = None, verify_data: tuple[np.ndarray, np.ndarray | None] | None = None,
           example_inputs: tuple | None = None, thresholds: dict | None = None, raise_on_failure: bool = True,
           student_sha256: str | None = None, recorded_accuracy: float | None = None, overwrite: bool = False,
           **options: Any) -> Artifact:
    """Quantize, convert, verify and inspect `model` for `target` at `precision`.

    model:         a torch.nn.Module in eval mode, taking one float32 tensor.
    calibration:   (N, ...) float32 real samples (needed by precisions with `needs_calibration`).
    verify_data:   (x, labels) held-out real samples; x is (N, ...) float32, labels (N,) or None.
    example_inputs: tuple of tensors for tracing; default: the first calibration or verification sample.
    thresholds:    overrides of the precision's default pass criteria (rtol, atol, min_sqnr_db, min_top1_agreement).
    student_sha256: sha256 of the weights file `model` was loaded from (recorded in the artifact's record).
    recorded_accuracy: the model's recorded test accuracy (results.json); the artifact's accuracy on the labelled
                   verification samples must then reach it within the precision's budget.
    overwrite:     replace an existing file at `out` that ondevice did not write (no record beside it).
    options:       target options, e.g. nhwc=True for tflite, deployment_target="iOS18" for coreml.
    """
    tgt = get_target(target)
    prec = tgt.precision(precision)
    _check_options(tgt, prec, options, calibration)
    example_inputs = _example_inputs(example_inputs, calibration, verify_data)
    out = Path(out) if out is not None else Path(f"{type(model).__name__}_{target}_{precision}{tgt.spec.suffix}")
    if not str(out).endswith(tgt.spec.suffix):
        out = out.with_name(out.name + tgt.spec.suffix)
    _check_overwrite(out, overwrite)
    model = cpu_copy(model).eval()
    art = Artifact(target=target, precision=precision, path=str(out), status="error", options=dict(options),
                   machine=machine_record(), student_sha256=student_sha256)
    try:
        _convert(tgt, prec, model, example_inputs, calibration, out, art, options)
        _judge(tgt, prec, model, out, art, verify_data, thresholds, recorded_accuracy)
    except OndeviceError as e:
        art.error = str(e)
        art.write_record()
        raise
    except ImportError:
        raise
    except Exception as e:  # conversion/runtime failure: name the target and precision, keep the traceback
        art.error = (f"{type(e).__name__} while exporting to {target} at {precision}: {e}\n"
                     f"Try another precision ({', '.join(tgt.spec.precisions)}) or another target.")
        art.options["traceback"] = traceback.format_exc(limit=8)
        art.write_record()
        raise ConversionError(art.error) from e
    art.write_record()
    if art.status in ("failed", "degenerate reference"):
        log.error(art.error)
        if raise_on_failure:
            raise VerificationError(art.error)
    return art


def _check_options(tgt, prec, options: dict, calibration) -> None:
    unknown = set(options) - set(tgt.spec.options)
    if unknown:
        raise ValueError(f"target {tgt.name!r} has no option(s) {sorted(unknown)}; its options: "
                         f"{', '.join(f'{k} ({v})' for k, v in tgt.spec.options.items()) or '(none)'}")
    if prec.needs_calibration and (calibration is None or len(calibration) == 0):
        raise ValueError(f"precision {prec.name!r} needs calibration samples: pass calibration= real samples from "
                         f"your dataset (e.g. 256 training images), not random tensors")


def _example_inputs(example_inputs, calibration, verify_data) -> tuple:
    import torch

    if example_inputs is not None:
        return example_inputs
    src = calibration if calibration is not None and len(calibration) else (verify_data[0] if verify_data else None)
    if src is None:
        raise ValueError("pass example_inputs=(tensor,), calibration= or verify_data= so the model can be traced")
    return (torch.from_numpy(np.array(src[:1], dtype=np.float32)),)  # a fresh copy: no 0-strides


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


def _convert(tgt, prec, model, example_inputs, calibration, out: Path, art: Artifact, options: dict) -> None:
    """quantize -> export (atomically) -> hash, size, inspect; fills `art`."""
    t0 = time.perf_counter()
    prepared = tgt.quantize(model, prec, example_inputs, calibration, **options)
    t1 = time.perf_counter()
    with atomic_path(out) as tmp:
        tgt.export(prepared, prec, example_inputs, tmp, calibration=calibration, **options)
    art.seconds = {"quantize": t1 - t0, "export": time.perf_counter() - t1}
    art.sha256, _, art.hash_method = sidecar.digest(out)
    art.size_bytes = tgt.size(out)
    art.inspect = tgt.inspect(out)
    art.runtime_memory = tgt.runtime_memory(out)
    art.precision_check = precision_check(prec, art.inspect)


def _judge(tgt, prec, model, out: Path, art: Artifact, verify_data, thresholds: dict | None,
           recorded_accuracy: float | None) -> None:
    """Run the artifact in its runtime on the held-out samples and set its status (and error) in `art`."""
    pc_failure = (art.precision_check or {}).get("failure")
    if verify_data is None:
        art.status = "failed" if pc_failure else "unverified"
        art.error = pc_failure
        return
    t0 = time.perf_counter()
    x, y = verify_data
    x = np.asarray(x, np.float32)
    art.verify_data_sha256 = sidecar.array_digest(x, None if y is None else np.asarray(y))
    actual = run_target(tgt, tgt.load(out), x)
    th = thresholds_for(prec, thresholds)
    cmp = compare(torch_outputs(model, x), actual, y, th)
    check_recorded_accuracy(cmp, recorded_accuracy, th)
    if pc_failure:
        cmp.failures.append(pc_failure)
    art.verification = cmp.to_dict()
    art.seconds["verify"] = time.perf_counter() - t0
    art.status = "degenerate reference" if cmp.degenerate else ("verified" if cmp.passed else "failed")
    if not cmp.passed:
        art.error = (f"{art.status if cmp.degenerate else 'verification failed'} for {art.target}/{art.precision}: "
                     f"{'; '.join(cmp.failures)} [{cmp.summary()}]")


def export_many(model, jobs: list[tuple[str, list[str], dict]], *, out_dir: str | Path, calibration: np.ndarray,
                verify_data: tuple[np.ndarray, np.ndarray | None], stem: str = "model",
                thresholds: dict[str, dict] | None = None, on_result=None, **provenance: Any) -> list[Artifact]:
    """Export `model` for every (target, precisions, options) job into out_dir/<target>/<stem>_<precision><suffix>.

    One target or precision failing (missing SDK, conversion error, failed verification) is recorded in its
    Artifact (status "error"/"failed" with the message) and the others continue. `provenance`: student_sha256,
    recorded_accuracy and overwrite, passed on to `export`.
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
