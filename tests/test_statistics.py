"""normlab.stats and the report's comparisons, held to independent implementations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from normlab.comparisons import study_families
from normlab.errors import NormlabError
from normlab.stats import (
    Group,
    compare,
    holm,
    mcnemar,
    mean_interval,
    pooled_variance,
    sampling_error,
)
from normlab.studies import build_study


def test_holm_equals_statsmodels():
    rng = random.Random(0)
    for m in (1, 2, 5, 36):
        ps = [rng.random() ** 3 for _ in range(m)]
        np.testing.assert_allclose(holm(ps), multipletests(ps, method="holm")[1], rtol=0, atol=1e-12)


def test_mcnemar_equals_statsmodels_exact():
    a, b = set(range(0, 30)), set(range(20, 42))
    ours = mcnemar("a", a, "b", b)
    table = [[0, len(a - b)], [len(b - a), 0]]
    assert (ours.only_a_wrong, ours.only_b_wrong) == (20, 12)
    assert math.isclose(ours.p, sm_mcnemar(table, exact=True).pvalue, rel_tol=1e-9)


@pytest.mark.parametrize("values", [[63.74, 96.00, 96.61], [11.35, 99.4, 99.5], [99.99, 100.0, 100.0],
                                    [0.0, 5.0, 1.0]])
def test_intervals_never_leave_what_they_measure(values):
    low, high = mean_interval(values)
    assert 0 <= low <= high <= 100


def test_no_interval_below_three_seeds_and_the_sampling_error_is_binomial():
    assert mean_interval([99.4, 99.5]) is None and mean_interval([99.4]) is None
    assert math.isclose(sampling_error(99.4, 10000), 100 * math.sqrt(0.994 * 0.006 / 10000))
    assert round(sampling_error(99.4, 10000), 3) == 0.077


def _logit_error(acc, n=10000):
    e = (100 - np.asarray(acc)) / 100 * n
    return np.log((e + 0.5) / (n - e + 0.5))


def test_the_pooled_test_equals_a_one_way_anova_contrast():
    """Recomputed with numpy: residual mean square over the groups, t contrast, two-sided p."""
    data = {"a": [99.41, 99.30, 99.19], "b": [99.14, 99.26, 99.17], "c": [99.30, 99.39, 99.35]}
    groups = [Group(k, v, 10000) for k, v in data.items()]
    pool = pooled_variance(groups)
    logs = {k: _logit_error(v) for k, v in data.items()}
    ss = sum(((x - x.mean()) ** 2).sum() for x in logs.values())
    df = sum(len(x) - 1 for x in logs.values())
    assert pool.df == df and math.isclose(pool.variance, ss / df)
    c = compare(groups[0], groups[1], pool)
    t = (logs["a"].mean() - logs["b"].mean()) / math.sqrt(ss / df * (1 / 3 + 1 / 3))
    assert math.isclose(c.p, 2 * scipy_stats.t.sf(abs(t), df), rel_tol=1e-9)
    assert math.isclose(c.ratio, math.exp(logs["a"].mean() - logs["b"].mean()))


def test_an_erratic_group_is_not_pooled_and_is_compared_on_its_own_variance():
    groups = [Group("ok1", [99.4, 99.5, 99.45], 10000), Group("ok2", [99.3, 99.35, 99.4], 10000),
              Group("wild", [63.74, 96.0, 96.61], 10000), Group("chance", [11.35] * 3, 10000)]
    pool = pooled_variance(groups)
    assert pool.erratic == {"wild"} and pool.df == 4  # "chance" never varies: it adds nothing
    c = compare(groups[2], groups[0], pool)
    welch = scipy_stats.ttest_ind(_logit_error(groups[2].accuracies), _logit_error(groups[0].accuracies),
                                  equal_var=False)
    assert c.test == "Welch" and math.isclose(c.p, welch.pvalue, rel_tol=1e-9)


def test_which_groups_are_erratic_does_not_depend_on_their_order():
    """Two wild groups among steady ones: tested in list order, the first wild group can hide the
    second (it inflates the others' pool); the most extreme first, then again, finds both in any order."""
    import itertools

    groups = [Group("ok1", [99.4, 99.5, 99.45], 10000), Group("ok2", [99.3, 99.35, 99.4], 10000),
              Group("ok3", [99.2, 99.3, 99.25], 10000), Group("ok4", [99.5, 99.45, 99.55], 10000),
              Group("wild", [63.74, 96.0, 96.61], 10000), Group("wilder", [11.35, 73.67, 49.12], 10000)]
    outcomes = {(frozenset(p.erratic), p.df) for p in map(pooled_variance, itertools.permutations(groups))}
    assert outcomes == {(frozenset({"wild", "wilder"}), 8)}


def test_single_runs_are_compared_image_by_image(tmp_path):
    import json
    summary = {"experiments": []}
    for name, wrong in (("x", list(range(40))), ("y", list(range(10, 80)))):
        d = tmp_path / f"{name}-seed1"
        d.mkdir()
        (d / "misclassified.json").write_text(json.dumps({"wrong_indices": wrong, "images": [], "wrong_total": 1}))
        summary["experiments"].append({"name": name, "dir": d.name, "status": "done", "final_test_accuracy": 99.0,
                                       "norm": name, "seed": 1, "dataset": "mnist", "test_limit": None})
    families, _ = study_families(tmp_path, summary)
    (paired,) = families[0].paired
    assert (paired.only_a_wrong, paired.only_b_wrong) == (10, 40) and paired.adjusted_p < 0.05


def test_study_files_declare_their_families_and_bad_ones_are_one_sentence(tmp_path):
    assert build_study("placement").families[0]["differ_in"] == "last_norm"
    bad = tmp_path / "s.toml"
    bad.write_text('[[grid]]\nnorm = ["bn", "gn"]\n[[family]]\nquestion = "q"\ndiffer_in = "colour"\n')
    with pytest.raises(NormlabError, match="differ_in = 'colour' is not a setting"):
        build_study(bad)
    bad.write_text('[[grid]]\nnorm = ["bn", "gn"]\n[[family]]\ndiffer_in = "norm"\n')
    with pytest.raises(NormlabError, match="needs a question"):
        build_study(bad)
