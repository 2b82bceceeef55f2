"""How every benchmark script reports: one indented JSON object, printed and optionally saved."""

from __future__ import annotations

import json
from pathlib import Path


def emit_json(result: dict, json_out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if json_out:
        json_out.write_text(text + "\n")
    print(text)
