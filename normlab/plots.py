"""Figures drawn from result files only (summary.json, metrics.csv, misclassified.json).

With several seeds per experiment name, a line is the mean over seeds and the band its
min-max range, so a reader sees at once whether two curves differ by more than seed noise.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import read_json  # noqa: E402
from .results import read_metrics  # noqa: E402

TARGET_ACCURACY = 99.4
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
METRICS = {
    "test_loss": ("test loss (mean NLL per image)", "Graph 1 — test loss"),
    "test_accuracy": ("test accuracy (%)", "Graph 2 — test accuracy"),
    "train_loss": ("train loss (mean NLL per image)", "train loss"),
    "train_accuracy": ("train accuracy (%)", "train accuracy"),
}


def describe(entry: dict) -> str:
    """'bn-l1: BN, L1 0.0001' — the model, named for a legend or title."""
    parts = [entry["norm"].upper()]
    if entry["norm"] == "gn":
        parts[0] += f" ({entry['groups']} groups)"
    if entry["l1"]:
        parts.append(f"L1 {entry['l1']:g}")
    if entry["l2"]:
        parts.append(f"L2 {entry['l2']:g}")
    return f"{entry['name']}: {', '.join(parts)}"


def curves_by_name(study_dir: Path, summary: dict) -> dict[str, dict]:
    """name -> {"entry", "epochs", "runs": array (seeds, epochs) per metric} for finished epochs."""
    grouped: dict[str, list] = defaultdict(list)
    for e in summary["experiments"]:
        rows = read_metrics(Path(study_dir) / e["dir"] / "metrics.csv")
        if rows:
            grouped[e["name"]].append((e, rows))
    out = {}
    for name, runs in grouped.items():
        n = min(len(rows) for _, rows in runs)  # epochs every seed has
        out[name] = {
            "entry": runs[0][0],
            "seeds": [e["seed"] for e, _ in runs],
            "epochs": np.array([r["epoch"] for r in runs[0][1][:n]]),  # the x axis is the epoch column
            **{m: np.array([[r[m] for r in rows[:n]] for _, rows in runs]) for m in METRICS},
        }
    return out


def _title(summary: dict, what: str) -> str:
    ds = DATASET_TITLES.get(summary.get("dataset"), summary.get("dataset"))
    return f"{what} — {ds}, study '{summary['study']}'"


def plot_metric(study_dir: Path, summary: dict, metric: str, path: Path) -> Path:
    """All models on one axes: mean over seeds, min-max band, best epoch marked, final value in legend."""
    ylabel, what = METRICS[metric]
    curves = curves_by_name(study_dir, summary)
    higher_is_better = "accuracy" in metric
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    shown = []
    for c in curves.values():
        runs = c[metric]
        mean = runs.mean(0)
        seeds = len(c["seeds"])
        final = mean[-1]
        best = int(np.argmax(mean) if higher_is_better else np.argmin(mean))
        fmt = "{:.2f}" if higher_is_better else "{:.4f}"
        label = (f"{describe(c['entry'])} — final {fmt.format(final)}, "
                 f"best {fmt.format(mean[best])} (epoch {c['epochs'][best]}, ★)")
        if seeds > 1:
            label += f"\n    mean of {seeds} seeds, band = min–max"
        (line,) = ax.plot(c["epochs"], mean, marker="o", markersize=3, linewidth=1.6, label=label)
        if seeds > 1:
            ax.fill_between(c["epochs"], runs.min(0), runs.max(0), color=line.get_color(), alpha=0.18)
        ax.plot(c["epochs"][best], mean[best], marker="*", markersize=14, color=line.get_color(),
                markeredgecolor="black", linestyle="none")
        shown.append(mean)
    if higher_is_better and summary.get("dataset") == "mnist":
        ax.axhline(TARGET_ACCURACY, color="gray", linestyle="--", linewidth=1, label=f"{TARGET_ACCURACY}% target")
    if shown:
        values = np.concatenate([s[min(2, len(s) - 1):] for s in shown])  # skip the first epochs' outliers
        lo, hi = float(values.min()), float(values.max())
        if higher_is_better and summary.get("dataset") == "mnist":
            lo, hi = min(lo, TARGET_ACCURACY), max(hi, TARGET_ACCURACY)
        pad = (hi - lo) * 0.08 or 0.05
        ax.set_ylim(lo - pad, hi + pad * (3 if higher_is_better else 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(_title(summary, what))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right" if higher_is_better else "upper right")
    if len(curves) and max(len(c["epochs"]) for c in curves.values()) > 1:
        ax.set_xticks(range(1, max(len(c["epochs"]) for c in curves.values()) + 1, 2 if summary["epochs"] > 12 else 1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_train_vs_test(study_dir: Path, summary: dict, path: Path) -> Path:
    """Per model: train and test accuracy, the gap shows over/under-fitting (train is augmented)."""
    curves = curves_by_name(study_dir, summary)
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4.2 * max(len(curves), 1), 3.6), dpi=100,
                             squeeze=False)
    for ax, c in zip(axes[0], curves.values()):
        ax.plot(c["epochs"], c["train_accuracy"].mean(0), label="train (augmented, dropout on)")
        ax.plot(c["epochs"], c["test_accuracy"].mean(0), label="test")
        ax.set_title(describe(c["entry"]), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        values = np.concatenate([c["train_accuracy"].mean(0)[2:], c["test_accuracy"].mean(0)[2:]])
        if values.size:
            ax.set_ylim(values.min() - 0.2, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(summary, "train vs test accuracy"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_misclassified(exp_dir: Path, entry: dict, path: Path) -> Path | None:
    """A 2-row x 5-column grid of the experiment's 10 stored mistakes, each cell labelled."""
    src = Path(exp_dir) / "misclassified.json"
    if not src.exists():
        return None
    mis = read_json(src)
    images = mis["images"]
    fig, axes = plt.subplots(2, 5, figsize=(9, 5.4), dpi=100, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, im in zip(axes.flat, images):
        ax.imshow(np.array(im["pixels"], dtype=np.uint8), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {im['true_name']}\npredicted {im['predicted_name']} ({im['confidence']:.1%})",
                     fontsize=9, color="firebrick")
        ax.text(0.02, 0.02, f"#{im['index']}", transform=ax.transAxes, fontsize=7, color="yellow")
    acc = entry.get("final_test_accuracy")
    ds = DATASET_TITLES.get(mis["dataset"], mis["dataset"])
    fig.suptitle(f"{describe(entry)} (seed {entry['seed']}) — {ds} test accuracy {acc:.2f}%\n"
                 f"{len(images)} {mis['rule']} (of {mis['wrong_total']} wrong)", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return path


def _final_by(summary: dict, key) -> dict:
    """key(entry) -> list of final accuracies of the finished experiments with that key."""
    out: dict = defaultdict(list)
    for e in summary["experiments"]:
        if e["status"] == "done":
            out[key(e)].append(e["final_test_accuracy"])
    return out


def plot_bn_regularization_heatmap(summary: dict, path: Path) -> Path | None:
    """BN's final accuracy over the L1 x L2 grid (mean over seeds); None if the study has no such grid."""
    cells = _final_by({"experiments": [e for e in summary["experiments"] if e["norm"] == "bn"]},
                      lambda e: (e["l1"], e["l2"]))
    l1s, l2s = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    if len(l1s) < 2 or len(l2s) < 2:
        return None
    grid = np.full((len(l1s), len(l2s)), np.nan)
    for (l1, l2), values in cells.items():
        grid[l1s.index(l1), l2s.index(l2)] = np.mean(values)
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=110)
    im = ax.imshow(grid, cmap="viridis", origin="upper")
    for i in range(len(l1s)):
        for j in range(len(l2s)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white" if grid[i, j] < np.nanmean(grid) else "black", fontsize=10)
    ax.set_xticks(range(len(l2s)), [f"{v:g}" for v in l2s])
    ax.set_yticks(range(len(l1s)), [f"{v:g}" for v in l1s])
    ax.set_xlabel("L2 (weight decay on conv weights)")
    ax.set_ylabel("L1 factor (on conv weights)")
    seeds = max(len(v) for v in cells.values())
    ax.set_title(_title(summary, "BN final test accuracy (%)") + (f"\nmean of {seeds} seeds" if seeds > 1 else ""),
                 fontsize=10)
    fig.colorbar(im, ax=ax, label="final test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_comparison(summary: dict, path: Path) -> Path | None:
    """Every experiment's final accuracy as one horizontal bar (mean; whiskers min-max over seeds)."""
    finals = _final_by(summary, lambda e: e["name"])
    if len(finals) < 4:
        return None
    names = list(finals)
    means = [np.mean(finals[n]) for n in names]
    entries = {e["name"]: e for e in summary["experiments"]}
    colors = {"bn": "tab:blue", "gn": "tab:orange", "ln": "tab:green"}
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(names) + 1.4), dpi=110)
    y = np.arange(len(names))
    err = np.array([[m - min(finals[n]), max(finals[n]) - m] for n, m in zip(names, means)]).T
    ax.barh(y, means, xerr=err if err.any() else None, color=[colors.get(entries[n]["norm"], "gray") for n in names])
    for yi, m in zip(y, means):
        ax.text(m, yi, f" {m:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    lo = min(min(v) for v in finals.values())
    ax.set_xlim(lo - 0.15, max(max(v) for v in finals.values()) + 0.12)
    ax.set_xlabel("final test accuracy (%)")
    ax.set_title(_title(summary, "final test accuracy of every experiment"), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_batch_size(summary: dict, path: Path) -> Path | None:
    """Final accuracy against batch size, one line per norm; None unless batch sizes vary.

    Points are seed means with min–max bars. When one point falls far below the rest (BN at
    batch 2), a second panel zooms in on the others, so a collapse does not flatten the
    differences that remain.
    """
    finals = _final_by(summary, lambda e: (e["norm"], e["batch_size"]))
    sizes = sorted({k[1] for k in finals})
    if len(sizes) < 2:
        return None
    norms = sorted({k[0] for k in finals})
    means = {k: float(np.mean(v)) for k, v in finals.items()}
    top = max(means.values())
    near = [m for m in means.values() if m >= top - 1.0]
    zoom = min(means.values()) < top - 1.0
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 7, 4.6), dpi=110, squeeze=False)
    for panel, ax in enumerate(axes[0]):
        for i, norm in enumerate(norms):
            xs = [b for b in sizes if (norm, b) in finals]
            dodge = 2 ** ((i - (len(norms) - 1) / 2) * 0.04)  # side by side on the log axis
            ys = [means[(norm, b)] for b in xs]
            err = [[ys[j] - min(finals[(norm, b)]) for j, b in enumerate(xs)],
                   [max(finals[(norm, b)]) - ys[j] for j, b in enumerate(xs)]]
            ax.errorbar([x * dodge for x in xs], ys, yerr=err, marker="o", capsize=3, label=norm.upper())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size (peak LR scaled linearly with it)")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        if panel == 1:
            ax.set_ylim(min(near) - 0.15, top + 0.15)
            ax.set_title("zoom: points within 1 point of the best", fontsize=10)
    n_seeds = max(len(v) for v in finals.values())
    what = f"final test accuracy vs batch size, {summary['epochs']} epochs"
    what += f", mean of {n_seeds} seeds (bars: min–max)" if n_seeds > 1 else ""
    fig.suptitle(_title(summary, what), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
