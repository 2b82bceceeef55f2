"""report.md, the final table and every figure of a study, from its result files alone."""

from __future__ import annotations

import html
import re
import statistics
from collections import defaultdict
from pathlib import Path

from .analysis import DEFAULT as DEFAULT_ANALYSIS
from .analysis import validate as validate_analysis
from .axes import series_label
from .comparisons import comparison_lines, test_size
from .config import NAME_PATTERN
from .errors import NormlabError
from .figures import draw_all
from .fileio import atomic_write_text
from .plot_dynamics import MAX_PANELS, dynamics_by_name
from .plots import DATASET_TITLES, TARGET_ACCURACY, describe, plot_misclassified
from .results import DAMAGED, REPORT
from .stats import mean_interval, sampling_error
from .summary import read_summary
from .view import StudyView


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def time_to_target(view: StudyView, entry: dict, target: float = TARGET_ACCURACY) -> tuple[int, float] | None:
    """(first epoch with test accuracy >= target, seconds of training up to then), or None."""
    elapsed = 0.0
    for r in view.metrics(entry):
        elapsed += r["seconds"]
        if r["test_accuracy"] >= target:
            return r["epoch"], elapsed
    return None


def aggregate(summary: dict, view: StudyView | None = None) -> list[dict]:
    """One row per experiment name: statistics over its seeds."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for e in summary["experiments"]:
        groups[e["name"]].append(e)
    rows = []
    for name, entries in groups.items():
        done = [e for e in entries if e["status"] == "done"]
        row = {"name": name, "entry": entries[0], "seeds": [e["seed"] for e in entries],
               "done": len(done), "statuses": sorted({e["status"] for e in entries}),
               "params": next((e["params"] for e in entries if e.get("params")), None)}
        if done:
            finals = [e["final_test_accuracy"] for e in done]
            row["final_mean"], row["final_std"] = mean_std(finals)
            row["final_min"], row["final_max"] = min(finals), max(finals)
            row["n_test"] = test_size(entries[0])
            row["final_ci"] = mean_interval(finals, row["n_test"])
            row["test_se"] = sampling_error(statistics.fmean(finals), row["n_test"])
            row["finals"] = finals
            row["best_mean"], _ = mean_std([e["best_test_accuracy"] for e in done])
            row["loss_mean"], row["loss_std"] = mean_std([e["final_test_loss"] for e in done])
            row["seconds_mean"], _ = mean_std([e["train_seconds"] for e in done])
            if view is not None:
                hits = [time_to_target(view, e) for e in done]
                reached = [h for h in hits if h]
                row["target_reached"] = len(reached)
                if reached:
                    row["target_epoch_mean"] = statistics.fmean(h[0] for h in reached)
                    row["target_seconds_mean"] = statistics.fmean(h[1] for h in reached)
        rows.append(row)
    return rows


def _ci(ci: tuple[float, float] | None, n: int) -> str:
    if ci is None:
        return "n too small" if n > 1 else "–"
    return f"{ci[0]:.2f} to {ci[1]:.2f}" if ci[0] != ci[1] else "(all equal)"


TOLERANCE_POINTS = 0.5


def tolerance_lines(view: StudyView, summary: dict, key: str) -> list[str]:
    """For a study that varies one numeric setting: per series (the other varying settings, e.g.
    the norm), its best value and the range of the setting whose mean final accuracy is within
    TOLERANCE_POINTS of that best; diverged runs counted. This is the LR range a norm survives."""
    _, categorical = view.varying(summary)
    series = defaultdict(lambda: defaultdict(list))
    diverged = defaultdict(lambda: defaultdict(int))
    for e in summary["experiments"]:
        s = series_label(e, categorical)
        if e["status"] == "done":
            series[s][e.get(key)].append(e["final_test_accuracy"])
        elif e["status"] == "diverged":
            diverged[s][e.get(key)] += 1
    if not series or max(len(v) for v in series.values()) < 2:
        return []
    val = defaultdict(lambda: defaultdict(list))
    for e in summary["experiments"]:
        if e["status"] == "done" and e.get("final_val_accuracy") is not None:
            val[series_label(e, categorical)][e.get(key)].append(e["final_val_accuracy"])
    with_val = bool(val)
    lines = ["", f"## Range of {key} within {TOLERANCE_POINTS} points of each one's best", "",
             f"Mean final test accuracy over seeds at each {key}; the range holds every value whose mean is "
             f"within {TOLERANCE_POINTS} points of that row's best (a gap inside it is named). A value where "
             "any seed diverged is never in the range, and never the best.", "",
             f"| series | best {key} | best mean accuracy | {key} range within {TOLERANCE_POINTS} | "
             f"values in range | diverged runs (at {key}) |" + (f" {key} chosen on validation | its test accuracy |"
                                                                 if with_val else ""),
             "|---|---:|---:|---|---:|---|" + ("---:|---:|" if with_val else "")]
    if with_val:
        lines[3] += (f" The last two columns tune as a study should: {key} chosen by the highest mean validation "
                     "accuracy (the held-out training images), and the test accuracy there (mean over seeds) — the "
                     "number to report; the best test accuracy beside it was chosen on the test set itself.")
    for s in sorted(set(series) | set(diverged)):
        means = {x: statistics.fmean(v) for x, v in series[s].items() if not diverged[s].get(x)}
        lost = ", ".join(f"{n} at {x:g}" for x, n in sorted(diverged[s].items())) or "none"
        chosen = ""
        if with_val:
            val_means = {x: statistics.fmean(v) for x, v in val[s].items() if not diverged[s].get(x)}
            if val_means:
                pick = max(val_means, key=val_means.get)
                chosen = f" {pick:g} | {statistics.fmean(series[s][pick]):.2f} |"
            else:
                chosen = " – | – |"
        if not means:
            lines.append(f"| {s} | – | – | – | 0 | {lost} |" + chosen)
            continue
        best = max(means, key=means.get)
        good = sorted(x for x, m in means.items() if m >= means[best] - TOLERANCE_POINTS)
        every = sorted(set(means) | set(diverged[s]))
        inside = [x for x in every if good[0] <= x <= good[-1]]
        gap = [x for x in inside if x not in good]
        span = f"{good[0]:g} to {good[-1]:g}" if len(good) > 1 else f"{good[0]:g} only"
        if gap:
            span += " (not " + ", ".join(f"{x:g}" for x in gap) + ")"
        lines.append(f"| {s} | {best:g} | {means[best]:.2f} | {span} | {len(good)} of {len(every)} | {lost} |" + chosen)
    return lines


def _pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def final_table(summary: dict) -> str:
    """The table printed at the end of a run: one line per experiment name."""
    lines = [f"{'name':<22} {'params':>6} {'seeds':>5} {'final acc %':>16} {'best acc %':>10} "
             f"{'final loss':>10} {'time s':>8}  status"]
    for r in aggregate(summary):
        seeds = str(r["done"]) if r["done"] == len(r["seeds"]) else f"{r['done']}/{len(r['seeds'])}"
        if r["done"]:
            lines.append(
                f"{r['name']:<22} {r['params'] or '-':>6} {seeds:>5} "
                f"{_pm(r['final_mean'], r['final_std'], r['done']):>16} {r['best_mean']:>10.2f} "
                f"{r['loss_mean']:>10.4f} {r['seconds_mean']:>8.0f}  {','.join(r['statuses'])}")
        else:
            lines.append(f"{r['name']:<22} {r['params'] or '-':>6} {seeds:>5} {'-':>16} {'-':>10} "
                         f"{'-':>10} {'-':>8}  {','.join(r['statuses'])}")
    lines.append(f"study wall time: {wall_time_text(summary)}")
    return "\n".join(lines)


def _m(machine: dict, key: str) -> str:
    """One field of a machine record, as plain text in report.md (it is read from a file)."""
    return markdown_text(machine.get(key, "?"), 200)


def _other_machines(summary: dict) -> list[str]:
    """The machines that trained earlier parts of the study, when more than one did."""
    machines = summary.get("machines") or []
    if len(machines) < 2:
        return []
    words = [f"{_m(m, 'cpu')}, device {_m(m, 'device')}" + (f" ({_m(m, 'gpu')})" if m.get("gpu") else "")
             for m in machines if isinstance(m, dict)]
    return [f"- machines that trained it, oldest first: {'; '.join(words)}"]


def wall_time_text(summary: dict) -> str:
    """'1830 s' or, for a study run seed after seed, '1830 s (seed 1: 610 s, seed 2: 612 s, ...)'."""
    if not isinstance(summary.get("wall_seconds"), (int, float)):
        return "unknown"
    text = f"{summary['wall_seconds']:.0f} s"
    rounds = summary.get("seed_rounds") or []
    if len(rounds) > 1:
        text += " (" + ", ".join(f"seed {r['seed']}: {r['wall_seconds']:.0f} s" for r in rounds) + ")"
    return text


def generate_report(study_dir: Path, summary: dict | None = None, exploratory: dict | None = None) -> dict:
    """Draw every figure and write report.md for the study in `study_dir`, from its result files;
    return its summary. Reads only: `normlab.summary.refresh_summary` brings summary.json up to date
    first (`normlab report` does both). The comparisons follow the study's declared analysis plan;
    `exploratory` (a validated plan) adds its verdicts beside them, labelled as such."""
    view = StudyView(study_dir)
    if summary is None:
        summary = read_summary(view.dir)
    shown = {**summary, "experiments": [e for e in summary["experiments"] if e["status"] != DAMAGED]}
    figures = draw_all(view, shown)
    grids = misclassified_grids(view, shown, figures)
    atomic_write_text(view.dir / REPORT, report_markdown(view, markdown_safe(summary), figures, grids, exploratory))
    return summary


MAX_GRIDS = 24  # finished experiments drawn one misclassified grid each; a larger study shares one figure


def misclassified_grids(view: StudyView, shown: dict, figures: dict) -> dict:
    """Each finished experiment's grid of its most confident mistakes, drawn only when missing or older
    than its misclassified.json; a study of more than MAX_GRIDS finished experiments gets one shared
    figure instead (`plots.plot_misclassified_overview`), so reporting grows by little per experiment."""
    from .plots import plot_misclassified_overview

    done = [e for e in shown["experiments"] if e["status"] == "done"]
    if len(done) > MAX_GRIDS:
        path = plot_misclassified_overview(view, done, view.dir / "misclassified.png")
        if path:
            figures["misclassified"] = path
        return {}
    grids = {}
    study_dir = view.dir
    for e in done:
        source, target = study_dir / e["dir"] / "misclassified.json", study_dir / e["dir"] / "misclassified.png"
        if _newer(target, source):
            grids[e["dir"]] = target
            continue
        path = plot_misclassified(view, e, target)
        if path:
            grids[e["dir"]] = path
    return grids


def _newer(target: Path, source: Path) -> bool:
    """Whether `target` is a regular file written after `source` (a figure still up to date)."""
    from .fileio import kind_of

    try:
        return kind_of(target) == "file" and kind_of(source) == "file" and \
            target.stat().st_mtime_ns > source.stat().st_mtime_ns
    except OSError:
        return False


MARKUP = re.compile(r"([\\`*\[\]#|!])")


def markdown_text(text, limit: int = 2000) -> str:
    """User text (a description, a question, a name read from a file) as plain text inside report.md:
    one line, markup characters escaped, HTML as entities, so it cannot add a heading, a table row or
    cell, raw HTML or a link."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    text = MARKUP.sub(r"\\\1", html.escape(text, quote=False))
    text = text.replace("://", ":&#47;&#47;").replace("www.", "www&#46;")  # no bare autolinks either
    if re.match(r"[-+=]", text):  # a line starting so would be a list item or a heading's underline
        text = "\\" + text
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)  # nor a numbered list item


