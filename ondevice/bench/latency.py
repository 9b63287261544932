"""Latency statistics and the interleaving scheduler (MLPerf single-stream style).

One *query* is one call of the runtime on one batch; its latency is measured in the worker with
`time.perf_counter_ns()` around that call alone. Variants compared side by side are measured in interleaved
rounds: every round gives each still-active variant one *chunk* of queries (sized to take about
`chunk_seconds`), rotating which variant goes first, until every variant has at least `min_queries` queries
AND `min_seconds` of measured time (MLPerf's single-stream rule asks for both), or has reached the
`max_seconds` cap (so a slow model cannot hold the run hostage). Noise that drifts over time (thermal state,
other load on the host) then lands on every variant alike instead of on whichever ran last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

NS_PER_MS = 1e6


# --- statistics --------------------------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default "linear"
    method): position h = (n - 1) * q / 100 in the sorted values, interpolated between floor(h) and ceil(h)."""
    xs = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if xs.size == 0:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    return float(_interp_sorted(xs, q))


def _interp_sorted(xs: np.ndarray, q: float, lo_idx=None, hi_idx=None):
    """Linear interpolation at h = (n-1)*q/100 in sorted `xs` (xs: (..., n)); works along the last axis."""
    n = xs.shape[-1]
    h = (n - 1) * q / 100.0
    lo = int(math.floor(h))
    hi = min(lo + 1, n - 1)
    frac = h - lo
    a = xs[..., lo]
    b = xs[..., hi]
    return a + (b - a) * frac


