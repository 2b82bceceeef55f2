"""Study presets: named lists of experiments. A study is data; executors run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .config import ExperimentConfig
from .errors import NormlabError

# L1 factor of the mission's BN model; chosen by measurement (README, "Choosing L1").
MISSION_L1 = 0.0001
REG_VALUES = (0.0, 0.001, 0.002)
BATCH_SIZES = (2, 4, 8, 32, 128)
BASE_BATCH = 128


@dataclass
class Study:
    name: str
    experiments: list[ExperimentConfig] = field(default_factory=list)
    description: str = ""

    @property
    def dataset(self) -> str:
        return self.experiments[0].dataset

    @property
    def epochs(self) -> int:
        return max(e.epochs for e in self.experiments)


def _reg_name(prefix: str, l1: float, l2: float) -> str:
    return f"{prefix}-l1_{l1:g}-l2_{l2:g}"


def mission(base: ExperimentConfig) -> list[ExperimentConfig]:
    return [
        replace(base, name="bn-l1", norm="bn", l1=MISSION_L1 if base.l1 == 0 else base.l1),
        replace(base, name="gn", norm="gn", l1=0.0),
        replace(base, name="ln", norm="ln", l1=0.0),
    ]


def grid15(base: ExperimentConfig) -> list[ExperimentConfig]:
    out = [replace(base, name=_reg_name("bn", l1, l2), norm="bn", l1=l1, l2=l2)
           for l1 in REG_VALUES for l2 in REG_VALUES]
    out += [replace(base, name=_reg_name(norm, 0.0, l2), norm=norm, l1=0.0, l2=l2)
            for norm in ("ln", "gn") for l2 in REG_VALUES]
    return out


def batch_size(base: ExperimentConfig) -> list[ExperimentConfig]:
    """BN/GN/LN at several batch sizes; the peak LR scales linearly with the batch size
    (Goyal et al., 2017), so every size sees the same learning rate per image."""
    return [replace(base, name=f"{norm}-b{bs}", norm=norm, batch_size=bs, lr=base.lr * bs / BASE_BATCH)
            for norm in ("bn", "gn", "ln") for bs in BATCH_SIZES]


PRESETS: dict[str, tuple[Callable[[ExperimentConfig], list[ExperimentConfig]], str]] = {
    "mission": (mission, "BN + L1, GN and LN, 20 epochs each: the seed exercise"),
    "grid15": (grid15, "BN x L1 {0,.001,.002} x L2 {0,.001,.002}; LN and GN x L2 {0,.001,.002}"),
    "batch-size": (batch_size, f"BN, GN, LN at batch sizes {', '.join(map(str, BATCH_SIZES))}"),
}


def build_study(name: str, base: ExperimentConfig, seeds: list[int]) -> Study:
    """The experiments of preset `name`, one per (experiment, seed), each from a fresh init."""
    if name not in PRESETS:
        raise NormlabError(f"unknown study {name!r}; choose one of: {', '.join(PRESETS)}.")
    if not seeds:
        raise NormlabError("--seeds needs at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise NormlabError(f"--seeds has repeated values {seeds}; give each seed once.")
    build, description = PRESETS[name]
    experiments = [replace(e, seed=s) for s in seeds for e in build(base)]
    return Study(name=name, experiments=experiments, description=description)
