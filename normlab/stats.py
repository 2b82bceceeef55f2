"""Honest comparisons across seeds: 95% confidence intervals of means and of their differences.

A difference between two experiments is stated with Welch's t interval (unequal variances,
`scipy.stats.ttest_ind(equal_var=False)`); when the interval holds 0 the two are "not
distinguishable" with that many seeds. With 2-3 seeds intervals are wide: that is the finding.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The t interval of the mean of `values`; None with fewer than two values."""
    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * sem
    return mean - half, mean + half


@dataclass
class Difference:
    """mean(a) - mean(b) with its Welch interval (low == high == difference when neither varies)."""

    difference: float
    low: float
    high: float
    n_a: int
    n_b: int

    @property
    def distinguishable(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self, a: str, b: str) -> str:
        if not self.distinguishable:
            seeds = self.n_a if self.n_a == self.n_b else f"{self.n_a} and {self.n_b}"
            return f"not distinguishable with {seeds} seeds"
        return f"{a} higher" if self.difference > 0 else f"{b} higher"


def welch_difference(a: list[float], b: list[float], level: float = LEVEL) -> Difference | None:
    """Difference of means with its Welch t interval; None unless both sides have two or more values."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return Difference(diff, diff, diff, len(a), len(b))
    with warnings.catch_warnings():  # near-identical seeds: scipy warns of precision loss; the interval stands
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return Difference(diff, float(ci.low), float(ci.high), len(a), len(b))
