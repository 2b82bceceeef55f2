"""Comparisons that hold: intervals inside the range of what they measure, one variance pooled
across a study, tests corrected for the family they belong to, and the test set's own error.

Why these choices (docs/statistics.md says it at length; a study's declared analysis plan,
`normlab.analysis`, picks among them):

- Accuracies live in [0, 100] and runs that collapse vary far more than runs that work, so the
  scale for inference is the **logit of the error rate**, log(errors / correct answers) with half
  an image added to each (for a working model, the log of its error rate). An interval transforms
  back to something that cannot leave 0-100, and a difference becomes a ratio: the error odds of
  A over those of B (at these error rates, the ratio of their error rates).
- Each pair is tested on its own two samples, by **Welch's statistic** (scipy's `ttest_ind`
  with `equal_var=False`) on Hsu's conservative min(n_a, n_b) - 1 degrees of freedom: no variance
  is borrowed from other groups, so a group whose seeds vary more than the rest cannot make a
  quiet pair look certain. The calibration simulation in the test suite holds it to its
  false-positive rate at every layout the lab uses, with spreads that differ 4x between groups.
- A report asks several questions at once; each **family** of comparisons is corrected by
  Holm's step-down method (by default) as statsmodels' `multipletests` defines it.
- Every run is scored on the same test set, so between-seed tests say nothing about the test
  set's own sampling error: the binomial standard error of an accuracy is stated beside it, and
  two single runs are compared image by image (McNemar's exact test, scipy's `binomtest`, on the
  images exactly one of them got wrong).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .analysis import CORRECTIONS

LEVEL = 0.95
ALPHA = 0.05
MIN_SEEDS_FOR_INTERVAL = 3


def logit_error(accuracy: float, n_test: int) -> float:
    """The logit of the error rate, with half an image added to the errors and to the correct
    answers (a perfect or a zero score stays finite): log(errors / correct). For the small error
    rates of a working model it is the log of the error rate; at every rate it maps back into (0, 100)."""
    errors = (100.0 - accuracy) / 100.0 * n_test
    return math.log((errors + 0.5) / (n_test - errors + 0.5))


def from_logit_error(value: float, n_test: int) -> float:
    """The accuracy (points) whose `logit_error` is `value`."""
    q = 1.0 / (1.0 + math.exp(-value))  # (errors + 0.5) / (n + 1)
    errors = min(max(q * (n_test + 1) - 0.5, 0.0), float(n_test))  # the half image stays inside the range
    return 100.0 - 100.0 * errors / n_test


def sampling_error(accuracy: float, n_test: int) -> float:
    """The binomial standard error of an accuracy measured on `n_test` images, in points."""
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n_test)


def mean_interval(values: list[float], n_test: int = 10000, level: float = LEVEL) -> tuple[float, float] | None:
    """A 95% interval for the typical accuracy of `values` (one per seed): the t interval of the mean
    logit error rate, transformed back, so it never leaves (0, 100). None below three seeds, where an
    interval would be a number the data cannot carry; (x, x) when every seed gave x."""
    if len(values) < MIN_SEEDS_FOR_INTERVAL:
        return None
    logs = [logit_error(v, n_test) for v in values]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    if sd == 0:
        return values[0], values[0]
    half = stats.t.ppf((1 + level) / 2, len(logs) - 1) * sd / math.sqrt(len(logs))
    # a larger logit error is a lower accuracy: the bounds swap
    return from_logit_error(mean + half, n_test), from_logit_error(mean - half, n_test)


@dataclass
class Group:
    """One experiment name's final accuracies over seeds, on the logit error scale too."""

    name: str
    accuracies: list[float]
    n_test: int

    def values(self, scale: str = "logit_error") -> list[float]:
        """The accuracies on the analysis scale: the logit error rate, or the points themselves."""
        return [logit_error(a, self.n_test) for a in self.accuracies] if scale == "logit_error" \
            else list(self.accuracies)

    @property
    def logs(self) -> list[float]:
        return self.values("logit_error")

    @property
    def n(self) -> int:
        return len(self.accuracies)


TEST_NAMES = {"welch-hsu": "Welch, Hsu's df", "welch": "Welch", "student": "Student"}


