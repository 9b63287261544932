"""Compare an artifact's outputs with the PyTorch model it came from, on held-out real samples.

Float exports are judged by rtol/atol (numpy.allclose semantics); quantized exports by SQNR in dB and top-1
agreement. A failure carries every statistic so the message shows how far off the artifact is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .precision import Precision, Thresholds


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 10*log10(sum(ref^2) / sum((ref-actual)^2)) in dB; inf when equal."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(actual, dtype=np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class Comparison:
    n: int
    sqnr_db: float
    max_abs_err: float
    mean_abs_err: float
    top1_agreement: float
    accuracy: float | None  # task accuracy of the artifact when labels are given
    reference_accuracy: float | None
    allclose: bool | None  # only computed when rtol/atol are set
    thresholds: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    reference_std: float | None = None  # largest per-output std of the reference across the samples
    degenerate: bool = False  # the reference's outputs do not depend on its input: nothing can be verified

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        acc = "" if self.accuracy is None else f", accuracy {self.accuracy:.4f} (reference {self.reference_accuracy:.4f})"
        return (f"n={self.n}, SQNR {self.sqnr_db:.1f} dB, max|err| {self.max_abs_err:.3g}, mean|err| "
                f"{self.mean_abs_err:.3g}, top-1 agreement {self.top1_agreement:.4f}{acc}")


def compare(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray | None = None,
            thresholds: Thresholds | None = None) -> Comparison:
    """reference, actual: (N, C) outputs of the source model and of the artifact on the same N samples."""
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    if ref.shape != act.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, artifact {act.shape}")
    if not np.all(np.isfinite(act)):
        bad = int(np.sum(~np.isfinite(act)))
        th = asdict(thresholds) if thresholds else {}
        return Comparison(len(ref), -math.inf, math.inf, math.inf, 0.0, None, None, False, th,
                          [f"artifact produced {bad} non-finite values"])
    err = np.abs(ref - act)
    spread = reference_spread(ref)
    ref_top = ref.reshape(len(ref), -1).argmax(1)
    act_top = act.reshape(len(act), -1).argmax(1)
    c = Comparison(
        n=len(ref),
        sqnr_db=sqnr_db(ref, act),
        max_abs_err=float(err.max()) if err.size else 0.0,
        mean_abs_err=float(err.mean()) if err.size else 0.0,
        top1_agreement=float(np.mean(ref_top == act_top)) if len(ref) else 1.0,
        accuracy=None if labels is None else float(np.mean(act_top == np.asarray(labels))),
        reference_accuracy=None if labels is None else float(np.mean(ref_top == np.asarray(labels))),
        allclose=None,
        thresholds=asdict(thresholds) if thresholds else {},
        reference_std=spread,
        degenerate=spread is not None and spread <= DEGENERATE_STD * max(1.0, float(np.max(np.abs(ref)))),
    )
    if c.degenerate:
        c.failures.append(f"degenerate reference: the PyTorch model's outputs are (nearly) the same for every sample "
                          f"(largest std across samples {spread:.3g}), so agreement with it proves nothing. Are the "
                          f"weights trained and loaded?")
    if thresholds is None:
        return c
    t = thresholds
    if t.rtol is not None or t.atol is not None:
        rtol, atol = t.rtol or 0.0, t.atol or 0.0
        c.allclose = bool(np.allclose(act, ref, rtol=rtol, atol=atol))
        if not c.allclose:
            worst = float(np.max(err - rtol * np.abs(ref)))
            c.failures.append(f"outputs not within rtol={rtol:g}, atol={atol:g} (max|err| {c.max_abs_err:.3g}, "
                              f"worst excess over rtol*|ref| {worst:.3g})")
    if t.min_sqnr_db is not None and c.sqnr_db < t.min_sqnr_db:
        c.failures.append(f"SQNR {c.sqnr_db:.2f} dB < {t.min_sqnr_db:g} dB")
    if t.min_top1_agreement is not None and c.top1_agreement < t.min_top1_agreement:
        c.failures.append(f"top-1 agreement {c.top1_agreement:.4f} < {t.min_top1_agreement:g}")
    return c


def thresholds_for(precision: Precision, overrides: dict | None = None) -> Thresholds:
    return precision.thresholds.override(**(overrides or {}))


DEGENERATE_STD = 1e-6  # relative to max(1, max|reference|)


def reference_spread(ref: np.ndarray) -> float | None:
    """Largest standard deviation across samples of any reference output (None with fewer than 2 samples)."""
    if len(ref) < 2 or ref.size == 0:
        return None
    return float(np.max(np.std(ref.reshape(len(ref), -1), axis=0)))


def accuracy_floor(recorded: float, n: int, thresholds: Thresholds) -> float:
    """Lowest accuracy an artifact may show on n labelled samples when its source model's recorded test accuracy is
    `recorded`: the precision's disagreement budget plus 3 binomial standard errors for the sample."""
    budget = 1.0 - (thresholds.min_top1_agreement if thresholds.min_top1_agreement is not None else 0.98)
    return recorded - budget - 3.0 * math.sqrt(max(recorded * (1 - recorded), 1e-4) / max(n, 1))


