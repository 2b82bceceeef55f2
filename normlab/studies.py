"""Studies as files: base settings plus one or more grids, like Hydra's multirun.

A study is a small TOML file::

    description = "GN with 1, 2, 4 and 8 groups"
    [base]                 # settings every experiment shares (optional)
    epochs = 20
    [[grid]]               # one or more grids; the study is their union, in order
    name = "gn-g{groups}"  # optional name template; default: from the settings that vary
    norm = "gn"
    groups = [1, 2, 4, 8]  # a list makes one experiment per value (the cartesian product)

The presets (`mission`, `grid15`, `batch-size`, `gn-groups`) are such files in `normlab/presets/`;
`normlab run path/to/study.toml` runs a user's own. Settings given on the command line override
the file's (command line > grid > base > defaults); a setting given several values there
multiplies every experiment of the study by them. Seeds form the outermost loop, so a study
runs seed after seed.
"""

from __future__ import annotations

import itertools
import math
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis import validate as validate_analysis
from .config import MAX_SEED, NAME_PATTERN, SETTINGS, ExperimentConfig
from .errors import ArgumentError, ConfigError, NormlabError, first_line
from .fileio import safe_read_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"
MAX_STUDY_FILE = 2**20  # bytes: a study file is a page of settings
MAX_TEMPLATE = 400  # characters of a name template (a name is at most 200)
MAX_FIELD_WIDTH = 200  # a format width or precision in a template: no name is longer
MAX_TEXT = 2000  # characters of a description or a family's question
MAX_EXPERIMENTS = 100_000  # experiments one study may expand to (before they are built)


def shown(text: str, limit: int = 60) -> str:
    """User text in a message, cut to `limit` characters: an error message stays one short sentence."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"
NAME_ABBREVIATIONS = {"batch_size": "b"}


@dataclass
class Study:
    name: str
    experiments: list[ExperimentConfig] = field(default_factory=list)
    description: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. an override that a name template hides
    families: list[dict] = field(default_factory=list)  # the comparisons its report makes (normlab.comparisons)
    analysis: dict = field(default_factory=dict)  # the study file's [analysis] (normlab.analysis), checked


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def study_path(study: str | Path) -> Path:
    """The file of a preset name or a path; one sentence when there is neither."""
    path = Path(study)
    if path.suffix == ".toml" or len(path.parts) > 1:
        if path.is_dir():
            raise ArgumentError(f"study {path} is a directory; pass a .toml study file or one of: "
                                f"{', '.join(presets())}.")
        if not path.is_file():
            raise ArgumentError(f"study file {path} does not exist; pass a .toml file or one of: "
                                f"{', '.join(presets())}.")
        return path
    if (PRESET_DIR / f"{study}.toml").is_file():
        return PRESET_DIR / f"{study}.toml"
    raise ArgumentError(f"unknown study {str(study)!r}; choose one of: {', '.join(presets())}, "
                       "or pass the path of a .toml study file.")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def _check_keys(where: str, table: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ArgumentError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}.")


@dataclass
class StudySpec:
    """A study file's content: its grids (each a table of settings, lists for several values) and base."""

    name: str
    description: str = ""
    grids: list[dict] = field(default_factory=lambda: [{}])
    base: dict = field(default_factory=dict)
    source: str = "the command line"
    families: list[dict] = field(default_factory=list)
    analysis: dict = field(default_factory=dict)


