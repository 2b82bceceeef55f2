"""The architecture holds: imports go one way (import-linter's contracts in pyproject.toml), and the
command line's help loads no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    r = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                        "lint_imports_command()"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_help_and_config_checks_load_no_torch():
    code = ("import sys\nfrom normlab.cli import build_parser\nfrom normlab.config import ExperimentConfig\n"
            "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "ExperimentConfig(norm='gn', groups=2, init='he')\n"
            "print(sorted(m for m in ('torch', 'timm', 'numpy', 'matplotlib', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def _package_trees():
    import ast

    for path in sorted((ROOT / "normlab").rglob("*.py")):
        yield path.relative_to(ROOT), ast.parse(path.read_text())


def test_no_code_reads_another_objects_private_attribute():
    """`x._name` only on self or cls: an object's insides stay its own. Two standard-library
    functions are allowed: os._exit (the documented way out of a process without cleanup) and
    atexit._run_exitfuncs (CPython has no public way to run the exit handlers before os._exit,
    which an interrupted command needs: see cli.entry_point)."""
    import ast

    found = [f"{path}:{node.lineno}: {ast.unparse(node)}" for path, tree in _package_trees() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "atexit"))]
    assert found == []


def test_no_class_is_over_200_lines():
    import ast

    found = [f"{path}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
             for path, tree in _package_trees() for node in ast.walk(tree)
             if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200]
    assert found == []


def test_the_architecture_page_lists_the_layers_the_contract_checks():
    import re

    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = [" | ".join(re.findall(r"`(normlab[\w.]*)`", line))
              for line in page.splitlines() if re.match(r"\d+\. `normlab", line)]
    assert listed == contract["layers"]
