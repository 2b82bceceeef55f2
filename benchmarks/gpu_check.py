"""Every normlab path on one GPU, checked and timed side by side in one run (at most ~4 minutes).

Checks (pass / fail, each with its one-line reason):
  - every executor trains one epoch: one process per experiment (`--grouped off`), grouped eager
    (`--graph off`), grouped as CUDA graphs (`--graph on`), and the default (`auto`);
  - every norm of the zoo trains one epoch as a CUDA graph;
Measures (ms per optimizer step, batch 128, BN + L1 as the mission trains it):
  - one experiment eager vs its step as a graph; K members grouped eager vs as a graph (per member);
Runs the studies the GPU issue times (20 epochs, full MNIST), each as `normlab run` would:
  - mission (1 seed), grid15, mission with 10 seeds — study wall from its summary.json, and each
    experiment's final accuracy against the committed CPU studies' range over seeds (same settings,
    not the same bits: a GPU rounds differently).

    NORMLAB_DATA=<dir with MNIST/raw> python benchmarks/gpu_check.py --out "$OUT"

`--device cpu --quick` runs the same script's host side in seconds: CUDA-only checks are reported as
skipped, never as passed (tests/test_gpu_check.py runs it so, each `normlab` command in the test's own
process, and tests the child-process wrapper `normlab` on its own). Writes <out>/gpu-check.json and the studies under
<out>/results/<study>-gpu/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = [("mission", [1]), ("grid15", [1]), ("mission", list(range(1, 11)))]
QUICK_STUDIES = [("mission", [1, 2])]  # the host side: a study of several seeds
TARGETS = {"graph_ms_one": 1.2, "graph_ms_per_member_k30": 0.4,
           "mission-1-seed": 10.0, "grid15-1-seed": 20.0, "mission-10-seeds": 30.0}


class Budget:
    """The script's wall-clock allowance: a check that would start past it is reported as not run."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def normlab(args: list[str], timeout: float) -> tuple[int, str]:
    """`python -m normlab ...` in a child process (a CUDA fault there cannot poison this one);
    (exit status, last lines of its output). Past `timeout` it gets SIGINT, as a user's Ctrl-C."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "normlab", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(2)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return 124, f"stopped after {timeout:.0f} s\n" + (out or "")[-1500:]
    return proc.returncode, (out or "")[-1500:]


def summary_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def check(checks: list, name: str, passed: bool | None, detail: str, **extra) -> None:
    """passed None = skipped (the path needs what this machine lacks)."""
    checks.append({"check": name, "result": {True: "pass", False: "fail", None: "skipped"}[passed],
                   "detail": detail, **extra})
    print(f"[{ {True: 'PASS', False: 'FAIL', None: 'SKIP'}[passed] }] {name}: {detail}", flush=True)


def epoch_check(checks, name, args, out: Path, budget: Budget, timeout: float, quick: list[str],
                must_learn: bool) -> None:
    """One epoch of a small study through `normlab run`; pass when every experiment is done (and, with
    `must_learn`, above the majority class's 11.35%: `in` and `frn` with the pooled norm cannot be)."""
    if budget.left() < 10:
        return check(checks, name, False, "not run: the script's time budget was spent")
    folder = out / "checks" / name
    rc, tail = normlab(["run", *args, "--epochs", "1", "--out", str(folder), "--quiet", *quick],
                       min(timeout, budget.left()))
    summary = summary_of(folder)
    if rc != 0 or summary is None:
        return check(checks, name, False, f"exit {rc}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")
    rows = summary["experiments"]
    bad = [f"{r['name']}: {r['status']}" for r in rows if r["status"] != "done"]
    learned = {r["name"]: r.get("final_test_accuracy") for r in rows}
    ok = not bad and all(a is not None and (a > 11.35 or not must_learn) for a in learned.values())
    check(checks, name, ok, "; ".join(bad) or f"{len(rows)} experiments done, final accuracy "
          f"{min(learned.values()):.2f}-{max(learned.values()):.2f}%", wall_seconds=summary.get("wall_seconds"))


def step_times(device: str, seconds: float, members: int, train_limit: int | None = None) -> dict:
    """ms per optimizer step of the mission's BN + L1 step: eager and as a graph, one and K members."""
    import torch

    from normlab.config import ExperimentConfig
    from normlab.studies import build_study
    from normlab.training.group import GroupStep
    from normlab.training.loop import throughput
    from normlab.training.single import SingleStep
    from normlab.training.state import TrainState

    l1 = build_study("mission").experiments[0].l1
    out: dict = {}

    def states(k: int) -> list:
        return [TrainState(ExperimentConfig(name="t", norm="bn", l1=l1, seed=s, train_limit=train_limit), device)
                for s in range(1, k + 1)]

    one = states(1)[0]
    batch = one.cfg.batch_size
    out["eager_ms_one"] = 1000 * batch / throughput(SingleStep(one), 1, one.slices, seconds)
    cuda = device.startswith("cuda")
    for graph in ([False, True] if cuda else [False]):
        key = "graph" if graph else "grouped_eager"
        out[f"{key}_ms_k1"] = 1000 * batch / throughput(GroupStep(states(1), graph=graph), 1, one.slices, seconds)
        ips = throughput(GroupStep(states(members), graph=graph), 1, one.slices, seconds)
        out[f"{key}_ms_per_member_k{members}"] = 1000 * batch / ips
        out[f"{key}_ms_step_k{members}"] = 1000 * batch * members / ips
    if cuda:
        torch.cuda.synchronize()
    return {k: round(v, 3) for k, v in out.items()}


def cpu_range(study: str) -> dict[str, tuple[float, float, int]]:
    """name -> (lowest, highest final accuracy over seeds, seeds) in the committed CPU study."""
    for folder in ([ROOT / "results" / "mission-powered", ROOT / "results" / "mission"] if study == "mission"
                   else [ROOT / "results" / study]):
        summary = summary_of(folder)
        if summary:
            by: dict[str, list[float]] = {}
            for r in summary["experiments"]:
                if r.get("final_test_accuracy") is not None:
                    by.setdefault(r["name"].rsplit("-seed", 1)[0], []).append(r["final_test_accuracy"])
            return {n: (min(v), max(v), len(v)) for n, v in by.items()}
    return {}


def study_run(studies: list, study: str, seeds: list[int], args, out: Path, budget: Budget, quick: list[str]):
    label = f"{study}-{len(seeds)}-seed" + ("s" if len(seeds) > 1 else "")
    if budget.left() < 15:
        studies.append({"study": label, "ran": False, "why": "the script's time budget was spent"})
        return print(f"[SKIP] {label}: time budget spent", flush=True)
    folder = out / "results" / (f"{study}-gpu" if len(seeds) == 1 else f"{study}-{len(seeds)}seeds-gpu")
    cmd = ["run", study, "--device", args.device, "--seeds", *map(str, seeds), "--out", str(folder), "--quiet",
           *quick]
    start = time.perf_counter()
    rc, tail = normlab(cmd, budget.left() - 5)
    summary = summary_of(folder)
    reference = cpu_range(study)
    rows = []
    for r in (summary or {}).get("experiments", []):
        lo_hi = reference.get(r["name"].rsplit("-seed", 1)[0])
        acc = r.get("final_test_accuracy")
        rows.append({"name": r.get("dir", r["name"]), "status": r["status"], "final_test_accuracy": acc,
                     "cpu_range": list(lo_hi) if lo_hi else None,
                     "within_cpu_range": None if (lo_hi is None or acc is None) else lo_hi[0] <= acc <= lo_hi[1]})
    entry = {"study": label, "ran": True, "command": "normlab " + " ".join(cmd), "exit": rc,
             "wall_seconds": (summary or {}).get("wall_seconds"), "process_seconds": round(time.perf_counter() - start, 1),
             "target_seconds": TARGETS.get(label), "experiments": rows}
    if rc != 0:
        entry["output_tail"] = tail
    studies.append(entry)
    print(f"[{'DONE' if rc == 0 else 'FAIL'}] {label}: study wall {entry['wall_seconds']} s "
          f"(target {entry['target_seconds']} s), exit {rc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "results")))
    p.add_argument("--budget", type=float, default=235.0, help="seconds for the whole script")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per step-time measurement")
    p.add_argument("--members", type=int, default=30, help="K for the grouped step times")
    p.add_argument("--quick", action="store_true", help="tiny data and 1 epoch: the host side, in seconds")
    args = p.parse_args(argv)
    budget = Budget(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = ["--train-limit", "256", "--test-limit", "128", "--batch-size", "64"] if args.quick else []
    cuda = args.device.startswith("cuda")
    checks: list = []
    small = ["--train-limit", "4096", "--test-limit", "2000"] if not args.quick else quick
    dev = ["--device", args.device]
    seeds = ["1"] if args.quick else ["1", "2"]
    executors = [("per-process (--grouped off)", ["--grouped", "off"]),
                 ("grouped eager (--grouped on --graph off)", ["--grouped", "on", "--graph", "off"]),
                 ("grouped CUDA graph (--graph on)", ["--grouped", "on", "--graph", "on"]),
                 ("default (auto)", [])]
    for name, flags in executors:
        if "--graph" in flags and flags[flags.index("--graph") + 1] == "on" and not cuda:
            check(checks, name, None, "needs CUDA")
            continue
        if not flags and not cuda:  # auto on the CPU is the per-process executor, checked just above
            check(checks, name, None, "on the CPU auto is the per-process executor, checked above")
            continue
        epoch_check(checks, name, ["mission", "--seeds", *seeds, *dev, *flags], args.out, budget,
                    budget.left() if args.quick else 60, small, must_learn=not args.quick)
    from normlab.zoo import NORMS

    zoo_flags = ["--graph", "on"] if cuda else []
    epoch_check(checks, "every zoo norm" + (" as a CUDA graph" if cuda else ""),
                ["--norm", *NORMS, *dev, "--grouped", "on", *zoo_flags], args.out, budget,
                budget.left() if args.quick else 90, small,
                must_learn=False)
    steps: dict = {}
    if budget.left() > 60:
        try:
            steps = step_times(args.device, 0.2 if args.quick else args.seconds, 3 if args.quick else args.members,
                               train_limit=256 if args.quick else None)
            check(checks, "step times measured", True, json.dumps(steps))
        except Exception as e:  # a failure to time is reported, the studies still run
            check(checks, "step times measured", False, f"{type(e).__name__}: {str(e)[:200]}",
                  traceback=traceback.format_exc()[-1500:])
    studies: list = []
    for study, study_seeds in (QUICK_STUDIES if args.quick else STUDIES):
        study_run(studies, study, study_seeds, args, args.out, budget,
                  quick + (["--epochs", "1"] if args.quick else []))
    import torch

    result = {
        "script": "benchmarks/gpu_check.py", "device": args.device, "quick": args.quick,
        "gpu": torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else None,
        "torch": torch.__version__, "checks": checks, "step_ms": steps,
        "targets": TARGETS, "studies": studies,
        "passed": all(c["result"] != "fail" for c in checks) and all(s.get("exit", 0) == 0 for s in studies)}
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'all checks passed' if result['passed'] else 'some checks FAILED'}; "
          f"{args.out / 'gpu-check.json'} written")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
