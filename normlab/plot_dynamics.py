"""Figures of per-layer training dynamics, drawn from each experiment's dynamics.csv only.

One panel per experiment name (a norm, in the zoo), one line per layer, x = training progress
in epochs (step / steps of that epoch, so epoch 1's early steps spread out), log y. With several
seeds the line is the geometric mean over seeds at each recorded step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import DamagedError  # noqa: E402
from .plots import save_figure  # noqa: E402
from .view import StudyView  # noqa: E402

MAX_PANELS = 12  # a study with more names (a grid) gets no dynamics figure: it would be unreadable
FIGURES = {
    "grad_norm": ("conv weight gradient norm", "gradient norm per layer over training"),
    "input_std": ("std of activations entering the norm", "activation std per layer over training"),
}


def _progress(rows: list[dict]) -> dict[tuple[int, int], float]:
    """(epoch, step) -> epoch - 1 + step / steps per epoch (every finished epoch records its last step)."""
    steps = max(r["step"] for r in rows)
    return {(e, s): e - 1 + s / steps for e, s in {(r["epoch"], r["step"]) for r in rows}}


def dynamics_by_name(view: StudyView, summary: dict, statistic: str, geometric: bool = True
                     ) -> dict[str, dict[str, tuple]]:
    """name -> layer -> (x, mean over seeds) of `statistic` (geometric, or arithmetic for a fraction),
    for experiments that recorded it. The steps of an epoch that diverged are left out: they are
    one seed's last moments, not comparable with the others' finished epochs."""
    per_name: dict[str, list[list[dict]]] = defaultdict(list)
    recorded = {e["name"] for e in summary["experiments"] if e["status"] in ("done", "diverged")
                and view.has_dynamics(e)}
    if len(recorded) > MAX_PANELS:  # too many names to draw or tabulate: not read at all
        return {}
    for e in summary["experiments"]:
        if e["status"] not in ("done", "diverged"):
            continue
        try:
            rows = view.dynamics(e)
        except DamagedError:
            continue  # the report's repair pass names a damaged view; a figure does without it
        rows = [r for r in rows if r["statistic"] == statistic and r["epoch"] <= e["epochs_run"]]
        if rows:
            per_name[e["name"]].append(rows)
    out = {}
    for name, runs in per_name.items():
        layers: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for rows in runs:
            where = _progress(rows)
            for r in rows:
                if math.isfinite(r["value"]) and (r["value"] > 0 or not geometric):
                    value = math.log(r["value"]) if geometric else r["value"]
                    layers[r["layer"]][where[r["epoch"], r["step"]]].append(value)
        average = (lambda v: math.exp(np.mean(v))) if geometric else np.mean
        out[name] = {layer: (np.array(sorted(points)), np.array([average(points[x]) for x in sorted(points)]))
                     for layer, points in sorted(layers.items())}
    return out


def plot_dynamics(view: StudyView, summary: dict, statistic: str, path: Path) -> Path | None:
    """One panel per experiment name, one line per layer; None when nothing was recorded."""
    ylabel, what = FIGURES[statistic]
    data = dynamics_by_name(view, summary, statistic)
    if not data or len(data) > MAX_PANELS:
        return None
    cols = min(3, len(data))
    rows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False,
                             sharex=True, sharey=True)
    for ax, (name, layers) in zip(axes.flat, data.items()):
        for i, (layer, (x, y)) in enumerate(layers.items()):
            ax.plot(x, y, marker=".", markersize=3, linewidth=1.2, color=plt.cm.viridis(i / max(1, len(layers) - 1)),
                    label=layer)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(data):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training progress (epochs)")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    axes.flat[0].legend(fontsize=7, title="layer", title_fontsize=7)
    seeds = max((len({e["seed"] for e in summary["experiments"] if e["name"] == n}) for n in data), default=1)
    suffix = f" (geometric mean of {seeds} seeds)" if seeds > 1 else ""
    fig.suptitle(f"{what}{suffix} — study '{summary['study']}'", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path
