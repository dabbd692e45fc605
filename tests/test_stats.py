"""The accuracy intervals (splitdnn/stats.py): published values, and the ranges the normal
approximation used to leave."""

from __future__ import annotations

import numpy as np
import pytest

from splitdnn.stats import median_ratio, paired_difference, proportion_ci


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II,
    # method 3 (Wilson score without continuity correction)
    [(81, 263, 25.53, 36.62), (15, 148, 6.24, 16.05), (0, 20, 0.0, 16.11), (1, 29, 0.61, 17.18)],
)
def test_wilson_interval_matches_the_published_values(hits, n, low, high):
    assert proportion_ci(hits, n) == pytest.approx((low, high), abs=0.006)


def test_wilson_interval_of_no_images_is_the_whole_range_and_bad_counts_are_refused():
    assert proportion_ci(0, 0) == (0.0, 100.0)
    with pytest.raises(ValueError):
        proportion_ci(7, 6)


def pairs(both: int, only_first: int, only_second: int, neither: int):
    first = [True] * (both + only_first) + [False] * (only_second + neither)
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return np.array(first), np.array(second)


def test_paired_interval_matches_a_published_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017),
    # chapter 8: the 2 x 2 table [[59, 6], [16, 80]], Newcombe's square-and-add interval
    difference = paired_difference(*pairs(59, 6, 16, 80))
    assert difference.points == pytest.approx(-6.21, abs=0.005)
    assert difference.ci95 == pytest.approx((-11.86, -0.46), abs=0.005)
    assert (difference.only_first_right, difference.only_second_right) == (6, 16)


def test_paired_interval_stays_in_range_on_a_few_images():
    # the normal approximation gave [25.3, 108.0] points on six images like these
    difference = paired_difference(*pairs(1, 5, 0, 0))
    low, high = difference.ci95
    assert -100.0 <= low <= difference.points <= high <= 100.0
    everything = paired_difference(*pairs(0, 6, 0, 0))
    assert everything.points == 100.0 and everything.ci95[1] <= 100.0


def test_paired_interval_keeps_a_width_when_no_image_disagrees_and_shrinks_with_n():
    small = paired_difference(*pairs(90, 0, 0, 10))
    large = paired_difference(*pairs(900, 0, 0, 100))
    assert small.points == large.points == 0.0
    assert small.ci95[0] < 0.0 < small.ci95[1]
    assert large.ci95[1] - large.ci95[0] < small.ci95[1] - small.ci95[0]


def test_paired_interval_agrees_with_the_normal_approximation_on_many_images():
    rng = np.random.default_rng(0)
    a = rng.random(4000) < 0.9
    b = a.copy()
    b[rng.choice(4000, 200, replace=False)] ^= True
    difference = paired_difference(a, b)
    d = a.astype(float) - b
    half = 100 * 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    assert difference.points == pytest.approx(100 * d.mean())
    assert difference.ci95 == pytest.approx((100 * d.mean() - half, 100 * d.mean() + half), abs=0.1)


def test_paired_interval_refuses_vectors_of_different_lengths():
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([True, False], [True])
    assert paired_difference([], []).ci95 == (-100.0, 100.0)


def test_median_ratio_is_the_ratio_of_medians_and_its_interval_holds_it():
    first = np.linspace(50.0, 150.0, 41)
    ratio = median_ratio(first, first * 1.2)
    assert ratio.ratio == pytest.approx(1.2)
    assert ratio.ci95 == pytest.approx((1.2, 1.2))  # every pair differs by the same factor
    assert ratio.items == 41


def test_median_ratio_interval_widens_with_noise_and_narrows_with_items():
    rng = np.random.default_rng(1)
    few = rng.lognormal(4.3, 0.3, 16)
    many = rng.lognormal(4.3, 0.3, 256)
    noisy = [median_ratio(x, x * rng.lognormal(0.05, 0.2, x.size)) for x in (few, many)]
    widths = [r.ci95[1] - r.ci95[0] for r in noisy]
    assert widths[0] > widths[1] > 0
    for r in noisy:
        assert r.ci95[0] <= r.ratio <= r.ci95[1]


def test_median_ratio_refuses_unpaired_or_non_positive_times():
    with pytest.raises(ValueError):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        median_ratio([0.0, 2.0], [1.0, 2.0])


def test_median_ratio_of_one_column_per_item_equals_the_one_dimensional_one():
    rng = np.random.default_rng(2)
    first = rng.lognormal(4.3, 0.3, 30)
    second = first * rng.lognormal(0.02, 0.1, 30)
    flat = median_ratio(first, second)
    assert median_ratio(first[:, None], second[:, None]) == flat


def test_median_ratio_resamples_an_item_with_all_its_repeats_keeping_a_crossover_balanced():
    # column 0 and 1 are two slots, one 1.5x slower; the second set-up holds the slow slot
    # where the first held the fast one. Rows drawn whole keep every resample's pool a
    # copy of the first's pool x 1.1; repeats drawn apart would not.
    base = np.linspace(50.0, 150.0, 25)
    first = np.column_stack([base, base * 1.5])
    second = np.column_stack([base * 1.5, base]) * 1.1
    ratio = median_ratio(first, second)
    assert ratio.ratio == pytest.approx(1.1)
    assert ratio.ci95 == pytest.approx((1.1, 1.1))
    assert ratio.items == 25
    with pytest.raises(ValueError):
        median_ratio(first, second[:, :1])