def _name(text) -> str:
    """A name as report.md shows it: a name normlab made is safe as it is; anything else is escaped."""
    return text if isinstance(text, str) and NAME_PATTERN.fullmatch(text) else markdown_text(text, 200)


def _code(name: str) -> str:
    """A name in a code span when it is one normlab made; an escaped name (already made safe by
    `_name`) outside one, since a code span would show its escapes and a backtick would end it."""
    return f"`{name}`" if NAME_PATTERN.fullmatch(name) else name


def markdown_safe(summary: dict) -> dict:
    """A copy of `summary` for writing report.md: every text that came from a study file or a result
    file escaped (`markdown_text`), names the same way wherever they appear, so lookups still match."""
    safe = {**summary, "study": _name(summary.get("study", "")),
            "description": markdown_text(summary.get("description", ""))}
    safe["experiments"] = [{**e, "name": _name(e.get("name", "")),
                            **({"message": markdown_text(e["message"], 500)} if e.get("message") else {})}
                           for e in summary["experiments"]]
    if summary.get("families"):
        safe["families"] = [{**f, **({"question": markdown_text(f["question"])} if "question" in f else {}),
                             **({"among": [_name(n) for n in f["among"]]} if isinstance(f.get("among"), list) else {}),
                             **({"reference": _name(f["reference"])} if "reference" in f else {})}
                            for f in summary["families"]]
    return safe


