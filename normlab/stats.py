"""Comparisons that hold: intervals inside the range of what they measure, one variance pooled
across a study, tests corrected for the family they belong to, and the test set's own error.

Why these choices (docs/statistics.md says it at length):

- Accuracies live in [0, 100] and runs that collapse vary far more than runs that work, so the
  scale for inference is the **logit of the error rate**, log(errors / correct answers) with half
  an image added to each (for a working model, the log of its error rate). There, seed-to-seed
  spread is comparable across norms and settings (a collapsed run's errors vary in proportion to
  their number), and an interval transforms back to something that cannot leave 0-100. A
  difference becomes a ratio: the error odds of A over those of B (at these error rates, the ratio
  of their error rates).
- With 2-3 seeds a group's own variance has 1-2 degrees of freedom; **one variance pooled over
  the study's groups** (a one-way ANOVA's residual) has many. Groups whose variance is far beyond
  the pool of the steadier groups (an F test, p < 0.01, a forward search from the steadier half
  of the study: "erratic", e.g. a run that sometimes sits at chance) are kept out of it and compared with
  Welch's test on their own variance; groups whose seeds all gave one value (every seed at
  chance) add nothing to it.
- A report asks several questions at once; each **family** of comparisons is corrected with
  Holm's step-down method (as `statsmodels.stats.multitest.multipletests(method="holm")`, which a
  test holds it to).
- Every run is scored on the same test set, so between-seed tests say nothing about the test
  set's own sampling error: the binomial standard error of an accuracy is stated beside it, and
  two single runs are compared image by image (McNemar's exact test on the images exactly one of
  them got wrong).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
ALPHA = 0.05
ERRATIC_P = 0.01  # a group's variance this unlikely under the pool's is kept out of it
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


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Group:
    """One experiment name's final accuracies over seeds, on the logit error scale too."""

    name: str
    accuracies: list[float]
    n_test: int

    @property
    def logs(self) -> list[float]:
        return [logit_error(a, self.n_test) for a in self.accuracies]

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def variance(self) -> float:
        return statistics.variance(self.logs) if self.n > 1 else 0.0


@dataclass
class Pool:
    """The variance pooled over a study's groups, and the groups it leaves out."""

    variance: float
    df: int
    erratic: set[str]

    @property
    def usable(self) -> bool:
        return self.df > 0 and self.variance > 0


def pooled_variance(groups: list[Group]) -> Pool:
    """Residual variance of a one-way layout on the logit error scale, over groups with two or more
    seeds that vary, built up by a forward search: the steadier half of the groups (by their own
    variance) is the starting pool, then the others join in order of their variance, each tested
    against the pool of those already in (F test); the first one the pool makes unlikely (p < 0.01)
    and every group more variable than it are "erratic" and left out. So the outcome does not depend
    on the order the groups come in, and wild groups cannot hide each other by inflating the pool
    they are tested against (which testing each group against all the others allows)."""
    ordered = sorted((g for g in groups if g.n > 1 and g.variance > 0), key=lambda g: (g.variance, g.name))
    start = max(1, len(ordered) // 2)
    kept = ordered[:start]
    for i in range(start, len(ordered)):
        g = ordered[i]
        df = sum(o.n - 1 for o in kept)
        if stats.f.sf(g.variance / (sum((o.n - 1) * o.variance for o in kept) / df), g.n - 1, df) < ERRATIC_P:
            return _pool(kept, {o.name for o in ordered[i:]})
        kept.append(g)
    return _pool(kept, set())


def _pool(kept: list[Group], erratic: set[str]) -> Pool:
    df = sum(g.n - 1 for g in kept)
    return Pool(sum((g.n - 1) * g.variance for g in kept) / df if df else 0.0, df, erratic)


@dataclass
class Comparison:
    """A − B: the difference of mean accuracy in points, and the ratio of their error odds
    (geometric means over seeds; about the ratio of error rates) with its 95% interval and p-value;
    `adjusted_p` is set by Holm over the comparison's family."""

    a: str
    b: str
    difference: float  # mean accuracy of A minus B, points
    ratio: float | None  # error odds of A / error odds of B
    low: float | None
    high: float | None
    p: float | None
    test: str  # which test, or why there is none
    n_a: int
    n_b: int
    adjusted_p: float | None = None

    @property
    def distinguishable(self) -> bool:
        return self.adjusted_p is not None and self.adjusted_p < ALPHA

    def verdict(self) -> str:
        if self.p is None:
            return f"no test ({self.test})"
        if not self.distinguishable:
            return "not distinguishable"
        return f"{self.a} higher" if self.ratio < 1 else f"{self.b} higher"


def compare(a: Group, b: Group, pool: Pool, level: float = LEVEL) -> Comparison:
    """A − B with the pooled-variance t test on the logit error scale, or Welch's test when either
    group is erratic (or nothing is pooled); no test below two seeds a side."""
    difference = statistics.fmean(a.accuracies) - statistics.fmean(b.accuracies)
    base = dict(a=a.name, b=b.name, difference=difference, n_a=a.n, n_b=b.n)
    if a.n < 2 or b.n < 2:
        return Comparison(**base, ratio=None, low=None, high=None, p=None,
                          test="one seed: compare the runs image by image")
    delta = statistics.fmean(a.logs) - statistics.fmean(b.logs)
    if a.name in pool.erratic or b.name in pool.erratic or not pool.usable:
        se2 = a.variance / a.n + b.variance / b.n
        if se2 == 0:
            return Comparison(**base, ratio=math.exp(delta), low=None, high=None, p=None,
                              test="no seed-to-seed variation to test against")
        num = se2 ** 2
        den = (a.variance / a.n) ** 2 / (a.n - 1) + (b.variance / b.n) ** 2 / (b.n - 1)
        df, se, test = num / den, math.sqrt(se2), "Welch"
    else:
        df, se, test = pool.df, math.sqrt(pool.variance * (1 / a.n + 1 / b.n)), f"pooled t, {pool.df} df"
    t = delta / se
    p = 2 * stats.t.sf(abs(t), df)
    half = stats.t.ppf((1 + level) / 2, df) * se
    return Comparison(**base, ratio=math.exp(delta), low=math.exp(delta - half), high=math.exp(delta + half),
                      p=float(p), test=test)


def correct_family(comparisons: list[Comparison]) -> None:
    """Holm's adjustment over the family's tested comparisons (in place)."""
    tested = [c for c in comparisons if c.p is not None]
    for c, adjusted in zip(tested, holm([c.p for c in tested])):
        c.adjusted_p = adjusted


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
