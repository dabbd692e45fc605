"""Confidence intervals for the accuracy figures: the only place they are computed.

Accuracy here is a proportion of images right, and the project's comparisons are paired
(two models scored on the same images). The normal approximation that was used before
(mean ± 1.96 × sd / √n) leaves [0, 100] on small sets — a split-vs-teacher gap of
[25.3, 108.0] points on 6 images — and collapses to zero width when no image disagrees.
These intervals stay inside the possible range at any n:

=========================  ==============================================================
:func:`proportion_ci`      Wilson score interval of one proportion (Wilson, 1927)
:func:`paired_difference`  difference of two proportions on the same images, with
                           Newcombe's hybrid score interval for paired data (Newcombe,
                           1998, "Improved confidence intervals for the difference between
                           binomial proportions based on paired data", method 10)
:func:`median_ratio`       ratio of two medians measured on the same items (times of one
                           request in two set-ups, once or in several repeats), with a
                           paired percentile-bootstrap interval (Efron & Tibshirani,
                           1993, ch. 13)
=========================  ==============================================================

Accuracy figures are in percent (points for a difference). numpy only: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def _wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson bounds as fractions in [0, 1]; the whole range when there are no images."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_ci(hits: int, n: int) -> tuple[float, float]:
    """95 % Wilson interval of ``hits`` out of ``n``, in percent ([0, 100] when n = 0)."""
    if not 0 <= hits <= n:
        raise ValueError(f"hits must be in [0, n], got {hits} of {n}")
    low, high = _wilson(hits, n)
    return 100.0 * low, 100.0 * high


@dataclass(frozen=True)
class PairedDifference:
    """First model's top-1 minus the second's on the same images, in points."""

    points: float
    ci95: tuple[float, float]
    images: int
    only_first_right: int
    only_second_right: int


def paired_difference(first: Sequence[bool] | np.ndarray, second: Sequence[bool] | np.ndarray
                      ) -> PairedDifference:  # fmt: skip
    """The paired difference with Newcombe's method-10 interval (Wilson intervals of both
    margins, combined with the phi correlation of the 2 × 2 table). It stays in
    [-100, 100], keeps a width when no image disagrees (the normal approximation's is 0),
    and needs no minimum n."""
    a = np.asarray(first, dtype=bool)
    b = np.asarray(second, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two equal-length 1-d vectors expected, got {a.shape} and {b.shape}")
    n = int(a.size)
    both = int((a & b).sum())
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    neither = n - both - only_a - only_b
    if n == 0:
        return PairedDifference(0.0, (-100.0, 100.0), 0, 0, 0)
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = _wilson(both + only_a, n)
    l2, u2 = _wilson(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    # phi of the 2 × 2 table, shrunk towards 0 by n/2 when positive (Newcombe's correction,
    # as in Altman et al., "Statistics with Confidence", 2000, p. 52)
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    difference = p1 - p2
    return PairedDifference(
        points=100.0 * difference,
        ci95=(100.0 * max(-1.0, difference - below), 100.0 * min(1.0, difference + above)),
        images=n,
        only_first_right=only_a,
        only_second_right=only_b,
    )


@dataclass(frozen=True)
class MedianRatio:
    """median(second) / median(first) over the same items, with its 95 % interval."""

    ratio: float
    ci95: tuple[float, float]
    items: int


def median_ratio(
    first: Sequence[float] | np.ndarray,
    second: Sequence[float] | np.ndarray,
    resamples: int = 10_000,
    seed: int = 0,
) -> MedianRatio:
    """How much larger the second set-up's median is, e.g. p50 with TLS over p50 without.

    Items are resampled in pairs (one photo's time in both set-ups stays together), so the
    interval reflects the photos' spread once, not twice; a ratio of medians has no usable
    closed-form interval, hence the bootstrap (percentile method, fixed seed: the same
    figures give the same interval). A 2-d input holds several times per item (one row a
    photo, one column a repeat, e.g. the set-up's two slots): each median is over every
    time, and a resample draws whole rows, so a photo keeps all its times and each column
    keeps its share (the balance of a crossover survives the resampling).
    """
    a = np.asarray(first, dtype=float)
    b = np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(
            f"two equal-shape non-empty 1-d or 2-d arrays expected, got {a.shape}, {b.shape}"
        )
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("times must be positive")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    items = a.shape[0]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, items, size=(resamples, items))
    ratios = np.median(b[picks].reshape(resamples, -1), axis=1) / np.median(
        a[picks].reshape(resamples, -1), axis=1
    )
    low, high = np.percentile(ratios, [2.5, 97.5])
    return MedianRatio(float(np.median(b) / np.median(a)), (float(low), float(high)), items)
