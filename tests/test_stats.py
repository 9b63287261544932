"""ondevice.stats: the paired bootstrap interval and the per-seed summary, checked against hand-computed values."""
import itertools
import math

import numpy as np
import pytest

from ondevice.stats import ci_sentence, paired_bootstrap_ci, summarize_seeds


def test_three_pairs_give_the_range_of_the_differences():
    # d = [1, 2, 3]: 27 equally likely resamples; the all-1 and all-3 resamples each have probability 1/27 = 3.7% > 2.5%,
    # so the 2.5th and 97.5th percentiles of the resample means are exactly 1 and 3
    assert paired_bootstrap_ci([5, 6, 7], [4, 4, 4]) == (1.0, 3.0)


def test_constant_differences_give_a_point_interval():
    assert paired_bootstrap_ci([9, 8, 7, 6], [7, 6, 5, 4]) == (2.0, 2.0)


def test_two_pairs_and_the_confidence_level():
    # d = [0, 2]: resample means 0, 1, 2 with probabilities 1/4, 1/2, 1/4
    assert paired_bootstrap_ci([0, 2], [0, 0]) == (0.0, 2.0)
    # a 40% interval takes the 30th and 70th percentiles, both inside the mass at 1
    assert paired_bootstrap_ci([0, 2], [0, 0], confidence=0.4) == (1.0, 1.0)


def test_matches_the_exact_bootstrap_distribution():
    # all 5^5 = 3125 resamples of d = [3, -1, 4, 1, 5] enumerated: exact 2.5th / 97.5th percentiles 0.4 and 4.2
    d = np.array([3, -1, 4, 1, 5.0])
    exact = np.array([d[list(t)].mean() for t in itertools.product(range(5), repeat=5)])
    lo_x, hi_x = np.percentile(exact, [2.5, 97.5])
    assert (lo_x, hi_x) == pytest.approx((0.4, 4.2))
    lo, hi = paired_bootstrap_ci(d, np.zeros(5))
    assert lo == pytest.approx(lo_x, abs=0.2) and hi == pytest.approx(hi_x, abs=0.2)  # resample means step by 0.2
    assert paired_bootstrap_ci(d, np.zeros(5), seed=3) == paired_bootstrap_ci(d, np.zeros(5), seed=3)  # reproducible


def test_one_pair_returns_its_difference():
    assert paired_bootstrap_ci([101], [107]) == (-6.0, -6.0)