def read_study_file(study: str | Path) -> StudySpec:
    """The spec of a preset name or a study file, with every key checked."""
    path = study_path(study)
    try:
        doc = tomllib.loads(safe_read_bytes(path, limit=MAX_STUDY_FILE).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ArgumentError(f"{path} is not valid TOML ({first_line(e, 120)}); fix the file.") from None
    except RecursionError:
        raise ArgumentError(f"{path} is not valid TOML (its arrays or tables nest too deeply to read); fix "
                            "the file.") from None
    except ValueError as e:
        raise ArgumentError(f"study file {first_line(e, 160)}; a study file is a page of settings.") from None
    except OSError as e:
        raise NormlabError(f"cannot read study file {path} ({e.strerror or first_line(e, 120)}).") from None
    _check_keys(str(path), doc, ("description", "base", "grid", "family", "analysis"))
    analysis = validate_analysis(doc.get("analysis", {}), f"{path} [analysis]")
    base = doc.get("base", {})
    grids = doc.get("grid", [])
    if not isinstance(base, dict) or not isinstance(grids, list) or not grids \
            or not all(isinstance(g, dict) and g for g in grids):
        raise ArgumentError(f"{path} needs at least one non-empty [[grid]] table (and [base], if any, a table).")
    _check_keys(f"{path} [base]", base, SETTINGS)
    if not isinstance(doc.get("description", ""), str):
        raise ArgumentError(f"{path}: description must be a string.")
    if len(doc.get("description", "")) > MAX_TEXT:
        raise ArgumentError(f"{path}: description is {len(doc['description']):,} characters; keep it to {MAX_TEXT}.")
    for where, table in ((f"{path} [base]", base),
                         *((f"{path} [[grid]] number {i}", g) for i, g in enumerate(grids, start=1))):
        empty = [k for k, v in table.items() if v == []]
        if empty:
            raise ArgumentError(f"{where}: {empty[0]} = [] has no values; give at least one.")
    for i, grid in enumerate(grids, start=1):
        _check_keys(f"{path} [[grid]] number {i}", grid, ("name", *SETTINGS))
        if "name" in grid and not isinstance(grid["name"], str):
            raise ArgumentError(f"{path} [[grid]] number {i}: name must be a string template like \"gn-g{{groups}}\".")
        if "name" in grid:
            check_template(f"{path} [[grid]] number {i}", grid["name"])
    spec = StudySpec(name=path.stem, description=str(doc.get("description", "")), grids=grids, base=base,
                     source=str(path), families=_read_families(path, doc.get("family", [])),
                     analysis={k: v for k, v in analysis.items() if k in doc.get("analysis", {})})
    if any("among" in f for f in spec.families):  # the names the file's own grids give
        try:
            experiments = build_study(StudySpec(**{**spec.__dict__, "families": []})).experiments
        except NormlabError:
            experiments = None  # a bad value the command line may override: build_study reports it
        if experiments is not None:
            check_families(spec, experiments)
    return spec


FAMILY_KEYS = ("question", "differ_in", "among", "reference")


def families_problem(families, where: str, names: list[str] | None = None) -> str | None:
    """Why `families` ([[family]] tables, or a study record's copy of them) cannot be used, or None;
    with `names`, every experiment a family lists must be one of them. One sentence with its fix."""
    if not isinstance(families, list) or not all(isinstance(f, dict) for f in families):
        return f"{where}: family must be a list of [[family]] tables."
    for i, family in enumerate(families, start=1):
        at = f"{where} [[family]] number {i}"
        unknown = sorted(set(family) - set(FAMILY_KEYS), key=str)
        if unknown:
            return f"{at} has unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(FAMILY_KEYS)}."
        if not isinstance(family.get("question"), str) or not family["question"].strip():
            return f"{at} needs a question, a sentence saying what the comparisons answer."
        if len(family["question"]) > MAX_TEXT:
            return f"{at}: its question is {len(family['question']):,} characters; keep it to {MAX_TEXT}."
        if ("differ_in" in family) == ("among" in family):
            return f"{at} needs either differ_in = \"setting\" or among = [experiment names]."
        if "differ_in" in family and (not isinstance(family["differ_in"], str) or family["differ_in"] not in SETTINGS):
            return f"{at}: differ_in = {shown(family['differ_in'])} is not a setting; known: {', '.join(SETTINGS)}."
        if "among" in family and (not isinstance(family["among"], list) or len(family["among"]) < 2
                                  or not all(isinstance(n, str) for n in family["among"])):
            return f"{at}: among must list two or more experiment names."
        if "among" in family and len(set(family["among"])) != len(family["among"]):
            return f"{at}: among lists an experiment twice; list each once."
        if "reference" in family and (not isinstance(family["reference"], str) or "among" not in family):
            return f"{at}: reference must be one experiment name, given with among."
        if "reference" in family and family["reference"] not in family["among"]:
            return f"{at}: reference {shown(family['reference'])} is not among its experiments; name one of them."
        if names is not None:
            missing = [n for n in [*family.get("among", []), *([family["reference"]] if "reference" in family else [])]
                       if n not in names]
            if missing:
                known = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                return (f"{at} names {shown(missing[0])}, which is not an experiment of this study (a setting given "
                        f"several values on the command line adds to the names); use one of: {known}.")
    return None


def _read_families(path: Path | str, families) -> list[dict]:
    """`[[family]]` tables: a question and which pairs answer it (normlab.comparisons)."""
    problem = families_problem(families, str(path))
    if problem:
        raise ArgumentError(problem)
    return families


def check_template(where: str, template: str) -> None:
    """A name template short enough, and with no format width or precision longer than a name, checked
    before anything is formatted: "{norm:1500000000}" would otherwise build a 1.5 GB string."""
    if len(template) > MAX_TEMPLATE:
        raise ArgumentError(f"{where}: the name template is {len(template):,} characters; names are at most 200, "
                           f"so keep it to {MAX_TEMPLATE}.")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ArgumentError(f"{where}: name template {shown(template)} is malformed ({first_line(e, 80)}); use "
                           "names of settings in braces, e.g. \"gn-g{groups}\".") from None
    for _, field_name, spec, _ in parts:
        if field_name is None:
            continue
        if "{" in (spec or ""):
            raise ArgumentError(f"{where}: name template {shown(template)} has a field inside a format spec; use "
                               "plain names of settings in braces, e.g. \"gn-g{groups}\".")
        if any(int(n) > MAX_FIELD_WIDTH for n in re.findall(r"\d+", spec or "")):
            raise ArgumentError(f"{where}: name template {shown(template)} asks for a width or precision above "
                               f"{MAX_FIELD_WIDTH}, longer than any name; use a smaller one.")


def _count(table: dict) -> int:
    return math.prod(len(_as_list(v)) for v in table.values())


def _product(table: dict) -> list[dict]:
    """Every combination of a table's values, the first key varying slowest."""
    keys = list(table)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_as_list(table[k]) for k in keys))]


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, "g").replace("+", "")
    return "all" if value is None else str(value)