def _limits_line(summary: dict) -> list[str]:
    """Say so when experiments used only part of the data (then "test set" means that part), or
    held some training images out for validation; a limit above the dataset's size limits nothing."""
    from .data import DATASETS

    lines = set()
    for e in summary["experiments"]:
        spec = DATASETS.get(e.get("dataset"))
        if spec is None:
            continue
        train = min(e.get("train_limit") or spec.size("train"), spec.size("train"))
        test = min(e.get("test_limit") or spec.size("test"), spec.size("test"))
        held = e.get("val_split") or 0
        if train < spec.size("train") or test < spec.size("test"):
            lines.add(f"- data: the first {train:,} of {spec.size('train'):,} training and {test:,} of "
                      f"{spec.size('test'):,} test images (train_limit / test_limit); accuracies below are on "
                      "that part of the test set")
        if held:
            lines.add(f"- validation: {held:,} of those {train:,} training images held out (val_split), "
                      f"so {train - held:,} trained on; settings are chosen on validation accuracy")
    return sorted(lines)


def dynamics_lines(view: StudyView, summary: dict) -> list[str]:
    """Per name, what its dynamics.csv shows at the first recorded step and at the end: how the
    activation std and the gradient norm change from the first block to the last."""
    stds = dynamics_by_name(view, summary, "input_std")
    if not stds or len(stds) > MAX_PANELS:
        return []
    grads = dynamics_by_name(view, summary, "grad_norm")
    zeros = dynamics_by_name(view, summary, "relu_zero_fraction", geometric=False)

    def at(series: dict, layer: str, end: bool) -> float | None:
        if layer not in series:
            return None
        x, y = series[layer]
        if len(y) == 0:  # nothing finite recorded for that layer (a run that diverged at once)
            return None
        return float(y[-1] if end else y[0])

    def pair(series: dict, end: bool) -> str:
        layers = list(series)
        if not layers:
            return "–"
        first, last = at(series, layers[0], end), at(series, layers[-1], end)
        return f"{first:.3g} → {last:.3g} (×{last / first:.3g})" if first and last else "–"

    lines = ["", "## Training dynamics (dynamics.csv)", "",
             "First block → last block, at the first training step and at the last one (geometric mean over "
             "seeds; the epoch in which a run diverged is left out): the std of the activations entering the norm, "
             "and the gradient norm of the conv weight. ReLU zeros: the fraction of ReLU outputs that are 0, "
             "mean over blocks and seeds, at the last step.", "",
             "| name | activation std, step 1 | activation std, end | gradient norm, step 1 | "
             "gradient norm, end | ReLU zeros, end |", "|---|---|---|---|---|---:|"]
    for name in stds:
        z = [at(zeros.get(name, {}), layer, True) for layer in zeros.get(name, {})]
        z = [v for v in z if v is not None]
        lines.append(f"| {name} | {pair(stds[name], False)} | {pair(stds[name], True)} | "
                     f"{pair(grads.get(name, {}), False)} | {pair(grads.get(name, {}), True)} | "
                     f"{statistics.fmean(z):.2f} |" if z else
                     f"| {name} | {pair(stds[name], False)} | {pair(stds[name], True)} | "
                     f"{pair(grads.get(name, {}), False)} | {pair(grads.get(name, {}), True)} | – |")
    return lines


