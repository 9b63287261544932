"""Latency statistics and the interleaving scheduler (no worker processes)."""
from __future__ import annotations

import numpy as np
import pytest

from ondevice.bench.latency import (StopRule, bootstrap_ci, chunk_size, interleave, latency_stats, percentile)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.lognormal(0.0, 0.5, size=n)
    for q in (0, 1, 10, 25, 50, 90, 99, 99.9, 100):
        assert percentile(x, q) == pytest.approx(float(np.percentile(x, q)), rel=1e-12, abs=1e-15)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"within \[0, 100\]"):
        percentile([1.0], 150)


def test_bootstrap_ci_contains_p50_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 1.0, size=400)  # skewed, like latencies
    lo, hi = bootstrap_ci(x, 50, seed=7)
    assert lo <= np.median(x) <= hi
    assert lo < hi
    assert bootstrap_ci(x, 50, seed=7) == (lo, hi)  # same seed, same interval
    assert bootstrap_ci(x, 50, seed=8) != (lo, hi)  # the seed is really used
    # a 95% interval is narrower than the range and wider than nothing
    assert np.min(x) < lo and hi < np.max(x)


def test_bootstrap_methods_agree():
    """The order-statistic sampler draws the same bootstrap distribution as explicit resampling."""
    rng = np.random.default_rng(1)
    x = rng.lognormal(0.0, 0.3, size=801)
    r = bootstrap_ci(x, 50, n_boot=4000, seed=0, method="resample")
    o = bootstrap_ci(x, 50, n_boot=4000, seed=0, method="order")
    iqr = np.percentile(x, 75) - np.percentile(x, 25)
    assert abs(r[0] - o[0]) < 0.05 * iqr and abs(r[1] - o[1]) < 0.05 * iqr, (r, o)
    big = rng.normal(10.0, 1.0, size=50_000)  # auto switches to the order method here
    lo, hi = bootstrap_ci(big, 50, seed=0)
    assert lo <= np.median(big) <= hi
    # the standard error of the median of N(0,1) is sqrt(pi/2)/sqrt(n): the interval is about +-1.96 of that
    se = np.sqrt(np.pi / 2) / np.sqrt(len(big))
    assert 0.6 * 2 * 1.96 * se < hi - lo < 1.4 * 2 * 1.96 * se


def test_latency_stats_fields():
    ns = [1_000_000, 2_000_000, 3_000_000, 4_000_000, 100_000_000]  # 1..4 ms and one 100 ms outlier
    st = latency_stats(ns, batch_size=4, seed=0, n_boot=200)
    assert st["n"] == 5
    assert st["p50_ms"] == pytest.approx(3.0)
    assert st["p90_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))
    assert st["mean_ms"] == pytest.approx(22.0)
    assert st["std_ms"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    assert st["p50_ci95_ms"][0] <= 3.0 <= st["p50_ci95_ms"][1]
    assert st["throughput_samples_per_s"] == pytest.approx(4 * 1e3 / 22.0)
    with pytest.raises(ValueError, match="no latencies"):
        latency_stats([])


def test_interleave_round_robin_with_rotation():
    """Three variants, each needing 3 chunks of 4 queries: rounds rotate who goes first."""
    calls = []

    def run_chunk(k):
        calls.append(k)
        return [1_000_000] * 4  # 4 queries of 1 ms

    progress, schedule = interleave(run_chunk, ["A", "B", "C"], StopRule(min_queries=4, min_seconds=0.0,
                                                                         max_seconds=1e9))
    assert schedule == [["A", "B", "C"]]  # one chunk each is enough
    calls.clear()
    progress, schedule = interleave(run_chunk, ["A", "B", "C"], StopRule(min_queries=12, min_seconds=0.0,
                                                                         max_seconds=1e9))
    assert schedule == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    assert calls == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert all(calls[i] != calls[i + 1] for i in range(len(calls) - 1))  # never two chunks in a row
    assert {k: len(p.latencies_ns) for k, p in progress.items()} == {"A": 12, "B": 12, "C": 12}
    # without rotation the order is plain round robin
    calls.clear()
    interleave(run_chunk, ["A", "B"], StopRule(8, 0.0, 1e9), rotate=False)
    assert calls == ["A", "B", "A", "B"]


def test_interleave_uneven_and_failing_variants():
    lat = {"fast": 1_000_000, "slow": 5_000_000}  # 1 ms and 5 ms per query
    order = []

    def run_chunk(k):
        order.append(k)
        if k == "broken":
            raise RuntimeError("worker crashed")
        return [lat[k]] * 2

    # done at >= 2 queries AND >= 8 ms: fast needs 4 chunks (8 ms), slow needs 1 chunk (10 ms)
    progress, schedule = interleave(run_chunk, ["fast", "slow", "broken"],
                                    StopRule(min_queries=2, min_seconds=0.008, max_seconds=1.0))
    assert progress["broken"].error == "worker crashed"
    assert progress["broken"].latencies_ns == []
    assert progress["slow"].chunks == 1 and progress["fast"].chunks == 4
    assert schedule[0] == ["fast", "slow", "broken"]
    assert all("broken" not in r for r in schedule[1:])  # a failed variant is dropped, the others go on
    assert order.count("fast") == 4


def test_stop_rule_cap_and_chunk_size():
    r = StopRule(min_queries=1024, min_seconds=60.0, max_seconds=5.0)
    assert not r.done(10, 1.0)
    assert r.done(10, 5.0)  # the cap ends a slow variant
    full = StopRule(1024, 60.0, 600.0)
    assert not full.done(2000, 30.0)  # both minimums are needed
    assert not full.done(100, 120.0)
    assert full.done(1024, 60.0)
    assert chunk_size(1e6, 0.1) == 100  # 1 ms queries, 100 ms chunks
    assert chunk_size(1e9, 0.1) == 1
    assert chunk_size(10.0, 10.0, max_chunk=500) == 500


def test_predict_refuses_an_artifact_with_no_outputs_or_not_one_row_per_sample():
    """A damaged file can load and run yet declare no outputs, or return another batch size (found by fuzzing)."""
    import numpy as np

    from ondevice.bench.engines import predict
    from ondevice.errors import ArtifactError

    class Engine:
        path = "damaged.tflite"

        def __init__(self, out):
            self.out = out

        def run(self, runner, feeds):
            return self.out(len(next(iter(feeds.values()))))

    x = {"x": np.zeros((5, 3), np.float32)}
    with pytest.raises(ArtifactError, match=r"damaged\.tflite returned no outputs; the file is damaged"):
        predict(Engine(lambda n: {}), None, x, batch_size=2)
    with pytest.raises(ArtifactError, match=r"returned outputs of shape \[1, 4\] for a batch of 2 samples"):
        predict(Engine(lambda n: {"y": np.zeros((1, 4))}), None, x, batch_size=2)
    y = predict(Engine(lambda n: {"y": np.ones((n, 4)), "h": np.zeros((n, 2))}), None, x, batch_size=2)
    assert y.shape == (5, 4) and y.dtype == np.float32  # the first (primary) output, every sample
