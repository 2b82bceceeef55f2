"""Which settings vary across a study's experiments: the axes its figures and comparisons follow."""

from __future__ import annotations

from .config import SETTINGS


def varying_settings(summary: dict) -> tuple[list[str], list[str]]:
    """(numeric, categorical) settings that vary across the finished experiments, in config order.

    A numeric setting that is a one-to-one function of an earlier one (the batch-size study's LR,
    scaled with the batch size) is not a separate axis and is left out.
    """
    done = [e for e in summary["experiments"] if e["status"] == "done"]
    numeric, categorical = [], []
    for key in SETTINGS:
        values = {repr(e.get(key)) for e in done}
        if key == "seed" or len(values) < 2:
            continue
        kind = numeric if all(isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)
                              for e in done) else categorical
        kind.append(key)
    independent = []
    for key in numeric:
        if not any(len({(repr(e.get(k)), repr(e.get(key))) for e in done}) == len({repr(e.get(k)) for e in done})
                   == len({repr(e.get(key)) for e in done}) for k in independent):
            independent.append(key)
    return independent, categorical


def series_label(entry: dict, categorical: list[str]) -> str:
    return ", ".join(str(entry.get(k)).upper() if k == "norm" else f"{k} {entry.get(k)}"
                     for k in categorical) or str(entry.get("norm", "all")).upper()
