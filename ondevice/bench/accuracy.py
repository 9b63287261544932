"""Accuracy retention: every model's test accuracy, its ratio to the teacher's, its top-1 agreement with the
teacher, and KL(teacher || model) averaged over samples, all on the same test set.

Outputs are treated as logits (or log-probabilities, which log_softmax leaves unchanged). Outputs that are
already probabilities (non-negative rows summing to 1) are detected and logged instead of soft-maxed twice.
"""
from __future__ import annotations

import numpy as np


def _is_probabilities(y: np.ndarray) -> bool:
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def _rows(outputs: np.ndarray) -> np.ndarray:
    """(N, C) as is; (N, T, V) language-model logits as (N*T, V): the class axis is the last one."""
    y = np.asarray(outputs, dtype=np.float64)
    return y.reshape(-1, y.shape[-1]) if y.ndim >= 3 else y.reshape(len(y), -1)


def log_probs(outputs: np.ndarray) -> np.ndarray:
    """(N, C) logits, log-probabilities or probabilities -> (N, C) float64 log-probabilities ((N, T, V): per
    position)."""
    y = _rows(outputs)  # (N, C)
    if _is_probabilities(y):
        return np.log(np.clip(y, 1e-30, None))
    m = y.max(axis=1, keepdims=True)  # (N, 1)
    return y - m - np.log(np.exp(y - m).sum(axis=1, keepdims=True))


def kl_mean(reference: np.ndarray, outputs: np.ndarray) -> float:
    """mean over samples of KL(p_ref || p_model) = sum_c p_ref,c (log p_ref,c - log p_model,c), in nats."""
    lp, lq = log_probs(reference), log_probs(outputs)
    p = np.exp(lp)
    return float(np.mean(np.sum(p * (lp - lq), axis=1)))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy of (N, C) class scores on (N,) labels (None for other output shapes)."""
    y = np.asarray(outputs)
    if y.ndim != 2 or len(np.asarray(labels).ravel()) != len(y):
        return None
    return float(np.mean(y.argmax(1) == np.asarray(labels).ravel()))


def retention(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None,
              reference_accuracy: float | None, reference_label: str | None) -> dict:
    """Metrics of one model's test-set outputs against the labels and the reference (teacher) outputs."""
    out: dict = {"n": int(len(outputs))}
    out["accuracy"] = accuracy(outputs, labels) if labels is not None else None
    out["reference"] = reference_label
    if reference is not None:
        if reference.shape != outputs.shape:
            out.update({"retention": None, "top1_agreement": None, "kl_reference_model": None,
                        "error": f"output shape {outputs.shape} differs from the reference's {reference.shape}"})
            return out
        out["top1_agreement"] = float(np.mean(_rows(reference).argmax(1) == _rows(outputs).argmax(1)))
        out["kl_reference_model"] = kl_mean(reference, outputs)
    else:
        out["top1_agreement"] = None
        out["kl_reference_model"] = None
    if out["accuracy"] is not None and reference_accuracy:
        out["retention"] = out["accuracy"] / reference_accuracy
    else:
        out["retention"] = None
    return out
