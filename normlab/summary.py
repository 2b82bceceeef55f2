"""study.json and summary.json: a study's definition and record, and the view over all its experiments.

study.json holds what only the study knows: its name, description, the config of every
experiment, its wall time (per seed round too), the machine and worker count. summary.json is a
view of study.json and the experiment directories, so either study file can be rebuilt from the
other and from the checkpoints; the output says when that happens.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .analysis import declare as declare_analysis
from .analysis import validate as validate_analysis
from .checkpoint import weights_l1
from .config import SETTINGS, ExperimentConfig
from .errors import DamagedError, NormlabError, notice
from .fileio import atomic_write_json, directory_lock
from .recovery import FINISHING, ExperimentState, inspect_experiment, repair_views
from .results import CHECKPOINT, DAMAGED, MISCLASSIFIED, STUDY, SUMMARY, plain_name, read_json_file

# Written into study.json and summary.json: the mark of a record normlab wrote. A record without it (from
# before normlab kept it) counts only when one of the experiment folders it names holds a checkpoint
# normlab wrote (`checkpoint_folders`); a hand-made study.json makes no folder a study.
MARK = {"format": 1}

STUDY_FIELDS = ("normlab", "study", "description", "experiments", "wall_seconds", "round_wall_seconds", "machine",
                "machines", "workers", "families", "analysis")


def machine_description(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": device,
            "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machines_of(meta: dict) -> list[dict]:
    """Every machine that trained some of the study (the last one is `machine`), oldest first."""
    machines = list(meta.get("machines") or [])
    if meta.get("machine") and meta["machine"] not in machines:
        machines.append(meta["machine"])
    return machines


MAX_SECONDS = 1e9  # a wall time above this (31 years) is not one normlab measured
MAX_WORKERS = 10**6
MACHINE_TEXT = ("cpu", "torch", "device", "platform", "gpu")


def _number(value) -> bool:
    """A wall time normlab could have measured: a finite number of seconds from 0 to MAX_SECONDS."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS


def machine_problem(m) -> bool:
    """Whether a machine record is malformed: an object of short texts (cpu, torch, device, platform,
    gpu) and a core count, as `machine_description` writes it."""
    if not isinstance(m, dict):
        return True
    for key, value in m.items():
        if key == "cores":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**6):
                return True
        elif key not in MACHINE_TEXT or not isinstance(value, str) or len(value) > 300:
            return True
    return False


def _analysis_ok(plan) -> bool:
    try:
        validate_analysis(plan, "the recorded analysis")
    except (NormlabError, ValueError, TypeError):
        return False
    return True


def _families_ok(families, meta: dict) -> bool:
    from .studies import families_problem

    names = None
    if isinstance(meta.get("experiments"), list):
        try:
            names = [ExperimentConfig.from_dict(c).name for c in meta["experiments"]]
        except (NormlabError, TypeError, ValueError):
            names = None
    return families_problem(families, STUDY, names) is None


def meta_problem(meta: dict) -> str | None:
    """Why a study record (study.json's content) cannot be used, or None when every field is sound."""
    checks = {
        "normlab": lambda v: v == MARK,
        "study": lambda v: isinstance(v, str) and v != "",
        "description": lambda v: isinstance(v, str),
        "experiments": lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v),
        "dirs": lambda v: isinstance(v, list) and all(plain_name(d) for d in v),
        "wall_seconds": lambda v: v is None or _number(v),
        "round_wall_seconds": lambda v: isinstance(v, dict) and all(
            re.fullmatch(r"seed \d+", str(k)) and _number(x) for k, x in v.items()),
        "machine": lambda v: v == {} or not machine_problem(v),
        "machines": lambda v: isinstance(v, list) and not any(machine_problem(m) for m in v),
        "workers": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_WORKERS),
        "families": lambda v: _families_ok(v, meta),
        "analysis": _analysis_ok,
    }
    if not isinstance(meta.get("study"), str):
        return "it names no study"
    for key, ok in checks.items():
        if key in meta and not ok(meta[key]):
            return f"its {key} is malformed"
    try:
        names = [ExperimentConfig.from_dict(config).dirname for config in meta.get("experiments", [])]
    except (NormlabError, TypeError, ValueError):
        return "its experiments are not valid configs"
    if len(set(names)) != len(names):
        return "its experiments list one experiment twice"
    if len(set(meta.get("dirs", []))) != len(meta.get("dirs", [])):
        return "its dirs list one folder twice"
    return None


