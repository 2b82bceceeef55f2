"""A committed report's corrected comparisons and intervals, recomputed from its per-experiment
files by an independent route: the final accuracies read from each metrics.csv, the plan read from
study.json, Welch's statistic and its standard error from statsmodels' CompareMeans (Hsu's degrees
of freedom applied here), McNemar from statsmodels, the Holm correction from statsmodels — none of
normlab's statistics code. A mismatch means the report says something its files do not."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["mission", "mission-powered", "placement", "init", "zoo", "batch-size", "gn-groups", "lr-range",
           "mission-fashion-mnist", "grid15"]
IGNORED = {"name", "seed", "dataset", "epochs"}  # what never makes two experiment names differ in a setting


class Study:
    """The finished runs of one committed study, read straight from their folders."""

    def __init__(self, name: str):
        self.dir = ROOT / "results" / name
        self.text = (self.dir / "report.md").read_text()
        self.acc: dict[str, list[float]] = defaultdict(list)
        self.cfg: dict[str, dict] = {}
        self.wrong: dict[str, set[int]] = {}
        self.n_test = None
        for d in sorted(p for p in self.dir.iterdir() if (p / "metrics.csv").exists()):
            if json.loads((d / "status.json").read_text())["status"] != "done":
                continue
            cfg = json.loads((d / "config.json").read_text())
            rows = list(csv.DictReader((d / "metrics.csv").open()))
            self.acc[cfg["name"]].append(float(rows[-1]["test_accuracy"]))
            self.cfg.setdefault(cfg["name"], cfg)
            wrong = json.loads((d / "misclassified.json").read_text()).get("wrong_indices")
            if wrong is not None:
                self.wrong[cfg["name"]] = set(wrong)
            n = cfg.get("test_limit") or 10000
            assert self.n_test in (None, n)
            self.n_test = n
        self.logit = {k: logit(np.array(v), self.n_test) for k, v in self.acc.items()}
        self.plan = json.loads((self.dir / "study.json").read_text())["analysis"]


def logit(acc: np.ndarray, n: int) -> np.ndarray:
    wrong = (100 - acc) / 100 * n
    return np.log((wrong + 0.5) / (n - wrong + 0.5))


def sections(text: str) -> list[tuple[str, int, list[list[str]]]]:
    """(heading, number of tests, rows) of every comparison table."""
    out = []
    for block in re.split(r"\n### ", text.split("## Comparisons", 1)[1].split("\n## ", 1)[0])[1:]:
        heading = block.splitlines()[0]
        size = int(re.search(r"\((\d+) tests?\)", heading).group(1))
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
                if line.startswith("| ") and not line.startswith("| A ")]
        out.append((heading, size, rows))
    return out


def close(mine: float, shown: str) -> bool:
    """`shown` is `mine` printed to two or three significant digits."""
    value = float(shown)
    return math.isclose(mine, value, rel_tol=0.051, abs_tol=1e-12) or (value == 1 and mine >= 0.995)


def differ_only_in(study: Study, a: str, b: str) -> set[str]:
    ca, cb = study.cfg[a], study.cfg[b]
    return {k for k in ca if k not in IGNORED and ca.get(k) != cb.get(k)}


def compare_pair(study: Study, a: str, b: str) -> tuple[float, float, float, float, str]:
    """(p, odds ratio, low, high, test name) of A against B on the logit error rate, by the study's plan."""
    la, lb = study.logit[a], study.logit[b]
    delta = la.mean() - lb.mean()
    means = CompareMeans(DescrStatsW(la), DescrStatsW(lb))
    test = study.plan["test"]
    if test == "welch-hsu":
        df = min(len(la), len(lb)) - 1
        se = means.std_meandiff_separatevar
        p = 2 * sps.t.sf(abs(delta) / se, df)
        half = sps.t.ppf(0.975, df) * se
        return p, math.exp(delta), math.exp(delta - half), math.exp(delta + half), f"Welch, Hsu's df, {df:.3g} df"
    usevar = "unequal" if test == "welch" else "pooled"
    _t, p, df = means.ttest_ind(usevar=usevar)
    low, high = means.tconfint_diff(usevar=usevar)
    name = "Welch" if test == "welch" else "Student"
    return p, math.exp(delta), math.exp(low), math.exp(high), f"{name}, {df:.3g} df"


