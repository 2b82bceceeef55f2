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
