"""Which comparisons a study's report makes, grouped into the families a reader asks about.

A family answers one question and is corrected as one (the analysis plan's correction, Holm by
default; `normlab.analysis`). A study file may declare its
families (`[[family]]` tables: `question` plus `differ_in = "setting"`, or `among = [names]`
with an optional `reference`); otherwise they follow the study's shape: every pair when it has at
most six experiment names, else one family per varying setting (the pairs that differ in that
setting alone). A study that varies one numeric setting and holds out a validation split adds the
family its tuning asks for: each series at the value chosen on validation accuracy.
Groups of one seed are compared image by image on the shared test set (McNemar), from the wrong
test indices each misclassified.json lists.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .analysis import DEFAULT, describe
from .axes import series_label
from .config import SETTINGS
from .stats import (
    Comparison,
    Group,
    Paired,
    adjust,
    compare,
    correct_family,
    mcnemar,
)
from .view import StudyView

MAX_NAMES_FOR_EVERY_PAIR = 6
MAX_LISTED = 40  # a larger family lists only its distinguishable comparisons


@dataclass
class Family:
    question: str
    comparisons: list[Comparison] = field(default_factory=list)
    paired: list[Paired] = field(default_factory=list)
    note: str = ""


def test_size(entry: dict) -> int:
    """How many test images an experiment was scored on."""
    from .data import DATASETS

    spec = DATASETS.get(entry.get("dataset"))
    full = spec.size("test") if spec else 10000
    return min(entry.get("test_limit") or full, full)


def groups_of(summary: dict) -> dict[str, Group]:
    """Each experiment name's finished runs."""
    finals: dict[str, list[float]] = defaultdict(list)
    entries: dict[str, dict] = {}
    for e in summary["experiments"]:
        if e["status"] == "done":
            finals[e["name"]].append(e["final_test_accuracy"])
            entries.setdefault(e["name"], e)
    return {name: Group(name, values, test_size(entries[name])) for name, values in finals.items()}


Varying = tuple[list[str], list[str]]  # (numeric, categorical) settings that vary: StudyView.varying


def _axes(varying: Varying) -> list[str]:
    numeric, categorical = varying
    return [k for k in SETTINGS if k in numeric or k in categorical]


