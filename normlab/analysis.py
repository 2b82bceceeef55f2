"""A study's analysis plan, declared when the study is created, before any of its data exists.

The plan names the metric and the scale it is tested on, the test, how comparisons are grouped
into families, the correction within a family, alpha, and the seeds an arm needs before a report
states a verdict (below that it gives the direction and the estimate only). study.json keeps it
with the date it was declared and whether that was before or after the data; `normlab report`
applies it, and any other plan asked for is shown beside it, labelled exploratory.

The defaults are the ones the calibration simulation in the test suite holds to their false-
positive rate at every layout the lab uses (docs/statistics.md): Welch's statistic per pair on
Hsu's conservative degrees of freedom, on the logit error rate, Holm within each family, and a
verdict only from 5 seeds an arm (below that, collapses to chance that strike groups alike by
luck push the rate far over alpha). Each method maps to one library call (normlab.stats).
"""

from __future__ import annotations

import datetime as _dt

from .errors import NormlabError

TESTS = ("welch-hsu", "welch", "student")  # per pair, scipy.stats.ttest_ind (normlab.stats.pair_pvalues)
CORRECTIONS = ("holm", "bonferroni", "none")  # within each family: normlab.stats.adjust
METRICS = ("final_test_accuracy", "best_test_accuracy")
SCALES = ("logit_error", "points")  # log(errors / correct), half an image added to each; or raw points
FAMILIES = ("declared",)  # the study file's [[family]] entries; without them, one per varying setting

DEFAULT = {
    "metric": "final_test_accuracy",
    "scale": "logit_error",
    "test": "welch-hsu",
    "correction": "holm",
    "alpha": 0.05,
    "families": "declared",
    "min_seeds": 5,
    "single_runs": "mcnemar",  # arms of one seed each: exact McNemar on the test images, within the family
}
KEYS = tuple(DEFAULT)


class AnalysisError(NormlabError, ValueError):
    """An analysis plan that names an unknown method or an impossible value."""


def validate(plan: dict, where: str = "the analysis") -> dict:
    """`plan` completed with the defaults, or AnalysisError naming the first bad field."""
    if not isinstance(plan, dict):
        raise AnalysisError(f"{where} must be a table of settings, not {type(plan).__name__}.")
    unknown = sorted(set(plan) - set(KEYS) - {"declared", "declared_on"})
    if unknown:
        raise AnalysisError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(KEYS)}.")
    out = {**DEFAULT, **{k: v for k, v in plan.items() if k in KEYS}}
    for key, allowed in (("metric", METRICS), ("scale", SCALES), ("test", TESTS), ("correction", CORRECTIONS),
                         ("families", FAMILIES), ("single_runs", ("mcnemar",))):
        if out[key] not in allowed:
            raise AnalysisError(f"{where}: {key} = {out[key]!r} is not one of {', '.join(allowed)}.")
    alpha = out["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise AnalysisError(f"{where}: alpha = {alpha!r} must be a number between 0 and 0.5 (e.g. 0.05).")
    seeds = out["min_seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 2 <= seeds <= 1000:
        raise AnalysisError(f"{where}: min_seeds = {seeds!r} must be a whole number from 2 to 1000.")
    for key in ("declared", "declared_on"):
        if key in plan:
            out[key] = plan[key]
    return out


def declare(plan: dict | None, before_data: bool, today: _dt.date | None = None) -> dict:
    """The plan as study.json records it: validated, with when and relative to what it was declared."""
    out = validate(plan or {})
    out["declared"] = "before the data" if before_data else "after the data"
    out["declared_on"] = (today or _dt.date.today()).isoformat()
    return out


_TEST_WORDS = {"welch-hsu": "Welch's statistic per pair (scipy `ttest_ind`, unequal variances) on Hsu's "
                            "conservative min(n) − 1 degrees of freedom",
               "welch": "Welch's test per pair (scipy `ttest_ind`, unequal variances, Welch–Satterthwaite df)",
               "student": "Student's t test per pair (scipy `ttest_ind`, the pair's variance pooled)"}
# the definitions normlab.stats.adjust is held equal to, to 1e-12, by tests/test_statistics.py
_CORRECTION_WORDS = {"holm": "Holm within each family (statsmodels `multipletests`)",
                     "bonferroni": "Bonferroni within each family (statsmodels `multipletests`)",
                     "none": "no correction for the family"}
_SCALE_WORDS = {"logit_error": "the logit error rate", "points": "accuracy points"}


def describe(plan: dict) -> str:
    """The plan in one sentence a reader can check a report against."""
    metric = plan["metric"].replace("_", " ")
    return (f"{_TEST_WORDS[plan['test']]} on {_SCALE_WORDS[plan['scale']]} of the {metric}, "
            f"{_CORRECTION_WORDS[plan['correction']]}, alpha {plan['alpha']:g}, a verdict from "
            f"{plan['min_seeds']} seeds an arm")


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` words (e.g. from `--exploratory test=student correction=none`) as a validated plan."""
    plan: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AnalysisError(f"{item!r} is not KEY=VALUE; e.g. test=student or alpha=0.01.")
        if key in plan:
            raise AnalysisError(f"{key} is given twice; give each setting of the exploratory plan once.")
        if key == "alpha":
            try:
                plan[key] = float(value)
            except ValueError:
                raise AnalysisError(f"alpha={value!r} is not a number; e.g. alpha=0.01.") from None
        elif key == "min_seeds":
            try:
                plan[key] = int(value)
            except ValueError:
                raise AnalysisError(f"min_seeds={value!r} is not a whole number; e.g. min_seeds=3.") from None
        else:
            plan[key] = value
    return validate(plan, "the exploratory plan")