def declared_plan(summary: dict) -> dict:
    """The study's analysis plan as recorded (with when it was declared), or the default if none is."""
    recorded = summary.get("analysis")
    try:
        return validate_analysis(recorded) if isinstance(recorded, dict) else dict(DEFAULT_ANALYSIS)
    except NormlabError as e:
        raise NormlabError(f"the analysis plan in {summary.get('study')}'s summary.json is damaged ({e}); "
                           "restore study.json from a copy.") from None


def provenance_lines(summary: dict) -> list[str]:
    """Which code and which process x thread layout trained the study's epochs, from every experiment's record."""
    stretches: dict[tuple, set] = {}
    unrecorded = 0
    for e in summary["experiments"]:
        trained = e.get("trained_by") or []
        if not trained and e.get("epochs_run"):
            unrecorded += 1
        for t in trained:
            key = (t.get("code"), t.get("device"), t.get("executor"), t.get("processes"), t.get("threads"),
                   t.get("members"))
            stretches.setdefault(key, set()).add(e.get("dir", e["name"]))
    lines = []
    for (code, device, executor, processes, threads, members), dirs in stretches.items():
        procs = "processes: not known" if processes == 0 else f"{processes} process{'es' if processes != 1 else ''}"
        group = f", {members} models per step" if members and members > 1 else ""
        lines.append(f"- trained by normlab {code} on {device} ({executor} executor, {procs} × {threads} "
                     f"thread{'s' if threads != 1 else ''}{group}): {len(dirs)} experiment(s)")
    if unrecorded:
        lines.append(f"- code version and layout not recorded for {unrecorded} experiment(s) (trained before "
                     "normlab kept them)")
    return lines