def _entries_by_name(summary: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in summary["experiments"]:
        out.setdefault(e["name"], e)
    return out


def _pairs_differing_in(summary: dict, varying: Varying, names: list[str], setting: str) -> list[tuple[str, str]]:
    entries, axes = _entries_by_name(summary), _axes(varying)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            differs = [k for k in axes if entries[a].get(k) != entries[b].get(k)]
            if differs == [setting]:
                pairs.append((a, b))
    return pairs


def declared_pairs(summary: dict, varying: Varying, names: list[str], spec: dict) -> list[tuple[str, str]]:
    if "differ_in" in spec:
        return _pairs_differing_in(summary, varying, names, spec["differ_in"])
    among = [n for n in spec.get("among", names) if n in names]
    reference = spec.get("reference")
    if reference:
        return [(n, reference) for n in among if n != reference and reference in names]
    return [(a, b) for i, a in enumerate(among) for b in among[i + 1:]]


def default_families(summary: dict, varying: Varying, names: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    if len(names) <= MAX_NAMES_FOR_EVERY_PAIR:
        return [("every pair of experiments", [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])]
    out = []
    for setting in _axes(varying):
        pairs = _pairs_differing_in(summary, varying, names, setting)
        if pairs:
            out.append((f"pairs that differ in {setting} alone", pairs))
    return out


def _wrong_indices(view: StudyView, summary: dict, name: str) -> set[int] | None:
    entry = next(e for e in summary["experiments"] if e["name"] == name and e["status"] == "done")
    read = view.misclassified(entry)
    wrong = read.value.get("wrong_indices") if read.ok else None
    return set(wrong) if isinstance(wrong, list) else None


def validation_choice(summary: dict, varying: Varying) -> tuple[str, dict[str, str]] | None:
    """(setting, series -> the experiment name chosen on validation) when the study varies one
    numeric setting and every finished run has a validation accuracy: per series (the other
    settings), the value whose mean validation accuracy is highest."""
    numeric, categorical = varying
    done = [e for e in summary["experiments"] if e["status"] == "done"]
    if len(numeric) != 1 or not done or any(e.get("final_val_accuracy") is None for e in done):
        return None
    key = numeric[0]
    by_series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    diverged = {(series_label(e, categorical), e["name"]) for e in summary["experiments"] if e["status"] == "diverged"}
    for e in done:
        by_series[series_label(e, categorical)][e["name"]].append(e["final_val_accuracy"])
    chosen = {}
    for series, runs in by_series.items():
        eligible = {n: statistics.fmean(v) for n, v in runs.items() if (series, n) not in diverged}
        if eligible:
            chosen[series] = max(eligible, key=eligible.get)
    return key, chosen


def family_specs(summary: dict, varying: Varying, names: list[str], declared: list[dict] | None = None
                 ) -> list[tuple[str, list[tuple[str, str]]]]:
    """(question, pairs of experiment names) of every family the report tests; `varying` is the
    study's (numeric, categorical) varying settings, as its view computes them once."""
    specs = [(d.get("question", "declared"), declared_pairs(summary, varying, names, d)) for d in declared] \
        if declared else default_families(summary, varying, names)
    choice = validation_choice(summary, varying)
    if choice and len(choice[1]) > 1:
        key, chosen = choice
        picked = list(chosen.values())
        specs.append((f"each series at its {key} chosen on validation accuracy",
                      [(a, b) for i, a in enumerate(picked) for b in picked[i + 1:]]))
    return specs


def study_families(view: StudyView, summary: dict, declared: list[dict] | None = None,
                   plan: dict | None = None) -> list[Family]:
    """Every family of the study's report, each tested and corrected on its own as `plan` says."""
    plan = plan or DEFAULT
    groups = groups_of(summary)
    families = []
    for question, pairs in family_specs(summary, view.varying(summary), list(groups), declared):
        family = Family(question)
        single = [(a, b) for a, b in pairs if groups[a].n == 1 and groups[b].n == 1]
        for a, b in pairs:
            if (a, b) not in single:
                family.comparisons.append(compare(groups[a], groups[b], plan["test"], plan["scale"],
                                                  alpha=plan["alpha"], min_seeds=plan["min_seeds"]))
        correct_family(family.comparisons, plan["correction"])
        for a, b in single:
            wrong_a, wrong_b = _wrong_indices(view, summary, a), _wrong_indices(view, summary, b)
            if wrong_a is None or wrong_b is None:
                family.note = ("single runs without the list of wrong test images (misclassified.json "
                               "written before normlab kept it) cannot be compared image by image")
                continue
            family.paired.append(mcnemar(a, wrong_a, b, wrong_b))
        for p, adjusted in zip(family.paired, adjust(plan["correction"], [p.p for p in family.paired])):
            p.adjusted_p = float(adjusted)
        if family.comparisons or family.paired or family.note:
            families.append(family)
    return families


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def _interval(c: Comparison) -> str:
    if c.ratio is None:  # the points scale: the difference's own interval
        return f"{c.low:+.3f} to {c.high:+.3f}" if c.low is not None else "–"
    return f"{c.ratio:.3g} ({c.low:.3g} to {c.high:.3g})" if c.low is not None else f"{c.ratio:.3g}"


def comparison_lines(view: StudyView, summary: dict, declared: list[dict] | None = None,
                     plan: dict | None = None, exploratory: dict | None = None) -> list[str]:
    """report.md's comparisons: one table per family, as the declared `plan` tests and corrects them;
    with `exploratory`, that plan's p-values and verdicts beside them, labelled exploratory."""
    plan = plan or DEFAULT
    families = study_families(view, summary, declared, plan)
    if not families:
        return []
    other = study_families(view, summary, declared, exploratory) if exploratory else None
    groups = groups_of(summary)
    n_test = min((g.n_test for g in groups.values()), default=10000)
    effect = ("the ratio of error odds (A / B, about the ratio of error rates; below 1: A makes fewer errors) "
              "with its 95% interval" if plan["scale"] == "logit_error" else
              "the difference in points with its 95% interval")
    lines = ["", "## Comparisons", "",
             f"**Analysis plan** ({plan_origin(plan)}): {describe(plan)}. "
             f"Each table answers one question, and its p-values are corrected together for multiple comparisons. "
             f"The effect is {effect}. Below {plan['min_seeds']} seeds an arm a row gives the direction and the "
             "estimate, not a verdict. "
             f"Every run is scored on the same {n_test:,} test images, so these tests do not include the test "
             "set's own sampling error; single runs are compared image by image (McNemar's exact test on the "
             "images only one of the two got wrong)."]
    if exploratory:
        lines += ["", f"**Exploratory** (not the declared plan; asked for after the data): {describe(exploratory)}. "
                  "Its p-values and verdicts stand beside the declared ones and never replace them."]
    for i, family in enumerate(families):
        alt = {(c.a, c.b): c for c in other[i].comparisons} if other else {}
        alt_paired = {(p.a, p.b): p for p in other[i].paired} if other else {}
        tested = len([c for c in family.comparisons if c.p is not None]) + len(family.paired)
        lines += ["", f"### {family.question[:1].upper()}{family.question[1:]} ({tested} test{'s' if tested != 1 else ''})", ""]
        if family.comparisons:
            extra_head, extra_rule = (" exploratory p | exploratory verdict |", "---:|---|") if other else ("", "")
            effect_head = "error odds A/B (95% CI)" if plan["scale"] == "logit_error" else "95% CI (points)"
            lines += [f"| A | B | seeds | A − B (points) | {effect_head} | test | p | {_correction_head(plan)} | verdict |"
                      + extra_head,
                      "|---|---|---:|---:|---:|---|---:|---:|---|" + extra_rule]
            shown = family.comparisons
            if len(shown) > MAX_LISTED:
                shown = [c for c in shown if c.distinguishable or (other and alt[(c.a, c.b)].distinguishable)]
            for c in shown:
                seeds = str(c.n_a) if c.n_a == c.n_b else f"{c.n_a}, {c.n_b}"
                row = (f"| {c.a} | {c.b} | {seeds} | {c.difference:+.3f} | {_interval(c)} | {c.test} | {_p(c.p)} | "
                       f"{_p(c.adjusted_p)} | {c.verdict()} |")
                if other:
                    x = alt[(c.a, c.b)]
                    row += f" {_p(x.adjusted_p)} | {x.verdict()} |"
                lines.append(row)
            if len(shown) < len(family.comparisons):
                lines += ["", f"The other {len(family.comparisons) - len(shown)} comparisons of this family are not "
                          f"listed: none has a corrected p below {plan['alpha']:g} (and below {plan['min_seeds']} seeds "
                          "an arm a row would be directional in any case)."]
        if family.paired:
            lines += ["", f"| A | B | only A wrong | only B wrong | McNemar p | {_correction_head(plan)} | verdict |",
                      "|---|---|---:|---:|---:|---:|---|"]
            for p in family.paired:
                lines.append(f"| {p.a} | {p.b} | {p.only_a_wrong} | {p.only_b_wrong} | {_p(p.p)} | "
                             f"{_p(p.adjusted_p)} | {_paired_verdict(p, plan['alpha'])} |")
                if other and (p.a, p.b) in alt_paired:
                    x = alt_paired[(p.a, p.b)]
                    lines[-1] += f" exploratory: {_p(x.adjusted_p)}, {_paired_verdict(x, exploratory['alpha'])} |"
        if family.note:
            lines += ["", f"Note: {family.note}."]
    return lines


def _correction_head(plan: dict) -> str:
    return {"holm": "Holm p", "bonferroni": "Bonferroni p", "none": "p (uncorrected)"}[plan["correction"]]


def _paired_verdict(p: Paired, alpha: float) -> str:
    if p.adjusted_p >= alpha:
        return "not distinguishable"
    return f"{p.a} higher" if p.only_a_wrong < p.only_b_wrong else f"{p.b} higher"


def plan_origin(plan: dict) -> str:
    """When the plan was fixed: before or after the data, and on which day."""
    declared = plan.get("declared")
    if declared is None:
        return "no plan on record: normlab's default, applied after the data"
    on = f", on {plan['declared_on']}" if plan.get("declared_on") else ""
    return f"declared {declared}{on}"
