"""The README and its pages under docs/ teach with the project's own numbers: explain output, results,
images. Each quoted result is looked for on the page where it lives."""

from __future__ import annotations

import json
import re
from pathlib import Path

from normlab.explain import explain_text
from normlab.report import aggregate
from normlab.view import StudyView

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
STUDIES = ROOT / "docs" / "studies"


def page(name: str) -> str:
    return (STUDIES / f"{name}.md").read_text()


def test_required_sections():
    for heading in ("### Batch normalization", "### Layer normalization", "### Group normalization",
                    "## What normlab found", "## The mission table", "### Graph 1 and Graph 2", "### Misclassified images"):
        assert heading in README, heading


def test_every_embedded_image_exists_and_graphs_and_grids_are_embedded():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images
    for path in images:
        assert (ROOT / path).is_file(), path
    for needed in ("results/mission/test_loss.png", "results/mission/test_accuracy.png",
                   "results/mission/bn-l1-seed1/misclassified.png", "results/mission/gn-seed1/misclassified.png",
                   "results/mission/ln-seed1/misclassified.png"):
        assert needed in images, needed


def test_explain_output_is_embedded_verbatim():
    output = explain_text()
    assert f"```text\n{output}```" in README
    numeric = [line for line in output.splitlines() if re.search(r"\d", line)]
    assert len(numeric) > 20 and all(line in README for line in numeric)


def test_mission_accuracies_in_the_readme_come_from_the_results():
    summary = json.loads((ROOT / "results" / "mission" / "summary.json").read_text())
    assert {e["name"] for e in summary["experiments"]} == {"bn-l1", "gn", "ln"}
    for e in summary["experiments"]:
        assert e["status"] == "done" and e["epochs_run"] == 20 and e["params"] < 8000
        assert f"{e['final_test_accuracy']:.2f}" in README, e["name"]
    for row in aggregate(summary):
        assert len(row["seeds"]) >= 3, row["name"]
        assert f"{row['final_mean']:.2f} ± {row['final_std']:.2f}" in README, row["name"]
    assert f"{summary['wall_seconds']:,.0f} s" in README
    for r in summary["seed_rounds"]:
        assert f"{r['wall_seconds']:.0f} s" in README, r["seed"]


def test_the_repository_cites_nothing_outside_itself():
    """Facts the project relies on live in its own docs (docs/FACTS.md), not in a team page."""
    outside = ("DESIGN" + ".md", "../" + "shared")
    for path in ROOT.rglob("*"):
        if path.suffix not in (".py", ".md", ".toml", ".ipynb", ".cfg", ".txt") or not path.is_file():
            continue
        if {".venv", "runs", ".git", "data"} & set(path.relative_to(ROOT).parts):
            continue
        text = path.read_text(errors="replace")
        for needle in outside:
            assert needle not in text, f"{path.relative_to(ROOT)} cites {needle}"


def test_docs_facts_hold_the_data_checksums_the_code_verifies():
    from normlab.data import DATASETS
    facts = (ROOT / "docs" / "FACTS.md").read_text()
    for spec in DATASETS.values():
        for md5 in spec.md5.values():
            assert md5 in facts


def test_the_gn_group_count_study_is_complete_and_quoted():
    summary = json.loads((ROOT / "results" / "gn-groups" / "summary.json").read_text())
    entries = summary["experiments"]
    assert sorted({e["groups"] for e in entries}) == [1, 2, 4, 8] and len({e["seed"] for e in entries}) >= 3
    assert all(e["status"] == "done" and e["epochs_run"] == 20 and e["norm"] == "gn" for e in entries)
    text = page("gn-groups")
    for row in aggregate(summary):
        assert f"{row['final_mean']:.2f} ± {row['final_std']:.2f}" in text, row["name"]
    assert "](../../results/gn-groups/groups.png)" in text


def test_the_zoo_study_is_complete_with_dynamics_and_quoted():
    summary = json.loads((ROOT / "results" / "zoo" / "summary.json").read_text())
    entries = summary["experiments"]
    norms = {e["norm"] for e in entries}
    assert {"none", "bn", "gn", "ln"} <= norms and len(norms) >= 8
    assert all(e["status"] == "done" for e in entries)
    for norm in norms:
        assert len({e["seed"] for e in entries if e["norm"] == norm}) >= 3, norm
    for e in entries:
        assert (ROOT / "results" / "zoo" / e["dir"] / "dynamics.csv").stat().st_size > 1000, e["dir"]
    text = page("zoo")
    for row in aggregate(summary):
        assert f"{row['final_mean']:.2f} ± {row['final_std']:.2f}" in text, row["name"]
    for figure in ("results/zoo/input_std.png", "results/zoo/grad_norm.png"):
        assert f"](../../{figure})" in text, figure


def test_the_lr_range_study_is_complete_and_its_table_quoted():
    from normlab.report import tolerance_lines

    summary = json.loads((ROOT / "results" / "lr-range" / "summary.json").read_text())
    entries = summary["experiments"]
    norms, lrs = {e["norm"] for e in entries}, {e["lr"] for e in entries}
    assert len(norms) >= 8 and len(lrs) >= 5 and min(lrs) <= 0.005 and max(lrs) >= 1.0
    assert all(e["epochs"] >= 5 for e in entries)
    for norm in norms:
        for lr in lrs:
            assert len({e["seed"] for e in entries if (e["norm"], e["lr"]) == (norm, lr)}) >= 2, (norm, lr)
    assert all(e["status"] in ("done", "diverged") for e in entries)
    rows = [line for line in tolerance_lines(StudyView(Path(".")), summary, "lr") if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(norms)
    text = page("lr-range")
    for row in rows:
        assert row in text, row
    assert "](../../results/lr-range/lr.png)" in text