# A true/false setting in a name: the word for true, the word for false.
BOOL_WORDS = {"last_norm": ("lastnorm", "plainlast"), "conv_bias": ("bias", "nobias")}


def name_part(key: str, value: Any) -> str:
    """One setting as a piece of an experiment name: `bn`, `lr0.05`, `l1_0.001`, `b32`, `init-he`,
    `plainlast` (last_norm false), `noaugment`."""
    if key in ("norm", "dataset"):
        return str(value)
    if isinstance(value, bool):
        word = key.replace("_", "")
        yes, no = BOOL_WORDS.get(key, (word, f"no{word}"))
        return yes if value else no
    short = NAME_ABBREVIATIONS.get(key, key).replace("_", "-") if isinstance(value, str) else \
        NAME_ABBREVIATIONS.get(key, key)
    if isinstance(value, str):
        return f"{short}-{value}"
    return f"{short}{'_' if short[-1].isdigit() else ''}{_value_text(value)}"


def build_study(study: str | Path | StudySpec, base: ExperimentConfig | None = None,
                seeds: list[int] | None = None, grid: dict[str, list] | None = None) -> Study:
    """The experiments of a study (preset name, file or spec), one per grid point and seed.

    `grid` maps settings to the values given on the command line: one value overrides the
    file, several multiply the study. From Python, the settings in which `base` differs from the
    defaults override the file the same way. Every experiment starts from a fresh init.
    """
    if not isinstance(study, (str, Path, StudySpec)):
        raise ArgumentError(f"study={study!r:.60} must be a preset name, the path of a .toml study file or a "
                            "StudySpec.")
    if base is not None and not isinstance(base, ExperimentConfig):
        raise ArgumentError(f"base={base!r:.60} must be an ExperimentConfig (or None).")
    if grid is not None and not isinstance(grid, dict):
        raise ArgumentError(f"grid={grid!r:.60} must be a dict of settings to lists of values (or None).")
    spec = study if isinstance(study, StudySpec) else read_study_file(study)
    if isinstance(study, StudySpec):
        _check_spec(spec)
    defaults = ExperimentConfig().to_dict()
    overrides = {k: [v] for k, v in (base.to_dict() if base else {}).items()
                 if k in SETTINGS and v != defaults[k]}
    for key, values in (grid or {}).items():
        if key not in SETTINGS:
            raise ArgumentError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}.")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(key, values, "{setting} needs at least one value.")
        overrides[key] = values
    if seeds is not None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) \
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError("seeds", seeds if isinstance(seeds, (list, tuple)) else [seeds],
                              "{setting} must be a list of integers, e.g. [1, 2, 3].")
        if not seeds:
            raise ConfigError("seeds", seeds, "{setting} needs at least one seed.")
        if not all(0 <= s <= MAX_SEED for s in seeds):
            raise ConfigError("seeds", list(seeds), f"{{setting}} must be integers from 0 to {MAX_SEED}.")
        overrides["seed"] = list(seeds)
    seed_values = overrides.pop("seed", None)
    swept = [k for k, v in overrides.items() if len(v) > 1]  # the command line's own grid
    size = sum(_count(spec.base) * _count({k: v for k, v in t.items() if k != "name"}) for t in spec.grids) \
        * _count(overrides) * len(seed_values or [None])
    if size > MAX_EXPERIMENTS:
        raise ArgumentError(f"{spec.source}: the study would have {size:,} experiments, more than the "
                           f"{MAX_EXPERIMENTS:,} one study may hold; give fewer values, or split it into studies.")

    points: list[tuple[str | None, dict, list[str]]] = []
    for table in spec.grids:
        template = table.get("name")
        settings = {k: v for k, v in table.items() if k != "name"}
        # settings the file gives several values but the template does not show: named after it
        unnamed = [k for k, v in {**settings, **spec.base}.items()
                   if template and k != "seed" and isinstance(v, list) and len(v) > 1 and "{" + k not in template]
        for base_point in _product(spec.base):
            for point in _product(settings):
                for extra in _product(overrides):
                    points.append((template, {**base_point, **point, **extra}, unnamed))
    seeds_in_order = seed_values or list(dict.fromkeys(p.get("seed", defaults["seed"]) for _, p, _ in points))
    if len(set(seeds_in_order)) != len(seeds_in_order):
        raise ConfigError("seeds", seeds_in_order, "{setting} has repeated values; give each seed once.")
    varying = [k for k in SETTINGS if k != "seed" and len({repr(p.get(k, defaults[k])) for _, p, _ in points}) > 1]

    experiments: list[ExperimentConfig] = []
    seen: dict[tuple, dict] = {}
    for seed in seeds_in_order:
        for template, point, unnamed in points:
            if seed_values is None and point.get("seed", defaults["seed"]) != seed:
                continue
            settings = {**defaults, **point, "seed": seed}
            for key in ("train_limit", "test_limit"):  # a file says "all" where the command line may too
                if isinstance(settings[key], str) and settings[key].strip().lower() in ("all", "none"):
                    settings[key] = None
            if isinstance(settings["norm"], str):
                settings["norm"] = settings["norm"].strip().lower()
            settings["name"] = _experiment_name(spec, template, settings, list(dict.fromkeys([*unnamed, *swept])), varying)
            same = {k: v for k, v in settings.items() if k != "name"}
            key = (settings["name"], seed)
            if key in seen:
                if seen[key] == same:
                    continue  # the same experiment twice (an override collapsed a grid): run it once
                differ = ", ".join(k for k in same if same[k] != seen[key][k])
                raise ArgumentError(f"{spec.source}: two different experiments would both be named "
                                   f"{settings['name']!r} (they differ in {differ}, which the name does not "
                                   "show); use values that print differently, or a study file whose grid has a "
                                   "name template that includes it.")
            seen[key] = same
            experiments.append(_experiment(spec, settings, {**overrides, **({"seed": seed_values} if seed_values
                                                                             else {})}))
    hidden = sorted({k for table in spec.grids if "name" in table for k in table
                     if k in overrides and k != "name" and len(overrides[k]) == 1
                     and "{" + k not in table["name"]})
    warnings = [f"--{k.replace('_', '-')} overrides a setting that the study's grid sets and its experiment "
                f"names do not show; the names (e.g. {experiments[0].name!r}) no longer describe it."
                for k in hidden]
    families = spec.families
    renamed = [k for k, values in overrides.items() if k != "seed" and len(values) > 1]
    if renamed and spec.families and families_problem(spec.families, spec.source,
                                                      list(dict.fromkeys(e.name for e in experiments))):
        # a sweep from the command line renamed the experiments the study file's families name: the
        # report falls back to its default families, and says why, rather than failing the sweep
        families = []
        warnings.append(f"--{renamed[0].replace('_', '-')} with several values renames the experiments that "
                        f"{spec.source}'s [[family]] tables name; the report compares them by its default "
                        "families instead.")
    else:
        check_families(spec, experiments)  # after the command line's overrides: the names the study runs
    return Study(name=spec.name, experiments=experiments, description=spec.description, warnings=warnings,
                 families=families, analysis=spec.analysis)


