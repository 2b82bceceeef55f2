"""Cross-checking an experiment directory against its checkpoint, before anything is trained or reported.

The checkpoint (`model.pt`) is the experiment's one source of truth. `inspect_experiment` reads a
directory without writing and classifies it: new, running (resumable at epoch e), finishing (all
epochs trained, the misclassified pass still to do), done, diverged, or damaged. Views that are
missing, empty, truncated, corrupt or behind their checkpoint are listed as repairs, and
`repair_views` rebuilds them from the checkpoint. What cannot be rebuilt — a damaged or missing
checkpoint whose experiment had trained, a view that contradicts its checkpoint — makes the
experiment `damaged`, with one sentence naming the file and the fix; the rest of the study goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .config import ExperimentConfig
from .errors import NormlabError, first_line
from .fileio import atomic_write_json, kind_of
from .model import Net
from .results import (
    CHECKPOINT,
    CONFIG,
    DAMAGED,
    DIVERGED,
    DONE,
    DYNAMICS,
    METRICS,
    MISCLASSIFIED,
    PENDING,
    RUNNING,
    STATUS,
    Read,
    parse_dynamics,
    parse_metrics,
    read_json_file,
    read_text,
    render_dynamics,
    render_metrics,
    write_dynamics,
    write_metrics,
)

FINISHING = "finishing"  # every epoch trained; misclassified.json still to be written


@dataclass
class ExperimentState:
    """What a directory holds, and what must be rebuilt before it can be resumed or reported."""

    dir: Path
    kind: str  # PENDING, RUNNING, FINISHING, DONE, DIVERGED or DAMAGED
    config: dict | None = None  # from the checkpoint when there is one
    checkpoint: dict | None = None
    repairs: list[tuple[str, str]] = field(default_factory=list)  # (file, why it is rebuilt)
    problem: str | None = None  # DAMAGED: one sentence naming the file and the fix
    outdated: str | None = None  # DONE, but a view an earlier normlab wrote lacks what `run --resume` adds

    @property
    def epoch(self) -> int:
        return int(self.checkpoint["epoch"]) if self.checkpoint else 0

    @property
    def history(self) -> list[dict]:
        return list(self.checkpoint["history"]) if self.checkpoint else []

    @property
    def to_train(self) -> bool:
        """Whether `run` has work here: epochs, the misclassified pass, or an outdated view to redo."""
        return self.kind in (PENDING, RUNNING, FINISHING) or self.outdated is not None

    @property
    def status(self) -> str:
        """The status summary.json records: FINISHING shows as running until its last file lands."""
        return RUNNING if self.kind == FINISHING else self.kind

    def describe(self) -> str:
        return {PENDING: "new", RUNNING: f"resumable at epoch {self.epoch}",
                FINISHING: f"all {self.epoch} epochs trained; the misclassified pass is left",
                DONE: "done" + (f" ({self.outdated}: its misclassified pass runs again)" if self.outdated else ""),
                DIVERGED: f"diverged (epoch {self.checkpoint and (self.checkpoint['diverged'] or {}).get('epoch')})",
                DAMAGED: f"damaged: {self.problem}"}[self.kind]


def config_diff(saved: dict, wanted: dict) -> list[str]:
    return [f"{k} {saved.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)]


def _normalized(config: dict, strict: bool = True) -> dict:
    """A config dict with every current setting (settings added since it was written take their
    defaults), so files written by an earlier normlab compare equal to the same experiment now."""
    try:
        return ExperimentConfig.from_dict(config).to_dict()
    except NormlabError:
        if strict:
            raise
        return config


def _retrain_fix(d: Path) -> str:
    return f"restore it, or delete {d} and run the study again with --resume to retrain that experiment"


def _damaged(d: Path, config: dict | None, problem: str) -> ExperimentState:
    return ExperimentState(d, DAMAGED, config=config, problem=problem)


def status_view(checkpoint: dict, kind: str) -> dict:
    """status.json as the checkpoint (and, for DONE, the misclassified pass) determine it."""
    diverged = checkpoint.get("diverged")
    view = {"status": DIVERGED if diverged else (DONE if kind == DONE else RUNNING),
            "epochs_run": int(checkpoint["epoch"]), "message": diverged["message"] if diverged else "",
            "device": checkpoint.get("device", "cpu"), "params": checkpoint.get("params")}
    if diverged:
        view["diverged_epoch"] = diverged["epoch"]
    return view


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problem(im, test_size: int, wrong: set[int] | None) -> str | None:
    if not isinstance(im, dict):
        return "an image entry is not an object"
    if not (_int(im.get("index")) and 0 <= im["index"] < test_size):
        return f"an image's index is not a test image index (0 to {test_size - 1})"
    if wrong is not None and im["index"] not in wrong:
        return f"image {im['index']} is not among its wrong_indices"
    if not all(_int(im.get(k)) and 0 <= im[k] < 1000 for k in ("true", "predicted")) or im["true"] == im["predicted"]:
        return f"image {im['index']} has no true and different predicted class"
    if not all(isinstance(im.get(k), str) and len(im[k]) <= 100 for k in ("true_name", "predicted_name")):
        return f"image {im['index']} has no class names"
    c = im.get("confidence")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 1:
        return f"image {im['index']}'s confidence is not a probability"
    pixels = im.get("pixels")
    if not (isinstance(pixels, list) and len(pixels) == 28 and all(
            isinstance(row, list) and len(row) == 28 and all(_int(v) and 0 <= v <= 255 for v in row)
            for row in pixels)):
        return f"image {im['index']}'s pixels are not 28 x 28 bytes"
    return None


def misclassified_problem(value, config: dict, history: list[dict]) -> str | None:
    """Why a misclassified.json's content cannot be used for this experiment, or None: every wrong
    index a unique test image index, as many as wrong_total says and as the final accuracy implies,
    and every stored image one of them (a file any other way would flip an image-by-image verdict)."""
    from .data import DATASETS

    if not isinstance(value, dict):
        return "not a JSON object"
    spec = DATASETS.get(config.get("dataset"))
    full = spec.size("test") if spec else 10000
    n = min(config.get("test_limit") or full, full)
    total = value.get("wrong_total")
    if not (_int(total) and 0 <= total <= n):
        return f"its wrong_total is not a count from 0 to its {n} test images"
    if isinstance(value.get("wrong_indices"), list) and history \
            and isinstance(history[-1].get("test_accuracy"), (int, float)):
        expected = round(n * (1 - history[-1]["test_accuracy"] / 100))
        if abs(total - expected) > max(2, n // 200):
            return (f"its wrong_total {total} disagrees with the final test accuracy "
                    f"{history[-1]['test_accuracy']:g}% ({expected} wrong of {n})")
    wrong = value.get("wrong_indices")
    if wrong is not None:
        if not isinstance(wrong, list) or not all(_int(i) and 0 <= i < n for i in wrong):
            return f"its wrong_indices are not all test image indices (0 to {n - 1})"
        if len(set(wrong)) != len(wrong):
            return "its wrong_indices repeat an index"
        if len(wrong) != total:
            return f"its wrong_total {total} is not the {len(wrong)} wrong_indices it lists"
    for key in ("dataset", "rule"):
        if not isinstance(value.get(key), str) or len(value[key]) > 200:
            return f"its {key} is not a short text"
    images = value.get("images")
    if not isinstance(images, list) or len(images) > min(total, 100):
        return "its images are not a list of at most wrong_total images"
    for im in images:
        problem = _image_problem(im, n, set(wrong) if isinstance(wrong, list) else None)
        if problem:
            return problem
    if len({im["index"] for im in images}) != len(images):
        return "its images repeat an image"
    return None


UNRECORDED = "unrecorded"  # the device of a format-1 checkpoint: it kept none, and its status.json was a guess


def _upgrade_version_1(d: Path, state: dict) -> dict | str:
    """A version-1 checkpoint as version 2, or why it cannot be: it carries no history, device or
    divergence, so its metrics.csv and status.json are the record, when they are intact. Its device
    is unrecorded: the status.json of that format named "cpu" for runs trained on a GPU."""
    text = read_text(d / METRICS)
    try:
        rows = parse_metrics(text.value) if text.ok else None
    except ValueError:
        rows = None
    if rows is None or len(rows) < state["epoch"]:
        return (f"{d / METRICS} is {text.problem or 'damaged'} and {d / CHECKPOINT} (format 1) holds no copy "
                f"of the history; {_retrain_fix(d)}.")
    status = read_json_file(d / STATUS)
    recorded = status.value if status.ok else {}
    diverged = None
    if recorded.get("status") == DIVERGED:
        diverged = {"epoch": recorded.get("diverged_epoch"), "message": recorded.get("message", "")}
    return {**state, "history": rows[: state["epoch"]], "diverged": diverged, "dynamics": [],
            "params": recorded.get("params"), "device": UNRECORDED}


def inspect_experiment(exp_dir: Path, wanted: dict | None, resume: bool = True) -> ExperimentState:
    """Classify `exp_dir` without writing anything.

    `wanted` is the config the command asks for (None: accept what the directory holds). A
    checkpoint of another config, or existing results without `resume`, is the command's error
    and raises NormlabError; damage to this one experiment is returned as DAMAGED instead.
    """
    d = Path(exp_dir)
    if wanted is not None:  # a study.json written before a setting existed: that setting takes its default
        wanted = _normalized(wanted, strict=False)
    where = kind_of(d)
    if where not in (None, "directory"):  # a link would lead writes outside the study folder
        return _damaged(d, wanted, f"{d} is a {where}, not an experiment folder normlab made; move it away, "
                        "then run again with --resume to train that experiment in a folder of its own.")
    for name in (CHECKPOINT, CONFIG, METRICS, DYNAMICS, STATUS, MISCLASSIFIED):
        kind = kind_of(d / name)
        if kind not in (None, "file"):
            return _damaged(d, wanted, f"{d / name} is a {kind}, not a file normlab wrote; move it away, then "
                            "run again with --resume to rebuild it (or to retrain the experiment, for model.pt).")
    config_read = read_json_file(d / CONFIG)
    if kind_of(d / CHECKPOINT) is None:
        return _without_checkpoint(d, wanted, config_read)
    try:
        state = load_checkpoint(d / CHECKPOINT)
        state["experiment"] = _normalized(state["experiment"])
        Net.from_config(state["net_config"]).load_state_dict(state["model"])
    except CheckpointError as e:
        return _damaged(d, wanted, f"{d / CHECKPOINT} is damaged ({e.reason}); {_retrain_fix(d)}.")
    except (NormlabError, RuntimeError, ValueError, TypeError) as e:
        first = first_line(e, 120)
        return _damaged(d, wanted, f"{d / CHECKPOINT} is damaged (its content does not rebuild its model: "
                        f"{first}); {_retrain_fix(d)}.")
    cfg = state["experiment"]
    view = _normalized(config_read.value, strict=False) if config_read.ok else None
    if wanted is not None:
        diff = config_diff(cfg, wanted)
        if diff and view == wanted:  # the directory's own config.json says otherwise: this file is foreign
            return _damaged(d, wanted, f"{d / CHECKPOINT} holds another experiment ({'; '.join(diff)}) than "
                            f"its {CONFIG} and this command; {_retrain_fix(d)}.")
        if diff:
            raise NormlabError(f"{d} was run with a different config ({'; '.join(diff)}); use another --out, "
                               "or delete that directory to start over.")
        if not resume:
            raise NormlabError(f"{d} already holds results; pass --resume to continue it or --out to start "
                               "elsewhere.")
    if state["version"] == 1:
        state = _upgrade_version_1(d, state)
        if isinstance(state, str):
            return _damaged(d, cfg, state)
    repairs = []
    if not config_read.ok:
        repairs.append((CONFIG, config_read.problem))
    elif view != cfg:
        keys = ", ".join(k for k in sorted(set(cfg) | set(view)) if cfg.get(k) != view.get(k))
        return _damaged(d, cfg, f"{d / CONFIG} disagrees with its checkpoint {CHECKPOINT} on {keys}; delete "
                        f"{CONFIG} to rebuild it from the checkpoint, or delete {d} to start over.")
    metrics = read_text(d / METRICS)
    if not metrics.ok:
        repairs.append((METRICS, metrics.problem))
    elif metrics.value != render_metrics(state["history"]):
        repairs.append((METRICS, "it did not match its checkpoint's history"))
    dynamics = read_text(d / DYNAMICS)
    if state["dynamics"]:
        if not dynamics.ok:
            repairs.append((DYNAMICS, dynamics.problem))
        elif dynamics.value != render_dynamics(state["dynamics"]):
            repairs.append((DYNAMICS, "it did not match its checkpoint's record"))
    elif dynamics.problem != "missing":
        repairs.append((DYNAMICS, "its checkpoint recorded no dynamics"))
    misclassified = read_json_file(d / MISCLASSIFIED)
    if state.get("diverged"):
        kind = DIVERGED
    elif state["epoch"] >= cfg["epochs"]:
        problem = misclassified.problem or misclassified_problem(misclassified.value, cfg, state["history"])
        kind = DONE if problem is None else FINISHING
        if kind == FINISHING and misclassified.problem != "missing":
            repairs.append((MISCLASSIFIED, problem))
    else:
        kind = RUNNING
    if kind != DONE and kind != FINISHING and misclassified.problem != "missing":
        repairs.append((MISCLASSIFIED, "left from an unfinished experiment"))
    status = read_json_file(d / STATUS)
    if status.value != status_view(state, kind):
        repairs.append((STATUS, status.problem or "it did not match its checkpoint"))
    outdated = None
    if kind == DONE and not isinstance(misclassified.value.get("wrong_indices"), list):
        outdated = f"{MISCLASSIFIED} predates its list of every wrong test image"
    return ExperimentState(d, kind, config=cfg, checkpoint=state, repairs=repairs, outdated=outdated)


def _without_checkpoint(d: Path, wanted: dict | None, config_read: Read) -> ExperimentState:
    """No model.pt: a new experiment, unless another file shows that one had trained."""
    metrics = read_text(d / METRICS)
    rows = 0
    with contextlib.suppress(ValueError):
        rows = len(parse_metrics(metrics.value)) if metrics.ok else 0
    status = read_json_file(d / STATUS)
    trained = status.value.get("epochs_run") if status.ok and isinstance(status.value.get("epochs_run"), int) else 0
    dynamics = read_text(d / DYNAMICS)
    recorded = 0
    with contextlib.suppress(ValueError):
        recorded = len(parse_dynamics(dynamics.value)) if dynamics.ok else 0
    evidence = [(METRICS, rows), (DYNAMICS, recorded), (STATUS, trained)]
    if read_json_file(d / MISCLASSIFIED).ok:
        evidence.append((MISCLASSIFIED, 1))
    for name, epochs in evidence:
        if epochs:
            return _damaged(d, wanted or (config_read.value if config_read.ok else None),
                            f"{d / CHECKPOINT} is missing but {name} shows the experiment had trained; "
                            f"{_retrain_fix(d)}.")
    config = wanted or (config_read.value if config_read.ok else None)
    for name in (METRICS, DYNAMICS, STATUS, MISCLASSIFIED):  # normlab writes each only after model.pt
        if kind_of(d / name) is not None:
            return _damaged(d, config, f"{d / name} is there but {d / CHECKPOINT} is not, so normlab did not "
                            f"write it (it writes {CHECKPOINT} first); move it away, then run again with --resume.")
    repairs = []
    if (d / CONFIG).exists() and (not config_read.ok or _normalized(config_read.value, strict=False) != config):
        repairs.append((CONFIG, config_read.problem or "left from a start that trained nothing"))
    return ExperimentState(d, PENDING, config=config, repairs=repairs)


def write_views(d: Path, checkpoint: dict, kind: str) -> None:
    """config.json, metrics.csv, dynamics.csv and status.json from the checkpoint (after every
    epoch, and as repairs)."""
    atomic_write_json(d / CONFIG, checkpoint["experiment"])
    write_metrics(d / METRICS, checkpoint["history"])
    if checkpoint.get("dynamics"):
        write_dynamics(d / DYNAMICS, checkpoint["dynamics"])
    atomic_write_json(d / STATUS, status_view(checkpoint, kind))


def repair_views(state: ExperimentState, notify: Callable[[str], None]) -> None:
    """Rebuild every view listed in `state.repairs` from the checkpoint, saying so once per file.

    Without a checkpoint (nothing trained yet) there is nothing to rebuild from: stale views are
    removed and config.json is rewritten for the command's config. A misclassified.json that is
    damaged, or left from an unfinished experiment, is removed; the misclassified pass writes it.
    """
    d = state.dir
    for name, why in state.repairs:
        path = d / name
        if name == CONFIG and state.config is not None:
            atomic_write_json(path, state.config)
        elif state.checkpoint is not None and name == METRICS:
            write_metrics(path, state.checkpoint["history"])
        elif state.checkpoint is not None and name == DYNAMICS and state.checkpoint["dynamics"]:
            write_dynamics(path, state.checkpoint["dynamics"])
        elif state.checkpoint is not None and name == STATUS:
            atomic_write_json(path, status_view(state.checkpoint, state.kind))
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            notify(f"{d.name}: removed {name} ({why})")
            continue
        source = f"from {CHECKPOINT}" if state.checkpoint is not None else "for this command"
        notify(f"{d.name}: rebuilt {name} {source} ({why})")
    state.repairs = []
