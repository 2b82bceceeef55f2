"""Plots and report from a tiny fake result directory: files, titles, labels, one line per model."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from normlab import plots
from normlab.checkpoint import save_checkpoint
from normlab.config import ExperimentConfig
from normlab.fileio import atomic_write_json
from normlab.model import Net, count_parameters
from normlab.recovery import write_views
from normlab.report import aggregate, generate_report
from normlab.summary import refresh_summary
from normlab.view import StudyView

MODELS = [("bn-l1", "bn", 0.0001), ("gn", "gn", 0.0), ("ln", "ln", 0.0)]


def _fake_study(root: Path, seeds=(1,), epochs=4) -> Path:
    """A study directory as normlab writes it, with made-up metrics and an untrained model."""
    rng = np.random.default_rng(0)
    configs = []
    for seed in seeds:
        for name, norm, l1 in MODELS:
            d = root / f"{name}-seed{seed}"
            cfg = ExperimentConfig(name=name, norm=norm, l1=l1, seed=seed, epochs=epochs)
            configs.append(cfg.to_dict())
            rows = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 95 + e / 2, "test_loss": 0.05 / e + rng.random() / 100,
                     "test_accuracy": 98.5 + e / 5 + rng.random() / 10, "lr": 0.01, "seconds": 10.0}
                    for e in range(1, epochs + 1)]
            model = Net(norm)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            record = {"experiment": cfg.to_dict(), "epoch": epochs, "history": rows, "device": "cpu",
                      "params": count_parameters(model), "diverged": None}
            save_checkpoint(d / "model.pt", net_config=model.config, model=model.state_dict(),
                            optimizer=optimizer.state_dict(), scheduler={}, **record)
            write_views(d, record, "done")
            atomic_write_json(d / "misclassified.json", {
                "dataset": "mnist", "rule": "most confident mistakes on the test set", "wrong_total": 40,
                "images": [{"index": i, "true": i % 10, "predicted": (i + 1) % 10, "true_name": str(i % 10),
                            "predicted_name": str((i + 1) % 10), "confidence": 0.9 - i / 100,
                            "pixels": rng.integers(0, 256, (28, 28)).tolist()} for i in range(10)]})
    atomic_write_json(root / "study.json", {
        "study": "mission", "description": "fake", "experiments": configs, "wall_seconds": 12.0,
        "round_wall_seconds": {f"seed {s}": 4.0 + s for s in seeds}})
    return root


@pytest.fixture
def captured(monkeypatch):
    """Keep each figure open long enough to inspect its axes."""
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        real_close(fig)


@pytest.mark.parametrize("seeds", [(1,), (1, 2, 3)])
def test_graphs_have_titles_labels_and_one_line_per_model(tmp_path, captured, seeds):
    root = _fake_study(tmp_path, seeds)
    generate_report(root, refresh_summary(root))
    for f in ("test_loss.png", "test_accuracy.png", "train_vs_test.png", "report.md"):
        assert (root / f).stat().st_size > 0
    loss_fig, acc_fig = captured[0], captured[1]
    for fig, ylabel in ((loss_fig, "test loss"), (acc_fig, "test accuracy (%)")):
        ax = fig.axes[0]
        assert "MNIST" in ax.get_title() and "mission" in ax.get_title()
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel().startswith(ylabel)
        model_lines = [l for l in ax.get_lines() if l.get_label().split(":")[0] in {"bn-l1", "gn", "ln"}]
        assert len(model_lines) == 3
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all("final" in t for t in legend if not t.endswith("target"))
        if len(seeds) > 1:
            assert any("3 seeds" in t for t in legend) and len(ax.collections) == 3  # bands
    assert any("99.4" in t.get_text() for t in acc_fig.axes[0].get_legend().get_texts())


def test_misclassified_grid_has_ten_labelled_images(tmp_path, captured):
    root = _fake_study(tmp_path)
    generate_report(root, refresh_summary(root))
    grid = next(f for f in captured if f is not None and f._suptitle is not None
                and "most confident" in f._suptitle.get_text())
    images = [ax for ax in grid.axes if ax.images]
    assert len(images) == 10 and len(grid.axes) == 10
    assert all("true" in ax.get_title() and "pred" in ax.get_title() for ax in images)
    assert "bn-l1" in grid._suptitle.get_text() and "%" in grid._suptitle.get_text()
    for name, _, _ in MODELS:
        assert (root / f"{name}-seed1" / "misclassified.png").exists()


def test_report_aggregates_seeds_with_mean_and_std(tmp_path):
    root = _fake_study(tmp_path, seeds=(1, 2, 3))
    generate_report(root, refresh_summary(root))
    summary = json.loads((root / "summary.json").read_text())
    summary["experiments"] = [json.loads(json.dumps(e)) for e in summary["experiments"]]
    rows = aggregate(refresh_summary(root), StudyView(root))
    assert [r["name"] for r in rows] == ["bn-l1", "gn", "ln"] and all(r["done"] == 3 for r in rows)
    assert all(r["final_std"] >= 0 and r["final_min"] <= r["final_mean"] <= r["final_max"] for r in rows)
    text = (root / "report.md").read_text()
    assert "±" in text and "![test_accuracy](test_accuracy.png)" in text
    assert "study wall time: 12 s (seed 1: 5 s, seed 2: 6 s, seed 3: 7 s)" in text
    assert plots.describe(rows[0]["entry"]) == "bn-l1: BN, L1 0.0001"


@pytest.mark.parametrize("bn_at_2, panels", [(99.1, 1), (85.0, 2)])
def test_one_varying_setting_is_drawn_against_it_and_zooms_when_one_point_collapses(
        tmp_path, captured, bn_at_2, panels):
    finals = {("bn", 2): bn_at_2, ("bn", 128): 99.3, ("gn", 2): 99.2, ("gn", 128): 99.2}
    summary = {"study": "batch-size", "dataset": "mnist", "epochs": 5, "experiments": [
        {"norm": n, "batch_size": b, "lr": 0.02 * b / 128, "seed": s, "status": "done", "final_test_accuracy": a + d}
        for (n, b), a in finals.items() for s, d in ((1, -0.02), (2, 0.02))]}  # two seeds each
    # the LR follows the batch size one to one: one axis, not two
    assert StudyView(tmp_path).varying(summary) == (["batch_size"], ["norm"])
    assert plots.plot_setting(StudyView(tmp_path), summary, "batch_size", tmp_path / "b.png").exists()
    axes = captured[-1].axes
    assert len(axes) == panels and all(len(ax.get_legend().get_texts()) == 2 for ax in axes)
    assert axes[0].get_xlabel() == "batch_size"
    if panels == 2:
        low, high = axes[1].get_ylim()
        assert low > 90 and high < 100  # the zoom leaves the collapsed point out
    assert "mean of 2 seeds" in captured[-1]._suptitle.get_text()


def test_two_varying_settings_make_a_heatmap_per_norm(tmp_path, captured):
    summary = {"study": "grid", "dataset": "mnist", "epochs": 5, "experiments": [
        {"norm": n, "l1": l1, "l2": l2, "seed": 1, "status": "done", "final_test_accuracy": 99 + l1 * 10 + l2 * 100}
        for n in ("bn", "ln") for l1 in (0.0, 0.01) for l2 in (0.0, 0.001, 0.002)]}
    assert StudyView(tmp_path).varying(summary) == (["l1", "l2"], ["norm"])
    assert plots.plot_heatmaps(StudyView(tmp_path), summary, "l2", "l1", tmp_path / "h.png").exists()
    fig = captured[-1]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["BN", "LN"]
    assert panels[0].get_xlabel() == "l2" and panels[0].get_ylabel() == "l1"
    values = sorted(float(t.get_text()) for t in panels[0].texts)
    assert values == sorted(round(99 + l1 * 10 + l2 * 100, 2) for l1 in (0.0, 0.01) for l2 in (0.0, 0.001, 0.002))


def test_a_report_reads_each_result_file_once(tmp_path, monkeypatch):
    """Every figure and table reads through one StudyView: each metrics.csv and dynamics.csv is
    parsed at most once per report, however many figures and tables use it."""
    import normlab.view as view_module

    root = _fake_study(tmp_path, seeds=(1, 2))
    summary = refresh_summary(root)
    reads = []
    for name in ("read_metrics", "read_dynamics"):
        real = getattr(view_module, name)
        monkeypatch.setattr(view_module, name, lambda path, real=real: reads.append(path) or real(path))
    generate_report(root, summary)
    assert reads and len(reads) == len(set(reads))


def test_a_new_figure_is_one_registry_entry(tmp_path, monkeypatch):
    """A function added to `figures.REGISTRY` is drawn and listed in report.md, with nothing else changed."""
    from normlab import figures

    def final_accuracy_strip(view, shown):
        path = view.dir / "strip.png"
        fig, ax = plt.subplots()
        ax.plot([e["final_test_accuracy"] for e in shown["experiments"]])
        fig.savefig(path)
        plt.close(fig)
        return {"strip": path}

    monkeypatch.setattr(figures, "REGISTRY", [*figures.REGISTRY, final_accuracy_strip])
    root = _fake_study(tmp_path)
    generate_report(root, refresh_summary(root))
    assert (root / "strip.png").exists() and "strip.png" in (root / "report.md").read_text()