def _check_spec(spec: StudySpec) -> None:
    """A StudySpec made in Python, checked as read_study_file checks a file: a worded ValueError."""
    for key, kind in (("name", str), ("description", str), ("source", str), ("grids", list), ("base", dict),
                      ("families", list), ("analysis", dict)):
        if not isinstance(getattr(spec, key), kind):
            raise ArgumentError(f"StudySpec {key}={getattr(spec, key)!r:.60} must be a {kind.__name__}.")
    if not spec.grids or not all(isinstance(g, dict) for g in spec.grids):
        raise ArgumentError(f"StudySpec grids={spec.grids!r:.60} must be a list of one or more dicts of settings.")
    _check_keys("StudySpec base", spec.base, SETTINGS)
    for i, grid in enumerate(spec.grids, start=1):
        _check_keys(f"StudySpec grid number {i}", grid, ("name", *SETTINGS))
        if "name" in grid and not isinstance(grid["name"], str):
            raise ArgumentError(f"StudySpec grid number {i}: name must be a string template like \"gn-g{{groups}}\".")
    _read_families(spec.source, spec.families)


def check_families(spec: StudySpec, experiments: list[ExperimentConfig]) -> None:
    """Every name a [[family]] lists (among, reference) is an experiment of the study: a family that
    names one it lacks is an error here, not a silently empty section of the report."""
    problem = families_problem(spec.families, spec.source, list(dict.fromkeys(e.name for e in experiments)))
    if problem:
        raise ArgumentError(problem)


