"""Compare an artifact's outputs with the PyTorch model it came from, on held-out real samples.

Every output is judged by numbers that can fail for it: float exports by rtol/atol (numpy.allclose semantics),
quantized ones by SQNR in dB, each output on its own. On top of that the task judges its primary output(s) by what
the output means (`ondevice.tasks`, `Task.verify_criteria`):

================  ===================================================  =======================================
task / output     criteria (thresholds field)                          not used when
================  ===================================================  =======================================
classification    top-1 agreement (min_top1_agreement)                 the output has one column (B, 1) or is
                                                                       not (B, C): top-1 there is always 1.0
embedding         mean cosine similarity (min_cosine), nearest-        fewer than 3 samples (no neighbours)
                  neighbour agreement@1 (min_nn_agreement)
token_lm          top-1 next-token agreement over real tokens          the vocabulary axis has one entry
                  (min_next_token_agreement), mean KL(ref || artifact)
                  per token in nats (max_kl)
multi_output      each head by its own task
any other output  SQNR / allclose only (state tensors, hidden states)
================  ===================================================  =======================================

Default floors per precision are in `ondevice.precision` (fp32 / fp16 / int8 / 4-bit / pruned); a recipe's
`export.thresholds` overrides them. A failure carries every statistic so the message shows how far off it is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .precision import Precision, Thresholds

PRIMARY = "output"  # the name of a single-output model's output (ondevice.spec.output_items)


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
class Criterion:
    """One task criterion on one output: `value` against the thresholds field `floor` (a minimum, or a maximum
    when `higher_is_better` is False)."""

    name: str
    output: str
    value: float
    floor: str  # Thresholds field name
    higher_is_better: bool = True

    def failure(self, th: Thresholds) -> str | None:
        limit = getattr(th, self.floor, None)
        if limit is None:
            return None
        bad = math.isnan(self.value) or (self.value < limit if self.higher_is_better else self.value > limit)
        if not bad:
            return None
        what = f"{self.name} of {self.output!r}" if self.output != PRIMARY else self.name
        return f"{what} {self.value:.4f} {'<' if self.higher_is_better else '>'} {limit:g}"


@dataclass
class Comparison:
    n: int
    sqnr_db: float  # the lowest over the outputs
    max_abs_err: float
    mean_abs_err: float
    top1_agreement: float | None  # classification outputs only (None where top-1 cannot fail)
    accuracy: float | None  # task accuracy of the artifact when labels are given
    reference_accuracy: float | None
    allclose: bool | None  # only computed when rtol/atol are set
    thresholds: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    reference_std: float | None = None  # largest per-output std of the reference across the samples
    degenerate: bool = False  # the reference's outputs do not depend on its input: nothing can be verified
    task: str | None = None
    criteria: dict[str, float] = field(default_factory=dict)  # "<criterion>" or "<output>.<criterion>" -> value
    outputs: dict[str, dict] = field(default_factory=dict)  # per output: sqnr_db, max/mean_abs_err, shape
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        acc = "" if self.accuracy is None else f", accuracy {self.accuracy:.4f} (reference {self.reference_accuracy:.4f})"
        crit = "".join(f", {k} {v:.4f}" for k, v in self.criteria.items() if k != "top1_agreement")
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.4f}"
        return (f"n={self.n}, SQNR {self.sqnr_db:.1f} dB, max|err| {self.max_abs_err:.3g}, mean|err| "
                f"{self.mean_abs_err:.3g}{top1}{crit}{acc}")


def _named(x: Any) -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        return {k: np.asarray(v, dtype=np.float64) for k, v in x.items()}
    return {PRIMARY: np.asarray(x, dtype=np.float64)}


def _stats(ref: np.ndarray, act: np.ndarray) -> dict:
    err = np.abs(ref - act)
    return {"shape": list(ref.shape), "sqnr_db": sqnr_db(ref, act), "max_abs_err": float(err.max()) if err.size else 0.0,
            "mean_abs_err": float(err.mean()) if err.size else 0.0}


def compare(reference: Any, actual: Any, labels: np.ndarray | None = None, thresholds: Thresholds | None = None,
            *, task: Any = None, inputs: dict | None = None) -> Comparison:
    """reference, actual: the source model's and the artifact's outputs on the same N samples, as {name: (N, ...)}
    (or one array for a single output). `task` (a Task or its name; default: classification for a single (N, C)
    output, SQNR only otherwise) picks the criteria; `inputs` gives the padding mask for sequence outputs."""
    ref, act = _named(reference), _named(actual)
    if set(ref) != set(act) or any(ref[k].shape != act[k].shape for k in ref):
        raise ValueError("output shapes differ: reference " + str({k: v.shape for k, v in ref.items()}) +
                         ", artifact " + str({k: v.shape for k, v in act.items()}))
    th = asdict(thresholds) if thresholds else {}
    n = len(next(iter(ref.values()))) if ref else 0
    bad = sum(int(np.sum(~np.isfinite(v))) for v in act.values())
    if bad:
        return Comparison(n, -math.inf, math.inf, math.inf, None, None, None, False, th,
                          [f"artifact produced {bad} non-finite values"])
    per = {k: _stats(ref[k], act[k]) for k in ref}
    task_obj = _task(task, ref)
    c = Comparison(n=n, sqnr_db=min(s["sqnr_db"] for s in per.values()),
                   max_abs_err=max(s["max_abs_err"] for s in per.values()),
                   mean_abs_err=float(np.mean([s["mean_abs_err"] for s in per.values()])), top1_agreement=None,
                   accuracy=None, reference_accuracy=None, allclose=None, thresholds=th, outputs=per,
                   task=task_obj.name if task_obj is not None else None)
    crits = task_obj.verify_criteria(ref, act, inputs) if task_obj is not None else []
    for cr in crits:
        key = cr.name if cr.output == PRIMARY or len(ref) == 1 else f"{cr.output}.{cr.name}"
        c.criteria[key] = cr.value
    c.top1_agreement = next((cr.value for cr in crits if cr.name == "top1_agreement"), None)
    _accuracy(c, task_obj, ref, act, labels)
    _degenerate(c, ref, task_obj)
    if task_obj is not None:
        c.notes.extend(task_obj.verify_notes(ref))
    if thresholds is not None:
        _judge(c, ref, act, thresholds, crits)
    return c


def _task(task: Any, ref: dict):
    from .tasks import Task, build_task, default_task

    if isinstance(task, Task):
        return task
    if task is None:
        return default_task(ref)
    return build_task(task) if isinstance(task, str) else build_task(task["name"], {k: v for k, v in task.items()
                                                                                   if k != "name"})


def _accuracy(c: Comparison, task, ref: dict, act: dict, labels) -> None:
    """Accuracy on the labels for a classification output of (N, C >= 2)."""
    if labels is None or task is None or task.name != "classification":
        return
    out = task.primary_output(ref)
    if out is None or ref[out].ndim != 2 or ref[out].shape[1] < 2:
        return
    y = np.asarray(labels).ravel()
    c.accuracy = float(np.mean(act[out].argmax(1) == y))
    c.reference_accuracy = float(np.mean(ref[out].argmax(1) == y))


def _degenerate(c: Comparison, ref: dict, task) -> None:
    out = (task.primary_output(ref) if task is not None else None) or next(iter(ref))
    r = ref[out]
    spread = reference_spread(r)
    c.reference_std = spread
    c.degenerate = spread is not None and spread <= DEGENERATE_STD * max(1.0, float(np.max(np.abs(r))))
    if c.degenerate:
        c.failures.append(f"degenerate reference: the PyTorch model's outputs are (nearly) the same for every sample "
                          f"(largest std across samples {spread:.3g}), so agreement with it proves nothing. Are the "
                          f"weights trained and loaded?")


def _judge(c: Comparison, ref: dict, act: dict, t: Thresholds, crits: list[Criterion]) -> None:
    if t.rtol is not None or t.atol is not None:
        rtol, atol = t.rtol or 0.0, t.atol or 0.0
        c.allclose = all(bool(np.allclose(act[k], ref[k], rtol=rtol, atol=atol)) for k in ref)
        for k in ref:
            if not np.allclose(act[k], ref[k], rtol=rtol, atol=atol):
                err = np.abs(ref[k] - act[k])
                worst = float(np.max(err - rtol * np.abs(ref[k])))
                name = "outputs" if len(ref) == 1 else f"output {k!r}"
                c.failures.append(f"{name} not within rtol={rtol:g}, atol={atol:g} (max|err| {float(err.max()):.3g}, "
                                  f"worst excess over rtol*|ref| {worst:.3g})")
    if t.min_sqnr_db is not None:
        for k, s in c.outputs.items():
            if s["sqnr_db"] < t.min_sqnr_db:
                name = "SQNR" if len(ref) == 1 else f"SQNR of {k!r}"
                c.failures.append(f"{name} {s['sqnr_db']:.2f} dB < {t.min_sqnr_db:g} dB")
    for cr in crits:
        f = cr.failure(t)
        if f:
            c.failures.append(f)


def thresholds_for(precision: Precision, overrides: dict | None = None) -> Thresholds:
    return precision.thresholds.override(**(overrides or {}))


DEGENERATE_STD = 1e-6  # relative to max(1, max|reference|)


def reference_spread(ref: np.ndarray) -> float | None:
    """Largest standard deviation across samples of any reference output (None with fewer than 2 samples)."""
    if len(ref) < 2 or ref.size == 0:
        return None
    return float(np.max(np.std(ref.reshape(len(ref), -1), axis=0)))


# --- criteria on NumPy outputs (used by the tasks) -------------------------------------------------------------
def top1_agreement(ref: np.ndarray, act: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Share of positions whose arg-max over the last axis agrees; `keep` (same leading shape) selects positions."""
    a, b = ref.argmax(-1), act.argmax(-1)
    same = a == b
    return float(same[keep].mean()) if keep is not None and keep.any() else float(same.mean())


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def mean_kl(ref: np.ndarray, act: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(act)) over the last axis, in nats."""
    lp, lq = log_softmax(ref), log_softmax(act)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return float(kl[keep].mean()) if keep is not None and keep.any() else float(kl.mean())


def cosine_mean(ref: np.ndarray, act: np.ndarray) -> float:
    r = ref.reshape(len(ref), -1)
    a = act.reshape(len(act), -1)
    num = (r * a).sum(1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def accuracy_floor(recorded: float, n: int, thresholds: Thresholds) -> float:
    """Lowest accuracy an artifact may show on n labelled samples when its source model's recorded test accuracy is
    `recorded`: the precision's disagreement budget plus 3 binomial standard errors for the sample."""
    budget = 1.0 - (thresholds.min_top1_agreement if thresholds.min_top1_agreement is not None else 0.98)
    return recorded - budget - 3.0 * math.sqrt(max(recorded * (1 - recorded), 1e-4) / max(n, 1))


