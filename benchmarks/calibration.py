"""The false-positive rate and the power of normlab's analysis plans, by simulation.

For every committed study with a multi-seed layout, studies with no real difference are simulated
at that layout (its groups and report families) with 2, 3, 5 and 10 seeds an arm, in three null
worlds (equal spreads; half the groups 4x the others' spread; any seed at chance with
probability 0.2), and the worst family's familywise false-positive rate is recorded for three
tests (Welch on Hsu's df, the default; Welch-Satterthwaite; Student), each with Holm, counting
every p-value (as if a verdict were stated at any seed count). Then the power of the default: the
smallest difference in one arm of the mission's three-arm family that is detected 80% of the time,
at 3, 5 and 10 seeds, for the seed-to-seed spread of the committed powered mission.

    python benchmarks/calibration.py [results/calibration.json] [--reps N]

docs/statistics.md quotes what it writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _output import emit_json

from normlab import calibration
from normlab.analysis import DEFAULT
from normlab.stats import from_logit_error, logit_error

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (2, 3, 5, 10)
TESTS = ("welch-hsu", "welch", "student")


def mission_spread() -> tuple[float, float]:
    """(mean, pooled seed-to-seed SD) of the logit error rate over the powered mission's arms."""
    summary = json.loads((ROOT / "results" / "mission-powered" / "summary.json").read_text())
    arms: dict[str, list[float]] = {}
    for e in summary["experiments"]:
        if e["status"] == "done":
            arms.setdefault(e["name"], []).append(logit_error(e["final_test_accuracy"], 10000))
    mean = statistics.fmean(v for values in arms.values() for v in values)
    return mean, statistics.fmean(statistics.variance(v) for v in arms.values()) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_out", nargs="?", type=Path)
    parser.add_argument("--reps", type=int, default=10000)
    args = parser.parse_args()
    start = time.perf_counter()
    layouts = {}
    for path in sorted((ROOT / "results").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        layout = calibration.layout_of(summary)
        if not layout.families or max(layout.seeds) < 2:
            continue
        rows = {}
        for test in TESTS:
            plan = {**DEFAULT, "test": test, "min_seeds": 2}
            rows[test] = {scenario: {str(n): round(max(calibration.familywise_rates(
                plan, calibration.layout_of(summary, n), scenario, reps=args.reps, seed=1)), 4) for n in SEEDS}
                for scenario in calibration.SCENARIOS}
        layouts[path.parent.name] = {"groups": len(layout.seeds), "family_sizes": [len(f) for f in layout.families],
                                     "worst_family_rate": rows}
    mean, sd = mission_spread()
    accuracy = from_logit_error(mean, 10000)
    power = {}
    for n in (3, 5, 10):
        shift = calibration.smallest_detected({**DEFAULT, "min_seeds": 2}, n, sd, reps=max(args.reps // 5, 500))
        power[str(n)] = {"logit_shift": round(shift, 4), "error_odds_ratio": round(2.718281828459045 ** -shift, 3),
                         "points": round(from_logit_error(mean - shift, 10000) - accuracy, 3)}
    emit_json({
        "what": "worst family's familywise false-positive rate in null worlds, and the default plan's power",
        "reps": args.reps, "alpha": DEFAULT["alpha"], "correction": "holm",
        "monte_carlo_margin_at_alpha": round(calibration.monte_carlo_margin(DEFAULT["alpha"], args.reps), 4),
        "scenarios": {"equal": "one spread", "unequal": "half the groups 4x the others' SD",
                      "chance": "any seed at chance (11.35%) with probability 0.2"},
        "layouts": layouts,
        "power": {"plan": "welch-hsu, holm, the mission's every-pair family of 3 arms",
                  "mission_mean_accuracy": round(accuracy, 3), "mission_logit_sd": round(sd, 4),
                  "smallest_detected_80_percent": power},
        "seconds": round(time.perf_counter() - start, 1),
    }, args.json_out)


if __name__ == "__main__":
    main()
