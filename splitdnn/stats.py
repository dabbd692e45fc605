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
=========================  ==============================================================

All figures are in percent (points for a difference). numpy only: no torch.
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