def pair_pvalues(test: str, a, b):
    """Two-sided p-values of `test` for samples `a` and `b` along their last axis (any leading
    axes are independent comparisons), NaN where neither sample varies. The statistic is scipy's
    `ttest_ind` (`equal_var=False` for Welch); `welch-hsu` refers Welch's statistic to Student's t
    with min(n_a, n_b) - 1 degrees of freedom (Hsu's conservative solution of the Behrens-Fisher
    problem: it holds its level whatever the ratio of the two variances, where the Welch-
    Satterthwaite degrees of freedom run a little over it at 5 seeds and a 4x spread)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on identical samples: NaN below
        result = stats.ttest_ind(a, b, axis=-1, equal_var=test == "student")
        p = np.asarray(result.pvalue, dtype=float)
        if test == "welch-hsu":
            p = np.asarray(2 * stats.t.sf(np.abs(result.statistic), min(a.shape[-1], b.shape[-1]) - 1), dtype=float)
    flat = (np.ptp(a, axis=-1) == 0) & (np.ptp(b, axis=-1) == 0)
    return np.where(flat, np.nan, p)


def adjust(correction: str, pvalues) -> np.ndarray:
    """p-values adjusted within their family (the last axis, vectorised over the others) by Holm's
    step-down method or Bonferroni's, as statsmodels' `multipletests` defines them (the suite holds
    the two equal), or as they are (`none`). NaN entries are untested: left out, and stay NaN.
    Written out rather than called row by row: the calibration adjusts thousands of simulated
    families at once, and `multipletests`' Holm runs a full garbage collection on every call
    (a fifth of a second in a process that holds a study)."""
    p = np.array(pvalues, dtype=float, copy=True)
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r}; use one of {', '.join(CORRECTIONS)}.")
    if correction == "none" or p.size == 0:
        return p
    rows = p.reshape(-1, p.shape[-1])
    tested = ~np.isnan(rows)
    m = tested.sum(axis=1, keepdims=True)
    if correction == "bonferroni":
        return np.where(tested, np.minimum(rows * m, 1.0), np.nan).reshape(p.shape)
    filled = np.where(tested, rows, np.inf)
    order = np.argsort(filled, axis=1, kind="stable")
    ranked = np.take_along_axis(filled, order, axis=1)
    steps = m - np.arange(rows.shape[1])[None, :]  # m, m-1, ... for the sorted p-values
    with np.errstate(invalid="ignore"):  # inf x 0 where a row has untested entries: masked next
        scaled = np.minimum(np.maximum.accumulate(np.where(np.isinf(ranked), 0.0, ranked * steps), axis=1), 1.0)
    out = np.empty_like(scaled)
    np.put_along_axis(out, order, scaled, axis=1)
    return np.where(tested, out, np.nan).reshape(p.shape)


@dataclass
class Comparison:
    """A − B: the difference of mean accuracy in points, and on the logit scale the ratio of their
    error odds (geometric means over seeds; about the ratio of error rates) with its interval and
    p-value; `adjusted_p` is set by the family's correction."""

    a: str
    b: str
    difference: float  # mean accuracy of A minus B, points
    ratio: float | None  # error odds of A / error odds of B (None on the points scale)
    low: float | None  # the interval of the ratio (logit scale) or of the difference (points scale)
    high: float | None
    p: float | None
    test: str  # which test, or why there is none
    n_a: int
    n_b: int
    adjusted_p: float | None = None
    alpha: float = ALPHA
    min_seeds: int = 2

    @property
    def distinguishable(self) -> bool:
        return self.adjusted_p is not None and self.adjusted_p < self.alpha

    @property
    def directional(self) -> bool:
        """Fewer seeds than the plan asks for a verdict: the report gives the direction only."""
        return min(self.n_a, self.n_b) < self.min_seeds

    @property
    def ahead(self) -> str:
        return self.a if self.difference >= 0 else self.b

    def verdict(self) -> str:
        if self.p is None:
            return f"no test ({self.test})"
        if self.directional:
            n = str(self.n_a) if self.n_a == self.n_b else f"{self.n_a}, {self.n_b}"
            return f"directional (n = {n}): " + ("level" if abs(self.difference) < 0.0005 else f"{self.ahead} ahead")
        if not self.distinguishable:
            return "not distinguishable"
        return f"{self.ahead} higher"


def compare(a: Group, b: Group, test: str = "welch-hsu", scale: str = "logit_error", level: float = LEVEL,
            alpha: float = ALPHA, min_seeds: int = 2) -> Comparison:
    """A − B by `test` (`pair_pvalues` says which) on `scale`, with its interval on the same
    degrees of freedom; no test below two seeds a side or without any variation."""
    difference = statistics.fmean(a.accuracies) - statistics.fmean(b.accuracies)
    base = dict(a=a.name, b=b.name, difference=difference, n_a=a.n, n_b=b.n, alpha=alpha, min_seeds=min_seeds)
    if a.n < 2 or b.n < 2:
        return Comparison(**base, ratio=None, low=None, high=None, p=None,
                          test="one seed: compare the runs image by image")
    va, vb = a.values(scale), b.values(scale)
    delta = statistics.fmean(va) - statistics.fmean(vb)
    ratio = math.exp(delta) if scale == "logit_error" else None
    if statistics.variance(va) == 0 and statistics.variance(vb) == 0:
        return Comparison(**base, ratio=ratio, low=None, high=None, p=None,
                          test="no seed-to-seed variation to test against")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on nearly identical samples
        result = stats.ttest_ind(va, vb, equal_var=test == "student")
    if test == "welch-hsu":
        df = float(min(a.n, b.n) - 1)
        p = float(2 * stats.t.sf(abs(result.statistic), df))
        half = float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(statistics.variance(va) / a.n
                                                                    + statistics.variance(vb) / b.n)
        lo, hi = delta - half, delta + half
    else:
        df, p = float(result.df), float(result.pvalue)
        interval = result.confidence_interval(level)
        lo, hi = float(interval.low), float(interval.high)
    low, high = (math.exp(lo), math.exp(hi)) if ratio is not None else (lo, hi)
    return Comparison(**base, ratio=ratio, low=low, high=high, p=p, test=f"{TEST_NAMES[test]}, {df:.3g} df")


def correct_family(comparisons: list[Comparison], correction: str = "holm") -> None:
    """The family's correction over its tested comparisons (in place)."""
    tested = [c for c in comparisons if c.p is not None]
    for c, adjusted in zip(tested, adjust(correction, [c.p for c in tested])):
        c.adjusted_p = float(adjusted)


@dataclass
class Paired:
    """Two single runs on the same test images: b = images only A got wrong, c = only B got wrong."""

    a: str
    b: str
    only_a_wrong: int
    only_b_wrong: int
    p: float
    adjusted_p: float | None = None


def mcnemar(a: str, wrong_a: set[int], b: str, wrong_b: set[int]) -> Paired:
    """McNemar's exact test: under "A and B are equally accurate on this test set" the images that
    exactly one of them got wrong fall on either side with probability 1/2."""
    only_a, only_b = len(wrong_a - wrong_b), len(wrong_b - wrong_a)
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(min(only_a, only_b), n, 0.5).pvalue)
    return Paired(a, b, only_a, only_b, p)
