"""--executor ray: the same experiments as Ray tasks on a local Ray instance, same files, same numbers."""

from __future__ import annotations

import json

import pytest
from conftest import science

from normlab.cli import main
from normlab.results import read_metrics

TINY_ARGS = ["--epochs", "2", "--train-limit", "512", "--test-limit", "256", "--batch-size", "64", "--seeds", "1",
             "--quiet"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module's tests (it takes seconds to start): the executor uses
    a running instance and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The two-experiment study the Ray tests run, trained once by the local executor: the numbers
    Ray must reproduce (any --workers gives the same)."""
    out = tmp_path_factory.mktemp("local") / "l"
    assert main(["run", "--norm", "bn", "ln", "--l1", "1e-4", *TINY_ARGS, "--workers", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_ray_study_matches_the_local_executor(tmp_path, local_ray, local_study):
    assert main(["run", "--norm", "bn", "ln", "--l1", "1e-4", *TINY_ARGS, "--executor", "ray",
                 "--out", str(tmp_path / "ray")]) == 0
    ray_summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert {e["name"] for e in ray_summary["experiments"]} == {"bn", "ln"}
    for e in ray_summary["experiments"]:
        assert e["status"] == "done" and e["epochs_run"] == 2
        ours = read_metrics(tmp_path / "ray" / e["dir"] / "metrics.csv")
        local = read_metrics(local_study / e["dir"] / "metrics.csv")
        assert science(ours) == science(local)
    for f in ("test_loss.png", "test_accuracy.png", "report.md"):
        assert (tmp_path / "ray" / f).exists()


@pytest.mark.slow
def test_ray_resumes_an_interrupted_study(tmp_path, local_ray):
    out = tmp_path / "r"
    # "interrupted": one epoch done locally, then the two-epoch study resumes under Ray
    one = ["--epochs", "2", "--train-limit", "512", "--test-limit", "256", "--batch-size", "64", "--quiet"]
    from normlab.config import ExperimentConfig
    from normlab.experiment import Experiment
    cfg = ExperimentConfig(name="ln", norm="ln", epochs=2, train_limit=512, test_limit=256, batch_size=64)
    Experiment(cfg, out / "ln-seed1").run_epoch()
    assert main(["train", "--norm", "ln", *one, "--executor", "ray", "--resume", "--out", str(out)]) == 0
    rows = read_metrics(out / "ln-seed1" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["run", *TINY_ARGS, "--executor", "ray", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'normlab[ray]'" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_ray_study_keeps_its_epochs_and_resume_completes_it(tmp_path, local_ray, monkeypatch,
                                                                            local_study):
    """Ctrl-C after the first result: the tasks in flight are cancelled, every finished epoch stays,
    summary.json is written, and --resume under Ray finishes the study as an uninterrupted one."""
    from normlab.execution.progress import Progress

    out, args = tmp_path / "r", ["run", "--norm", "bn", "ln", "--l1", "1e-4", *TINY_ARGS, "--executor", "ray"]
    real_show, shown = Progress.show, []

    def interrupt_after_the_first(self, result, item):
        shown.append(result.name)
        real_show(self, result, item)
        if len(shown) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "show", interrupt_after_the_first)
    assert main([*args, "--out", str(out)]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert sum(e["epochs_run"] for e in summary["experiments"]) >= 1
    monkeypatch.setattr(Progress, "show", real_show)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    for name in ("bn-seed1", "ln-seed1"):
        assert science(read_metrics(out / name / "metrics.csv")) == science(read_metrics(local_study / name /
                                                                                           "metrics.csv"))
