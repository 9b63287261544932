"""Statistics over training seeds: a paired bootstrap interval and the per-seed distillation summary (NumPy only).

Distillation is judged by pairs: for each seed the distilled student and the hard-label student start from the same
initialisation and see the same batches, so seed noise common to both cancels in their difference. `summarize_seeds`
turns the per-seed test errors into the fields `results.json` reports (means, spreads, the paired gain with its
bootstrap 95% CI and the share of the teacher-student gap closed).

Caveat, stated wherever the interval is printed: with few seeds the percentile bootstrap is too narrow. With 3 seeds
every resample that repeats the smallest gain three times has probability 1/27 > 2.5%, so the 95% interval is the range
of the three gains, and it excludes zero whenever all three have the same sign (1 in 4 under a symmetric null).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

N_BOOT = 10_000


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_boot: int = N_BOOT,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of the paired differences a[i] - b[i].

    Draws `n_boot` resamples of the n differences with replacement (NumPy generator seeded with `seed`), takes each
    resample's mean and returns the (1 - confidence)/2 and (1 + confidence)/2 percentiles of those means (linear
    interpolation). With one pair there is nothing to resample: (d, d) is returned and callers must say so.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("paired bootstrap of an empty sample")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = x - y  # (n,)
    if d.size == 1:
        return float(d[0]), float(d[0])
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))  # (n_boot, n) resample indices
    means = d[idx].mean(axis=1)  # (n_boot,)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _mean(v: np.ndarray) -> float:
    return float(v.mean())


def _std(v: np.ndarray) -> float | None:
    """Sample standard deviation (n - 1); None for a single value (no spread can be measured from one seed)."""
    return float(v.std(ddof=1)) if v.size > 1 else None


def _errors(entry: dict, role: str) -> int:
    try:
        return int(entry[role]["test_errors"])
    except (KeyError, TypeError):
        raise ValueError(f"seed {entry.get('seed')!r}: expected {role}.test_errors, got {entry.get(role)!r}") from None


def _check_seeds(per_seed: list[dict]) -> list[int]:
    if not per_seed:
        raise ValueError("summarize_seeds needs at least one seed's results")
    seeds = [int(e["seed"]) for e in per_seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each seed may appear once, got seeds {seeds}")
    with_base = sum("baseline" in e for e in per_seed)
    if 0 < with_base < len(per_seed):
        raise ValueError(f"a hard-label baseline is present for {with_base} of {len(seeds)} seeds; "
                         f"the paired comparison needs it for every seed or for none")
    return seeds


def ci_sentence(n: int, n_boot: int = N_BOOT) -> str:
    """How `gain_ci95` was computed, in words (results.json `ci_method`)."""
    if n == 1:
        return "one seed: no interval (gain_ci95 repeats that seed's gain); run more seeds for a confidence interval"
    s = f"percentile bootstrap over {n} paired seeds, {n_boot:,} resamples"
    if n <= 5:
        s += "; with so few seeds the interval is about the range of the per-seed gains and errs narrow"
    return s


def _gap_closed(base: np.ndarray, student: np.ndarray, teacher_errors: float) -> float | None:
    """Mean over seeds of (baseline - student) / (baseline - teacher); None when any seed's gap is <= 0 (the
    hard-label student already matches the teacher there, so 'share of the gap' has no meaning)."""
    gaps = base - float(teacher_errors)
    if np.any(gaps <= 0):
        return None
    return float(((base - student) / gaps).mean())


def summarize_seeds(per_seed: list[dict], teacher_errors: int | float) -> dict[str, Any]:
    """Summarise paired distilled / hard-label runs over seeds.

    per_seed: [{"seed": int, "student": {"test_errors": int, ...}, "baseline": {"test_errors": int, ...}}, ...]; the
    baseline (hard-label student, same init and batches) may be absent from every entry, then the gain fields are None.
    teacher_errors: the teacher's test errors (trained or loaded once, the same for every seed).

    Returns seeds, gain_errors_mean (hard-label errors minus distilled errors, mean over seeds), gain_ci95 ([low, high],
    paired percentile bootstrap, 10,000 resamples, seed 0), gap_closed_mean, distilled_errors (mean),
    distilled_errors_std, hard_label_errors (mean), hard_label_errors_std, gain_errors_std, gap_closed (=
    gap_closed_mean, for readers of single-seed files), per_seed ([{seed, student_errors, baseline_errors, gain}]),
    ci_method (a sentence) and significant (the CI excludes zero; never with one seed). Standard deviations are sample
    ones (n - 1), None with one seed.
    """
    seeds = _check_seeds(per_seed)
    student = np.array([_errors(e, "student") for e in per_seed], dtype=np.float64)  # (n,)
    has_base = "baseline" in per_seed[0]
    base = np.array([_errors(e, "baseline") for e in per_seed], dtype=np.float64) if has_base else None
    gain = base - student if has_base else None
    ci = list(paired_bootstrap_ci(base, student)) if has_base else None
    gap = _gap_closed(base, student, teacher_errors) if has_base else None
    return {
        "seeds": seeds,
        "gain_errors_mean": _mean(gain) if has_base else None,
        "gain_ci95": ci,
        "gap_closed_mean": gap,
        "distilled_errors": _mean(student),
        "distilled_errors_std": _std(student),
        "hard_label_errors": _mean(base) if has_base else None,
        "hard_label_errors_std": _std(base) if has_base else None,
        "gain_errors_std": _std(gain) if has_base else None,
        "gap_closed": gap,
        "per_seed": [{"seed": s, "student_errors": int(student[i]),
                      "baseline_errors": int(base[i]) if has_base else None,
                      "gain": int(gain[i]) if has_base else None} for i, s in enumerate(seeds)],
        "ci_method": ci_sentence(len(seeds)) if has_base else "no hard-label baseline: there is no gain to bootstrap",
        "significant": bool(has_base and len(seeds) > 1 and (ci[0] > 0 or ci[1] < 0)),
    }


def describe_gain(summary: dict[str, Any]) -> str:
    """One line for logs and closing summaries, from a summarize_seeds() result, e.g.
    `distilled 101.0 ± 2.6 vs hard-label 106.7 ± 3.5 test errors over 3 seeds: gain +5.7, 95% CI [+4.0, +7.0]
    (excludes zero; percentile bootstrap over 3 paired seeds, ...)`."""
    n = len(summary["seeds"])

    def errs(mean: float, std: float | None) -> str:
        return f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:g}"

    head = f"distilled {errs(summary['distilled_errors'], summary['distilled_errors_std'])}"
    if summary["gain_errors_mean"] is None:
        return f"{head} test errors over {n} seed{'s' if n > 1 else ''} (no hard-label baseline)"
    head += (f" vs hard-label {errs(summary['hard_label_errors'], summary['hard_label_errors_std'])} test errors over "
             f"{n} seed{'s' if n > 1 else ''}: gain {summary['gain_errors_mean']:+.1f}")
    if n == 1:
        return f"{head} (one seed: no confidence interval)"
    lo, hi = summary["gain_ci95"]
    verdict = "excludes zero" if summary["significant"] else "includes zero"
    return f"{head}, 95% CI [{lo:+.1f}, {hi:+.1f}] ({verdict}; {summary['ci_method']})"
