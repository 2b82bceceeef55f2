"""Every figure of a study's report, in one registry: a new figure is one entry here (and one test).

Each entry draws from the study's `StudyView` and the experiments shown (the damaged left out)
and returns {key: path of the PNG, or None when the study has nothing to draw}; report.md lists
the figures in this order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .plot_dynamics import FIGURES as DYNAMICS_STATISTICS
from .plot_dynamics import plot_dynamics
from .plots import plot_comparison, plot_heatmaps, plot_metric, plot_setting, plot_train_vs_test
from .view import StudyView

Drawn = dict[str, Path | None]


def test_curves(view: StudyView, shown: dict) -> Drawn:
    """Graph 1 and Graph 2: test loss and test accuracy per epoch, one line per model."""
    return {metric: plot_metric(view, shown, metric, view.dir / f"{metric}.png")
            for metric in ("test_loss", "test_accuracy")}


def train_vs_test(view: StudyView, shown: dict) -> Drawn:
    return {"train_vs_test": plot_train_vs_test(view, shown, view.dir / "train_vs_test.png")}


def comparison(view: StudyView, shown: dict) -> Drawn:
    return {"comparison": plot_comparison(view, shown, view.dir / "comparison.png")}


def by_setting(view: StudyView, shown: dict) -> Drawn:
    """The figures that follow the settings that vary: one -> accuracy against it; two -> a heatmap."""
    numeric, _ = view.varying(shown)
    if len(numeric) == 1:
        return {numeric[0]: plot_setting(view, shown, numeric[0], view.dir / f"{numeric[0]}.png")}
    if len(numeric) == 2:
        y, x = numeric
        return {f"{y}_{x}": plot_heatmaps(view, shown, x, y, view.dir / f"{y}_{x}_heatmap.png")}
    return {}


def dynamics(view: StudyView, shown: dict) -> Drawn:
    """Per-layer training dynamics, one figure per recorded statistic."""
    return {statistic: plot_dynamics(view, shown, statistic, view.dir / f"{statistic}.png")
            for statistic in DYNAMICS_STATISTICS}


REGISTRY: list[Callable[[StudyView, dict], Drawn]] = [test_curves, train_vs_test, comparison, by_setting, dynamics]


def draw_all(view: StudyView, shown: dict) -> dict[str, Path]:
    """Every registered figure of the study, key -> path, the ones with nothing to draw left out."""
    figures: Drawn = {}
    for draw in REGISTRY:
        figures.update(draw(view, shown))
    return {k: v for k, v in figures.items() if v is not None}
