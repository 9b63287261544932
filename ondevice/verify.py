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
    )
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
