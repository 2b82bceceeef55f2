"""Figures drawn from result files only (summary.json, metrics.csv, misclassified.json).

With several seeds per experiment name, a line is the mean over seeds and the band its
min-max range, so a reader sees at once whether two curves differ by more than seed noise.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .axes import series_label  # noqa: E402
from .fileio import atomic_write_bytes  # noqa: E402
from .view import StudyView  # noqa: E402
from .zoo import colour  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """Render to memory, then write atomically: an interrupt or a full disk leaves the previous
    figure in place, never a half-written PNG."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

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


def curves_by_name(view: StudyView, summary: dict) -> dict[str, dict]:
    """name -> {"entry", "epochs", "runs": array (seeds, epochs) per metric} for finished epochs."""
    grouped: dict[str, list] = defaultdict(list)
    for e in summary["experiments"]:
        rows = view.metrics(e)
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


def _one_name_per_norm(curves: dict) -> bool:
    """True when every curve is a different norm, so each can take its norm's colour."""
    norms = [c["entry"]["norm"] for c in curves.values()]
    return len(set(norms)) == len(norms)


def plot_metric(view: StudyView, summary: dict, metric: str, path: Path) -> Path:
    """All models on one axes: mean over seeds, min-max band, best epoch marked, final value in legend."""
    ylabel, what = METRICS[metric]
    curves = curves_by_name(view, summary)
    by_norm = _one_name_per_norm(curves)
    higher_is_better = "accuracy" in metric
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    shown = []
    many = len(curves) > MAX_LINES
    if many:  # thin unlabelled lines for all; the best and worst few drawn and named as usual
        ranked = sorted(curves, key=lambda n: curves[n][metric].mean(0)[-1] * (-1 if higher_is_better else 1))
        named = set(ranked[:3] + ranked[-3:])
        for name, c in curves.items():
            if name not in named:
                mean = c[metric].mean(0)
                ax.plot(c["epochs"], mean, linewidth=0.6, alpha=0.25, color="gray")
                shown.append(mean)
        curves = {n: curves[n] for n in ranked if n in named}
        ax.plot([], [], linewidth=0.6, color="gray", label=f"{len(ranked) - len(curves)} other names")
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
        style = {"color": colour(c["entry"]["norm"])} if by_norm else {}
        (line,) = ax.plot(c["epochs"], mean, marker="o", markersize=3, linewidth=1.6, label=label, **style)
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
    save_figure(fig, path)
    return path


MAX_WIDTH_PX = 8000  # no figure is wider (or taller) than this: more names become an aggregated view
MAX_PANELS = 8  # train-vs-test panels side by side; more names: one scatter of every name
MAX_LINES = 12  # named curves on one axes; more: thin unlabelled lines, the best and worst named
MAX_BARS = 40  # bars of the comparison figure; more: the best and the worst MAX_BARS // 2


def plot_train_vs_test(view: StudyView, summary: dict, path: Path) -> Path:
    """Per model: train and test accuracy, the gap shows over/under-fitting (train is augmented).
    More than MAX_PANELS names: one scatter of final train against final test accuracy."""
    curves = curves_by_name(view, summary)
    if len(curves) > MAX_PANELS:
        return _train_vs_test_scatter(summary, curves, path)
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
    save_figure(fig, path)
    return path