def check_recorded_accuracy(c: Comparison, recorded: float | None, thresholds: Thresholds) -> None:
    """Judge the artifact by its task accuracy against the student's recorded test accuracy (results.json)."""
    if recorded is None or c.accuracy is None:
        return
    floor = accuracy_floor(recorded, c.n, thresholds)
    c.thresholds["recorded_accuracy"] = recorded
    c.thresholds["accuracy_floor"] = floor
    if c.accuracy < floor:
        c.failures.append(f"accuracy {c.accuracy:.4f} on {c.n} labelled held-out samples is below {floor:.4f}, the "
                          f"floor derived from the student's recorded test accuracy {recorded:.4f}")


# --- is the artifact stored at the precision asked for? ------------------------------------------------------------
_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "half": "float16"}
_STORAGE = {"float16": ("float16",), "int8": ("int8", "uint8"), "int4": ("int4", "uint4")}
_COMPRESSION = {"lut4": "lut", "sparse": "sparse"}  # Core ML constexpr op name fragments
_BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4, "uint4": 4}


def weight_bytes(inspect: dict) -> dict[str, int]:
    """dtype -> stored weight bytes from a target's inspect() (Core ML reports bytes under weight_dtypes)."""
    raw = inspect.get("weight_bytes")
    if not isinstance(raw, dict):
        raw = inspect.get("weight_dtypes") if inspect.get("compression") is not None else None
    if not isinstance(raw, dict):
        return {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        name = _DTYPE_NAMES.get(str(k).lower(), str(k).lower())
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = out.get(name, 0) + int(v)
    return out


def precision_check(precision: Precision, inspect: dict | None) -> dict:
    """Whether the artifact's weights are stored as `precision` asks, from the target's typed inspection.

    Returns {"asked", "weight_bytes", "share", "passed", "failure"}: `share` is the fraction of weight parameters
    (float and low-bit ones; int32/int64 biases and shape constants aside) stored at the asked precision; `passed`
    is None when the inspection has no weight dtypes to judge by.
    """
    kind = precision.kind
    wb = weight_bytes(inspect or {})
    out: dict = {"asked": kind, "weight_bytes": wb, "share": None, "passed": None, "failure": None}
    if kind == "float32" or not wb:
        out["passed"] = True if kind == "float32" and wb else None
        return out
    params = {k: 8 * v / _BITS[k] for k, v in wb.items() if k in _BITS}
    total = sum(params.values())
    if kind in _COMPRESSION:
        ops = (inspect or {}).get("compression") or {}
        applied = any(_COMPRESSION[kind] in str(op) for op in ops)
        evidence = f"compression ops {sorted(ops) or 'none'}"
    else:
        at = sum(params.get(d, 0.0) for d in _STORAGE[kind])
        out["share"] = at / total if total else None
        applied = at > 0
        evidence = "weights stored as " + ", ".join(f"{k} ({v:,} B)" for k, v in sorted(wb.items()))
    out["passed"] = applied
    if not applied:
        out["failure"] = (f"precision not applied: {precision.name} asks for {kind} weights but the artifact has "
                          f"none ({evidence}); the target left this model's layers in float. Use another precision "
                          f"or target for this model")
    return out