@pytest.mark.parametrize("a, b, kw, match", [
    ([1, 2], [1], {}, r"equal lengths, got 2 and 1"),
    ([], [], {}, r"empty sample"),
    ([1, 2], [0, 0], {"confidence": 1.0}, r"confidence must be within \(0, 1\), got 1.0"),
    ([1, 2], [0, 0], {"n_boot": 0}, r"n_boot must be >= 1, got 0"),
])
def test_bad_inputs_are_named(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(a, b, **kw)


def _seed(seed, student, baseline=None):
    e = {"seed": seed, "student": {"test_errors": student, "test_acc": 1 - student / 10_000}}
    if baseline is not None:
        e["baseline"] = {"test_errors": baseline, "test_acc": 1 - baseline / 10_000}
    return e


KEYS = {"seeds", "gain_errors_mean", "gain_ci95", "gap_closed_mean", "distilled_errors", "distilled_errors_std",
        "hard_label_errors", "hard_label_errors_std", "gain_errors_std", "gap_closed", "per_seed", "ci_method",
        "significant"}


def test_three_seeds_by_hand():
    s = summarize_seeds([_seed(0, 100, 107), _seed(1, 104, 110), _seed(2, 99, 103)], teacher_errors=95)
    assert set(s) == KEYS
    assert s["seeds"] == [0, 1, 2]
    # gains 7, 6, 4: mean 17/3, sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    assert s["gain_errors_mean"] == pytest.approx(17 / 3)
    assert s["gain_errors_std"] == pytest.approx(math.sqrt(7 / 3))
    assert s["gain_ci95"] == [4.0, 7.0]  # three seeds: the range (see test_three_pairs_...)
    assert s["significant"] is True
    # gaps to the teacher 12, 15, 8: (7/12 + 6/15 + 4/8) / 3
    assert s["gap_closed_mean"] == pytest.approx((7 / 12 + 6 / 15 + 4 / 8) / 3) == s["gap_closed"]
    assert s["distilled_errors"] == pytest.approx(101.0)
    assert s["distilled_errors_std"] == pytest.approx(math.sqrt(7.0))  # deviations -1, 3, -2
    assert s["hard_label_errors"] == pytest.approx(320 / 3)
    assert s["hard_label_errors_std"] == pytest.approx(math.sqrt(37 / 3))  # deviations 1/3, 10/3, -11/3
    assert s["per_seed"] == [{"seed": 0, "student_errors": 100, "baseline_errors": 107, "gain": 7},
                             {"seed": 1, "student_errors": 104, "baseline_errors": 110, "gain": 6},
                             {"seed": 2, "student_errors": 99, "baseline_errors": 103, "gain": 4}]
    assert s["ci_method"].startswith("percentile bootstrap over 3 paired seeds, 10,000 resamples")


def test_a_ci_that_straddles_zero_is_not_significant():
    s = summarize_seeds([_seed(0, 109, 107), _seed(1, 100, 104), _seed(2, 101, 103)], teacher_errors=95)
    assert s["gain_ci95"] == [-2.0, 4.0] and s["gain_errors_mean"] == pytest.approx(4 / 3)
    assert s["significant"] is False


def test_one_seed_has_no_interval_and_says_so():
    s = summarize_seeds([_seed(0, 109, 107)], teacher_errors=95)
    assert s["gain_errors_mean"] == -2.0 and s["gain_ci95"] == [-2.0, -2.0]
    assert s["significant"] is False
    assert s["distilled_errors_std"] is None and s["gain_errors_std"] is None
    assert s["gap_closed_mean"] == pytest.approx(-2 / 12)
    assert s["ci_method"].startswith("one seed: no interval")


def test_no_baseline_leaves_the_gain_empty():
    s = summarize_seeds([_seed(0, 120), _seed(1, 118)], teacher_errors=95)
    assert set(s) == KEYS
    assert s["distilled_errors"] == 119.0 and s["distilled_errors_std"] == pytest.approx(math.sqrt(2))
    for k in ("gain_errors_mean", "gain_ci95", "gap_closed_mean", "hard_label_errors", "gain_errors_std"):
        assert s[k] is None
    assert s["significant"] is False and "no hard-label baseline" in s["ci_method"]
    assert s["per_seed"][1] == {"seed": 1, "student_errors": 118, "baseline_errors": None, "gain": None}


def test_gap_closed_is_none_when_a_hard_label_student_matches_the_teacher():
    s = summarize_seeds([_seed(0, 100, 107), _seed(1, 96, 95)], teacher_errors=95)
    assert s["gap_closed_mean"] is None and s["gap_closed"] is None
    assert s["gain_errors_mean"] == pytest.approx(3.0)


@pytest.mark.parametrize("per_seed, match", [
    ([], r"at least one seed"),
    ([_seed(0, 1, 2), _seed(0, 3, 4)], r"each seed may appear once, got seeds \[0, 0\]"),
    ([_seed(0, 1, 2), _seed(1, 3)], r"baseline is present for 1 of 2 seeds"),
    ([{"seed": 4, "student": {"test_acc": 0.99}}], r"seed 4: expected student.test_errors"),
])
def test_inconsistent_seed_lists_are_rejected(per_seed, match):
    with pytest.raises(ValueError, match=match):
        summarize_seeds(per_seed, teacher_errors=95)


def test_ci_sentence_warns_only_for_few_seeds():
    assert ci_sentence(3).endswith("errs narrow")
    assert ci_sentence(10) == "percentile bootstrap over 10 paired seeds, 10,000 resamples"


def test_describe_gain_for_logs():
    from ondevice.stats import describe_gain

    s = summarize_seeds([_seed(0, 100, 107), _seed(1, 104, 110), _seed(2, 99, 103)], teacher_errors=95)
    assert describe_gain(s) == (
        "distilled 101.0 ± 2.6 vs hard-label 106.7 ± 3.5 test errors over 3 seeds: gain +5.7, 95% CI [+4.0, +7.0] "
        "(excludes zero; percentile bootstrap over 3 paired seeds, 10,000 resamples; with so few seeds the interval "
        "is about the range of the per-seed gains and errs narrow)")
    one = describe_gain(summarize_seeds([_seed(0, 109, 107)], teacher_errors=95))
    assert one == "distilled 109 vs hard-label 107 test errors over 1 seed: gain -2.0 (one seed: no confidence interval)"
    assert describe_gain(summarize_seeds([_seed(0, 120), _seed(1, 118)], 95)) == (
        "distilled 119.0 ± 1.4 test errors over 2 seeds (no hard-label baseline)")
