"""Activation outliers: when one int8 scale per tensor cannot hold a tensor.

Static int8 gives every activation tensor one scale, chosen on calibration samples. Where a tensor's largest
magnitude is far above the bulk of its values, that scale spends the 256 levels on the outliers and rounds the detail
beside them away. Transformers carry such outliers in the FFN's down-projection input, the residual sums and the
additive attention mask; Bondarenko et al. 2021, "Understanding and Overcoming the Challenges of Efficient
Transformer Quantization" (EMNLP), keep those in higher precision. The targets with a static int8 precision apply
one rule (measured per target in its README): a weight op whose calibrated activation input has

    max|x| > OUTLIER_RATIO x (99th percentile of |x|)

keeps int8 weights with its activation quantized at run time (the int8_dynamic scheme) instead of a static scale.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

OUTLIER_RATIO = 10.0
OUTLIER_SAMPLES = 64  # calibration samples the ratio is measured on
_SUBSAMPLE = 200_000  # values the percentile is estimated from, per chunk


def magnitude_stats(x) -> tuple[float, float]:
    """(max |x|, 99th percentile of |x|) of one calibration chunk of an activation tensor (any shape); the
    percentile comes from a fixed random subsample of at most 200,000 values."""
    a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
    if a.size == 0:
        return 0.0, 0.0
    sample = a if a.size <= _SUBSAMPLE else a[np.random.default_rng(0).integers(0, a.size, _SUBSAMPLE)]
    return float(a.max()), float(np.quantile(sample, 0.99))


def has_outliers(stats: Iterable[tuple[float, float]]) -> bool:
    """Whether a tensor's chunks (magnitude_stats of each) have max|x| > OUTLIER_RATIO x their 99th percentile."""
    rows = list(stats)
    if not rows:
        return False
    peak, p99 = max(r[0] for r in rows), max(r[1] for r in rows)
    return peak > OUTLIER_RATIO * max(p99, 1e-12)