def bootstrap_ci(values, q: float = 50.0, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 method: str = "auto") -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the q-th percentile (default: the median).

    method="resample": draw `n_boot` resamples of size n with replacement (fixed `seed`), take each one's
    q-th percentile, report the (1-confidence)/2 and (1+confidence)/2 percentiles of those.
    method="order": the same bootstrap distribution drawn without materialising the resamples. The k-th smallest
    of n indices drawn uniformly from {0..n-1} is floor(n * U_(k)), where U_(k) ~ Beta(k, n-k+1) is the k-th order
    statistic of n uniforms; the next one is U_(k) + (1 - U_(k)) * Beta(1, n-k). So the two sorted-resample
    elements the percentile interpolates between are sampled exactly in O(1) per resample, which keeps a
    60-second run of a 50-microsecond model (about a million queries) cheap.
    method="auto": "resample" when n * n_boot <= 4e6, else "order".
    """
    xs = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = xs.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if n == 1:
        return float(xs[0]), float(xs[0])
    rng = np.random.default_rng(seed)
    if method == "auto":
        method = "resample" if n * n_boot <= 4_000_000 else "order"
    if method == "resample":
        stats = np.empty(n_boot)
        block = max(1, 4_000_000 // n)
        for start in range(0, n_boot, block):
            m = min(block, n_boot - start)
            idx = rng.integers(0, n, size=(m, n))  # (m, n) resample indices into the sorted sample
            res = np.sort(xs[idx], axis=1)  # (m, n)
            stats[start:start + m] = _interp_sorted(res, q)
    elif method == "order":
        h = (n - 1) * q / 100.0
        k = int(math.floor(h)) + 1  # 1-based rank of the lower element
        frac = h - (k - 1)
        u_k = rng.beta(k, n - k + 1, size=n_boot)  # (n_boot,) U_(k)
        if k < n:
            u_k1 = u_k + (1.0 - u_k) * rng.beta(1, n - k, size=n_boot)  # U_(k+1)
        else:
            u_k1 = u_k
        i_lo = np.minimum((n * u_k).astype(np.int64), n - 1)
        i_hi = np.minimum((n * u_k1).astype(np.int64), n - 1)
        stats = xs[i_lo] + (xs[i_hi] - xs[i_lo]) * frac
    else:
        raise ValueError(f"unknown bootstrap method {method!r}; valid: auto, resample, order")
    alpha = (1.0 - confidence) / 2.0
    return percentile(stats, 100 * alpha), percentile(stats, 100 * (1 - alpha))


def latency_stats(latencies_ns: Sequence[int], *, batch_size: int = 1, seed: int = 0, n_boot: int = 2000) -> dict:
    """Summary of per-query latencies (nanoseconds in, milliseconds out)."""
    ms = np.asarray(latencies_ns, dtype=np.float64) / NS_PER_MS
    if ms.size == 0:
        raise ValueError("no latencies measured")
    lo, hi = bootstrap_ci(ms, 50.0, n_boot=n_boot, seed=seed)
    mean = float(ms.mean())
    return {
        "n": int(ms.size),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": mean,
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ci95_ms": [lo, hi],
        "bootstrap": {"resamples": n_boot, "seed": seed, "confidence": 0.95, "method": "percentile"},
        "measured_seconds": float(ms.sum() / 1e3),
        "throughput_samples_per_s": batch_size * 1e3 / mean if mean > 0 else None,
    }


# --- interleaving ------------------------------------------------------------------------------------------
@dataclass
class StopRule:
    min_queries: int
    min_seconds: float
    max_seconds: float

    def done(self, n: int, seconds: float) -> bool:
        return (n >= self.min_queries and seconds >= self.min_seconds) or seconds >= self.max_seconds

    def fraction(self, n: int, seconds: float) -> float:
        """How far a variant is towards done(), in [0, 1] (for progress lines)."""
        if self.done(n, seconds):
            return 1.0
        return max(min(n / self.min_queries, seconds / self.min_seconds if self.min_seconds else 1.0),
                   seconds / self.max_seconds)


@dataclass
class VariantProgress:
    latencies_ns: list[int] = field(default_factory=list)
    chunks: int = 0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return sum(self.latencies_ns) / 1e9


def chunk_size(mean_latency_ns: float, chunk_seconds: float, max_chunk: int = 100_000) -> int:
    """Queries per chunk so that one chunk takes about `chunk_seconds`."""
    if mean_latency_ns <= 0:
        return 1
    return int(min(max_chunk, max(1, round(chunk_seconds * 1e9 / mean_latency_ns))))


def interleave(run_chunk: Callable[[Hashable], list[int]], keys: Sequence[Hashable], rule: StopRule,
               *, rotate: bool = True, max_rounds: int = 1_000_000,
               on_round: Callable[[int, dict[Hashable, VariantProgress]], None] | None = None,
               ) -> tuple[dict[Hashable, VariantProgress], list[list]]:
    """Round-robin chunks across `keys` until each is done under `rule`.

    run_chunk(key) runs one chunk for that variant and returns its per-query latencies in ns; an exception
    marks that variant failed (its error kept) and the others continue. Round r starts at active variant
    r mod len(active) when `rotate`. on_round(r, progress) is called after each round. Returns per-key progress and
    the schedule (one list of keys per round).
    """
    progress = {k: VariantProgress() for k in keys}
    schedule: list[list] = []
    for r in range(max_rounds):
        active = [k for k in keys if progress[k].error is None
                  and not rule.done(len(progress[k].latencies_ns), progress[k].seconds)]
        if not active:
            break
        if rotate:
            s = r % len(active)
            active = active[s:] + active[:s]
        schedule.append(list(active))
        for k in active:
            try:
                ns = run_chunk(k)
            except Exception as e:  # one variant failing must not stop the others
                progress[k].error = str(e)
                continue
            if not ns:
                progress[k].error = "the worker returned an empty chunk"
                continue
            progress[k].latencies_ns.extend(int(v) for v in ns)
            progress[k].chunks += 1
        if on_round is not None:
            on_round(r, progress)
    return progress, schedule


def rounds_done(progress: dict[Hashable, VariantProgress], rule: StopRule) -> float:
    """Variants' worth of the measuring done so far: the sum of each variant's fraction (a failed one counts as 1)."""
    return sum(1.0 if p.error is not None else rule.fraction(len(p.latencies_ns), p.seconds)
               for p in progress.values())
