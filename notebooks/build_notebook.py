"""Writes notebooks/normalization_experiments.ipynb (unexecuted). The notebook is a thin layer
over normlab: edit the cells here, rebuild, then execute it with papermill (README)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md("""# Normalization experiments: GN, LN and BN + L1 on MNIST

This notebook trains the three variants the exercise asks for — **Group Normalization**, **Layer
Normalization** and **Batch Normalization with L1 regularization** — for 20 epochs each, then draws
Graph 1 (test loss), Graph 2 (test accuracy) and ten misclassified test images per model.

It is a thin, readable layer over the `normlab` library: the network comes from `normlab/model.py`
(the normalization is an argument), training from `normlab.training` / `normlab.runner`, the figures from
`normlab.plots`. The same study runs from the shell as `normlab run mission`."""),
    md("""## Parameters
`papermill` can override these (the cell is tagged `parameters`). `None` limits mean the full data."""),
    code("""epochs = 20          # epochs per model
train_limit = None   # use only the first N training images (None = all 60,000)
test_limit = None    # use only the first N test images (None = all 10,000)
out_dir = "runs/notebook"  # result files land here; re-running the notebook resumes
seed = 1
workers = None       # worker processes (None = one per CPU core)""", metadata={"tags": ["parameters"]}),
    md("""## The network: one model, the norm is an argument
`Net(norm=...)` builds the original exercise's 7.7k-parameter CNN with `bn`, `gn` or `ln` layers, chosen from one
registry. "LN" is GroupNorm with one group (each sample normalized over C, H, W); see the README."""),
    code("""from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from normlab.model import Net, count_parameters
from normlab.zoo import NORMS

for norm in ("bn", "gn", "ln"):
    print(f"{norm}: {count_parameters(Net(norm=norm)):,} parameters — {NORMS[norm].description}")
print(Net(norm="gn"))"""),
    md("""## Train the three models
Each experiment starts from its own fresh initialization derived from the seed (the original exercise
reused model objects, so later runs continued from earlier weights). Every epoch writes `metrics.csv` and
a checkpoint, so an interrupted notebook continues where it stopped."""),
    code("""from normlab.config import ExperimentConfig
from normlab.runner import run_study
from normlab.studies import build_study

base = ExperimentConfig(epochs=epochs, train_limit=train_limit, test_limit=test_limit)
study = build_study("mission", base, seeds=[seed])
for cfg in study.experiments:
    print(f"{cfg.name}: norm={cfg.norm} l1={cfg.l1:g} l2={cfg.l2:g} lr={cfg.lr:g} batch={cfg.batch_size}")
out = Path(out_dir)
outcome = run_study(study, out, resume=True, workers=workers, quiet=True, on_epoch=print)"""),
    md("""## Graph 1 and Graph 2
Drawn by `normlab.plots` from the result files only (`normlab report DIR` draws the same)."""),
    code("""from normlab.report import generate_report

summary = generate_report(out)
display(Image(filename=str(out / "test_loss.png")))"""),
    code("""display(Image(filename=str(out / "test_accuracy.png")))"""),
    md("""## Ten misclassified test images per model
The ten mistakes each model made with the highest confidence (a deterministic choice), as 5x2 grids."""),
    code("""for entry in summary["experiments"]:
    display(Image(filename=str(out / entry["dir"] / "misclassified.png")))"""),
    md("""## Results and findings
The table and the sentences below are computed from `summary.json`, so they describe this execution."""),
    code("""from normlab.report import final_table

print(final_table(summary))
done = [e for e in summary["experiments"] if e["status"] == "done"]
best = max(done, key=lambda e: e["final_test_accuracy"])
worst = min(done, key=lambda e: e["final_test_accuracy"])
lowest_loss = min(done, key=lambda e: e["final_test_loss"])
lines = [
    f"- Highest final test accuracy: **{best['name']}** ({best['final_test_accuracy']:.2f}%); "
    f"lowest: **{worst['name']}** ({worst['final_test_accuracy']:.2f}%), a gap of "
    f"{best['final_test_accuracy'] - worst['final_test_accuracy']:.2f} points.",
    f"- Lowest final test loss: **{lowest_loss['name']}** ({lowest_loss['final_test_loss']:.4f}).",
    "- " + "; ".join(f"{e['name']} peaked at {e['best_test_accuracy']:.2f}% in epoch {e['best_epoch']}" for e in done) + ".",
    "- One seed per model: differences of a few hundredths of a point are within seed-to-seed noise "
    "(the README's multi-seed results measure that spread).",
]
display(Markdown("\\n".join(lines)))"""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
})
path = Path(__file__).with_name("normalization_experiments.ipynb")
nbf.write(nb, path)
print(path)
