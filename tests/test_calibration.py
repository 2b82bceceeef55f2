"""Calibration: the declared default analysis keeps its familywise false-positive rate at alpha.

Studies with no real difference between any groups are simulated at every committed study's
layout (its groups and the families its report tests), at its own seed counts, at 2 seeds (the
fewest a lab study uses) and at 5, in three null worlds: equal spreads, spreads 4x apart, and a
collapse to chance that strikes any seed alike. The rate is held to alpha plus three Monte Carlo
standard errors. Two methods known to run over it show that these tests can fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from normlab import calibration
from normlab.analysis import DEFAULT

RESULTS = Path(__file__).resolve().parents[1] / "results"
REPS = 2000


def committed_layouts() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RESULTS.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        layout = calibration.layout_of(summary)
        if layout.families and max(layout.seeds) >= 2:
            out.append((path.parent.name, summary))
    return out


LAYOUTS = committed_layouts()


def ceiling(alpha: float, reps: int) -> float:
    return alpha + calibration.monte_carlo_margin(alpha, reps)


def test_calibration_covers_the_committed_multi_seed_studies():
    names = {name for name, _ in LAYOUTS}
    assert {"mission-powered", "batch-size", "lr-range", "init", "zoo"} <= names


@pytest.mark.parametrize("scenario", calibration.SCENARIOS)
@pytest.mark.parametrize("name,summary", LAYOUTS, ids=[n for n, _ in LAYOUTS])
def test_calibration_default_plan_holds_alpha(name, summary, scenario):
    own = calibration.layout_of(summary)
    for layout in (own, calibration.layout_of(summary, 2), calibration.layout_of(summary, 5)):
        rates = calibration.familywise_rates(DEFAULT, layout, scenario, reps=REPS, seed=11)
        worst = max(rates)
        assert worst <= ceiling(DEFAULT["alpha"], REPS), (
            f"{name} at seeds {sorted(set(layout.seeds))}, {scenario}: familywise rate {worst:.3f}")


def test_calibration_fails_a_plan_that_gives_verdicts_at_two_seeds():
    """The same test with verdicts from 2 seeds: a shared collapse to chance inflates the rate."""
    summary = dict(LAYOUTS)["batch-size"]
    plan = {**DEFAULT, "min_seeds": 2}
    rates = calibration.familywise_rates(plan, calibration.layout_of(summary, 2), "chance", reps=REPS, seed=11)
    assert max(rates) > ceiling(plan["alpha"], REPS) + 0.05


def legacy_pooled_search(plan: dict, groups: list[np.ndarray], pairs) -> np.ndarray:
    """normlab's earlier method: a variance pooled over the study, groups found "erratic" by a
    forward F search (p < 0.01) left out and compared by Welch; the others by the pooled t."""
    reps = groups[0].shape[0]
    out = np.full((reps, len(pairs)), np.nan)
    for r in range(reps):
        data = [g[r] for g in groups]
        var = [np.var(d, ddof=1) for d in data]
        order = sorted((i for i in range(len(data)) if var[i] > 0), key=lambda i: var[i])
        kept, erratic = order[: max(1, len(order) // 2)], set()
        for k in range(len(kept), len(order)):
            df = sum(len(data[i]) - 1 for i in kept)
            pooled = sum((len(data[i]) - 1) * var[i] for i in kept) / df
            if sps.f.sf(var[order[k]] / pooled, len(data[order[k]]) - 1, df) < 0.01:
                erratic = set(order[k:])
                break
            kept.append(order[k])
        df = sum(len(data[i]) - 1 for i in kept)
        pooled = sum((len(data[i]) - 1) * var[i] for i in kept) / df if df else 0.0
        for k, (i, j) in enumerate(pairs):
            a, b = data[i], data[j]
            if i in erratic or j in erratic or pooled == 0:
                out[r, k] = sps.ttest_ind(a, b, equal_var=False).pvalue
            else:
                t = (a.mean() - b.mean()) / math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
                out[r, k] = 2 * sps.t.sf(abs(t), df)
    return out


def test_calibration_fails_the_earlier_pooled_search_at_two_seeds():
    """15 groups x 2 seeds, every pair one family, half the groups 3x the others' spread."""
    layout = calibration.Layout.every_pair("15x2", 15, 2)
    plan = {**DEFAULT, "min_seeds": 2}
    reps = 300
    rate = calibration.familywise_rates(plan, layout, "unequal", reps=reps, seed=5, pvalues=legacy_pooled_search,
                                        sd_ratio=3.0)[0]
    assert rate > ceiling(plan["alpha"], reps) + 0.05, rate


def test_calibration_power_grows_with_seeds():
    shift = 0.25  # logit units, about 3 mission spreads
    powers = [calibration.power_curve({**DEFAULT, "min_seeds": 2}, n, np.array([shift]), reps=800, sd=0.08)[0]
              for n in (3, 5, 10)]
    assert powers[0] < powers[1] < powers[2]
    assert powers[2] > 0.8
