"""normlab.stats and the report's comparisons, held to independent implementations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from normlab.analysis import AnalysisError, parse_overrides, validate
from normlab.comparisons import study_families
from normlab.errors import NormlabError
from normlab.stats import (
    Group,
    adjust,
    compare,
    mcnemar,
    mean_interval,
    pair_pvalues,
    sampling_error,
)
from normlab.studies import build_study
from normlab.view import StudyView


def test_corrections_are_statsmodels_multipletests():
    rng = random.Random(0)
    for m in (1, 2, 5, 36):
        ps = [rng.random() ** 3 for _ in range(m)]
        ps[m // 2] = ps[0]  # a tie
        for method in ("holm", "bonferroni"):
            np.testing.assert_allclose(adjust(method, ps), multipletests(ps, method=method)[1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(adjust("none", ps), ps)


def test_corrections_of_many_families_at_once_equal_multipletests_row_by_row():
    """Vectorised over families (the calibration's thousands), untested pairs (NaN) left out."""
    rng = np.random.default_rng(3)
    p = rng.random((2, 4, 9)) ** 2
    p[rng.random(p.shape) < 0.15] = np.nan
    p[0, 0] = np.nan  # a family with nothing tested
    for method in ("holm", "bonferroni"):
        mine = adjust(method, p)
        for family, adjusted in zip(p.reshape(-1, 9), mine.reshape(-1, 9)):
            tested = ~np.isnan(family)
            assert np.array_equal(np.isnan(adjusted), ~tested)
            if tested.any():
                np.testing.assert_allclose(adjusted[tested], multipletests(family[tested], method=method)[1],
                                           rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="correction='fdr'"):
        adjust("fdr", [0.1, 0.2])


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


def test_welch_hsu_is_welchs_statistic_on_min_n_minus_one_df():
    """Recomputed with numpy: Welch's t on the logit error scale, two-sided p on min(n) - 1 df."""
    data = {"a": [99.41, 99.30, 99.19, 99.35], "b": [99.14, 99.26, 99.17]}
    la, lb = _logit_error(data["a"]), _logit_error(data["b"])
    se = math.sqrt(la.var(ddof=1) / 4 + lb.var(ddof=1) / 3)
    t = (la.mean() - lb.mean()) / se
    c = compare(Group("a", data["a"], 10000), Group("b", data["b"], 10000), "welch-hsu")
    assert math.isclose(c.p, 2 * scipy_stats.t.sf(abs(t), 2), rel_tol=1e-9)
    half = scipy_stats.t.ppf(0.975, 2) * se
    assert math.isclose(c.low, math.exp(la.mean() - lb.mean() - half), rel_tol=1e-9)
    assert math.isclose(c.ratio, math.exp(la.mean() - lb.mean()))
    assert c.test == "Welch, Hsu's df, 2 df"


@pytest.mark.parametrize("test,equal_var", [("welch", False), ("student", True)])
def test_welch_and_student_are_scipys_ttest_ind(test, equal_var):
    a, b = [63.74, 96.0, 96.61], [99.4, 99.5, 99.45]
    c = compare(Group("a", a, 10000), Group("b", b, 10000), test)
    ref = scipy_stats.ttest_ind(_logit_error(a), _logit_error(b), equal_var=equal_var)
    assert math.isclose(c.p, ref.pvalue, rel_tol=1e-9)
    assert math.isclose(math.log(c.low), ref.confidence_interval().low, rel_tol=1e-9)
    points = compare(Group("a", a, 10000), Group("b", b, 10000), test, scale="points")
    assert math.isclose(points.p, scipy_stats.ttest_ind(a, b, equal_var=equal_var).pvalue, rel_tol=1e-9)
    assert points.ratio is None and points.low < points.difference < points.high


def test_vectorised_pvalues_equal_the_per_pair_ones_and_nothing_varies_is_no_test():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    for test in ("welch-hsu", "welch", "student"):
        batch = pair_pvalues(test, a, b)
        for k in range(4):
            one = compare(Group("a", list(100 - np.exp(a[k])), 10000), Group("b", list(100 - np.exp(b[k])), 10000),
                          test, scale="points")
            assert math.isclose(batch[k], pair_pvalues(test, a[k], b[k]), rel_tol=1e-12)
            assert one.p is not None
    assert np.isnan(pair_pvalues("welch-hsu", np.zeros(3), np.ones(3)))  # every seed at one value on each side
    chance = compare(Group("x", [11.35] * 3, 10000), Group("y", [9.8] * 3, 10000))
    assert chance.p is None and "no seed-to-seed variation" in chance.verdict()


def test_a_verdict_needs_the_plans_seeds_else_it_is_a_direction():
    a, b = Group("a", [99.6, 99.61, 99.62], 10000), Group("b", [99.0, 99.01, 99.02], 10000)
    c = compare(a, b, min_seeds=5)
    c.adjusted_p = c.p
    assert c.verdict() == "directional (n = 3): a ahead"
    c = compare(a, b, min_seeds=3)
    c.adjusted_p = c.p
    assert c.verdict() == "a higher"


def test_analysis_plans_are_checked_and_overrides_are_key_value():
    assert validate({})["test"] == "welch-hsu" and validate({})["min_seeds"] == 5
    assert parse_overrides(["test=student", "alpha=0.01", "min_seeds=3"])["alpha"] == 0.01
    for bad, words in ((["test=ttest"], "test = 'ttest' is not one of"), (["alpha=0.9"], "alpha"),
                       (["alpha=x"], "not a number"), (["min_seeds=1"], "min_seeds"), (["oops"], "KEY=VALUE"),
                       (["colour=red"], "unknown field")):
        with pytest.raises(AnalysisError, match=words):
            parse_overrides(bad)
    with pytest.raises(ValueError):  # AnalysisError is a ValueError for Python callers
        validate({"correction": "sidak"})


def test_single_runs_are_compared_image_by_image(tmp_path):
    import json
    summary = {"experiments": []}
    for name, wrong in (("x", list(range(40))), ("y", list(range(10, 80)))):
        d = tmp_path / f"{name}-seed1"
        d.mkdir()
        (d / "misclassified.json").write_text(json.dumps({"wrong_indices": wrong, "images": [], "wrong_total": 1}))
        summary["experiments"].append({"name": name, "dir": d.name, "status": "done", "final_test_accuracy": 99.0,
                                       "norm": name, "seed": 1, "dataset": "mnist", "test_limit": None})
    families = study_families(StudyView(tmp_path), summary)
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
