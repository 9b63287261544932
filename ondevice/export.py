"""`ondevice.export(model, target=..., precision=...)`: one verb for every backend and precision.

quantize (torch-level) -> export (convert, post-conversion quantization) -> load in the real runtime -> run
held-out real samples -> compare with the PyTorch model -> inspect. The artifact and an `<artifact>.json`
record (status, statistics, size, ops) are written atomically; a failed verification is never silently kept.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError, OndeviceError, VerificationError
from .io import atomic_path, atomic_write_json, machine_record, read_json
from .target import get_target
from .verify import compare, thresholds_for

log = logging.getLogger("ondevice.export")


@dataclass
class Artifact:
    target: str
    precision: str
    path: str
    status: str  # "verified" | "failed" (verification) | "error" (conversion or runtime)
    size_bytes: int | None = None
    verification: dict | None = None
    inspect: dict | None = None
    runtime_memory: dict | None = None
    error: str | None = None
    options: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    machine: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, path: str | Path) -> "Artifact":
        return cls(**read_json(path))

    def record_path(self) -> Path:
        return Path(str(self.path) + ".json")


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
           **options: Any) -> Artifact:
    """Quantize, convert, verify and inspect `model` for `target` at `precision`.

    model:         a torch.nn.Module in eval mode, taking one float32 tensor.
    calibration:   (N, ...) float32 real samples (needed by precisions with `needs_calibration`).
    verify_data:   (x, labels) held-out real samples; x is (N, ...) float32, labels (N,) or None.
    example_inputs: tuple of tensors for tracing; default: the first calibration or verification sample.
    thresholds:    overrides of the precision's default pass criteria (rtol, atol, min_sqnr_db, min_top1_agreement).
    options:       target options, e.g. nhwc=True for tflite, deployment_target="iOS18" for coreml.
    """
    import torch

    tgt = get_target(target)
    prec = tgt.precision(precision)
    unknown = set(options) - set(tgt.spec.options)
    if unknown:
        raise ValueError(f"target {target!r} has no option(s) {sorted(unknown)}; its options: "
                         f"{', '.join(f'{k} ({v})' for k, v in tgt.spec.options.items()) or '(none)'}")
    if prec.needs_calibration and (calibration is None or len(calibration) == 0):
        raise ValueError(f"precision {precision!r} needs calibration samples: pass calibration= real samples from "
                         f"your dataset (e.g. 256 training images), not random tensors")
    if example_inputs is None:
        src = calibration if calibration is not None and len(calibration) else (verify_data[0] if verify_data else None)
        if src is None:
            raise ValueError("pass example_inputs=(tensor,), calibration= or verify_data= so the model can be traced")
        example_inputs = (torch.from_numpy(np.array(src[:1], dtype=np.float32)),)  # a fresh copy: no 0-strides
    out = Path(out) if out is not None else Path(f"{type(model).__name__}_{target}_{precision}{tgt.spec.suffix}")
    if not str(out).endswith(tgt.spec.suffix):
        out = out.with_name(out.name + tgt.spec.suffix)
    model = cpu_copy(model).eval()
    art = Artifact(target=target, precision=precision, path=str(out), status="error", options=dict(options),
                   machine=machine_record())
    try:
        t0 = time.perf_counter()
        prepared = tgt.quantize(model, prec, example_inputs, calibration, **options)
        t1 = time.perf_counter()
        with atomic_path(out) as tmp:
            tgt.export(prepared, prec, example_inputs, tmp, calibration=calibration, **options)
        t2 = time.perf_counter()
        art.seconds = {"quantize": t1 - t0, "export": t2 - t1}
        art.size_bytes = tgt.size(out)
        art.inspect = tgt.inspect(out)
        art.runtime_memory = tgt.runtime_memory(out)
        if verify_data is not None:
            x, y = verify_data
            runner = tgt.load(out)
            actual = run_target(tgt, runner, np.asarray(x, np.float32))
            ref = torch_outputs(model, np.asarray(x, np.float32))
            cmp = compare(ref, actual, y, thresholds_for(prec, thresholds))
            art.verification = cmp.to_dict()
            art.seconds["verify"] = time.perf_counter() - t2
            art.status = "verified" if cmp.passed else "failed"
            if not cmp.passed:
                art.error = f"verification failed for {target}/{precision}: {'; '.join(cmp.failures)} [{cmp.summary()}]"
        else:
            art.status = "unverified"
    except OndeviceError as e:
        art.error = str(e)
        atomic_write_json(art.record_path(), art.to_dict())
        raise
    except ImportError:
        raise
    except Exception as e:  # conversion/runtime failure: name the target and precision, keep the traceback
        art.error = (f"{type(e).__name__} while exporting to {target} at {precision}: {e}\n"
                     f"Try another precision ({', '.join(tgt.spec.precisions)}) or another target.")
        art.options["traceback"] = traceback.format_exc(limit=8)
        atomic_write_json(art.record_path(), art.to_dict())
        raise ConversionError(art.error) from e
    atomic_write_json(art.record_path(), art.to_dict())
    if art.status == "failed":
        log.error(art.error)
        if raise_on_failure:
            raise VerificationError(art.error)
    return art


def export_many(model, jobs: list[tuple[str, list[str], dict]], *, out_dir: str | Path, calibration: np.ndarray,
                verify_data: tuple[np.ndarray, np.ndarray | None], stem: str = "model",
                thresholds: dict[str, dict] | None = None, on_result=None) -> list[Artifact]:
    """Export `model` for every (target, precisions, options) job into out_dir/<target>/<stem>_<precision><suffix>.

    One target or precision failing (missing SDK, conversion error, failed verification) is recorded in its
    Artifact (status "error"/"failed" with the message) and the others continue.
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
                             thresholds=(thresholds or {}).get(precision), raise_on_failure=False, **options)
            except Exception as e:  # noqa: BLE001 - recorded, the other targets go on
                art = Artifact(target, precision, str(path), "error", error=f"{type(e).__name__}: {e}",
                               options=dict(options))
                atomic_write_json(art.record_path(), art.to_dict())
            results.append(art)
            ticker.tick(f"{target}/{precision} {art.status}")
            if on_result:
                on_result(art)
    return results
