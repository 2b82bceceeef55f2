"""The result files of an experiment and of a study: their names, statuses and formats, in one place.

An experiment directory holds `model.pt` (the checkpoint: the one source of truth, carrying the
config and the metrics history) and views of it that people and plots read: `config.json`,
`metrics.csv`, `status.json` and, once finished, `misclassified.json`. A study directory holds
`study.json` (the study's definition and wall time), `summary.json` (a view over everything),
`report.md` and the figures. Readers here tell a missing file from a damaged one, so callers can
rebuild a view or refuse with one sentence instead of failing with a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DamagedError
from .fileio import NotAFileError, atomic_write_text, safe_read_bytes

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "model.pt"
STATUS = "status.json"
MISCLASSIFIED = "misclassified.json"
DYNAMICS = "dynamics.csv"  # per-layer training dynamics (normlab.dynamics), long format
STUDY = "study.json"
SUMMARY = "summary.json"
REPORT = "report.md"

# Statuses, as summary.json and status.json spell them.
PENDING = "pending"  # nothing trained yet
RUNNING = "running"  # some epochs on disk
DONE = "done"
DIVERGED = "diverged"  # a non-finite loss stopped it; the checkpoint keeps the last good epoch
DAMAGED = "damaged"  # a file that cannot be trusted or rebuilt; the message names it and the fix

# A folder or file name read from a result file: one plain name inside the study folder (no "..",
# no separator, not absolute, not hidden), as experiment directory names are made.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def plain_name(value) -> bool:
    """Whether `value` (read from disk) may name a folder inside the study folder."""
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None and ".." not in value


METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds"]


@dataclass
class Read:
    """A file's parsed content, or why it could not be used (`missing`, `empty`, `not valid JSON`, ...)."""

    value: Any = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


MAX_RESULT_BYTES = 256 * 2**20  # far above any file normlab writes (a study's largest is well under 1 MB)


def read_text(path: Path) -> Read:
    """A result file's text, read in bounded memory, or why it cannot be used."""
    path = Path(path)
    try:
        data = safe_read_bytes(path, limit=MAX_RESULT_BYTES)  # never through a link, never waiting on a FIFO
    except ValueError:
        return Read(problem=f"larger than the {MAX_RESULT_BYTES:,} bytes of any file normlab writes")
    except FileNotFoundError:
        return Read(problem="missing")
    except NotAFileError as e:
        return Read(problem=f"a {e.kind}, not a file normlab wrote")
    except OSError as e:
        return Read(problem=f"unreadable: {e.strerror}")
    if not data:
        return Read(problem="empty")
    try:
        return Read(data.decode("utf-8"))
    except UnicodeDecodeError:
        return Read(problem="not text")


def read_json_file(path: Path, kind: type = dict) -> Read:
    """The JSON object in `path`, or the reason it is unusable; never raises for a bad file."""
    text = read_text(path)
    if not text.ok:
        return text
    try:
        value = json.loads(text.value)
    except ValueError:
        return Read(problem="not valid JSON (truncated or corrupt)")
    except RecursionError:  # '[' * 100000: deeper than any file normlab writes
        return Read(problem="not valid JSON (nested too deeply to be a file normlab wrote)")
    if not isinstance(value, kind):
        return Read(problem=f"not a JSON {kind.__name__}")
    return Read(value)


def _number(key: str, text: str) -> Any:
    if key == "epoch":
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text  # a column normlab does not know: kept as written


def render_metrics(rows: list[dict]) -> str:
    """metrics.csv's exact text: the contract columns first, then any others in order of appearance."""
    columns = list(METRIC_COLUMNS)
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def parse_metrics(text: str) -> list[dict]:
    """Rows of metrics.csv; ValueError for a header or row that is not a complete metrics row."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or reader.fieldnames[: len(METRIC_COLUMNS)] != METRIC_COLUMNS:
        raise ValueError("its header is not " + ",".join(METRIC_COLUMNS))
    rows = []
    for line, r in enumerate(reader, start=2):
        if None in r or any(r[k] in (None, "") for k in METRIC_COLUMNS):
            raise ValueError(f"row {line} is incomplete")
        row = {k: _number(k, v) for k, v in r.items()}
        if any(isinstance(row[k], str) for k in METRIC_COLUMNS):
            raise ValueError(f"row {line} has a value that is not a number")
        rows.append(row)
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise ValueError("its epochs do not count 1, 2, 3, ...")
    return rows


def _read_table(path: Path, parse) -> list[dict]:
    """The rows of a CSV view ([] when there is none); DamagedError naming the file if it is unusable."""
    text = read_text(path)
    if text.problem in ("missing", "empty"):
        return []
    try:
        if not text.ok:
            raise ValueError(text.problem)
        return parse(text.value)
    except ValueError as e:
        raise DamagedError(f"{path} is damaged ({e}); run `normlab report` on its study to rebuild it "
                           "from the checkpoint.") from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.csv ([] when there is none); DamagedError naming the file if it is unusable."""
    return _read_table(path, parse_metrics)


def write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, render_metrics(rows))


DYNAMICS_COLUMNS = ["epoch", "step", "layer", "statistic", "value"]


def render_dynamics(rows: list[dict]) -> str:
    """dynamics.csv's exact text: one row per (epoch, step, layer, statistic)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=DYNAMICS_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def parse_dynamics(text: str) -> list[dict]:
    """Rows of dynamics.csv; ValueError for a header or row that is not a complete row."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != DYNAMICS_COLUMNS:
        raise ValueError("its header is not " + ",".join(DYNAMICS_COLUMNS))
    rows = []
    for line, r in enumerate(reader, start=2):
        try:
            rows.append({"epoch": int(r["epoch"]), "step": int(r["step"]), "layer": r["layer"],
                         "statistic": r["statistic"], "value": float(r["value"])})
        except (TypeError, ValueError):
            raise ValueError(f"row {line} is incomplete or not numbers where numbers belong") from None
    return rows


def read_dynamics(path: Path) -> list[dict]:
    """The rows of a dynamics.csv ([] when there is none); DamagedError naming the file if it is unusable."""
    return _read_table(path, parse_dynamics)


def write_dynamics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, render_dynamics(rows))