def report_markdown(view: StudyView, summary: dict, figures: dict, grids: dict,
                    exploratory: dict | None = None) -> str:
    ds = DATASET_TITLES.get(summary.get("dataset"), summary.get("dataset"))
    m = summary.get("machine") if isinstance(summary.get("machine"), dict) else {}
    lines = [
        f"# normlab study {_code(summary['study'])} — {ds}",
        "",
        summary.get("description", ""),
        "",
        f"- epochs: {summary['epochs']}; experiments: {len(summary['experiments'])}",
        *_limits_line(summary),
        f"- machine: {_m(m, 'cpu')}, {_m(m, 'cores')} cores, device {_m(m, 'device')}"
        + (f" ({_m(m, 'gpu')})" if m.get("gpu") else "") + f", torch {_m(m, 'torch')}",
        *_other_machines(summary),
        *provenance_lines(summary),
        f"- study wall time: {wall_time_text(summary)}",
        "",
        "## Results",
        "",
        "Accuracies in %, on the test set after the last epoch. With several seeds: mean ± sample "
        "standard deviation; a 95% interval for the typical accuracy (the t interval of the mean logit error "
        "rate, transformed back, so it stays within 0–100; from three seeds on); the min–max range; and the "
        "test set's own standard error at that accuracy (binomial: how far the same models could score on "
        "another test set of the same size).",
        "",
        f"| name | model | params | seeds | final accuracy | 95% CI | min–max | test-set SE | best accuracy "
        f"| final test loss | epochs to {TARGET_ACCURACY}% | seconds to {TARGET_ACCURACY}% | train s | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in aggregate(summary, view):
        e = r["entry"]
        if r["done"]:
            n = r["done"]
            if r.get("target_reached"):
                reach = f"{r['target_epoch_mean']:.1f}"
                secs = f"{r['target_seconds_mean']:.0f}"
                if r["target_reached"] < n:
                    reach += f" ({r['target_reached']}/{n} seeds)"
            else:
                reach, secs = "not reached", "–"
            lines.append(
                f"| {r['name']} | {describe(e).split(': ', 1)[1]} | {r['params']} | {n} | "
                f"{_pm(r['final_mean'], r['final_std'], n)} | {_ci(r.get('final_ci'), n)} | "
                f"{r['final_min']:.2f}–{r['final_max']:.2f} | ±{r['test_se']:.2f} | "
                f"{r['best_mean']:.2f} | {_pm(r['loss_mean'], r['loss_std'], n, 4)} | {reach} | {secs} | "
                f"{r['seconds_mean']:.0f} | {', '.join(r['statuses'])} |")
        else:
            lines.append(f"| {r['name']} | {describe(e).split(': ', 1)[1]} | {r['params']} | 0 | – | – | – | – | – | – | – | – | – "
                         f"| {', '.join(r['statuses'])} |")
    numeric, _ = view.varying(summary)
    if len(numeric) == 1:
        lines += tolerance_lines(view, summary, numeric[0])
    lines += dynamics_lines(view, summary)
    lines += comparison_lines(view, summary, summary.get("families"), declared_plan(summary), exploratory)
    problems = [e for e in summary["experiments"] if e["status"] not in ("done",)]
    if problems:
        lines += ["", "## Not finished", ""]
        lines += [f"- `{e['dir']}`: {e['status']}" + (f" — {e['message']}" if e.get("message") else "")
                  for e in problems]
    lines += ["", "## Figures", ""]
    for key, path in figures.items():
        lines += [f"![{key}]({Path(path).name})", ""]
    if grids:
        lines += ["## Misclassified test images", ""]
        for dirname, path in grids.items():
            lines += [f"![{dirname}]({Path(path).relative_to(view.dir)})", ""]
    lines += ["Redraw with `normlab report " + str(view.dir) + "`.", ""]
    return "\n".join(lines)
