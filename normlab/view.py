"""A study as its report reads it: each result file read once, the settings that vary computed once.

Every figure and table of a report reads through one `StudyView`: an experiment's `metrics.csv`,
`dynamics.csv` and `misclassified.json` are parsed on first use and kept, and the settings a set of
experiments varies (`axes.varying_settings`) are computed once per set.
"""

from __future__ import annotations

from pathlib import Path

from .axes import varying_settings
from .errors import DamagedError
from .results import (
    DYNAMICS,
    METRICS,
    MISCLASSIFIED,
    Read,
    read_dynamics,
    read_json_file,
    read_metrics,
)


class StudyView:
    """The result files of the study in `study_dir`, read lazily and at most once each."""

    def __init__(self, study_dir: Path):
        self.dir = Path(study_dir)
        self._metrics: dict[str, list[dict]] = {}
        self._dynamics: dict[str, list[dict] | DamagedError] = {}
        self._misclassified: dict[str, Read] = {}
        self._varying: dict[tuple, tuple[list[str], list[str]]] = {}

    def metrics(self, entry: dict) -> list[dict]:
        """The experiment's metrics.csv rows."""
        if entry["dir"] not in self._metrics:
            self._metrics[entry["dir"]] = read_metrics(self.dir / entry["dir"] / METRICS)
        return self._metrics[entry["dir"]]

    def has_dynamics(self, entry: dict) -> bool:
        return (self.dir / entry["dir"] / DYNAMICS).is_file()

    def dynamics(self, entry: dict) -> list[dict]:
        """The experiment's dynamics.csv rows; a damaged file raises DamagedError, every time."""
        if entry["dir"] not in self._dynamics:
            try:
                self._dynamics[entry["dir"]] = read_dynamics(self.dir / entry["dir"] / DYNAMICS)
            except DamagedError as e:
                self._dynamics[entry["dir"]] = e
        rows = self._dynamics[entry["dir"]]
        if isinstance(rows, DamagedError):
            raise rows
        return rows

    def misclassified(self, entry: dict) -> Read:
        """The experiment's misclassified.json, as `results.read_json_file` reads it."""
        if entry["dir"] not in self._misclassified:
            self._misclassified[entry["dir"]] = read_json_file(self.dir / entry["dir"] / MISCLASSIFIED)
        return self._misclassified[entry["dir"]]

    def varying(self, summary: dict) -> tuple[list[str], list[str]]:
        """(numeric, categorical) settings that vary across `summary`'s finished experiments."""
        key = tuple((e.get("dir"), e.get("status")) for e in summary["experiments"])
        if key not in self._varying:
            self._varying[key] = varying_settings(summary)
        return self._varying[key]