def _meta_from_summary(summary: dict) -> dict:
    """study.json's fields as a summary.json records them (for rebuilding a lost study.json)."""
    meta = {k: summary[k] for k in ("normlab", "study", "description", "wall_seconds", "machine", "machines", "workers",
                                    "families", "analysis") if k in summary}
    rounds = summary.get("seed_rounds")
    if isinstance(rounds, list) and all(isinstance(r, dict) and isinstance(r.get("seed"), int) for r in rounds):
        meta["round_wall_seconds"] = {f"seed {r['seed']}": r.get("wall_seconds") for r in rounds}
    entries = summary.get("experiments")
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    if entries and all(set(SETTINGS) | {"name"} <= set(e) for e in entries):
        meta["experiments"] = [{k: e[k] for k in ("name", *SETTINGS)} for e in entries]
    elif entries:
        meta["dirs"] = [e["dir"] for e in entries if isinstance(e.get("dir"), str)]
    return meta if meta_problem(meta) is None else {}


def load_study_meta(study_dir: Path, notify: Callable[[str], None]) -> dict:
    """study.json's content; rebuilt from summary.json when it is missing or damaged, saying so."""
    study_dir = Path(study_dir)
    study = read_json_file(study_dir / STUDY)
    summary = read_json_file(study_dir / SUMMARY)
    from_summary = _meta_from_summary(summary.value) if summary.ok else {}
    if from_summary and not written_by_normlab(study_dir, from_summary):
        from_summary = {}
    problem = study.problem or meta_problem(study.value)
    if problem is None and not written_by_normlab(study_dir, study.value):
        problem = "not a record normlab wrote"
    if problem is None:
        return {**from_summary, **study.value}  # an older study.json lacks fields its summary has
    if from_summary:
        notify(f"rebuilt {STUDY} from {SUMMARY} ({problem}).")
    elif problem != "missing":
        notify(f"{study_dir / STUDY} is {problem} and no {SUMMARY} holds its record; its wall time is "
               "unknown and restarts from 0.")
    return from_summary


def written_by_normlab(study_dir: Path, meta: dict) -> bool:
    """Whether a sound study record (`meta_problem` is None) is one normlab wrote: it carries normlab's
    mark, or (a record from before the mark) one experiment folder it names holds a checkpoint of
    that experiment that normlab wrote, its format and checksums verified."""
    if meta.get("normlab") == MARK:
        return True
    names = [ExperimentConfig.from_dict(c).dirname for c in meta.get("experiments") or []]
    names += [d for d in meta.get("dirs") or [] if plain_name(d)]
    return any(_holds_checkpoint(Path(study_dir) / name) for name in dict.fromkeys(names))


def save_study_meta(study_dir: Path, meta: dict) -> None:
    meta["normlab"] = dict(MARK)
    atomic_write_json(Path(study_dir) / STUDY, {k: meta[k] for k in STUDY_FIELDS if k in meta})


def study_experiments(study_dir: Path, meta: dict) -> list[tuple[str, dict | None]]:
    """(directory name, config the study asked for or None) of every experiment of the study.

    From study.json; for older studies from summary.json. Never guessed from the folders present:
    normlab changes only the experiment folders its own record names (plain names in the study).
    """
    if meta.get("experiments"):
        return [(ExperimentConfig.from_dict(c).dirname, c) for c in meta["experiments"]]
    if meta.get("dirs"):
        return [(d, None) for d in meta["dirs"] if plain_name(d)]
    return [(d, None) for d in checkpoint_folders(study_dir)]


def checkpoint_folders(study_dir: Path) -> list[str]:
    """The sub-folders that hold a checkpoint normlab wrote (its format and checksums verified) of
    the experiment the folder is named after: the record left when study.json and summary.json are
    both lost. Links, special files and anything else are not experiment folders."""
    return [p.name for p in sorted(Path(study_dir).iterdir()) if _holds_checkpoint(p)]


def _holds_checkpoint(p: Path) -> bool:
    """Whether folder `p` (not a link) holds a checkpoint normlab wrote of the experiment it is named after."""
    from .checkpoint import load_checkpoint
    from .fileio import kind_of

    if not (plain_name(p.name) and kind_of(p) == "directory" and kind_of(p / CHECKPOINT) == "file"):
        return False
    try:
        state = load_checkpoint(p / CHECKPOINT)
        return ExperimentConfig.from_dict(state["experiment"]).dirname == p.name
    except (NormlabError, KeyError, TypeError, ValueError):
        return False


