"""How often an analysis plan declares a difference that is not there, and how small a real one it finds.

Studies are simulated with no real difference between any of their groups, at a given layout
(groups, seeds per group, and the families of pairs its report tests), and run through the same
test (`normlab.stats.pair_pvalues`, scipy's `ttest_ind`) a report applies. The familywise false-
positive rate of a family is the share of simulated studies in which at least one of its pairs
came out distinguishable after the family's correction. Three kinds of null world:

- `equal`: every seed drawn from one normal distribution on the analysis scale;
- `unequal`: the same mean, but half the groups' seeds spread `sd_ratio` times more than the rest's;
- `chance`: every seed of every group sits at chance with the same probability (a collapse the
  groups share), the others as in `equal`, so some groups have seeds at chance and others not.

Everything is vectorised over simulated studies: a layout of hundreds of pairs takes a second.
The correction is the reports' own (`normlab.stats.adjust`, vectorised over simulated studies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import adjust, logit_error, pair_pvalues

WORKING = logit_error(99.47, 10000)  # a working model's logit error rate (its value does not matter to a t test)
CHANCE = logit_error(11.35, 10000)  # a run at chance: every seed the same value, as collapsed runs are
SCENARIOS = ("equal", "unequal", "chance")


@dataclass(frozen=True)
class Layout:
    """A study's shape: seeds per group, and its families as pairs of group indices."""

    name: str
    seeds: tuple[int, ...]
    families: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def every_pair(cls, name: str, groups: int, seeds: int) -> Layout:
        pairs = tuple((i, j) for i in range(groups) for j in range(i + 1, groups))
        return cls(name, (seeds,) * groups, (pairs,))


def simulate(layout: Layout, scenario: str, reps: int, rng: np.random.Generator, sd: float = 0.08,
             sd_ratio: float = 4.0, chance_share: float = 0.2) -> list[np.ndarray]:
    """`reps` null studies: for each group, an array (reps, seeds) on the logit error scale."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario={scenario!r}; use one of {', '.join(SCENARIOS)}.")
    groups = []
    for g, n in enumerate(layout.seeds):
        spread = sd * (sd_ratio if scenario == "unequal" and g % 2 else 1.0)
        values = WORKING + spread * rng.standard_normal((reps, n))
        if scenario == "chance":
            values = np.where(rng.random((reps, n)) < chance_share, CHANCE, values)
        groups.append(values)
    return groups


def to_scale(values: np.ndarray, scale: str, n_test: int = 10000) -> np.ndarray:
    """Logit error rates as the plan's scale: themselves, or accuracy points."""
    if scale == "logit_error":
        return values
    q = 1.0 / (1.0 + np.exp(-values))
    errors = np.clip(q * (n_test + 1) - 0.5, 0.0, n_test)
    return 100.0 - 100.0 * errors / n_test


def plan_pvalues(plan: dict, groups: list[np.ndarray], pairs) -> np.ndarray:
    """(reps, pairs): the plan's test's p-values, pairs of the same seed counts tested in one call."""
    scaled = [to_scale(g, plan["scale"]) for g in groups]
    p = np.empty((groups[0].shape[0], len(pairs)))
    shapes: dict[tuple[int, int], list[int]] = {}
    for k, (i, j) in enumerate(pairs):
        shapes.setdefault((groups[i].shape[1], groups[j].shape[1]), []).append(k)
    for ks in shapes.values():
        a = np.stack([scaled[pairs[k][0]] for k in ks], axis=1)
        b = np.stack([scaled[pairs[k][1]] for k in ks], axis=1)
        p[:, ks] = pair_pvalues(plan["test"], a, b)
    return p


def family_rejections(plan: dict, groups: list[np.ndarray], pairs, pvalues=plan_pvalues) -> np.ndarray:
    """(reps, pairs): which pairs each simulated study declares distinguishable under `plan` (a
    verdict needs `min_seeds` on both sides). `pvalues(plan, groups, pairs)` is the test."""
    pairs = list(pairs)
    p = pvalues(plan, groups, pairs)
    verdict = np.array([min(groups[i].shape[1], groups[j].shape[1]) >= plan["min_seeds"] for i, j in pairs])
    adjusted = adjust(plan["correction"], p)
    return (np.nan_to_num(adjusted, nan=1.0) < plan["alpha"]) & verdict[None, :]


def familywise_rates(plan: dict, layout: Layout, scenario: str, reps: int = 2000, seed: int = 0,
                     pvalues=plan_pvalues, **world) -> list[float]:
    """Each family's familywise false-positive rate under `plan` in a null world."""
    groups = simulate(layout, scenario, reps, np.random.default_rng(seed), **world)
    return [float(family_rejections(plan, groups, pairs, pvalues).any(axis=1).mean()) for pairs in layout.families]


def monte_carlo_margin(rate: float, reps: int, z: float = 3.0) -> float:
    """How far a simulated rate can stray from the true one by chance: z binomial standard errors."""
    return z * float(np.sqrt(rate * (1 - rate) / reps))


def power_curve(plan: dict, seeds: int, shifts: np.ndarray, groups: int = 3, reps: int = 2000, seed: int = 0,
                sd: float = 0.08) -> np.ndarray:
    """For each shift (logit units) of one group of an every-pair family of `groups`, the share of
    studies in which that group's pair with an unshifted group comes out distinguishable."""
    rng = np.random.default_rng(seed)
    layout = Layout.every_pair("power", groups, seeds)
    out = []
    for shift in shifts:
        sim = simulate(layout, "equal", reps, rng, sd=sd)
        sim[0] = sim[0] + shift
        rejected = family_rejections(plan, sim, layout.families[0])
        out.append(float(rejected[:, 0].mean()))  # pair (0, 1): the shifted group against one other
    return np.array(out)


def smallest_detected(plan: dict, seeds: int, sd: float, target: float = 0.8, reps: int = 2000,
                      groups: int = 3, seed: int = 0) -> float:
    """The smallest shift (logit units) detected with probability `target`, by bisection on the
    simulated power (common random numbers: the same seed at every shift)."""
    low, high = 0.0, 20.0 * sd
    for _ in range(30):
        mid = (low + high) / 2
        if power_curve(plan, seeds, np.array([mid]), groups, reps, seed, sd)[0] >= target:
            high = mid
        else:
            low = mid
    return high


def layout_of(summary: dict, seeds: int | None = None) -> Layout:
    """A study's layout as its report tests it (its groups and families), with its own seed counts
    or `seeds` in every group."""
    from .axes import varying_settings
    from .comparisons import family_specs, groups_of

    groups = groups_of(summary)
    names = list(groups)
    index = {n: i for i, n in enumerate(names)}
    families = tuple(tuple((index[a], index[b]) for a, b in pairs)
                     for _, pairs in family_specs(summary, varying_settings(summary), names, summary.get("families"))
                     if pairs)
    counts = tuple(seeds or groups[n].n for n in names)
    return Layout(summary.get("study", "study"), counts, families)