def _train_vs_test_scatter(summary: dict, curves: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    train = np.array([c["train_accuracy"].mean(0)[-1] for c in curves.values()])
    test = np.array([c["test_accuracy"].mean(0)[-1] for c in curves.values()])
    norms = [c["entry"]["norm"] for c in curves.values()]
    for norm in dict.fromkeys(norms):
        pick = [k for k, n in enumerate(norms) if n == norm]
        ax.scatter(train[pick], test[pick], s=14, alpha=0.7, color=colour(norm), label=norm)
    lo = float(min(train.min(), test.min()))
    ax.plot([lo, 100], [lo, 100], color="gray", linewidth=1, linestyle="--", label="train = test")
    ax.set_xlabel("final train accuracy (%, augmented, dropout on)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(summary, f"train vs test accuracy, {len(curves)} names"), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_misclassified_overview(view: StudyView, entries: list[dict], path: Path, rows: int = 20
                                ) -> Path | None:
    """One figure for a large study: the most confident mistake of the `rows` best and `rows` worst
    finished experiments (by final accuracy), one row each with its 10 stored images side by side."""
    ranked = sorted(entries, key=lambda e: -e["final_test_accuracy"])
    picked = ranked if len(ranked) <= 2 * rows else ranked[:rows] + ranked[-rows:]
    strips, labels = [], []
    for e in picked:
        try:
            read = view.misclassified(e)
            if not read.ok:
                continue
            mis = read.value
            cells = [np.array(im["pixels"], dtype=np.uint8) for im in mis["images"][:10]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        cells += [np.zeros((28, 28), np.uint8)] * (10 - len(cells))
        strips.append(np.concatenate([np.pad(c, 1, constant_values=128) for c in cells], axis=1))
        labels.append(f"{e['name']} s{e['seed']} ({e['final_test_accuracy']:.2f}%)")
    if not strips:
        return None
    fig, ax = plt.subplots(figsize=(8, min(0.32 * len(strips) + 1.2, MAX_WIDTH_PX / 100)), dpi=100)
    ax.imshow(np.concatenate(strips, axis=0), cmap="gray", vmin=0, vmax=255, aspect="equal")
    ax.set_yticks([30 * k + 15 for k in range(len(strips))], labels, fontsize=6)
    ax.set_xticks([])
    ax.set_title(f"most confident mistakes: the {min(rows, len(strips))} best and worst of {len(entries)} "
                 "finished experiments", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_misclassified(view: StudyView, entry: dict, path: Path) -> Path | None:
    """A 2-row x 5-column grid of the experiment's 10 stored mistakes, each cell labelled (None when
    it has no misclassified.json); read through the view, which the report's comparisons share."""
    read = view.misclassified(entry)
    if read.problem == "missing":
        return None
    if not read.ok:
        raise ValueError(f"{view.dir / entry['dir'] / 'misclassified.json'} is {read.problem}")
    mis = read.value
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
    save_figure(fig, path)
    return path


def _final_by(summary: dict, key) -> dict:
    """key(entry) -> list of final accuracies of the finished experiments with that key."""
    out: dict = defaultdict(list)
    for e in summary["experiments"]:
        if e["status"] == "done":
            out[key(e)].append(e["final_test_accuracy"])
    return out


def plot_heatmaps(view: StudyView, summary: dict, x: str, y: str, path: Path) -> Path | None:
    """Mean final accuracy over a grid of two settings, one panel per value of the other settings."""
    _, categorical = view.varying(summary)
    cells = _final_by(summary, lambda e: (series_label(e, categorical), e.get(y), e.get(x)))
    panels = {}
    for (series, yv, xv), values in cells.items():
        panels.setdefault(series, {})[(yv, xv)] = values
    panels = {k: v for k, v in panels.items() if len({c[0] for c in v}) >= 2 or len({c[1] for c in v}) >= 2}
    if not any(len({c[0] for c in v}) >= 2 and len({c[1] for c in v}) >= 2 for v in panels.values()):
        return None  # no panel is a grid of both settings
    panels = dict(list(panels.items())[:MAX_LINES])  # at most 12 panels, 4 to a row
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 0.8, 4.2 * rows), dpi=110, squeeze=False)
    seeds = max(len(v) for v in cells.values())
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (series, panel) in zip(axes.flat, panels.items()):
        ys, xs = sorted({c[0] for c in panel}), sorted({c[1] for c in panel})
        grid = np.full((len(ys), len(xs)), np.nan)
        for (yv, xv), values in panel.items():
            grid[ys.index(yv), xs.index(xv)] = np.mean(values)
        im = ax.imshow(grid, cmap="viridis", origin="upper", aspect="auto")
        for i in range(len(ys) if grid.size <= 144 else 0):  # numbers in the cells while they fit
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=10,
                            color="white" if grid[i, j] < np.nanmean(grid) else "black")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(series, fontsize=10)
        fig.colorbar(im, ax=ax, label="final test accuracy (%)")
    what = f"final test accuracy (%) over {y} x {x}" + (f", mean of {seeds} seeds" if seeds > 1 else "")
    fig.suptitle(_title(summary, what), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_comparison(view: StudyView, summary: dict, path: Path) -> Path | None:
    """Every experiment's final accuracy as one horizontal bar (mean; whiskers min-max over seeds)."""
    finals = _final_by(summary, lambda e: e["name"])
    if len(finals) < 4:
        return None
    names = list(finals)
    title = "final test accuracy of every experiment"
    if len(names) > MAX_BARS:  # the best and the worst: a bar per name would be a figure metres tall
        ranked = sorted(names, key=lambda n: -np.mean(finals[n]))
        names = ranked[:MAX_BARS // 2] + ranked[-(MAX_BARS // 2):]
        title = f"final test accuracy: the {MAX_BARS // 2} best and worst of {len(ranked)} names"
    means = [np.mean(finals[n]) for n in names]
    entries = {e["name"]: e for e in summary["experiments"]}
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(names) + 1.4), dpi=110)
    y = np.arange(len(names))
    err = np.array([[m - min(finals[n]), max(finals[n]) - m] for n, m in zip(names, means)]).T
    ax.barh(y, means, xerr=err if err.any() else None, color=[colour(entries[n]["norm"]) for n in names])
    for yi, m in zip(y, means):
        ax.text(m, yi, f" {m:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    lo = min(min(finals[n]) for n in names)
    ax.set_xlim(lo - 0.15, max(max(finals[n]) for n in names) + 0.12)
    ax.set_xlabel("final test accuracy (%)")
    ax.set_title(_title(summary, title), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_setting(view: StudyView, summary: dict, key: str, path: Path) -> Path | None:
    """Final accuracy against one numeric setting, one line per value of the other varying settings.

    Points are seed means with 95% confidence bars (min-max with fewer than 3 seeds). Diverged
    runs are marked x at the bottom of the axes, one per seed. When one point falls far below the
    rest (BN at batch 2), a second panel zooms in on the others, so a collapse does not flatten the
    differences that remain. Lines of one norm each take that norm's colour.
    """
    from .stats import mean_interval

    _, categorical = view.varying(summary)
    finals = _final_by(summary, lambda e: (series_label(e, categorical), e.get(key)))
    diverged = defaultdict(int)
    for e in summary["experiments"]:
        if e["status"] == "diverged":
            diverged[(series_label(e, categorical), e.get(key))] += 1
    norm_of = {series_label(e, categorical): e["norm"] for e in summary["experiments"]} if categorical == ["norm"] else {}
    xs_all = sorted({k[1] for k in finals} | {k[1] for k in diverged})
    per_series = defaultdict(set)
    for name, x in finals:
        per_series[name].add(x)
    if max(len(v) for v in per_series.values()) < 2:  # no line would have two points
        return None
    series = sorted({k[0] for k in finals} | {k[0] for k in diverged})
    means = {k: float(np.mean(v)) for k, v in finals.items()}
    n_seeds = max(len(v) for v in finals.values())

    def bar(values: list[float], mean: float) -> tuple[float, float]:
        ci = mean_interval(values) if len(values) >= 3 else None
        lo, hi = ci if ci else (min(values), max(values))
        return mean - lo, hi - mean

    top = max(means.values())
    near = [m for m in means.values() if m >= top - 1.0]
    zoom = min(means.values()) < top - 1.0
    log = min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 7, 4.6), dpi=110, squeeze=False)
    for panel, ax in enumerate(axes[0]):
        for i, name in enumerate(series):
            xs = [v for v in xs_all if (name, v) in finals]
            dodge = 2 ** ((i - (len(series) - 1) / 2) * 0.04) if log else 1.0  # side by side on a log axis
            ys = [means[(name, v)] for v in xs]
            err = np.array([bar(finals[(name, v)], means[(name, v)]) for v in xs]).T
            style = {"color": colour(norm_of[name])} if norm_of else {}
            line = ax.errorbar([v * dodge for v in xs], ys, yerr=err if xs else None, marker="o", capsize=3,
                               label=name, **style)
            lost = [v * dodge for v in xs_all if diverged.get((name, v))]
            if lost:
                ax.plot(lost, [0.02] * len(lost), marker="x", markersize=9, linestyle="none",
                        color=line[0].get_color(), transform=ax.get_xaxis_transform(), clip_on=False)
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
        ax.set_xlabel(key)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8 if len(series) > 5 else None)
        if diverged and panel == 0:
            ax.set_title("x at the bottom: a seed diverged there", fontsize=9)
        if panel == 1:
            ax.set_ylim(min(near) - 0.15, top + 0.15)
            ax.set_title("zoom: points within 1 point of the best", fontsize=10)
    what = f"final test accuracy vs {key}, {summary['epochs']} epochs"
    if n_seeds > 1:
        what += f", mean of {n_seeds} seeds (bars: {'95% CI' if n_seeds >= 3 else 'min–max'})"
    fig.suptitle(_title(summary, what), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path