def has_study_record(study_dir: Path) -> bool:
    """Whether `study_dir` holds a record normlab wrote: a sound study.json or summary.json, or failing
    both, an experiment folder with its checkpoint (`checkpoint_folders`); reads only."""
    return bool(load_study_meta(Path(study_dir), notify=lambda message: None)) or bool(checkpoint_folders(study_dir))


def not_a_study(study_dir: Path) -> NormlabError:
    return NormlabError(f"{study_dir} is not a normlab study folder (it has no {STUDY} or {SUMMARY} that normlab "
                        "wrote), so normlab changes nothing in it; pass the --out folder of a `normlab run`.")


def conv_weight_l1(state: ExperimentState) -> float | None:
    """Σ|w| over the conv weights (the tensors L1/L2 act on) of the saved model."""
    if state.checkpoint is None:
        return None
    if "conv_weight_l1" in state.checkpoint:  # a task's record, computed where the model was
        return state.checkpoint["conv_weight_l1"]
    return weights_l1(state.checkpoint["model"])


def _name_and_seed(dirname: str) -> dict:
    """The name and seed an experiment folder's name gives (`bn-seed1`), for an entry without a config."""
    match = re.fullmatch(r"(.+)-seed(\d{1,10})", dirname)
    return {"name": match[1], "seed": int(match[2])} if match else {"name": dirname, "seed": None}