def check_recorded_accuracy(c: Comparison, recorded: float | None, thresholds: Thresholds) -> None:
    """Judge the artifact by its task accuracy against its source model's recorded test accuracy (results.json: the
    student's, or the teacher's for a teacher export)."""
    if recorded is None or c.accuracy is None:
        return
    floor = accuracy_floor(recorded, c.n, thresholds)
    c.thresholds["recorded_accuracy"] = recorded
    c.thresholds["accuracy_floor"] = floor
    if c.accuracy < floor:
        c.failures.append(f"accuracy {c.accuracy:.4f} on {c.n} labelled held-out samples is below {floor:.4f}, the "
                          f"floor derived from the source model's recorded test accuracy {recorded:.4f}")


# --- is the artifact stored at the precision asked for? ------------------------------------------------------------
_STORAGE = {"float16": ("float16",), "int8": ("int8", "uint8"), "int4": ("int4", "uint4")}
_COMPRESSION = {"lut4": "lut", "sparse": "sparse"}  # Core ML constexpr op name fragments
_BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4, "uint4": 4}


def weight_bytes(inspect: dict) -> dict[str, int]:
    """dtype -> stored weight bytes from a target's inspection record (Inspection.to_dict: always bytes)."""
    raw = inspect.get("weight_bytes")
    if not isinstance(raw, dict):
        return {}
    return {str(k).lower(): int(v) for k, v in raw.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
        ops = (inspect or {}).get("ops") or {}
        applied = any(_COMPRESSION[kind] in str(op) for op in ops)
        evidence = f"compression ops {sorted(op for op in ops if 'constexpr' in str(op)) or 'none'}"
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
