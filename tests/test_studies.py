"""Studies are TOML files; every setting takes several values; comparisons carry 95% intervals."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import fields

import pytest

from normlab import figures as figures_module
from normlab import report as report_module
from normlab.cli import build_parser, main
from normlab.config import SETTINGS, ExperimentConfig
from normlab.errors import NormlabError
from normlab.studies import PRESET_DIR, build_study, grid_study, presets

TINY = ["--epochs", "1", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]


def test_the_presets_are_files_and_keep_their_experiments():
    assert {"mission", "grid15", "batch-size", "gn-groups"} <= set(presets())
    mission = build_study("mission", seeds=[1, 2])
    assert [e.dirname for e in mission.experiments] == [
        "bn-l1-seed1", "gn-seed1", "ln-seed1", "bn-l1-seed2", "gn-seed2", "ln-seed2"]
    assert [e.l1 for e in mission.experiments[:3]] == [0.0001, 0.0, 0.0]
    assert all(e.epochs == 20 for e in mission.experiments)
    grid15 = build_study("grid15").experiments
    assert len(grid15) == 15 and grid15[0].name == "bn-l1_0-l2_0" and grid15[-1].name == "gn-l1_0-l2_0.002"
    sizes = {e.name: (e.batch_size, e.lr) for e in build_study("batch-size").experiments}
    assert sizes["bn-b2"] == (2, 0.0003125) and sizes["ln-b128"] == (128, 0.02)  # LR scales with the batch
    assert [e.name for e in build_study("gn-groups").experiments] == ["gn-g1", "gn-g2", "gn-g4", "gn-g8"]


def test_a_preset_runs_by_its_path_exactly_as_by_its_name(tmp_path, capsys):
    by_name = build_study("mission")
    by_path = build_study(str(PRESET_DIR / "mission.toml"))
    assert [e.to_dict() for e in by_name.experiments] == [e.to_dict() for e in by_path.experiments]
    assert main(["run", str(PRESET_DIR / "mission.toml"), "--dry-run", "--out", str(tmp_path / "m")]) == 0
    assert "study mission: 9 experiments" in capsys.readouterr().out  # 3 models x its 3 seeds


def test_a_user_study_file_is_the_union_of_its_grids(tmp_path):
    path = tmp_path / "my-study.toml"
    path.write_text('description = "mine"\n[base]\nepochs = 3\n'
                    '[[grid]]\nnorm = ["bn", "ln"]\nmomentum = [0.8, 0.9]\n'
                    '[[grid]]\nname = "wide-{dropout}"\nnorm = "gn"\ndropout = [0.0, 0.1]\n')
    study = build_study(path, seeds=[1, 2])
    assert study.name == "my-study" and study.description == "mine"
    names = [e.dirname for e in study.experiments]
    # untemplated names hold every setting that varies anywhere in the study, so they stay unique
    assert names[:6] == ["bn-dropout0.05-momentum0.8-seed1", "bn-dropout0.05-momentum0.9-seed1",
                         "ln-dropout0.05-momentum0.8-seed1", "ln-dropout0.05-momentum0.9-seed1",
                         "wide-0.0-seed1", "wide-0.1-seed1"]
    assert len(names) == 12 and names[6].endswith("seed2") and all(e.epochs == 3 for e in study.experiments)


@pytest.mark.parametrize("text, message", [
    ('[[grid]]\nnorm = "bn"\nlearning_rate = 0.1\n', "unknown key(s) learning_rate; known: name, norm, groups"),
    ('colour = "red"\n[[grid]]\nnorm = "bn"\n', "unknown key(s) colour; known: description, base, grid"),
    ('[base]\nepochs = 2\n', "needs at least one non-empty [[grid]]"),
    ('[[grid]]\nnorm = "bn"\nlr = [0.1\n', "is not valid TOML"),
    ('[[grid]]\nnorm = "bn"\nname = "same"\n[[grid]]\nnorm = "gn"\nname = "same"\n',
     "two different experiments would both be named 'same' (they differ in norm"),
    ('[[grid]]\nnorm = "bn"\nname = "x-{colour}"\n', "name template 'x-{colour}' does not fit"),
    ('[[grid]]\nnorm = "bn"\nlr = -1.0\n', "bad.toml: lr=-1.0 must be positive"),
    ('[[grid]]\nnorm = "bn"\nepochs = "3"\n', "bad.toml: epochs='3' must be a positive integer"),
    ('[[grid]]\nnorm = "bn"\nlr = []\n', "lr = [] has no values"),
    ('[[grid]]\nnorm = "bn"\nname = "x{norm.foo}"\n', "name template 'x{norm.foo}' does not fit"),
    ('[[grid]]\nnorm = "bn"\nname = "a/{norm}"\n', "gives 'a/bn', not a safe experiment name"),
    ('description = [1]\n[[grid]]\nnorm = "bn"\n', "description must be a string"),
])
def test_a_bad_study_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(NormlabError, match=re.escape(message)):
        build_study(path)


def test_a_study_file_that_is_not_text_or_not_a_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "x.toml").write_bytes(b"\xff\xfe[[grid]]\n")
    assert main(["run", str(tmp_path / "x.toml"), "--dry-run"]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(ValueError, match="is a directory"):  # from Python: a ValueError too
        build_study(tmp_path / "d.toml")
    with pytest.raises(ValueError, match="unknown study 'nosuch'"):
        build_study("nosuch")
    with pytest.raises(ValueError, match="seeds=\\[\\] needs at least one seed"):
        build_study("mission", seeds=[])


def test_values_that_name_the_same_experiment_run_once():
    assert [e.name for e in grid_study({"norm": ["BN", "bn"]}).experiments] == ["bn"]
    assert len(build_study("mission", grid={"lr": 0.01}).experiments) == 9  # a scalar is one value (3 seeds)


def test_every_setting_of_the_config_is_a_flag_that_takes_several_values():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    flags = {a.option_strings[0]: a for a in run._actions if a.option_strings}
    for f in fields(ExperimentConfig):
        if f.name != "name":
            flag = flags["--" + f.name.replace("_", "-")]
            assert flag.dest == f.name and flag.nargs == "+", f.name
            assert f.metadata["help"] in flag.help


def test_the_command_line_grid_is_the_cartesian_product(tmp_path, capsys):
    grid = {"norm": ["bn", "gn", "ln"], "lr": [0.01, 0.02, 0.05]}
    study = grid_study(grid, seeds=[1, 2, 3])
    assert len(study.experiments) == 27
    got = {(e.norm, e.lr, e.seed) for e in study.experiments}
    assert got == set(itertools.product(grid["norm"], grid["lr"], [1, 2, 3]))
    assert study.experiments[0].name == "bn-lr0.01" and [e.seed for e in study.experiments[:9]] == [1] * 9
    assert main(["run", "--norm", "bn", "gn", "ln", "--lr", "0.01", "0.02", "0.05", "--seeds", "1", "2", "3",
                 "--dry-run", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "study grid: 27 experiments" in out and "gn-lr0.05-seed3" in out


def test_a_setting_with_several_values_multiplies_a_preset(tmp_path, capsys):
    study = build_study("mission", grid={"dropout": [0.0, 0.1], "epochs": [2]})
    assert [e.name for e in study.experiments if e.seed == 1] == [
        "bn-l1-dropout0", "bn-l1-dropout0.1", "gn-dropout0", "gn-dropout0.1", "ln-dropout0", "ln-dropout0.1"]
    assert {e.epochs for e in study.experiments} == {2}


def test_config_json_holds_every_setting_augmentation_included(tmp_path, monkeypatch):
    monkeypatch.setattr(figures_module, "REGISTRY", [])  # no figure is drawn
    monkeypatch.setattr(report_module, "plot_misclassified", lambda *a, **k: None)
    assert main(["train", "--norm", "ln", *TINY, "--rotate", "15", "--out", str(tmp_path), "--quiet"]) == 0
    config = json.loads((tmp_path / "ln-seed1" / "config.json").read_text())
    assert set(config) == {"name", *SETTINGS} and config["rotate"] == 15.0
    (entry,) = json.loads((tmp_path / "summary.json").read_text())["experiments"]
    assert {k: entry[k] for k in config} == config  # the summary carries the whole config


@pytest.mark.slow
def test_a_grid_over_other_settings_runs_exactly_the_product_and_reports_intervals(tmp_path, monkeypatch):
    monkeypatch.setattr(figures_module, "REGISTRY", [])  # no figure is drawn
    monkeypatch.setattr(report_module, "plot_misclassified", lambda *a, **k: None)
    out = tmp_path / "g"
    assert main(["run", "--norm", "ln", "--momentum", "0.8", "0.9", "--shear", "0", "20", "--seeds", "1", "2",
                 *TINY, "--out", str(out), "--workers", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    got = sorted((e["momentum"], e["shear"], e["seed"]) for e in summary["experiments"])
    assert got == sorted(itertools.product([0.8, 0.9], [0.0, 20.0], [1, 2]))
    assert all(e["status"] == "done" for e in summary["experiments"])
    report = (out / "report.md").read_text()
    assert "## Comparisons" in report and "Holm" in report
    assert "### Every pair of experiments (6 tests)" in report  # four names: one family of every pair
    assert "the first 128 of 60,000 training and 64 of 10,000 test images" in report
    # momentum is a real setting: it changes the training (OneCycleLR would otherwise override it)
    by_momentum = {e["momentum"]: e["final_train_loss"] for e in summary["experiments"]
                   if e["seed"] == 1 and e["shear"] == 0.0}
    assert by_momentum[0.8] != by_momentum[0.9]