def experiment_entry(study_dir: Path, state: ExperimentState) -> dict:
    """One summary.json entry: the experiment's whole config, then its results."""
    rows = state.history
    best = max(rows, key=lambda r: (r["test_accuracy"], -r["epoch"])) if rows else None
    last = rows[-1] if rows else None
    ckpt = state.checkpoint or {}
    entry = {
        **(state.config or _name_and_seed(state.dir.name)),
        "params": ckpt.get("params"),
        "epochs_run": len(rows),
        "final_test_accuracy": last["test_accuracy"] if last else None,
        "best_test_accuracy": best["test_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_test_loss": last["test_loss"] if last else None,
        "final_train_loss": last["train_loss"] if last else None,
        **({"final_val_accuracy": last["val_accuracy"]} if last and "val_accuracy" in last else {}),
        "train_seconds": round(sum(r["seconds"] for r in rows), 2),
        "conv_weight_l1": conv_weight_l1(state),
        "checkpoint": os.path.relpath(state.dir / CHECKPOINT, study_dir) if rows else None,
        "dir": os.path.relpath(state.dir, study_dir),
        "status": state.status,
        "device": ckpt.get("device"),
        "trained_by": ckpt.get("provenance", []),  # code, device, processes x threads per stretch of epochs
    }
    diverged = ckpt.get("diverged")
    if state.kind == DAMAGED:
        entry["message"] = state.problem
    elif diverged:
        entry["message"], entry["diverged_epoch"] = diverged["message"], diverged["epoch"]
    return entry


def write_summary(study_dir: Path, meta: dict, states: list[ExperimentState] | None = None,
                  known: dict[str, ExperimentState] | None = None) -> dict:
    """summary.json from study.json's record and the experiment directories: `states` for all of
    them, or `known` for some (directory name -> state, e.g. from a run's results), the rest read."""
    study_dir = Path(study_dir)
    if states is None:
        known = known or {}
        states = [known.get(d) or inspect_experiment(study_dir / d, cfg)
                  for d, cfg in study_experiments(study_dir, meta)]
    entries = [experiment_entry(study_dir, s) for s in states]
    configs = [e for e in entries if "dataset" in e]
    summary = {
        "normlab": dict(MARK),
        "study": meta.get("study", study_dir.name),
        "dataset": configs[0]["dataset"] if configs else None,
        "epochs": max((e["epochs"] for e in configs), default=0),
        "description": meta.get("description", ""),
        "wall_seconds": meta.get("wall_seconds"),
        "machine": meta.get("machine", {}),
        "machines": machines_of(meta),
        "workers": meta.get("workers"),
    }
    if meta.get("families"):  # the questions the study file asks its report to answer
        summary["families"] = meta["families"]
    if meta.get("analysis"):  # the plan declared for the study (normlab.analysis)
        summary["analysis"] = meta["analysis"]
    if meta.get("round_wall_seconds"):
        summary["seed_rounds"] = [{"seed": int(k.split()[1]), "wall_seconds": v}
                                  for k, v in meta["round_wall_seconds"].items()]
    summary["experiments"] = entries
    atomic_write_json(study_dir / SUMMARY, summary)
    return summary


STATUSES = ("pending", "running", "done", "diverged", "damaged")
ENTRY_SETTINGS = ("norm", "seed", "lr", "epochs", "dataset")  # what a report groups and labels entries by


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def entry_problem(e) -> str | None:
    """Why a summary.json entry cannot be reported, or None: the fields a report reads, typed and in range."""
    if not isinstance(e, dict):
        return "an entry is not an object"
    if not plain_name(e.get("dir")):
        return "an entry's dir is not a plain folder name inside the study"
    if not isinstance(e.get("name"), str) or not 0 < len(e["name"]) <= 255:
        return f"entry {e['dir']} has no name"
    if e.get("status") not in STATUSES:
        return f"entry {e['dir']} has an unknown status"
    if "seed" not in e or not (e["seed"] is None or (_int(e["seed"]) and e["seed"] >= 0)):
        return f"entry {e['dir']} has no seed"
    if e["status"] in ("running", "done", "diverged"):  # each has a checkpoint, and so its whole config
        missing = [k for k in ENTRY_SETTINGS if k not in e]
        if missing:
            return f"entry {e['dir']} has no {missing[0]}"
        try:
            ExperimentConfig.from_dict({k: e[k] for k in ("name", *SETTINGS) if k in e})
        except (NormlabError, TypeError, ValueError):
            return f"entry {e['dir']}'s settings are not a valid config"
    if not (e.get("epochs_run") is None or (_int(e["epochs_run"]) and e["epochs_run"] >= 0)):
        return f"entry {e['dir']}'s epochs_run is not a count"
    if not (e.get("params") is None or (_int(e["params"]) and e["params"] > 0)):
        return f"entry {e['dir']}'s params is not a count"
    if e.get("final_val_accuracy") is not None and not _finite(e["final_val_accuracy"], 0, 100):
        return f"entry {e['dir']}'s final_val_accuracy is not a percentage"
    if e["status"] in ("done",):
        for key in ("final_test_accuracy", "best_test_accuracy"):
            if not _finite(e.get(key), 0, 100):
                return f"entry {e['dir']}'s {key} is not a percentage"
        for key, high in (("final_test_loss", float("inf")), ("train_seconds", MAX_SECONDS)):
            if not _finite(e.get(key), 0, high):
                return f"entry {e['dir']}'s {key} is not a non-negative number"
    if e.get("message") is not None and not isinstance(e["message"], str):
        return f"entry {e['dir']}'s message is not text"
    return None


def summary_problem(summary) -> str | None:
    if not isinstance(summary.get("experiments"), list):
        return "malformed"
    for key in ("study", "description"):
        if key in summary and not isinstance(summary[key], str):
            return f"damaged (its {key} is not text)"
    if summary.get("families") is not None and not (isinstance(summary["families"], list) and all(
            isinstance(f, dict) for f in summary["families"])):
        return "damaged (its families are malformed)"
    if summary.get("wall_seconds") is not None and not _number(summary["wall_seconds"]):
        return "damaged (its wall_seconds is not a number of seconds)"
    rounds = summary.get("seed_rounds")
    if rounds is not None and not (isinstance(rounds, list) and all(
            isinstance(r, dict) and _int(r.get("seed")) and _number(r.get("wall_seconds")) for r in rounds)):
        return "damaged (its seed_rounds are malformed)"
    if summary.get("workers") is not None and not (_int(summary["workers"]) and 0 < summary["workers"] <= MAX_WORKERS):
        return "damaged (its workers is not a worker count)"
    if summary.get("machine") not in (None, {}) and machine_problem(summary["machine"]):
        return "damaged (its machine is malformed)"
    if summary.get("machines") is not None and (not isinstance(summary["machines"], list)
                                                or any(machine_problem(m) for m in summary["machines"])):
        return "damaged (its machines are malformed)"
    if summary.get("analysis") is not None and not _analysis_ok(summary["analysis"]):
        return "damaged (its analysis is malformed)"
    seen = set()
    for e in summary["experiments"]:
        problem = entry_problem(e)
        if problem:
            return f"damaged ({problem})"
        if e["dir"] in seen:
            return f"damaged (entry {e['dir']} is listed twice)"
        seen.add(e["dir"])
    runs = [(e["name"], e["seed"]) for e in summary["experiments"] if "seed" in e]
    if len(set(runs)) != len(runs):
        return "damaged (one experiment and seed is listed twice)"
    if summary.get("families") is not None:
        from .studies import families_problem

        problem = families_problem(summary["families"], SUMMARY, [e["name"] for e in summary["experiments"]])
        if problem:
            return "damaged (its families are malformed)"
    return None


def read_summary(study_dir: Path) -> dict:
    """summary.json as a study's last run or refresh wrote it, every entry checked; one sentence when
    it is not usable, with the command that rebuilds it."""
    read = read_json_file(Path(study_dir) / SUMMARY)
    problem = read.problem or summary_problem(read.value)
    if problem:
        raise DamagedError(f"{Path(study_dir) / SUMMARY} is {problem}; rebuild it with "
                           f"`normlab report {study_dir}`.")
    return read.value


def check_no_running_study_around(path: Path, depth: int = 3, limit: int = 10_000) -> None:
    """Refuse a folder inside a study another normlab process is running (or one that holds such a
    study within `depth` levels): the two would write the same files. Reads only."""
    from .fileio import check_unlocked, kind_of

    path = Path(path).absolute()
    for parent in path.parents:
        if kind_of(parent / ".lock") == "file":
            try:
                check_unlocked(parent)
            except NormlabError:
                raise NormlabError(f"{path} lies inside the study folder {parent}, which another normlab process "
                                   "is writing now; wait for it to finish, or choose a folder outside it.") from None
    if kind_of(path) != "directory":
        return
    seen = 0
    for root, dirs, files in os.walk(path):
        here = Path(root)
        level = len(here.relative_to(path).parts)
        if level >= depth:
            dirs[:] = []
        if here != path and ".lock" in files and kind_of(here / ".lock") == "file":
            try:
                check_unlocked(here)
            except NormlabError:
                raise NormlabError(f"{path} holds the study folder {here}, which another normlab process is "
                                   "writing now; wait for it to finish, or choose another folder.") from None
        seen += len(dirs) + len(files)
        if seen > limit:
            return


def resume_command(meta: dict, study_dir: Path) -> str:
    """The command that continues a study: exact for a preset, else the one that made it, with --resume."""
    from .studies import presets

    name = meta.get("study")
    if isinstance(name, str) and name in presets():
        return f"`normlab run {name} --out {study_dir} --resume` (with any settings it was first run with)"
    return f"the command that made {study_dir}, run again with --resume,"


def refresh_summary(study_dir: Path, notify: Callable[[str], None] = notice) -> dict:
    """summary.json rebuilt from study.json and the experiment directories, after their repairs.

    Under the directory's lock: views that are missing or damaged are rebuilt from their
    checkpoints; a damaged experiment is listed as damaged with its sentence. Nothing is trained:
    an experiment whose misclassified.json is lost is listed as running, and `normlab run ...
    --resume` redoes its misclassified pass.
    """
    study_dir = Path(study_dir)
    from .fileio import kind_of

    if kind_of(study_dir) == "symbolic link":
        raise NormlabError(f"{study_dir} is a symbolic link; normlab never writes through a link, so pass the "
                           f"folder it points to ({os.path.realpath(study_dir)}).")
    if not study_dir.is_dir():
        raise NormlabError(f"{study_dir} is not a directory; pass the output directory of `normlab run`.")
    if not has_study_record(study_dir):  # checked before the lock: a folder normlab did not make stays as it is
        raise not_a_study(study_dir)
    check_no_running_study_around(study_dir)
    with directory_lock(study_dir):
        meta = load_study_meta(study_dir, notify)
        experiments = study_experiments(study_dir, meta)
        if not experiments:
            raise not_a_study(study_dir)
        states = []
        for name, wanted in experiments:
            state = inspect_experiment(study_dir / name, wanted)
            repair_views(state, notify)
            if state.kind == FINISHING:
                notify(f"{name}: every epoch is on disk but {MISCLASSIFIED} is not (missing or damaged); "
                       f"{resume_command(meta, study_dir)} redoes its misclassified pass.")
            states.append(state)
        if meta and not isinstance(meta.get("analysis"), dict):  # fixed now, and said to be after the data
            meta["analysis"] = declare_analysis(None, before_data=not any(s.epoch for s in states))
        if meta.get("machine"):
            meta["machines"] = machines_of(meta)
        if meta:
            save_study_meta(study_dir, meta)
        return write_summary(study_dir, meta, states)
