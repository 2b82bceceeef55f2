"""The notebook executes top to bottom with papermill at tiny parameters and draws its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "normalization_experiments.ipynb"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_committed_notebook_ran_in_order_without_errors():
    cells = [c for c in _cells(NOTEBOOK) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in cells]
    assert all(isinstance(n, int) for n in counts), "every code cell executed"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), "in order"
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    source = "".join("".join(c["source"]) for c in cells)
    assert "from normlab.model import" in source and "Net(norm=norm)" in source and "run_study(" in source
    params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    assert "epochs = 20" in "".join(params["source"])
    assert "application/vnd.jupyter.widget-state+json" not in NOTEBOOK.read_text()


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    out_nb = tmp_path / "out.ipynb"
    out_dir = tmp_path / "results"
    papermill.execute_notebook(str(NOTEBOOK), str(out_nb), kernel_name="python3", progress_bar=False,
                               parameters={"epochs": 1, "train_limit": 512, "test_limit": 256,
                                           "out_dir": str(out_dir), "workers": 1})
    outputs = [o for c in _cells(out_nb) if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert (out_dir / "test_loss.png").exists() and (out_dir / "summary.json").exists()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert {e["name"] for e in summary["experiments"]} == {"bn-l1", "gn", "ln"}
