"""A committed report's corrected comparisons and intervals, recomputed from its per-experiment
files by an independent route: the final accuracies read from each metrics.csv, the pooled
variance from a statsmodels one-way OLS, Welch's test from scipy, the Holm correction from
statsmodels — none of normlab's statistics code. A mismatch means the report says something its
files do not."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["mission", "mission-powered", "placement", "init", "zoo", "batch-size", "gn-groups"]


def finals(study: Path) -> tuple[dict[str, list[float]], int]:
    """Each experiment name's final test accuracies over its finished seeds, and the test-set size."""
    by: dict[str, list[float]] = defaultdict(list)
    n_test = None
    for d in sorted(p for p in study.iterdir() if (p / "metrics.csv").exists()):
        if json.loads((d / "status.json").read_text())["status"] != "done":
            continue
        cfg = json.loads((d / "config.json").read_text())
        rows = list(csv.DictReader((d / "metrics.csv").open()))
        by[cfg["name"]].append(float(rows[-1]["test_accuracy"]))
        n = cfg.get("test_limit") or 10000
        assert n_test in (None, n)
        n_test = n
    return by, n_test


def logit(acc: np.ndarray, n: int) -> np.ndarray:
    wrong = (100 - acc) / 100 * n
    return np.log((wrong + 0.5) / (n - wrong + 0.5))


def report_sections(text: str) -> list[tuple[str, list[list[str]]]]:
    """(heading, rows) of every comparison table: rows of | A | B | seeds | diff | odds | test | p | Holm p | verdict |."""
    out = []
    for block in re.split(r"\n### ", text.split("## Comparisons", 1)[1])[1:]:
        heading = block.splitlines()[0]
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
                if line.startswith("| ") and not line.startswith("| A ")]
        if rows and len(rows[0]) == 9:
            out.append((heading, rows))
    return out


def close(mine: float, shown: str) -> bool:
    """`shown` is `mine` printed to two or three significant digits."""
    value = float(shown)
    return math.isclose(mine, value, rel_tol=0.051, abs_tol=1e-12) or (value == 1 and mine >= 0.995)


@pytest.mark.parametrize("name", STUDIES)
def test_every_corrected_comparison_recomputes_from_the_result_files(name):
    study = ROOT / "results" / name
    text = (study / "report.md").read_text()
    if "Holm" not in text:
        pytest.skip(f"results/{name}/report.md predates corrected comparisons")
    by, n = finals(study)
    logs = {k: logit(np.array(v), n) for k, v in by.items()}
    erratic = set()
    m = re.search(r"left out as erratic, and compared with Welch's test on their own variance: ([^)]*)\)", text)
    if m:
        erratic = {s.strip() for s in m.group(1).split(",")}
    pooled = [k for k, v in logs.items() if len(v) > 1 and np.var(v) > 0 and k not in erratic]
    sections = report_sections(text)
    assert sections, "the report has comparison tables"
    mse = df = None
    if pooled:
        frame = pd.DataFrame({"y": np.concatenate([logs[k] for k in pooled]),
                              "g": sum(([k] * len(logs[k]) for k in pooled), [])})
        fit = smf.ols("y ~ C(g)", data=frame).fit()
        mse, df = fit.mse_resid, int(fit.df_resid)
        assert f"one-way layout: {df} degrees of freedom" in text
    for heading, rows in sections:
        tested, shown_holm = [], []
        for a, b, _seeds, diff, odds, test, p, holm_p, _verdict in rows:
            la, lb = logs[a], logs[b]
            assert math.isclose(float(diff), np.mean(by[a]) - np.mean(by[b]), abs_tol=0.0006), (heading, a, b)
            if p in ("–", "-", ""):
                continue
            delta = la.mean() - lb.mean()
            if test == "Welch":
                mine_p = sps.ttest_ind(la, lb, equal_var=False).pvalue
            else:
                assert test == f"pooled t, {df} df", (heading, a, b, test)
                t = delta / math.sqrt(mse * (1 / len(la) + 1 / len(lb)))
                mine_p = 2 * sps.t.sf(abs(t), df)
            assert close(mine_p, p), (heading, a, b, mine_p, p)
            assert close(math.exp(delta), odds.split(" ")[0]), (heading, a, b, math.exp(delta), odds)
            tested.append(mine_p)
            shown_holm.append(holm_p)
        if tested:
            for mine, shown in zip(multipletests(tested, method="holm")[1], shown_holm):
                assert close(mine, shown), (heading, mine, shown)


@pytest.mark.parametrize("name", STUDIES)
def test_every_interval_of_a_mean_recomputes_from_the_result_files(name):
    study = ROOT / "results" / name
    text = (study / "report.md").read_text()
    if "logit error rate, transformed back" not in text:
        pytest.skip(f"results/{name}/report.md predates logit intervals")
    by, n = finals(study)
    checked = 0
    for line in text.split("## Results", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] not in by:
            continue
        if len(by[cells[0]]) < 3:  # below three seeds an interval is a number the data cannot carry
            assert " to " not in cells[5], cells
            checked += 1
            continue
        if " to " not in cells[5]:
            assert len(set(by[cells[0]])) == 1, cells  # only where every seed gave one value
            checked += 1
            continue
        y = logit(np.array(by[cells[0]]), n)
        half = sps.t.ppf(0.975, len(y) - 1) * y.std(ddof=1) / math.sqrt(len(y))

        def back(v: float) -> float:
            q = 1 / (1 + math.exp(-v))
            return 100 - 100 * min(max(q * (n + 1) - 0.5, 0), n) / n

        low, high = (float(x) for x in cells[5].split(" to "))
        assert abs(back(y.mean() + half) - low) <= 0.006 and abs(back(y.mean() - half) - high) <= 0.006, cells
        checked += 1
    assert checked == len(by), "every experiment name has its row"


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
