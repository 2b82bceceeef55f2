"""benchmarks/gpu_check.py's host side on the CPU, and (only where a GPU exists) every executor on CUDA."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normlab_in_this_process(args: list[str], timeout: float) -> tuple[int, str]:
    """The script's `normlab` with the child process left out: the same command line, its output."""
    from normlab.cli import main

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        code = main(args)
    return code, captured.getvalue()[-1500:]


def test_the_script_runs_normlab_in_a_child_and_stops_it_past_its_timeout(tmp_path):
    script = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "--quick" in script.stdout  # runs as a script, from anywhere
    gpu_check = load_script()
    code, tail = gpu_check.normlab(["--version"], timeout=120)
    assert code == 0 and "normlab" in tail
    code, tail = gpu_check.normlab(["run", "mission", "--quiet", "--out", str(tmp_path / "m")], timeout=1)
    assert code == 124 and tail.startswith("stopped after 1 s")  # 20 epochs of MNIST: far past a second


def test_gpu_check_runs_its_host_side_and_never_calls_a_cuda_path_passed(tmp_path, monkeypatch, no_drawing):
    """Every step of the script on the CPU, each `normlab` command in this process (its figures not
    drawn: test_plots draws them) so that the host side costs seconds, not one interpreter per step."""
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check, "normlab", normlab_in_this_process)
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--budget", "400"]) == 0
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    by = {c["check"]: c["result"] for c in result["checks"]}
    assert by["grouped CUDA graph (--graph on)"] == "skipped"  # needs CUDA: not a pass
    assert by["per-process (--grouped off)"] == "pass" and by["every zoo norm"] == "pass"
    assert {"eager_ms_one", "grouped_eager_ms_k1", "grouped_eager_ms_per_member_k3"} <= set(result["step_ms"])
    assert all(v > 0 for v in result["step_ms"].values())
    assert by["grouped eager (--grouped on --graph off)"] == "pass"  # the grouped executor runs on the CPU too
    (ten,) = result["studies"]
    assert ten["study"] == "mission-2-seeds" and ten["exit"] == 0 and ten["wall_seconds"] > 0
    names = {r["name"] for r in ten["experiments"]}
    assert names == {f"{n}-seed{s}" for n in ("bn-l1", "gn", "ln") for s in (1, 2)}
    # every row compared with the committed CPU mission's range over its seeds
    assert all(r["cpu_range"] is not None and r["within_cpu_range"] in (True, False) for r in ten["experiments"])
    assert (tmp_path / "results" / "mission-2seeds-gpu" / "summary.json").exists()


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
@pytest.mark.parametrize("grouped,graph", [("off", "off"), ("on", "off"), ("on", "on"), ("auto", "auto")])
def test_every_executor_trains_one_epoch_on_cuda(tmp_path, grouped, graph):
    from normlab.config import ExperimentConfig
    from normlab.runner import run_study
    from normlab.studies import build_study

    study = build_study("mission", ExperimentConfig(epochs=1, train_limit=4096, test_limit=2000), seeds=[1, 2])
    outcome = run_study(study, tmp_path, device="cuda", grouped=grouped, graph=graph, quiet=True)
    rows = outcome.summary["experiments"]
    assert all(r["status"] == "done" for r in rows)
    assert all(r["final_test_accuracy"] > 50 for r in rows)  # one epoch of 4,096 digits: far above chance