@pytest.mark.parametrize("name", STUDIES)
def test_every_corrected_comparison_recomputes_from_the_result_files(name):
    study = Study(name)
    assert study.plan["correction"] == "holm" and study.plan["scale"] == "logit_error"
    assert f"**Analysis plan** (declared {study.plan['declared']}, on {study.plan['declared_on']})" in study.text
    tables = sections(study.text)
    assert tables, "the report has comparison tables"
    for heading, size, rows in tables:
        if rows and len(rows[0]) == 7:  # single runs, image by image
            ps = []
            for a, b, only_a, only_b, p, _holm_p, _verdict in rows:
                wa, wb = study.wrong[a], study.wrong[b]
                assert (int(only_a), int(only_b)) == (len(wa - wb), len(wb - wa)), (heading, a, b)
                table = [[0, len(wa - wb)], [len(wb - wa), 0]]
                ps.append(mcnemar(table, exact=True).pvalue)
                assert close(ps[-1], p), (heading, a, b, ps[-1], p)
            assert len(rows) == size
            for mine, (*_, holm_p, _v) in zip(multipletests(ps, method="holm")[1], rows):
                assert close(mine, holm_p), (heading, mine, holm_p)
            continue
        setting = re.match(r"Pairs that differ in (\w+) alone", heading)
        if setting:  # every pair of names that differ in that setting alone, listed or not
            names = sorted(study.acc, key=list(study.cfg).index)
            pairs = [(a, b) for a, b in itertools.combinations(names, 2)
                     if differ_only_in(study, a, b) == {setting.group(1)}]
        else:
            pairs = [(r[0], r[1]) for r in rows]
        results = {pair: compare_pair(study, *pair) for pair in pairs}
        tested = [(a, b) for a, b in pairs if len(study.logit[a]) > 1 and len(study.logit[b]) > 1
                  and np.ptp(study.logit[a]) + np.ptp(study.logit[b]) > 0]  # no variation at all: no test
        assert len(tested) == size, (heading, len(tested), size)  # the heading counts the tests
        holm = dict(zip(tested, multipletests([results[p][0] for p in tested], method="holm")[1]))
        holm.update({(b, a): v for (a, b), v in list(holm.items())})
        if len(pairs) <= 40:
            assert len(rows) == len(pairs), heading  # a family of up to 40 lists every comparison
        for a, b, _seeds, diff, odds, test, p, holm_p, verdict in rows:
            assert math.isclose(float(diff), np.mean(study.acc[a]) - np.mean(study.acc[b]), abs_tol=0.0006)
            if p in ("–", "-", ""):
                continue
            mine_p, ratio, low, high, mine_test = compare_pair(study, a, b)
            assert test == mine_test, (heading, a, b, test, mine_test)
            assert close(mine_p, p) and close(holm[(a, b)], holm_p), (heading, a, b, mine_p, p, holm[(a, b)], holm_p)
            shown = re.match(r"(\S+) \((\S+) to (\S+)\)", odds)
            assert close(ratio, shown.group(1)) and close(low, shown.group(2)) and close(high, shown.group(3)), \
                (heading, a, b, ratio, low, high, odds)
            if min(len(study.acc[a]), len(study.acc[b])) < study.plan["min_seeds"]:
                assert verdict.startswith("directional (n = "), (heading, a, b, verdict)
                gap = np.mean(study.acc[a]) - np.mean(study.acc[b])
                lead = "level" if abs(gap) < 0.0005 else f"{a if gap >= 0 else b} ahead"
                assert verdict.endswith(f": {lead}"), (heading, a, b, verdict)
            else:
                assert (verdict != "not distinguishable") == (holm[(a, b)] < study.plan["alpha"]), (heading, a, b)


@pytest.mark.parametrize("name", STUDIES)
def test_every_interval_of_a_mean_recomputes_from_the_result_files(name):
    study = Study(name)
    n = study.n_test
    checked = 0
    for line in study.text.split("## Results", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] not in study.acc:
            continue
        checked += 1
        values = study.acc[cells[0]]
        if len(values) < 3:  # below three seeds an interval is a number the data cannot carry
            assert " to " not in cells[5], cells
            continue
        if " to " not in cells[5]:
            assert len(set(values)) == 1, cells  # only where every seed gave one value
            continue
        y = study.logit[cells[0]]
        half = sps.t.ppf(0.975, len(y) - 1) * y.std(ddof=1) / math.sqrt(len(y))

        def back(v: float) -> float:
            q = 1 / (1 + math.exp(-v))
            return 100 - 100 * min(max(q * (n + 1) - 0.5, 0), n) / n

        low, high = (float(x) for x in cells[5].split(" to "))
        assert abs(back(y.mean() + half) - low) <= 0.006 and abs(back(y.mean() - half) - high) <= 0.006, cells
    assert checked == len(study.acc), "every experiment name has its row"


@pytest.mark.parametrize("name", ["mission"])
def test_reporting_a_committed_study_again_changes_no_text_file(tmp_path, monkeypatch, name):
    """`normlab report` only reads results and redraws: on a committed study it rewrites report.md and
    summary.json byte for byte (figures are left out: their bytes depend on the matplotlib build)."""
    import shutil

    from normlab.report import generate_report
    from normlab.summary import refresh_summary

    shutil.copytree(ROOT / "results" / name, tmp_path / "results" / name)
    monkeypatch.chdir(tmp_path)  # the report names its folder as given: results/<name>, as committed
    study = Path("results") / name
    texts = {p: p.read_bytes() for p in study.rglob("*") if p.suffix in (".md", ".json", ".csv")}
    generate_report(study, refresh_summary(study, lambda *_: None))
    changed = [str(p.relative_to(study)) for p, before in texts.items() if p.read_bytes() != before]
    assert not changed, f"re-reporting results/{name} changed {changed}"