def _experiment(spec: StudySpec, settings: dict, overrides: dict) -> ExperimentConfig:
    """The validated config; a bad value from a study file is named with the file, as Python names it."""
    try:
        return ExperimentConfig.from_dict(settings)
    except ConfigError as e:
        if e.setting == "name":
            raise ArgumentError(f"{spec.source}: the experiment name {e.value!r}, made from the settings that "
                               "vary, is not a safe name (up to 200 letters, digits, '.', '_' or '-'); vary fewer "
                               "settings at once, or use a study file with a name template.") from None
        if e.setting in overrides or e.setting == "seeds" or spec.source == "the command line":
            raise  # the command line's own value: the CLI names its flag
        raise ArgumentError(f"{spec.source}: {e}") from None


def _experiment_name(spec: StudySpec, template: str | None, settings: dict, swept: list[str],
                     varying: list[str]) -> str:
    """The grid's template (plus the settings that vary but it does not show), or the settings that vary."""
    if template is None:  # the norm first, always: it is what this lab compares
        return "-".join(name_part(k, settings[k]) for k in ["norm", *(k for k in varying if k != "norm")])
    check_template(spec.source, template)  # from Python a spec may come without read_study_file's check
    try:
        name = template.format(**settings)
    except Exception as e:  # any format error: unknown key, bad spec, attribute or item access
        raise ArgumentError(f"{spec.source}: name template {shown(template)} does not fit the settings "
                           f"({first_line(e, 80)}); use names of settings in braces, e.g. \"gn-g{{groups}}\".") from None
    name = "-".join([name, *(name_part(k, settings[k]) for k in swept)])
    if not NAME_PATTERN.fullmatch(name):
        raise ArgumentError(f"{spec.source}: name template {shown(template)} gives {shown(name)}, not a safe "
                           "experiment name (up to 200 letters, digits, '.', '_' or '-', starting with a letter or "
                           "digit).")
    return name


def grid_study(grid: dict[str, list], seeds: list[int] | None = None) -> Study:
    """A study of the command line's settings alone (`normlab run --norm bn gn --lr 0.01 0.02`)."""
    description = "a grid from the command line: " + "; ".join(
        f"{k} {', '.join(map(_value_text, v))}" for k, v in grid.items() if len(v) > 1)
    return build_study(StudySpec(name="grid", description=description), seeds=seeds, grid=grid)
